//! The gRPC API through `cairn-client`, black-box: reads and writes, conditions, TTL, scans
//! with paging, atomic batches, cluster status, limits, the health service, and the client's
//! bounded retries.

use std::ops::Bound;
use std::time::Duration;

use bytes::Bytes;
use cairn_client::{
    BatchOp, Client, ClientConfig, Condition, Error, Expiry, PutOptions, Scan, Ttl,
};

use crate::support::{Node, free_port};

fn client(node: &Node) -> Client {
    Client::new(&node.grpc_url()).expect("client")
}

#[tokio::test]
async fn get_put_delete_with_binary_keys_and_versions() {
    let node = Node::start();
    let c = client(&node);
    assert_eq!(c.get("missing").await.unwrap(), None);

    let key = Bytes::from_static(b"\x00bin\xffkey");
    let value = Bytes::from((0..=255u8).collect::<Vec<_>>());
    let v1 = c.put(key.clone(), value.clone()).await.unwrap();
    let got = c.get(key.clone()).await.unwrap().unwrap();
    assert_eq!(
        (got.value, got.version, got.expires_at_ms, got.ttl_ms),
        (value, v1, None, None)
    );

    let v2 = c.put(key.clone(), "second").await.unwrap();
    assert!(v2 > v1, "versions increase: {v1} then {v2}");
    assert_eq!(c.get(key.clone()).await.unwrap().unwrap().value, "second");

    assert!(c.delete(key.clone()).await.unwrap());
    assert!(!c.delete(key.clone()).await.unwrap());
    assert_eq!(c.get(key).await.unwrap(), None);
}

#[tokio::test]
async fn conditional_puts() {
    let node = Node::start();
    let c = client(&node);
    let opts = |condition| PutOptions {
        expiry: None,
        condition: Some(condition),
    };

    // if-absent / if-present.
    let v1 = c
        .put_with("k", "1", opts(Condition::IfAbsent))
        .await
        .unwrap();
    let e = c
        .put_with("k", "2", opts(Condition::IfAbsent))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::ConditionFailed(_)), "{e:?}");
    let e = c
        .put_with("nope", "x", opts(Condition::IfPresent))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::ConditionFailed(_)), "{e:?}");
    assert_eq!(c.get("nope").await.unwrap(), None);
    let v2 = c
        .put_with("k", "3", opts(Condition::IfPresent))
        .await
        .unwrap();

    // if-version: compare-and-set against the current version only.
    let e = c
        .put_with("k", "4", opts(Condition::IfVersion(v1)))
        .await
        .unwrap_err();
    match e {
        Error::ConditionFailed(m) => assert!(m.contains(&v2.to_string()), "{m}"),
        other => panic!("{other:?}"),
    }
    c.put_with("k", "5", opts(Condition::IfVersion(v2)))
        .await
        .unwrap();
    assert_eq!(c.get("k").await.unwrap().unwrap().value, "5");
}

#[tokio::test]
async fn ttl_expire_and_persist() {
    let node = Node::start();
    let c = client(&node);
    assert_eq!(c.ttl("missing").await.unwrap(), None);
    assert!(!c.expire("missing", Duration::from_secs(5)).await.unwrap());
    assert!(!c.persist("missing").await.unwrap());

    c.put("k", "v").await.unwrap();
    assert_eq!(c.ttl("k").await.unwrap(), Some(Ttl::Persistent));
    assert!(c.expire("k", Duration::from_secs(200)).await.unwrap());
    match c.ttl("k").await.unwrap() {
        Some(Ttl::Remaining(d)) => {
            assert!(d <= Duration::from_secs(200) && d > Duration::ZERO, "{d:?}")
        }
        other => panic!("{other:?}"),
    }
    let got = c.get("k").await.unwrap().unwrap();
    assert!(got.expires_at_ms.is_some() && got.ttl_ms.is_some());
    assert!(c.persist("k").await.unwrap());
    assert_eq!(c.ttl("k").await.unwrap(), Some(Ttl::Persistent));
    // Persisting a key without expiry is not an error.
    assert!(c.persist("k").await.unwrap());

    // Put with a TTL and with an absolute expiry.
    let opts = PutOptions {
        expiry: Some(Expiry::In(Duration::from_secs(60))),
        condition: None,
    };
    c.put_with("t", "v", opts).await.unwrap();
    assert!(matches!(c.ttl("t").await.unwrap(), Some(Ttl::Remaining(_))));
    let far = 4_000_000_000_000u64;
    let opts = PutOptions {
        expiry: Some(Expiry::AtMs(far)),
        condition: None,
    };
    c.put_with("t", "v", opts).await.unwrap();
    assert_eq!(c.get("t").await.unwrap().unwrap().expires_at_ms, Some(far));

    // An expiry in the past removes the key at once.
    assert!(c.expire_at("t", 1).await.unwrap());
    assert_eq!(c.get("t").await.unwrap(), None);

    // A zero TTL on put is refused.
    let opts = PutOptions {
        expiry: Some(Expiry::In(Duration::ZERO)),
        condition: None,
    };
    assert!(matches!(
        c.put_with("z", "v", opts).await,
        Err(Error::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn scan_by_prefix_and_range_with_paging() {
    let node = Node::start();
    let c = client(&node);
    for i in 0..25 {
        c.put(format!("user:{i:02}"), format!("v{i}"))
            .await
            .unwrap();
    }
    c.put("other", "x").await.unwrap();

    // Prefix, in pages of 10, following the resume cursor.
    let mut scan = Scan::prefix("user:").limit(10);
    let mut keys = Vec::new();
    let mut pages = 0;
    loop {
        let page = c.scan(&scan).await.unwrap();
        pages += 1;
        for e in &page.entries {
            let key = String::from_utf8(e.key.to_vec()).unwrap();
            let i: u32 = key["user:".len()..].parse().unwrap();
            assert_eq!(e.value, format!("v{i}"));
            keys.push(key);
        }
        match page.resume_after {
            Some(after) => scan = scan.after(Some(after)),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..25).map(|i| format!("user:{i:02}")).collect();
    assert_eq!(keys, expected);

    // Range with inclusive/exclusive bounds, keys only.
    let page = c
        .scan(
            &Scan::range(
                Bound::Excluded("user:03".into()),
                Bound::Included("user:06".into()),
            )
            .keys_only(true),
        )
        .await
        .unwrap();
    let keys: Vec<&[u8]> = page.entries.iter().map(|e| &e.key[..]).collect();
    assert_eq!(keys, [b"user:04", b"user:05", b"user:06"]);
    assert!(
        page.entries
            .iter()
            .all(|e| e.value.is_empty() && e.version > 0)
    );
    assert_eq!(page.resume_after, None);

    // Whole keyspace; limit above the maximum is refused.
    assert_eq!(
        c.scan(&Scan::all().limit(1000))
            .await
            .unwrap()
            .entries
            .len(),
        26
    );
    assert!(matches!(
        c.scan(&Scan::all().limit(10_001)).await,
        Err(Error::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn batches_are_atomic_and_bounded() {
    let node = Node::start();
    let c = client(&node);
    c.put("{b}gone", "x").await.unwrap();
    let version = c
        .batch(vec![
            BatchOp::Put {
                key: "{b}1".into(),
                value: "1".into(),
                ttl: None,
            },
            BatchOp::Put {
                key: "{b}2".into(),
                value: "2".into(),
                ttl: Some(Duration::from_secs(60)),
            },
            BatchOp::Delete {
                key: "{b}gone".into(),
            },
        ])
        .await
        .unwrap();
    let b1 = c.get("{b}1").await.unwrap().unwrap();
    let b2 = c.get("{b}2").await.unwrap().unwrap();
    assert_eq!((b1.value.as_ref(), b1.version), (b"1".as_ref(), version));
    assert_eq!(b2.version, version);
    assert!(b2.ttl_ms.is_some());
    assert_eq!(c.get("{b}gone").await.unwrap(), None);

    // A batch with one bad operation writes nothing.
    let e = c
        .batch(vec![
            BatchOp::Put {
                key: "{b}3".into(),
                value: "3".into(),
                ttl: None,
            },
            BatchOp::Put {
                // One byte over the 64 KiB key limit.
                key: Bytes::from(vec![b'k'; 64 * 1024 + 1]),
                value: "key too large".into(),
                ttl: None,
            },
        ])
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    assert_eq!(c.get("{b}3").await.unwrap(), None);

    // A batch whose keys span slots and shards is one transaction: applied whole.
    c.batch(vec![
        BatchOp::Put {
            key: "{b}4".into(),
            value: "4".into(),
            ttl: None,
        },
        BatchOp::Put {
            key: "{other}4".into(),
            value: "4".into(),
            ttl: None,
        },
    ])
    .await
    .unwrap();
    assert_eq!(c.get("{b}4").await.unwrap().unwrap().value, "4");
    assert_eq!(c.get("{other}4").await.unwrap().unwrap().value, "4");

    // Empty and oversized batches are refused.
    assert!(matches!(
        c.batch(vec![]).await,
        Err(Error::InvalidArgument(_))
    ));
    let many = (0..1001)
        .map(|i| BatchOp::Delete {
            key: format!("k{i}").into(),
        })
        .collect();
    assert!(matches!(
        c.batch(many).await,
        Err(Error::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn limits_are_invalid_argument_and_the_node_lives_on() {
    let node = Node::start_with(&["--value-bytes-max", "1024"]);
    let c = client(&node);
    c.put("ok", vec![1u8; 1024]).await.unwrap();
    assert!(matches!(
        c.put("big", vec![1u8; 1025]).await,
        Err(Error::InvalidArgument(_))
    ));
    // Far above the limit: refused by the transport's message cap, same error kind.
    assert!(matches!(
        c.put("huge", vec![1u8; 2 << 20]).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        c.put(vec![b'k'; 64 * 1024 + 1], "v").await,
        Err(Error::InvalidArgument(_))
    ));
    // The empty key is a key, as in Redis.
    c.put("", "v").await.unwrap();
    assert_eq!(c.get("").await.unwrap().map(|e| e.value), Some("v".into()));
    assert_eq!(c.get("ok").await.unwrap().unwrap().value.len(), 1024);
    assert_eq!(c.get("big").await.unwrap(), None);
}

#[tokio::test]
async fn cluster_status_and_health_service() {
    let node = Node::start();
    let c = client(&node);
    let status = c.status().await.unwrap();
    assert_eq!(status.nodes.len(), 1);
    let me = &status.nodes[0];
    assert_eq!(me.id, status.node_id);
    assert_eq!(me.grpc_addr, node.grpc_addr.to_string());
    assert_eq!(me.state, cairn_client::proto::NodeState::Up as i32);
    assert_eq!(status.shards.len(), 4, "the default shard count");
    let slots: u32 = status
        .shards
        .iter()
        .flat_map(|s| &s.slots)
        .map(|r| r.end - r.start + 1)
        .sum();
    assert_eq!(slots, 16384);
    assert!(
        status
            .shards
            .iter()
            .all(|s| s.leader.as_deref() == Some(me.id.as_str()))
    );

    // Every RPC is counted under the gRPC front end.
    let metrics = http_get_text(node.http_addr, "/metrics");
    assert!(
        metrics.contains(r#"cairn_requests_total{frontend="grpc",command="status"}"#),
        "{metrics}"
    );

    // grpc.health.v1: overall and per service.
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let channel = tonic::transport::Endpoint::from_shared(node.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "cairn.v1.Kv", "cairn.v1.Cluster"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
}

#[tokio::test]
async fn unreachable_node_is_unavailable_after_bounded_retries() {
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let config = ClientConfig {
        retries_max: 2,
        retry_backoff: Duration::from_millis(1),
        ..ClientConfig::default()
    };
    let c = Client::with_config(&endpoint, config).unwrap();
    assert!(matches!(c.get("k").await, Err(Error::Unavailable(_))));
    assert!(matches!(
        Client::new("not a uri"),
        Err(Error::InvalidEndpoint { .. })
    ));
}

/// A minimal HTTP GET returning the body as text.
fn http_get_text(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test]
async fn scan_pages_of_large_values_are_cut_to_the_byte_budget() {
    let node = Node::start();
    let c = client(&node);
    let big = Bytes::from(vec![7u8; 15 * 1024 * 1024]);
    for k in ["big:1", "big:2", "big:3"] {
        c.put(k, big.clone()).await.unwrap();
    }
    // 32 MiB per page: two 15 MiB values fit, the third goes to the next page.
    let page = c.scan(&Scan::prefix("big:")).await.unwrap();
    assert_eq!(page.entries.len(), 2);
    assert_eq!(page.resume_after.as_deref(), Some(&b"big:2"[..]));
    let page = c
        .scan(&Scan::prefix("big:").after(page.resume_after))
        .await
        .unwrap();
    assert_eq!(page.entries.len(), 1);
    assert_eq!(page.entries[0].value, big);
    assert_eq!(page.resume_after, None);
}

/// `n` keys, each in a different quarter of the slot space, so each lives on a different
/// shard of a 4-shard node.
fn keys_on_different_shards(prefix: &str, n: usize) -> Vec<Bytes> {
    let mut out: Vec<Bytes> = Vec::new();
    let mut quarters = std::collections::HashSet::new();
    for i in 0.. {
        let key = format!("{prefix}-{i}");
        if quarters.insert(cairn_server::slot::key_slot(key.as_bytes()) / 4096) {
            out.push(Bytes::from(key));
            if out.len() == n {
                return out;
            }
        }
    }
    unreachable!()
}

fn txn_get(key: &Bytes) -> cairn_client::proto::TxnOp {
    use cairn_client::proto::{GetRequest, TxnOp, txn_op::Op};
    TxnOp {
        op: Some(Op::Get(GetRequest {
            key: key.clone(),
            consistency: 0,
        })),
    }
}

fn txn_put(key: &Bytes, value: String) -> cairn_client::proto::TxnOp {
    use cairn_client::proto::{PutRequest, TxnOp, txn_op::Op};
    TxnOp {
        op: Some(Op::Put(PutRequest {
            key: key.clone(),
            value: Bytes::from(value),
            expiry: None,
            condition: None,
        })),
    }
}

/// (value as a number, version) of every get of a transaction's answer.
fn balances(r: &cairn_client::proto::TxnResponse) -> Vec<(i64, u64)> {
    use cairn_client::proto::txn_op_result::Result as R;
    r.responses
        .iter()
        .map(|op| match &op.result {
            Some(R::Get(g)) => {
                let e = g.entry.as_ref().expect("every account exists");
                (
                    std::str::from_utf8(&e.value).unwrap().parse().unwrap(),
                    e.version,
                )
            }
            other => panic!("not a get: {other:?}"),
        })
        .collect()
}

/// A bank: transfers between accounts on different shards, each a read and then a
/// transaction that commits only if neither account changed since (version compares), while
/// readers read every account in one transaction: every reader, and the end, sees the same
/// total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_transfers_across_shards_keep_the_total() {
    use cairn_client::proto::{Compare, CompareResult, TxnRequest, compare::Target};
    let node = Node::start();
    let c = client(&node);
    let accounts = keys_on_different_shards("acct", 4);
    for a in &accounts {
        c.put(a.clone(), "100").await.unwrap();
    }
    let read_all = TxnRequest {
        compare: vec![],
        success: accounts.iter().map(txn_get).collect(),
        failure: vec![],
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..3usize {
        let (c, accounts) = (client(&node), accounts.clone());
        workers.push(tokio::spawn(async move {
            let (mut done, mut conflicts) = (0, 0);
            for i in 0..30usize {
                let (from, to) = (&accounts[(w + i) % 4], &accounts[(w + i + 1 + w) % 4]);
                if from == to {
                    continue;
                }
                loop {
                    let read = TxnRequest {
                        compare: vec![],
                        success: vec![txn_get(from), txn_get(to)],
                        failure: vec![],
                    };
                    let b = balances(&c.txn(read).await.unwrap());
                    let version = |key: &Bytes, v: u64| Compare {
                        key: key.clone(),
                        result: CompareResult::Equal as i32,
                        target: Some(Target::Version(v)),
                    };
                    let amount = 1 + (i as i64 % 7);
                    let transfer = TxnRequest {
                        compare: vec![version(from, b[0].1), version(to, b[1].1)],
                        success: vec![
                            txn_put(from, (b[0].0 - amount).to_string()),
                            txn_put(to, (b[1].0 + amount).to_string()),
                        ],
                        failure: vec![],
                    };
                    if c.txn(transfer).await.unwrap().succeeded {
                        done += 1;
                        break;
                    }
                    conflicts += 1;
                }
            }
            (done, conflicts)
        }));
    }
    let mut readers = Vec::new();
    for _ in 0..2 {
        let (c, read_all, stop) = (client(&node), read_all.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let all = balances(&c.txn(read_all.clone()).await.unwrap());
                let total: i64 = all.iter().map(|(b, _)| b).sum();
                assert_eq!(total, 400, "a reader saw a partial transfer: {all:?}");
                reads += 1;
            }
            reads
        }));
    }
    let mut transfers = 0;
    for w in workers {
        let (done, _conflicts) = w.await.unwrap();
        transfers += done;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.await.unwrap() > 0);
    }
    assert!(transfers >= 60, "only {transfers} transfers");
    let end = balances(&c.txn(read_all).await.unwrap());
    assert_eq!(end.iter().map(|(b, _)| b).sum::<i64>(), 400, "{end:?}");
    assert!(end.iter().any(|(b, _)| *b != 100), "money moved: {end:?}");
}
