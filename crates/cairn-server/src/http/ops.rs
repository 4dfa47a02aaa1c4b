//! Operational routes: the cluster map as JSON, liveness and readiness probes, Prometheus
//! metrics and the OpenAPI document; plus JSON answers for unknown routes and methods.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::{ApiError, AppState, execute};
use crate::balancer::ManageError;
use crate::command::Command;
use crate::reply::{ClusterStatus, MoveInfo, Reply, ShardInfo};

/// The OpenAPI 3 description of every route of this front end.
const OPENAPI_JSON: &str = include_str!("openapi.json");
/// Content type of the Prometheus text exposition format.
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Serialize)]
struct NodeJson {
    id: String,
    grpc_addr: String,
    http_addr: String,
    resp_addr: String,
    state: &'static str,
}

#[derive(Debug, Serialize)]
struct SlotRangeJson {
    start: u16,
    end: u16,
}

#[derive(Debug, Serialize)]
struct ShardJson {
    id: u32,
    slots: Vec<SlotRangeJson>,
    replicas: Vec<String>,
    learners: Vec<String>,
    leader: Option<String>,
    term: u64,
    last_log_index: u64,
    commit_index: u64,
    applied_index: u64,
}

#[derive(Debug, Serialize)]
struct ClusterJson {
    node_id: String,
    nodes: Vec<NodeJson>,
    shards: Vec<ShardJson>,
    /// The metadata group (`id` 0, no slots).
    metadata: Option<ShardJson>,
    /// Replicas this node is copying to others.
    moves: Vec<MoveInfo>,
}

impl From<ShardInfo> for ShardJson {
    fn from(sh: ShardInfo) -> Self {
        ShardJson {
            id: sh.id,
            slots: sh
                .slots
                .into_iter()
                .map(|(start, end)| SlotRangeJson { start, end })
                .collect(),
            replicas: sh.replicas,
            learners: sh.learners,
            leader: sh.leader,
            term: sh.raft.term,
            last_log_index: sh.raft.last_log_index,
            commit_index: sh.raft.committed,
            applied_index: sh.raft.applied,
        }
    }
}

impl From<ClusterStatus> for ClusterJson {
    fn from(s: ClusterStatus) -> Self {
        ClusterJson {
            node_id: s.node_id,
            nodes: s
                .nodes
                .into_iter()
                .map(|n| NodeJson {
                    id: n.id,
                    grpc_addr: n.grpc_addr,
                    http_addr: n.http_addr,
                    resp_addr: n.resp_addr,
                    state: n.state.as_str(),
                })
                .collect(),
            shards: s.shards.into_iter().map(ShardJson::from).collect(),
            metadata: s.metadata.map(|m| ShardJson::from(*m)),
            moves: s.moves,
        }
    }
}

/// `GET /v1/cluster`.
pub(super) async fn cluster(State(state): State<AppState>) -> Result<Response, ApiError> {
    match execute(&state.node, Command::ClusterStatus).await? {
        Reply::Cluster(status) => Ok(axum::Json(ClusterJson::from(status)).into_response()),
        other => Err(ApiError::unexpected(&other)),
    }
}

/// `DELETE /v1/cluster/nodes/{id}`: drains node `id` and removes it from the cluster
/// (202 once the map records it leaving; `GET /v1/cluster` shows it `leaving`, then no more).
pub(super) async fn remove_node(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    match state.node.remove_node(&id).await {
        Ok(()) => Ok((
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({ "status": "leaving", "id": id })),
        )
            .into_response()),
        Err(e) => Err(manage_error(e)),
    }
}

/// The answer to a management request that was not carried out.
fn manage_error(e: ManageError) -> ApiError {
    match e {
        ManageError::UnknownNode(why) | ManageError::UnknownShard(why) => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", why)
        }
        ManageError::Refused(why) => {
            ApiError::new(StatusCode::CONFLICT, "failed_precondition", why)
        }
        ManageError::Failed(e) => ApiError::from(e),
    }
}

/// The query of `POST /v1/cluster/shards/{id}/split`.
#[derive(Debug, serde::Deserialize)]
pub(super) struct SplitQuery {
    /// The child's first slot (default: where the shard's keys split in halves).
    at: Option<u16>,
}

/// `POST /v1/cluster/shards/{id}/split[?at=SLOT]`: splits shard `id` (200 once its leader
/// applied the split, with the new shard's id and first slot).
pub(super) async fn split_shard(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<u32>,
    axum::extract::Query(query): axum::extract::Query<SplitQuery>,
) -> Result<Response, ApiError> {
    if query.at.is_some_and(|at| at >= crate::slot::SLOT_COUNT) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            format!("at must be below {}", crate::slot::SLOT_COUNT),
        ));
    }
    match state.node.split_shard(id, query.at).await {
        Ok(crate::balancer::Managed::Split {
            shard,
            child,
            first_slot,
        }) => Ok(axum::Json(serde_json::json!({
            "shard": shard,
            "child": child,
            "first_slot": first_slot,
        }))
        .into_response()),
        Ok(other) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("unexpected answer to a split: {other:?}"),
        )),
        Err(e) => Err(manage_error(e)),
    }
}

/// `GET /health`: the process is up and serving HTTP (liveness).
pub(super) async fn health() -> Response {
    axum::Json(serde_json::json!({ "status": "ok" })).into_response()
}

/// `GET /ready`: 200 when the node takes writes and every shard has a leader, 503 otherwise
/// (readiness: a load balancer should send traffic only then).
pub(super) async fn ready(State(state): State<AppState>) -> Response {
    if let Some(reason) = state.node.failure() {
        return not_ready(&format!("the node refuses writes: {reason}"));
    }
    let status = match state.node.execute(Command::ClusterStatus).await {
        Ok(Reply::Cluster(status)) => status,
        Ok(_) | Err(_) => {
            return not_ready("the cluster map is not available");
        }
    };
    let leaderless = status.shards.iter().filter(|s| s.leader.is_none()).count();
    if status.shards.is_empty() || leaderless > 0 {
        return not_ready(&format!(
            "{leaderless} of {} shards have no leader",
            status.shards.len()
        ));
    }
    axum::Json(serde_json::json!({ "status": "ready", "shards": status.shards.len() }))
        .into_response()
}

fn not_ready(message: &str) -> Response {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message).into_response()
}

/// `GET /metrics`: Prometheus text.
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    let body = crate::metrics::render(&state.node);
    ([(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)], body).into_response()
}

/// `GET /openapi.json`.
pub(super) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

/// Any path no route matches.
pub(super) async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        "no such route; see /openapi.json",
    )
}

/// A known path with a method it does not support.
pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route; see /openapi.json",
    )
}
