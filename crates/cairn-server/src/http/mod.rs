//! The HTTP/JSON front end (axum): `GET/PUT/DELETE /v1/kv/{key}` with raw value bodies,
//! `GET /v1/kv` listings, `GET /v1/cluster`, `/health`, `/ready`, `/metrics` (Prometheus text)
//! and `/openapi.json`, the contract of all of them.
//!
//! Like every front end it is a thin codec over [`Node::execute`]: a handler decodes the
//! request into one [`Command`], executes it and renders the [`Reply`]; errors are JSON
//! `{"code": "...", "message": "..."}` with a matching status code.

pub(crate) mod conn;
mod kv;
mod ops;
mod params;
mod txn;
mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use axum::Router;
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::command::Command;
use crate::error::CommandError;
use crate::node::Node;
use crate::reply::Reply;

/// Front-end label of this module in metrics.
const FRONTEND: &str = "http";

/// Shared state of every handler.
#[derive(Debug, Clone)]
struct AppState {
    node: Arc<Node>,
    /// Largest PUT body accepted: the body is the value itself, so this is the node's configured
    /// value limit (`--value-bytes-max`); anything larger is refused with 413 before it is
    /// buffered in full.
    put_body_bytes_max: usize,
}

/// Serve HTTP on `addr` until `shutdown` resolves, then finish in-flight requests; at most
/// `max_connections` client connections are open at once (`--max-connections`).
pub async fn serve(
    node: Arc<Node>,
    addr: SocketAddr,
    max_connections: usize,
    shutdown: impl Future + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the HTTP address {addr}"))?;
    let listener = conn::CappedListener {
        listener,
        limit: conn::ConnectionLimit::new(FRONTEND, max_connections),
    };
    let state = AppState {
        put_body_bytes_max: node.options().value_bytes_max,
        node,
    };
    tracing::info!(%addr, "HTTP front end listening");
    let (signal, deadline) = conn::shutdown_with_deadline(shutdown);
    let server = std::future::IntoFuture::into_future(
        axum::serve(listener, router(state)).with_graceful_shutdown(signal),
    );
    tokio::select! {
        result = server => result.context("HTTP server failed"),
        () = deadline => {
            tracing::warn!("HTTP connections still open after the shutdown drain timeout; closing");
            Ok(())
        }
    }
}

/// Every route of the HTTP API (documented in `openapi.json`).
fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/kv", get(kv::list))
        .route(
            "/v1/kv/{*key}",
            get(kv::get).put(kv::put).delete(kv::delete),
        )
        // An empty key: answered by the same handlers so it gets a clear 400.
        .route("/v1/kv/", get(kv::get).put(kv::put).delete(kv::delete))
        .route("/v1/txn", axum::routing::post(txn::txn))
        .route("/v1/watch", get(watch::watch))
        .route("/v1/cluster", get(ops::cluster))
        .route(
            "/v1/cluster/nodes/{id}",
            axum::routing::delete(ops::remove_node),
        )
        .route(
            "/v1/cluster/shards/{id}/split",
            axum::routing::post(ops::split_shard),
        )
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(axum::middleware::from_fn(observe))
        .with_state(state)
}

/// Record every request (including those refused before reaching the node) in the metrics,
/// labelled by API operation. A missing key (404) or a failed condition (412) is an answer,
/// not an error; any other status ≥ 400 counts as an error.
async fn observe(request: Request, next: Next) -> Response {
    let operation = operation(request.method(), request.uri().path());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status();
    let ok = status.as_u16() < 400
        || (operation != "unknown"
            && matches!(
                status,
                StatusCode::NOT_FOUND | StatusCode::PRECONDITION_FAILED
            ));
    crate::metrics::observe(FRONTEND, operation, started.elapsed(), ok);
    response
}

/// The metrics label of a request: a fixed name per route and method.
fn operation(method: &Method, path: &str) -> &'static str {
    if path.starts_with("/v1/kv/") {
        return match *method {
            Method::GET | Method::HEAD => "get",
            Method::PUT => "put",
            Method::DELETE => "delete",
            _ => "unknown",
        };
    }
    if path.starts_with("/v1/cluster/nodes/") {
        return if *method == Method::DELETE {
            "remove_node"
        } else {
            "unknown"
        };
    }
    if path.starts_with("/v1/cluster/shards/") && path.ends_with("/split") {
        return if *method == Method::POST {
            "split_shard"
        } else {
            "unknown"
        };
    }
    if *method != Method::GET && *method != Method::HEAD {
        return "unknown";
    }
    if path == "/v1/txn" {
        return if *method == Method::POST {
            "txn"
        } else {
            "unknown"
        };
    }
    match path {
        "/v1/kv" => "list",
        "/v1/watch" => "watch",
        "/v1/cluster" => "status",
        "/health" => "health",
        "/ready" => "ready",
        "/metrics" => "metrics",
        "/openapi.json" => "openapi",
        _ => "unknown",
    }
}

/// Execute `command` on the node, mapping a failure to its HTTP error.
async fn execute(node: &Node, command: Command) -> Result<Reply, ApiError> {
    node.execute(command).await.map_err(ApiError::from)
}

/// An error response: status code plus JSON `{"code": "...", "message": "..."}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    /// Stable, machine-readable snake_case name of the failure.
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
    }

    fn not_found() -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "record not found")
    }

    fn unexpected(reply: &Reply) -> Self {
        tracing::error!(?reply, "executor returned an unexpected reply variant");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "unexpected reply from the executor",
        )
    }
}

impl From<CommandError> for ApiError {
    fn from(error: CommandError) -> Self {
        let message = error.to_string();
        let message = message.strip_prefix("ERR ").unwrap_or(&message).to_string();
        let (status, code) = match error {
            CommandError::NoSuchKey => (StatusCode::NOT_FOUND, "not_found"),
            CommandError::ValueTooLarge { .. } | CommandError::StringTooLong => {
                (StatusCode::PAYLOAD_TOO_LARGE, "value_too_large")
            }
            CommandError::KeyTooLarge { .. } => (StatusCode::URI_TOO_LONG, "key_too_large"),
            CommandError::NotInteger
            | CommandError::Overflow
            | CommandError::NotFloat
            | CommandError::NanOrInfinity
            | CommandError::InvalidExpireTime(_)
            | CommandError::OffsetOutOfRange
            | CommandError::Syntax
            | CommandError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_argument"),
            CommandError::CrossSlot => (StatusCode::BAD_REQUEST, "cross_slot"),
            CommandError::ShuttingDown
            | CommandError::TryAgain(_)
            | CommandError::Locked(_)
            | CommandError::TxnAborted
            | CommandError::ReadChanged => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            CommandError::OutcomeUnknown(_) => (StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown"),
            CommandError::Fatal(_) | CommandError::Storage(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        ApiError {
            status,
            code,
            message,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.code, "message": self.message });
        (self.status, axum::Json(body)).into_response()
    }
}
