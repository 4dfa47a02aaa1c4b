//! `POST /v1/txn`: an atomic, isolated transaction over any keys, in the shape of gRPC
//! `Kv.Txn` (etcd's): compares, then the `success` ops when all hold, else the `failure` ops.
//!
//! Keys and values are JSON strings: UTF-8 text by default, standard base64 with
//! `"encoding": "base64"` (for bytes that are not text). The answer uses the same encoding.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::kv::read_body;
use super::{ApiError, AppState, execute};
use crate::command::{CmpOp, Command, Compare, Condition, Expiry};
use crate::reply::Reply;

/// Largest request body: the node's value limit plus room for keys and the JSON around them.
pub(super) fn body_bytes_max(value_bytes_max: usize) -> usize {
    value_bytes_max + 1024 * 1024
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnBody {
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default)]
    compare: Vec<CompareBody>,
    #[serde(default)]
    success: Vec<OpBody>,
    #[serde(default)]
    failure: Vec<OpBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompareBody {
    key: String,
    /// `equal` (default), `not_equal`, `greater`, `less`.
    #[serde(default)]
    result: Option<String>,
    #[serde(default)]
    version: Option<u64>,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    exists: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum OpBody {
    Get { key: String },
    Put(PutBody),
    Delete { key: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    key: String,
    value: String,
    #[serde(default)]
    ttl_ms: Option<u64>,
    #[serde(default)]
    expires_at_ms: Option<u64>,
    #[serde(default)]
    if_absent: Option<bool>,
    #[serde(default)]
    if_present: Option<bool>,
    #[serde(default)]
    if_version: Option<u64>,
}

#[derive(Debug, Serialize)]
struct TxnAnswer {
    succeeded: bool,
    responses: Vec<OpAnswer>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
enum OpAnswer {
    Get {
        found: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        value: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        version: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        expires_at_ms: Option<u64>,
    },
    Put {
        written: bool,
        /// 0 when its shard's part of a cross-shard transaction was resolved after the
        /// answer (see the gRPC API).
        version: u64,
    },
    Delete {
        deleted: bool,
    },
}

/// How keys and values are written.
#[derive(Debug, Clone, Copy)]
enum Encoding {
    Utf8,
    Base64,
}

impl Encoding {
    fn decode(self, text: &str, what: &str) -> Result<Bytes, ApiError> {
        match self {
            Encoding::Utf8 => Ok(Bytes::copy_from_slice(text.as_bytes())),
            Encoding::Base64 => BASE64
                .decode(text)
                .map(Bytes::from)
                .map_err(|e| ApiError::bad_request(format!("{what} is not base64: {e}"))),
        }
    }

    fn encode(self, bytes: &[u8]) -> Result<String, ApiError> {
        match self {
            Encoding::Base64 => Ok(BASE64.encode(bytes)),
            Encoding::Utf8 => String::from_utf8(bytes.to_vec()).map_err(|_| {
                ApiError::new(
                    axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                    "not_utf8",
                    "the answer holds bytes that are not UTF-8; use \"encoding\": \"base64\"",
                )
            }),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum OpKind {
    Get,
    Put,
    Delete,
}

/// `POST /v1/txn`.
pub(super) async fn txn(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let max = body_bytes_max(state.put_body_bytes_max);
    let raw = read_body(body, &headers, max).await?;
    let body: TxnBody = serde_json::from_slice(&raw)
        .map_err(|e| ApiError::bad_request(format!("malformed transaction: {e}")))?;
    let encoding = match body.encoding.as_deref() {
        None | Some("utf8" | "utf-8") => Encoding::Utf8,
        Some("base64") => Encoding::Base64,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "encoding {other:?} is not utf8 or base64"
            )));
        }
    };
    let compares = body
        .compare
        .into_iter()
        .map(|c| compare_of(c, encoding))
        .collect::<Result<Vec<_>, _>>()?;
    let (then, then_kinds) = ops_of(body.success, encoding)?;
    let (otherwise, otherwise_kinds) = ops_of(body.failure, encoding)?;
    let command = Command::Exec {
        compares,
        then,
        otherwise,
    };
    let (succeeded, replies) = match execute(&state.node, command).await? {
        Reply::Exec { succeeded, replies } => (succeeded, replies),
        other => return Err(ApiError::unexpected(&other)),
    };
    let kinds = if succeeded {
        then_kinds
    } else {
        otherwise_kinds
    };
    let mut responses = Vec::with_capacity(replies.len());
    for (kind, reply) in kinds.into_iter().zip(replies) {
        responses.push(match (kind, reply.map_err(ApiError::from)?) {
            (OpKind::Get, Reply::Entry(None)) => OpAnswer::Get {
                found: false,
                key: None,
                value: None,
                version: None,
                expires_at_ms: None,
            },
            (OpKind::Get, Reply::Entry(Some(e))) => OpAnswer::Get {
                found: true,
                key: Some(encoding.encode(&e.key)?),
                value: Some(encoding.encode(&e.value)?),
                version: Some(e.version),
                expires_at_ms: e.expires_at_ms,
            },
            (OpKind::Put, Reply::Set(outcome)) => OpAnswer::Put {
                written: outcome.version.is_some(),
                version: outcome.version.unwrap_or(0),
            },
            (OpKind::Delete, Reply::Int(n)) => OpAnswer::Delete { deleted: n > 0 },
            (_, other) => return Err(ApiError::unexpected(&other)),
        });
    }
    Ok(axum::Json(TxnAnswer {
        succeeded,
        responses,
    })
    .into_response())
}

fn compare_of(c: CompareBody, encoding: Encoding) -> Result<Compare, ApiError> {
    let cmp = match c.result.as_deref() {
        None | Some("equal") => CmpOp::Equal,
        Some("not_equal") => CmpOp::NotEqual,
        Some("greater") => CmpOp::Greater,
        Some("less") => CmpOp::Less,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "compare result {other:?} is not equal, not_equal, greater or less"
            )));
        }
    };
    let key = encoding.decode(&c.key, "a compare's key")?;
    match (c.version, c.value, c.exists) {
        (Some(version), None, None) => Ok(Compare::Version { key, cmp, version }),
        (None, Some(value), None) => Ok(Compare::Value {
            key,
            cmp,
            value: encoding.decode(&value, "a compare's value")?,
        }),
        (None, None, Some(exists)) => match cmp {
            CmpOp::Equal => Ok(Compare::Exists { key, exists }),
            CmpOp::NotEqual => Ok(Compare::Exists {
                key,
                exists: !exists,
            }),
            _ => Err(ApiError::bad_request(
                "an exists compare takes equal or not_equal",
            )),
        },
        _ => Err(ApiError::bad_request(
            "a compare needs exactly one of version, value, exists",
        )),
    }
}

fn ops_of(ops: Vec<OpBody>, encoding: Encoding) -> Result<(Vec<Command>, Vec<OpKind>), ApiError> {
    let mut commands = Vec::with_capacity(ops.len());
    let mut kinds = Vec::with_capacity(ops.len());
    for op in ops {
        let (command, kind) = match op {
            OpBody::Get { key } => (
                Command::Get {
                    key: encoding.decode(&key, "a get's key")?,
                },
                OpKind::Get,
            ),
            OpBody::Delete { key } => (
                Command::Del {
                    keys: vec![encoding.decode(&key, "a delete's key")?],
                },
                OpKind::Delete,
            ),
            OpBody::Put(put) => (put_command(put, encoding)?, OpKind::Put),
        };
        commands.push(command);
        kinds.push(kind);
    }
    Ok((commands, kinds))
}

fn put_command(put: PutBody, encoding: Encoding) -> Result<Command, ApiError> {
    let expiry = match (put.ttl_ms, put.expires_at_ms) {
        (None, None) => Expiry::Never,
        (Some(0), None) => return Err(ApiError::bad_request("ttl_ms must be > 0")),
        (Some(ms), None) => Expiry::InMs(super::kv::to_i64(ms, "ttl_ms")?),
        (None, Some(at)) => Expiry::AtMs(super::kv::to_i64(at, "expires_at_ms")?),
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give ttl_ms or expires_at_ms, not both",
            ));
        }
    };
    let condition = match (put.if_absent, put.if_present, put.if_version) {
        (None | Some(false), None | Some(false), None) => Condition::Always,
        (Some(true), None | Some(false), None) => Condition::IfAbsent,
        (None | Some(false), Some(true), None) => Condition::IfPresent,
        (None | Some(false), None | Some(false), Some(v)) => Condition::IfVersion(v),
        _ => {
            return Err(ApiError::bad_request(
                "a put takes at most one of if_absent, if_present, if_version",
            ));
        }
    };
    Ok(Command::Set {
        key: encoding.decode(&put.key, "a put's key")?,
        value: encoding.decode(&put.value, "a put's value")?,
        expiry,
        condition,
        return_old: false,
    })
}
