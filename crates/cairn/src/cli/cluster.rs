//! `cairn cluster status`: the cluster map as the contacted node sees it.

use cairn_client::proto::{NodeState, StatusResponse};
use clap::Subcommand;
use serde_json::json;

use super::Connection;
use super::output::print_json;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Nodes with their addresses and state; shards with slot ranges, leader, Raft term,
    /// commit and applied index, lag and replicas
    Status,
}

pub async fn run(command: ClusterCommand, connection: Connection) -> anyhow::Result<u8> {
    match command {
        ClusterCommand::Status => {
            let status = connection.client()?.status().await?;
            if connection.json {
                print_json(&to_json(&status));
            } else {
                print!("{}", render(&status));
            }
        }
    }
    Ok(0)
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
        "shards": s.shards.iter().map(|sh| json!({
            "id": sh.id,
            "slots": sh.slots.iter().map(|r| json!({"start": r.start, "end": r.end})).collect::<Vec<_>>(),
            "replicas": sh.replicas,
            "learners": sh.learners,
            "leader": sh.leader,
            "term": sh.term,
            "last_log_index": sh.last_log_index,
            "commit_index": sh.commit_index,
            "applied_index": sh.applied_index,
        })).collect::<Vec<_>>(),
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
        "\nSHARD  SLOTS          LEADER    TERM   COMMIT     APPLIED    LAG  REPLICAS"
    );
    for sh in &s.shards {
        let slots: Vec<String> = sh
            .slots
            .iter()
            .map(|r| format!("{}-{}", r.start, r.end))
            .collect();
        let short = |id: &str| id.chars().take(8).collect::<String>();
        let replicas: Vec<String> = sh.replicas.iter().map(|r| short(r)).collect();
        let _ = writeln!(
            out,
            "{:<6} {:<14} {:<9} {:<6} {:<10} {:<10} {:<4} {}",
            sh.id,
            slots.join(","),
            sh.leader.as_deref().map_or("-".to_string(), short),
            sh.term,
            sh.commit_index,
            sh.applied_index,
            sh.commit_index.saturating_sub(sh.applied_index),
            replicas.join(",")
        );
    }
    out
}
