//! `cairn cluster status`: the cluster map as the contacted node sees it; `cairn cluster
//! remove-node`: drains a node and waits (with a progress bar) until the cluster dropped it;
//! `cairn cluster split`: splits a shard.

use cairn_client::proto::{NodeState, ShardInfo, StatusResponse};
use clap::Subcommand;
use serde_json::json;

use super::Connection;
use super::output::print_json;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Nodes with their addresses and state; shards with slot ranges, leader, Raft term,
    /// commit and applied index, lag and replicas
    Status,
    /// Drain a node and remove it from the cluster: its shard leaderships and votes move to
    /// other nodes, then the cluster map drops it and the node stops itself. Refused when
    /// fewer serving nodes than replicas per shard would remain
    RemoveNode {
        /// The node's id (40 hex characters, as `cairn cluster status` lists it)
        id: String,
        /// Return once the node is leaving, without waiting until it is gone
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this many seconds
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// Split a shard in two: the top of its slot range goes to a new shard, with every key,
    /// version and deadline; the new shard's group starts on the same nodes, and the
    /// balancer then spreads it like any other. Waits until the shard's leader applied it
    Split {
        /// The shard's id (as `cairn cluster status` lists it)
        shard: u32,
        /// The new shard's first slot (default: the slot that splits the shard's keys in
        /// halves)
        #[arg(long, value_name = "SLOT")]
        at: Option<u16>,
        /// Give up waiting after this many seconds
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
}

pub async fn run(command: ClusterCommand, connection: Connection) -> anyhow::Result<u8> {
    match command {
        ClusterCommand::Status => {
            let mut status = connection.client()?.status().await?;
            gather_moves(&mut status, connection.timeout_ms).await;
            if connection.json {
                print_json(&to_json(&status));
            } else {
                print!("{}", render(&status));
            }
        }
        ClusterCommand::RemoveNode {
            id,
            no_wait,
            timeout_secs,
        } => {
            let client = connection.client()?;
            client.remove_node(&id).await?;
            if no_wait {
                eprintln!("node {id} is leaving the cluster");
                return Ok(0);
            }
            wait_gone(&client, &id, std::time::Duration::from_secs(timeout_secs)).await?;
            eprintln!("node {id} was removed from the cluster");
        }
        ClusterCommand::Split {
            shard,
            at,
            timeout_secs,
        } => {
            let client = connection.client_with(|c| {
                c.request_timeout = std::time::Duration::from_secs(timeout_secs);
            })?;
            let started = std::time::Instant::now();
            let (child, first_slot) = client.split_shard(shard, at).await?;
            if connection.json {
                print_json(&json!({
                    "shard": shard,
                    "child": child,
                    "first_slot": first_slot,
                    "elapsed_ms": started.elapsed().as_millis() as u64,
                }));
            } else {
                eprintln!(
                    "shard {shard} split in {:.1?}: slots from {first_slot} went to the new shard {child}",
                    started.elapsed()
                );
            }
        }
    }
    Ok(0)
}

/// Adds to `status` the moves every other node reports (each node lists the copies it
/// sends); a node that does not answer within `timeout_ms` is left out.
pub(crate) async fn gather_moves(status: &mut StatusResponse, timeout_ms: u64) {
    let others: Vec<String> = status
        .nodes
        .iter()
        .filter(|n| n.id != status.node_id && n.state() != NodeState::Down)
        .map(|n| format!("http://{}", n.grpc_addr))
        .collect();
    for endpoint in others {
        let config = cairn_client::ClientConfig {
            request_timeout: std::time::Duration::from_millis(timeout_ms),
            retries_max: 0,
            ..cairn_client::ClientConfig::default()
        };
        let Ok(client) = cairn_client::Client::with_config(&endpoint, config) else {
            continue;
        };
        if let Ok(theirs) = client.status().await {
            status.moves.extend(theirs.moves);
        }
    }
}

/// Votes and leaderships node `id` still holds (shards and the metadata group), as `status`
/// shows them; `None` once the map no longer lists it.
fn held_by(status: &StatusResponse, id: &str) -> Option<u64> {
    status.nodes.iter().find(|n| n.id == id)?;
    let held = status
        .shards
        .iter()
        .chain(&status.metadata)
        .map(|sh| {
            let votes = sh.replicas.iter().any(|r| r == id) && !sh.learners.iter().any(|l| l == id);
            u64::from(votes) + u64::from(sh.leader.as_deref() == Some(id))
        })
        .sum();
    Some(held)
}

/// Polls the cluster until node `id` is gone, showing how much of what it held has moved.
pub(crate) async fn wait_gone(
    client: &cairn_client::Client,
    id: &str,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    let first = held_by(&client.status().await?, id).unwrap_or(0);
    let bar = indicatif::ProgressBar::new(first.max(1));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} draining {msg} [{bar:30}] {pos}/{len} votes and leaderships moved ({elapsed})",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(id.chars().take(8).collect::<String>());
    loop {
        match client.status().await.map(|s| held_by(&s, id)) {
            Ok(None) => {
                bar.set_position(bar.length().unwrap_or(0));
                bar.finish();
                return Ok(());
            }
            Ok(Some(held)) => bar.set_position(first.saturating_sub(held)),
            // The node answering may be the one leaving, and it may stop: ask again.
            Err(e) => bar.set_message(format!(
                "{} (status: {e})",
                id.chars().take(8).collect::<String>()
            )),
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "node {id} is still in the cluster after {timeout:?} (it keeps leaving; see \
             `cairn cluster status`)"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

fn state_name(state: i32) -> &'static str {
    match NodeState::try_from(state).unwrap_or(NodeState::Unspecified) {
        NodeState::Unspecified => "unknown",
        NodeState::Joining => "joining",
        NodeState::Up => "up",
        NodeState::Down => "down",
        NodeState::Leaving => "leaving",
    }
}

/// The same shape as the HTTP `GET /v1/cluster` body.
pub fn to_json(s: &StatusResponse) -> serde_json::Value {
    json!({
        "node_id": s.node_id,
        "nodes": s.nodes.iter().map(|n| json!({
            "id": n.id, "grpc_addr": n.grpc_addr, "http_addr": n.http_addr,
            "resp_addr": n.resp_addr, "state": state_name(n.state),
        })).collect::<Vec<_>>(),
        "shards": s.shards.iter().map(shard_json).collect::<Vec<_>>(),
        "metadata": s.metadata.as_ref().map(shard_json),
        "moves": s.moves.iter().map(|m| json!({
            "shard": m.shard, "from": m.from, "to": m.to, "sent_bytes": m.sent_bytes,
            "total_bytes": m.total_bytes, "elapsed_ms": m.elapsed_ms,
        })).collect::<Vec<_>>(),
    })
}

fn shard_json(sh: &ShardInfo) -> serde_json::Value {
    json!({
        "id": sh.id,
        "slots": sh.slots.iter().map(|r| json!({"start": r.start, "end": r.end})).collect::<Vec<_>>(),
        "replicas": sh.replicas,
        "learners": sh.learners,
        "leader": sh.leader,
        "term": sh.term,
        "last_log_index": sh.last_log_index,
        "commit_index": sh.commit_index,
        "applied_index": sh.applied_index,
    })
}

/// Human tables of nodes and shards.
pub fn render(s: &StatusResponse) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {} ({} nodes, {} shards)",
        s.node_id,
        s.nodes.len(),
        s.shards.len()
    );
    let _ = writeln!(
        out,
        "\nNODE{:38} STATE    GRPC                  HTTP                  RESP",
        ""
    );
    for n in &s.nodes {
        let _ = writeln!(
            out,
            "{:<42} {:<8} {:<21} {:<21} {}",
            n.id,
            state_name(n.state),
            n.grpc_addr,
            n.http_addr,
            n.resp_addr
        );
    }
    let _ = writeln!(
        out,
        "\nSHARD  SLOTS          LEADER    TERM   COMMIT     APPLIED    LAG  VOTERS (learners)"
    );
    let short = |id: &str| id.chars().take(8).collect::<String>();
    let row = |out: &mut String, name: String, slots: String, sh: &ShardInfo| {
        let voters: Vec<String> = sh
            .replicas
            .iter()
            .filter(|r| !sh.learners.contains(r))
            .map(|r| short(r))
            .collect();
        let learners: Vec<String> = sh.learners.iter().map(|r| short(r)).collect();
        let learners = if learners.is_empty() {
            String::new()
        } else {
            format!(" ({})", learners.join(","))
        };
        let _ = writeln!(
            out,
            "{:<6} {:<14} {:<9} {:<6} {:<10} {:<10} {:<4} {}{}",
            name,
            slots,
            sh.leader.as_deref().map_or("-".to_string(), short),
            sh.term,
            sh.commit_index,
            sh.applied_index,
            sh.commit_index.saturating_sub(sh.applied_index),
            voters.join(","),
            learners
        );
    };
    for sh in &s.shards {
        let slots: Vec<String> = sh
            .slots
            .iter()
            .map(|r| format!("{}-{}", r.start, r.end))
            .collect();
        row(&mut out, sh.id.to_string(), slots.join(","), sh);
    }
    if let Some(meta) = &s.metadata {
        row(&mut out, "meta".into(), "(cluster map)".into(), meta);
    }
    if !s.moves.is_empty() {
        let _ = writeln!(out, "\nMOVES (replicas being copied)");
        for m in &s.moves {
            let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
            let rate = mb(m.sent_bytes) / (m.elapsed_ms.max(1) as f64 / 1000.0);
            let _ = writeln!(
                out,
                "{:<6} {} -> {}  {:.1}/{:.1} MiB ({:.0} %) at {:.1} MiB/s",
                m.shard.map_or("meta".to_string(), |s| s.to_string()),
                short(&m.from),
                short(&m.to),
                mb(m.sent_bytes),
                mb(m.total_bytes),
                100.0 * m.sent_bytes as f64 / m.total_bytes.max(1) as f64,
                rate
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_client::proto::MoveInfo;

    #[test]
    fn moves_in_progress_show_their_progress_and_rate() {
        let status = StatusResponse {
            node_id: "a".repeat(40),
            moves: vec![MoveInfo {
                shard: Some(2),
                from: "a".repeat(40),
                to: "b".repeat(40),
                sent_bytes: 32 * 1024 * 1024,
                total_bytes: 128 * 1024 * 1024,
                elapsed_ms: 2000,
            }],
            ..StatusResponse::default()
        };
        let text = render(&status);
        assert!(
            text.contains("MOVES")
                && text
                    .contains("2      aaaaaaaa -> bbbbbbbb  32.0/128.0 MiB (25 %) at 16.0 MiB/s"),
            "{text}"
        );
        assert!(!render(&StatusResponse::default()).contains("MOVES"));
        assert_eq!(to_json(&status)["moves"][0]["sent_bytes"], 32 * 1024 * 1024);
    }
}
