//! `cairn.v1.Kv`: each RPC decodes into one [`Command`], runs it through [`super::execute`] and
//! encodes the reply. Limits specific to this API (scan page size, batch length) are checked
//! here, before the command reaches the node.

use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use cairn_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{execute, observed, unexpected};
use crate::command::{self, Command, Condition, ExpireCondition, Expiry, KeyRange};
use crate::node::Node;
use crate::reply::{Entry, KeyTtl, Reply};

/// Entries a scan returns when the request leaves `limit` at 0.
pub const SCAN_LIMIT_DEFAULT: usize = 100;
/// Largest `limit` a scan accepts: the executor's own cap on one range scan.
pub const SCAN_LIMIT_MAX: usize = crate::node::SCAN_RANGE_LIMIT_MAX;
/// Most key and value bytes in one scan page: below the client's 64 MiB message cap, so a page
/// of large values is cut short (with a resume cursor) instead of failing to decode.
pub const SCAN_PAGE_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Most operations in one batch.
pub const BATCH_OPS_MAX: usize = 1_000;

/// The `Kv` service over one node.
#[derive(Debug)]
pub(super) struct KvService {
    node: Arc<Node>,
}

impl KvService {
    pub(super) fn new(node: Arc<Node>) -> Self {
        KvService { node }
    }
}

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        observed("get", async move {
            let request = request.into_inner();
            let stale = request.consistency() == pb::Consistency::Stale;
            let key = request.key.clone();
            let (watch_token, reply) = self
                .node
                .read_after_token(
                    Some(&key),
                    self.node
                        .execute_with(Command::Get { key: request.key }, stale),
                )
                .await;
            let reply = reply.map_err(super::status_of)?;
            match reply {
                Reply::Entry(Some(entry)) => Ok(Response::new(pb::GetResponse {
                    ttl_ms: entry
                        .expires_at_ms
                        .map(|at| ttl_from_now(at, self.node.now_ms())),
                    value: entry.value,
                    version: entry.version,
                    expires_at_ms: entry.expires_at_ms,
                    watch_token,
                })),
                Reply::Entry(None) => {
                    let mut status = Status::not_found("record not found");
                    if let Ok(token) = watch_token.parse() {
                        status.metadata_mut().insert("x-cairn-watch-token", token);
                    }
                    Err(status)
                }
                other => Err(unexpected(&other)),
            }
        })
        .await
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        observed("put", async move {
            let (command, condition) = put_command(request.into_inner())?;
            match execute(&self.node, command).await? {
                Reply::Set(outcome) => match outcome.version {
                    Some(version) => Ok(Response::new(pb::PutResponse { version })),
                    None => Err(condition_failed(condition, outcome.old.as_ref())),
                },
                other => Err(unexpected(&other)),
            }
        })
        .await
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        observed("delete", async move {
            let key = request.into_inner().key;
            match execute(&self.node, Command::Del { keys: vec![key] }).await? {
                Reply::Int(n) => Ok(Response::new(pb::DeleteResponse { deleted: n > 0 })),
                other => Err(unexpected(&other)),
            }
        })
        .await
    }

    async fn scan(
        &self,
        request: Request<pb::ScanRequest>,
    ) -> Result<Response<pb::ScanResponse>, Status> {
        observed("scan", async move {
            let req = request.into_inner();
            let limit = scan_limit(req.limit)?;
            let mut range = match req.selector {
                None => KeyRange::all(),
                Some(pb::scan_request::Selector::Prefix(prefix)) => KeyRange::prefix(prefix),
                Some(pb::scan_request::Selector::Range(r)) => range_of(r),
            };
            if let Some(after) = req.after {
                range = resume_after(range, after);
            }
            let command = Command::ScanRange {
                range,
                limit,
                keys_only: req.keys_only,
            };
            let (watch_token, reply) = self
                .node
                .read_after_token(None, execute(&self.node, command))
                .await;
            match reply? {
                Reply::Entries { mut entries, more } => {
                    let more = fit_page(&mut entries, more, SCAN_PAGE_BYTES_MAX);
                    let resume_after = if more {
                        entries.last().map(|e| e.key.clone())
                    } else {
                        None
                    };
                    Ok(Response::new(pb::ScanResponse {
                        entries: entries.into_iter().map(entry_to_pb).collect(),
                        resume_after,
                        watch_token,
                    }))
                }
                other => Err(unexpected(&other)),
            }
        })
        .await
    }

    async fn expire(
        &self,
        request: Request<pb::ExpireRequest>,
    ) -> Result<Response<pb::ExpireResponse>, Status> {
        observed("expire", async move {
            use pb::expire_request::Expiry as E;
            let req = request.into_inner();
            let expiry = match req.expiry {
                None => {
                    return Err(Status::invalid_argument(
                        "one of ttl_ms, expires_at_ms, persist is required",
                    ));
                }
                Some(E::Persist(false)) => {
                    return Err(Status::invalid_argument("persist must be true when set"));
                }
                Some(E::Persist(true)) => return self.persist(req.key).await,
                Some(E::TtlMs(ms)) => Expiry::InMs(to_i64(ms, "ttl_ms")?),
                Some(E::ExpiresAtMs(at)) => Expiry::AtMs(to_i64(at, "expires_at_ms")?),
            };
            let command = Command::Expire {
                key: req.key,
                expiry,
                condition: ExpireCondition::Always,
            };
            match execute(&self.node, command).await? {
                Reply::Bool(true) => Ok(Response::new(pb::ExpireResponse {})),
                Reply::Bool(false) => Err(Status::not_found("record not found")),
                other => Err(unexpected(&other)),
            }
        })
        .await
    }

    async fn ttl(
        &self,
        request: Request<pb::TtlRequest>,
    ) -> Result<Response<pb::TtlResponse>, Status> {
        observed("ttl", async move {
            let key = request.into_inner().key;
            match execute(&self.node, Command::Ttl { key }).await? {
                Reply::Ttl(KeyTtl::Missing) => Err(Status::not_found("record not found")),
                Reply::Ttl(KeyTtl::Persistent) => Ok(Response::new(pb::TtlResponse {
                    ttl_ms: None,
                    expires_at_ms: None,
                })),
                Reply::Ttl(KeyTtl::ExpiresAtMs(at)) => Ok(Response::new(pb::TtlResponse {
                    ttl_ms: Some(ttl_from_now(at, self.node.now_ms())),
                    expires_at_ms: Some(at),
                })),
                other => Err(unexpected(&other)),
            }
        })
        .await
    }

    async fn batch(
        &self,
        request: Request<pb::BatchRequest>,
    ) -> Result<Response<pb::BatchResponse>, Status> {
        observed("batch", async move {
            use pb::batch_op::Op;
            let req = request.into_inner();
            if req.ops.is_empty() {
                return Err(Status::invalid_argument(
                    "a batch needs at least one operation",
                ));
            }
            if req.ops.len() > BATCH_OPS_MAX {
                return Err(Status::invalid_argument(format!(
                    "batch has {} operations; the limit is {BATCH_OPS_MAX}",
                    req.ops.len()
                )));
            }
            let mut ops = Vec::with_capacity(req.ops.len());
            for op in req.ops {
                ops.push(match op.op {
                    Some(Op::Put(p)) => {
                        let expiry = match p.ttl_ms {
                            None => Expiry::Never,
                            Some(0) => return Err(Status::invalid_argument("ttl_ms must be > 0")),
                            Some(ms) => Expiry::InMs(to_i64(ms, "ttl_ms")?),
                        };
                        command::BatchOp::Put {
                            key: p.key,
                            value: p.value,
                            expiry,
                        }
                    }
                    Some(Op::Delete(d)) => command::BatchOp::Delete { key: d.key },
                    None => {
                        return Err(Status::invalid_argument(
                            "batch operation without put or delete",
                        ));
                    }
                });
            }
            match execute(&self.node, Command::Batch { ops }).await? {
                Reply::Batch { version } => Ok(Response::new(pb::BatchResponse { version })),
                other => Err(unexpected(&other)),
            }
        })
        .await
    }

    type WatchStream = super::watch::WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        observed("watch", async move {
            super::watch::start(&self.node, request.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        observed("txn", async move {
            self.run_txn(request.into_inner()).await.map(Response::new)
        })
        .await
    }
}

impl KvService {
    async fn run_txn(&self, req: pb::TxnRequest) -> Result<pb::TxnResponse, Status> {
        let compares = req
            .compare
            .into_iter()
            .map(compare_of)
            .collect::<Result<Vec<_>, Status>>()?;
        let (then, then_kinds) = txn_ops(req.success)?;
        let (otherwise, otherwise_kinds) = txn_ops(req.failure)?;
        let command = Command::Exec {
            compares,
            then,
            otherwise,
        };
        let (succeeded, replies) = match execute(&self.node, command).await? {
            Reply::Exec { succeeded, replies } => (succeeded, replies),
            other => return Err(unexpected(&other)),
        };
        let kinds = if succeeded {
            then_kinds
        } else {
            otherwise_kinds
        };
        let mut responses = Vec::with_capacity(replies.len());
        for (kind, reply) in kinds.into_iter().zip(replies) {
            use pb::txn_op_result::Result as R;
            let result = match (kind, reply.map_err(super::status_of)?) {
                (OpKind::Get, Reply::Entry(entry)) => R::Get(pb::TxnGetResult {
                    found: entry.is_some(),
                    entry: entry.map(entry_to_pb),
                }),
                (OpKind::Put, Reply::Set(outcome)) => R::Put(pb::TxnPutResult {
                    written: outcome.version.is_some(),
                    version: outcome.version.unwrap_or(0),
                }),
                (OpKind::Delete, Reply::Int(n)) => R::Delete(pb::DeleteResponse { deleted: n > 0 }),
                (_, other) => return Err(unexpected(&other)),
            };
            responses.push(pb::TxnOpResult {
                result: Some(result),
            });
        }
        Ok(pb::TxnResponse {
            succeeded,
            responses,
        })
    }

    /// `Expire` with `persist`: clear the expiry; NOT_FOUND only when the key is missing.
    async fn persist(&self, key: Bytes) -> Result<Response<pb::ExpireResponse>, Status> {
        match execute(&self.node, Command::Persist { key: key.clone() }).await? {
            Reply::Bool(true) => return Ok(Response::new(pb::ExpireResponse {})),
            Reply::Bool(false) => {}
            other => return Err(unexpected(&other)),
        }
        // `false` means "missing or had no expiry": only the first is an error.
        match execute(&self.node, Command::Ttl { key }).await? {
            Reply::Ttl(KeyTtl::Missing) => Err(Status::not_found("record not found")),
            Reply::Ttl(_) => Ok(Response::new(pb::ExpireResponse {})),
            other => Err(unexpected(&other)),
        }
    }
}

/// What kind of op a transaction's reply answers.
#[derive(Debug, Clone, Copy)]
enum OpKind {
    Get,
    Put,
    Delete,
}

/// The commands of a transaction branch, and what each is.
fn txn_ops(ops: Vec<pb::TxnOp>) -> Result<(Vec<Command>, Vec<OpKind>), Status> {
    use pb::txn_op::Op;
    let mut commands = Vec::with_capacity(ops.len());
    let mut kinds = Vec::with_capacity(ops.len());
    for op in ops {
        let (command, kind) = match op.op {
            Some(Op::Get(get)) => (Command::Get { key: get.key }, OpKind::Get),
            Some(Op::Put(put)) => (put_command(put)?.0, OpKind::Put),
            Some(Op::Delete(delete)) => (
                Command::Del {
                    keys: vec![delete.key],
                },
                OpKind::Delete,
            ),
            None => {
                return Err(Status::invalid_argument(
                    "transaction op without get, put or delete",
                ));
            }
        };
        commands.push(command);
        kinds.push(kind);
    }
    Ok((commands, kinds))
}

/// A transaction compare clause.
fn compare_of(compare: pb::Compare) -> Result<command::Compare, Status> {
    use pb::compare::Target;
    let cmp = match compare.result() {
        pb::CompareResult::Equal => command::CmpOp::Equal,
        pb::CompareResult::NotEqual => command::CmpOp::NotEqual,
        pb::CompareResult::Greater => command::CmpOp::Greater,
        pb::CompareResult::Less => command::CmpOp::Less,
    };
    let key = compare.key;
    Ok(match compare.target {
        Some(Target::Version(version)) => command::Compare::Version { key, cmp, version },
        Some(Target::Value(value)) => command::Compare::Value { key, cmp, value },
        Some(Target::Exists(exists)) => match cmp {
            command::CmpOp::Equal => command::Compare::Exists { key, exists },
            command::CmpOp::NotEqual => command::Compare::Exists {
                key,
                exists: !exists,
            },
            _ => {
                return Err(Status::invalid_argument(
                    "an exists compare takes EQUAL or NOT_EQUAL",
                ));
            }
        },
        None => {
            return Err(Status::invalid_argument(
                "a compare needs a version, value or exists target",
            ));
        }
    })
}

/// The `Set` a put request asks for, and its condition.
fn put_command(req: pb::PutRequest) -> Result<(Command, Condition), Status> {
    use pb::put_request::{Condition as C, Expiry as E};
    let expiry = match req.expiry {
        None => Expiry::Never,
        Some(E::TtlMs(0)) => return Err(Status::invalid_argument("ttl_ms must be > 0")),
        Some(E::TtlMs(ms)) => Expiry::InMs(to_i64(ms, "ttl_ms")?),
        Some(E::ExpiresAtMs(at)) => Expiry::AtMs(to_i64(at, "expires_at_ms")?),
    };
    let condition = match req.condition {
        None => Condition::Always,
        Some(C::IfAbsent(true)) => Condition::IfAbsent,
        Some(C::IfPresent(true)) => Condition::IfPresent,
        Some(C::IfAbsent(false) | C::IfPresent(false)) => {
            return Err(Status::invalid_argument(
                "if_absent/if_present must be true when set",
            ));
        }
        Some(C::IfVersion(v)) => Condition::IfVersion(v),
    };
    let command = Command::Set {
        key: req.key,
        value: req.value,
        expiry,
        condition,
        return_old: false,
    };
    Ok((command, condition))
}

/// The FAILED_PRECONDITION status of a put whose condition did not hold.
fn condition_failed(condition: Condition, old: Option<&Entry>) -> Status {
    let message = match (condition, old) {
        (Condition::IfAbsent, _) => "condition failed: key exists".to_string(),
        (Condition::IfPresent, _) => "condition failed: key does not exist".to_string(),
        (Condition::IfVersion(want), Some(e)) => {
            format!(
                "condition failed: version is {}, expected {want}",
                e.version
            )
        }
        (Condition::IfVersion(want), None) => {
            format!("condition failed: key does not exist, expected version {want}")
        }
        (Condition::Always, _) => "condition failed".to_string(),
    };
    Status::failed_precondition(message)
}

/// Validate a requested scan limit (0 = default).
fn scan_limit(limit: u32) -> Result<usize, Status> {
    match usize::try_from(limit).unwrap_or(usize::MAX) {
        0 => Ok(SCAN_LIMIT_DEFAULT),
        n if n > SCAN_LIMIT_MAX => Err(Status::invalid_argument(format!(
            "scan limit {n} is above the maximum {SCAN_LIMIT_MAX}"
        ))),
        n => Ok(n),
    }
}

/// The command range of a protobuf range (an empty end = unbounded).
pub(super) fn range_of(r: pb::KeyRange) -> KeyRange {
    let start = if r.start_exclusive {
        Bound::Excluded(r.start)
    } else {
        Bound::Included(r.start)
    };
    let end = match (r.end.is_empty(), r.end_inclusive) {
        (true, _) => Bound::Unbounded,
        (false, true) => Bound::Included(r.end),
        (false, false) => Bound::Excluded(r.end),
    };
    KeyRange { start, end }
}

/// Cut a scan page to at most `bytes_max` key and value bytes (always keeping the first entry,
/// so paging makes progress); returns whether more entries may follow.
pub(crate) fn fit_page(entries: &mut Vec<Entry>, more: bool, bytes_max: usize) -> bool {
    let mut bytes = 0usize;
    let keep = entries
        .iter()
        .position(|e| {
            bytes = bytes.saturating_add(e.key.len() + e.value.len());
            bytes > bytes_max
        })
        .map_or(entries.len(), |over| over.max(1));
    let cut = keep < entries.len();
    entries.truncate(keep);
    more || cut
}

/// Narrow `range` to keys strictly after the resume cursor `after`.
pub(crate) fn resume_after(range: KeyRange, after: Bytes) -> KeyRange {
    let cursor_is_later = match &range.start {
        Bound::Unbounded => true,
        Bound::Included(s) => after >= *s,
        Bound::Excluded(s) => after > *s,
    };
    if cursor_is_later {
        KeyRange {
            start: Bound::Excluded(after),
            end: range.end,
        }
    } else {
        range
    }
}

fn entry_to_pb(e: Entry) -> pb::Entry {
    pb::Entry {
        key: e.key,
        value: e.value,
        version: e.version,
        expires_at_ms: e.expires_at_ms,
    }
}

/// Milliseconds from `now_ms` until `expires_at_ms` (0 when already past).
pub(crate) fn ttl_from_now(expires_at_ms: u64, now_ms: u64) -> u64 {
    expires_at_ms.saturating_sub(now_ms)
}

fn to_i64(v: u64, field: &str) -> Result<i64, Status> {
    i64::try_from(v).map_err(|_| Status::invalid_argument(format!("{field} is out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_cursor_narrows_only_forward() {
        let r = resume_after(
            KeyRange::prefix(Bytes::from_static(b"a")),
            Bytes::from_static(b"ab"),
        );
        assert_eq!(r.start, Bound::Excluded(Bytes::from_static(b"ab")));
        assert_eq!(r.end, Bound::Excluded(Bytes::from_static(b"b")));
        let r = KeyRange {
            start: Bound::Included(Bytes::from_static(b"m")),
            end: Bound::Unbounded,
        };
        assert_eq!(resume_after(r.clone(), Bytes::from_static(b"a")), r);
    }

    #[test]
    fn pages_are_cut_to_the_byte_budget_but_never_empty() {
        let entry = |k: &'static [u8], v: usize| Entry {
            key: Bytes::from_static(k),
            value: Bytes::from(vec![0u8; v]),
            version: 1,
            expires_at_ms: None,
        };
        let mut page = vec![entry(b"a", 9), entry(b"b", 9), entry(b"c", 9)];
        assert!(fit_page(&mut page, false, 20));
        assert_eq!(page.len(), 2);
        let mut page = vec![entry(b"a", 100), entry(b"b", 1)];
        assert!(fit_page(&mut page, false, 20));
        assert_eq!(page.len(), 1);
        let mut page = vec![entry(b"a", 1)];
        assert!(!fit_page(&mut page, false, 20));
        assert!(fit_page(&mut page, true, 20));
    }

    #[test]
    fn scan_limit_defaults_and_caps() {
        assert_eq!(scan_limit(0).unwrap(), SCAN_LIMIT_DEFAULT);
        assert_eq!(scan_limit(5).unwrap(), 5);
        assert!(scan_limit(SCAN_LIMIT_MAX as u32 + 1).is_err());
    }
}
