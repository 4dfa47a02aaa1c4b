//! `/v1/kv/{key}` (one key, raw value bytes in and out, metadata in `x-cairn-*` headers) and
//! `/v1/kv` (listing as JSON). Keys are percent-decoded from the raw path and query, so any
//! byte string is addressable.

use std::ops::Bound;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::Serialize;

use super::params::{Query, percent_decode};
use super::{ApiError, AppState, execute};
use crate::command::{Command, Condition, Expiry, KeyRange};
use crate::grpc::{
    SCAN_LIMIT_DEFAULT, SCAN_LIMIT_MAX, SCAN_PAGE_BYTES_MAX, fit_page, resume_after, ttl_from_now,
};
use crate::reply::{Entry, Reply};

/// Path prefix of single-key routes; the rest of the raw path is the percent-encoded key.
const KEY_PATH_PREFIX: &str = "/v1/kv/";
/// Version of the key's current value.
pub(super) const VERSION_HEADER: &str = "x-cairn-version";
/// A watch resume token taken just before a read (`GET /v1/watch?from=`): a watch from it
/// tells every change the read did not see.
pub(super) const WATCH_TOKEN_HEADER: &str = "x-cairn-watch-token";
/// Absolute expiry, ms since the Unix epoch (absent: no expiry).
pub(super) const EXPIRES_AT_HEADER: &str = "x-cairn-expires-at-ms";
/// Remaining time to live in ms at the moment of the read (absent: no expiry).
pub(super) const TTL_HEADER: &str = "x-cairn-ttl-ms";

/// Query parameters `GET /v1/kv/{key}` understands.
const GET_PARAMS: &[&str] = &["consistency"];

/// Query parameters `PUT /v1/kv/{key}` understands.
const PUT_PARAMS: &[&str] = &[
    "ttl_ms",
    "expires_at_ms",
    "if_absent",
    "if_present",
    "if_version",
];
/// Query parameters `GET /v1/kv` understands.
const LIST_PARAMS: &[&str] = &[
    "prefix",
    "start",
    "end",
    "start_exclusive",
    "end_inclusive",
    "after",
    "limit",
    "keys_only",
    "encoding",
];

/// `GET /v1/kv/{key}`: the raw value, 404 when missing. `consistency=stale` reads this node's
/// replica as it stands (it may lag the shard's leader); the default, `linearizable`, reads
/// on the leader.
pub(super) async fn get(State(state): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    let key = key_of(&uri)?;
    let query = query_of(&uri, GET_PARAMS)?;
    let stale = match query.text("consistency").map_err(ApiError::bad_request)? {
        None | Some("linearizable") => false,
        Some("stale") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "consistency={other:?}: expected linearizable or stale"
            )));
        }
    };
    let read = Command::Get { key: key.clone() };
    let (watch_token, reply) = state
        .node
        .read_after_token(Some(&key), state.node.execute_with(read, stale))
        .await;
    let reply = reply.map_err(ApiError::from)?;
    let token_header = HeaderValue::from_str(&watch_token).ok();
    match reply {
        Reply::Entry(Some(entry)) => {
            let mut headers = HeaderMap::new();
            if let Some(token) = token_header {
                headers.insert(WATCH_TOKEN_HEADER, token);
            }
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            headers.insert(VERSION_HEADER, entry.version.into());
            if let Some(at) = entry.expires_at_ms {
                headers.insert(EXPIRES_AT_HEADER, at.into());
                headers.insert(TTL_HEADER, ttl_from_now(at, state.node.now_ms()).into());
            }
            Ok((StatusCode::OK, headers, Body::from(entry.value)).into_response())
        }
        Reply::Entry(None) => {
            let mut response = ApiError::not_found().into_response();
            if let Some(token) = token_header {
                response.headers_mut().insert(WATCH_TOKEN_HEADER, token);
            }
            Ok(response)
        }
        other => Err(ApiError::unexpected(&other)),
    }
}

/// `PUT /v1/kv/{key}`: write the body as the value; `ttl_ms`/`expires_at_ms` and one of
/// `if_absent`/`if_present`/`if_version` in the query. 200 `{"version": N}`; 412 when the
/// condition fails; 413 when the body is above the value limit.
pub(super) async fn put(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = key_of(&uri)?;
    let query = query_of(&uri, PUT_PARAMS)?;
    let expiry = match (
        query.u64("ttl_ms").map_err(ApiError::bad_request)?,
        query.u64("expires_at_ms").map_err(ApiError::bad_request)?,
    ) {
        (None, None) => Expiry::Never,
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give ttl_ms or expires_at_ms, not both",
            ));
        }
        (Some(0), None) => return Err(ApiError::bad_request("ttl_ms must be > 0")),
        (Some(ms), None) => Expiry::InMs(to_i64(ms, "ttl_ms")?),
        (None, Some(at)) => Expiry::AtMs(to_i64(at, "expires_at_ms")?),
    };
    let if_absent = query.flag("if_absent").map_err(ApiError::bad_request)?;
    let if_present = query.flag("if_present").map_err(ApiError::bad_request)?;
    let if_version = query.u64("if_version").map_err(ApiError::bad_request)?;
    let condition = match (if_absent, if_present, if_version) {
        (false, false, None) => Condition::Always,
        (true, false, None) => Condition::IfAbsent,
        (false, true, None) => Condition::IfPresent,
        (false, false, Some(v)) => Condition::IfVersion(v),
        _ => {
            return Err(ApiError::bad_request(
                "give at most one of if_absent, if_present, if_version",
            ));
        }
    };
    let value = read_body(body, &headers, state.put_body_bytes_max).await?;

    let command = Command::Set {
        key,
        value,
        expiry,
        condition,
        return_old: false,
    };
    match execute(&state.node, command).await? {
        Reply::Set(outcome) => match outcome.version {
            Some(version) => {
                let body = axum::Json(serde_json::json!({ "version": version }));
                Ok(([(VERSION_HEADER, HeaderValue::from(version))], body).into_response())
            }
            None => {
                let message = match (condition, &outcome.old) {
                    (Condition::IfAbsent, _) => "condition failed: key exists".to_string(),
                    (Condition::IfVersion(want), Some(old)) => {
                        format!(
                            "condition failed: version is {}, expected {want}",
                            old.version
                        )
                    }
                    _ => "condition failed: key does not exist".to_string(),
                };
                let mut response =
                    ApiError::new(StatusCode::PRECONDITION_FAILED, "condition_failed", message)
                        .into_response();
                if let Some(old) = outcome.old {
                    response
                        .headers_mut()
                        .insert(VERSION_HEADER, old.version.into());
                }
                Ok(response)
            }
        },
        other => Err(ApiError::unexpected(&other)),
    }
}

/// `DELETE /v1/kv/{key}`: 204 when a live key was removed, 404 when there was none.
pub(super) async fn delete(State(state): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    let key = key_of(&uri)?;
    match execute(&state.node, Command::Del { keys: vec![key] }).await? {
        Reply::Int(0) => Err(ApiError::not_found()),
        Reply::Int(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        other => Err(ApiError::unexpected(&other)),
    }
}

/// How keys and values are written in a JSON listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    /// Standard base64 with padding: every byte string is representable (the default).
    Base64,
    /// Plain JSON strings; a listing holding bytes that are not UTF-8 fails with 422.
    Utf8,
}

/// One entry of a listing.
#[derive(Debug, Serialize)]
struct ListEntry {
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    version: u64,
    expires_at_ms: Option<u64>,
}

/// The body of `GET /v1/kv`.
#[derive(Debug, Serialize)]
struct Listing {
    encoding: &'static str,
    entries: Vec<ListEntry>,
    /// Whether the limit cut the listing short.
    more: bool,
    /// The last key returned when `more`; pass it (decoded, then percent-encoded) as `after`.
    resume_after: Option<String>,
    /// A watch resume token taken just before the listing (`GET /v1/watch?from=`).
    watch_token: String,
}

/// `GET /v1/kv?prefix=..` or `?start=..&end=..`: live entries in key order as JSON.
pub(super) async fn list(State(state): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    let query = query_of(&uri, LIST_PARAMS)?;
    let bad = ApiError::bad_request;
    let encoding = match query.text("encoding").map_err(bad)? {
        None | Some("base64") => Encoding::Base64,
        Some("utf8" | "utf-8") => Encoding::Utf8,
        Some(other) => return Err(bad(format!("encoding {other:?} is not base64 or utf8"))),
    };
    let limit = match query.u64("limit").map_err(bad)? {
        None | Some(0) => SCAN_LIMIT_DEFAULT,
        Some(n) if n > SCAN_LIMIT_MAX as u64 => {
            return Err(bad(format!(
                "limit {n} is above the maximum {SCAN_LIMIT_MAX}"
            )));
        }
        Some(n) => n as usize,
    };
    let keys_only = query.flag("keys_only").map_err(bad)?;
    let prefix = query.bytes("prefix").cloned();
    let start = query.bytes("start").cloned();
    let end = query.bytes("end").cloned();
    let mut range = match (prefix, start, end) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return Err(ApiError::bad_request("give prefix or start/end, not both"));
        }
        (Some(prefix), None, None) => KeyRange::prefix(prefix),
        (None, _, _) => range_of_query(&query)?,
    };
    if let Some(after) = query.bytes("after") {
        range = resume_after(range, after.clone());
    }

    let command = Command::ScanRange {
        range,
        limit,
        keys_only,
    };
    let (watch_token, reply) = state
        .node
        .read_after_token(None, execute(&state.node, command))
        .await;
    let (mut entries, more) = match reply? {
        Reply::Entries { entries, more } => (entries, more),
        other => return Err(ApiError::unexpected(&other)),
    };
    let more = fit_page(&mut entries, more, SCAN_PAGE_BYTES_MAX);
    let resume_after = if more {
        entries.last().map(|e| e.key.clone())
    } else {
        None
    };
    let listing = Listing {
        encoding: match encoding {
            Encoding::Base64 => "base64",
            Encoding::Utf8 => "utf8",
        },
        entries: entries
            .into_iter()
            .map(|e| list_entry(e, keys_only, encoding))
            .collect::<Result<_, _>>()?,
        more,
        resume_after: resume_after.map(|k| encode(&k, encoding)).transpose()?,
        watch_token,
    };
    Ok(axum::Json(listing).into_response())
}

fn list_entry(e: Entry, keys_only: bool, encoding: Encoding) -> Result<ListEntry, ApiError> {
    Ok(ListEntry {
        key: encode(&e.key, encoding)?,
        value: if keys_only {
            None
        } else {
            Some(encode(&e.value, encoding)?)
        },
        version: e.version,
        expires_at_ms: e.expires_at_ms,
    })
}

fn encode(bytes: &[u8], encoding: Encoding) -> Result<String, ApiError> {
    match encoding {
        Encoding::Base64 => Ok(BASE64.encode(bytes)),
        Encoding::Utf8 => String::from_utf8(bytes.to_vec()).map_err(|_| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "not_utf8",
                "the listing holds bytes that are not UTF-8; use encoding=base64",
            )
        }),
    }
}

/// The key of a single-key route: the rest of the raw path, percent-decoded to bytes.
fn key_of(uri: &Uri) -> Result<Bytes, ApiError> {
    let raw = uri.path().strip_prefix(KEY_PATH_PREFIX).unwrap_or_default();
    let key = percent_decode(raw, false)
        .ok_or_else(|| ApiError::bad_request("malformed percent-encoding in the key"))?;
    // The engine and the other front ends accept the empty key (as Redis does), but
    // `/v1/kv/` reads as the collection, not a key: HTTP asks for a non-empty one.
    if key.is_empty() {
        return Err(ApiError::bad_request(
            "a key is required after /v1/kv/ (the empty key is reachable over RESP and gRPC)",
        ));
    }
    Ok(key)
}

/// Parse the query, refusing parameters the route does not know (typos must not be ignored).
/// The key range `start`, `end`, `start_exclusive` and `end_inclusive` give (the whole
/// keyspace without them).
pub(super) fn range_of_query(query: &Query) -> Result<KeyRange, ApiError> {
    let flag = |name| query.flag(name).map_err(ApiError::bad_request);
    Ok(KeyRange {
        start: match query.bytes("start").cloned() {
            None => Bound::Unbounded,
            Some(s) if flag("start_exclusive")? => Bound::Excluded(s),
            Some(s) => Bound::Included(s),
        },
        end: match query.bytes("end").cloned() {
            None => Bound::Unbounded,
            Some(e) if flag("end_inclusive")? => Bound::Included(e),
            Some(e) => Bound::Excluded(e),
        },
    })
}

pub(super) fn query_of(uri: &Uri, known: &[&str]) -> Result<Query, ApiError> {
    let query = Query::parse(uri.query()).map_err(ApiError::bad_request)?;
    if let Some(unknown) = query.names().find(|n| !known.contains(n)) {
        return Err(ApiError::bad_request(format!(
            "unknown query parameter {unknown:?}; known: {}",
            known.join(", ")
        )));
    }
    Ok(query)
}

/// How much of an oversized request body is read and thrown away after its 413 is sent, so
/// that a client that writes its whole body before reading (Python's `http.client`,
/// `requests`) gets the 413 instead of a reset connection. Past this, or
/// [`OVERSIZE_DRAIN_TIMEOUT`], the connection is closed.
pub const OVERSIZE_DRAIN_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// How long an oversized body is drained at most.
pub const OVERSIZE_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// How long the drain waits for more of the body (a client that sent only the head, or
/// stopped, is not waited for longer: its connection is then closed).
pub const OVERSIZE_DRAIN_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads and drops what is left of `body`, within [`OVERSIZE_DRAIN_BYTES_MAX`] and
/// [`OVERSIZE_DRAIN_TIMEOUT`]. Holding the body keeps hyper reading it for us after the
/// response has gone out; dropping it early makes hyper close the connection.
async fn drain(body: Body) {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut read: u64 = 0;
    let _ = tokio::time::timeout(OVERSIZE_DRAIN_TIMEOUT, async {
        while let Ok(Some(Ok(chunk))) =
            tokio::time::timeout(OVERSIZE_DRAIN_IDLE, stream.next()).await
        {
            read += chunk.len() as u64;
            if read > OVERSIZE_DRAIN_BYTES_MAX {
                return;
            }
        }
    })
    .await;
}

/// Read a request body of at most `max` bytes; 413 above that, checked against
/// `Content-Length` first so an oversized body is refused before it is buffered. The
/// refused body is drained in the background (see [`OVERSIZE_DRAIN_BYTES_MAX`]).
pub(super) async fn read_body(
    body: Body,
    headers: &HeaderMap,
    max: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
            format!("value is above the limit of {max} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|&len| len > max as u64) {
        // A body too large to drain is not waited for: the connection closes after the 413.
        if len <= OVERSIZE_DRAIN_BYTES_MAX {
            tokio::spawn(drain(body));
        }
        return Err(too_large());
    }
    // Read up to the limit by hand, so that what is left of an oversized body (sent without
    // a Content-Length, chunked) can still be drained.
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
        if buf.len() + chunk.len() > max {
            tokio::spawn(drain(Body::from_stream(stream)));
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

pub(super) fn to_i64(v: u64, name: &str) -> Result<i64, ApiError> {
    i64::try_from(v).map_err(|_| ApiError::bad_request(format!("{name} is out of range")))
}
