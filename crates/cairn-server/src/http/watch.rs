//! `GET /v1/watch`: a [`crate::watch::Stream`] as Server-Sent Events.
//!
//! Query: `key`, `prefix`, or `start`/`end` (with `start_exclusive`, `end_inclusive`), as
//! `/v1/kv` takes them (nothing: every key); `values=true` for put events to carry values;
//! `progress_ms` (default 5000); `from=TOKEN` to resume, or the `Last-Event-ID` header, which
//! `EventSource` sends by itself on reconnecting (the query wins when both are given).
//!
//! Each change is an event with no `event:` name (a plain `message`), its `id:` the resume
//! token right after it and its `data:` one JSON object: `type` (`put`, `delete`, `expire`),
//! `key` (text when valid UTF-8, else base64 with `"key_encoding": "base64"`), `version`,
//! `shard`, `revision` (the shard's log index: the same number as `version`), and for puts
//! `expires_at_ms` when set and `value` (encoded as the key is, `value_encoding`) when asked.
//! Named events: `created` and `progress` (`data: {"type": …, "token": …}`, `id:` the token),
//! and as the last event `compacted` (`shard`, `revision`: the oldest revision still kept) or
//! `canceled` (`reason`). A token the history no longer covers is refused at once: 410 Gone.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use super::kv::{query_of, range_of_query};
use super::{ApiError, AppState};
use crate::feed::EventKind;
use crate::watch::{self, Ending, Message, Selector, WatchError, WatchEvent};

const WATCH_PARAMS: &[&str] = &[
    "key",
    "prefix",
    "start",
    "end",
    "start_exclusive",
    "end_inclusive",
    "values",
    "progress_ms",
    "from",
];

/// Longest `Last-Event-ID` or `from` accepted: [`watch::TOKEN_BYTES_MAX`].
pub(super) async fn watch(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let query = query_of(&uri, WATCH_PARAMS)?;
    let bad = |message: String| ApiError::bad_request(message);
    let key = query.bytes("key").cloned();
    let prefix = query.bytes("prefix").cloned();
    let (start, end) = (query.bytes("start").cloned(), query.bytes("end").cloned());
    let selector = match (key, prefix) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give key, prefix or start/end, not several",
            ));
        }
        (Some(_), None) | (None, Some(_)) if start.is_some() || end.is_some() => {
            return Err(ApiError::bad_request(
                "give key, prefix or start/end, not several",
            ));
        }
        (Some(key), None) => Selector::Key(key),
        (None, Some(prefix)) => Selector::Prefix(prefix),
        (None, None) => Selector::Range(range_of_query(&query)?),
    };
    let values = query.flag("values").map_err(bad)?;
    let progress = match query.u64("progress_ms").map_err(bad)? {
        None | Some(0) => watch::PROGRESS_INTERVAL_DEFAULT,
        Some(ms) => Duration::from_millis(ms),
    };
    if progress < watch::PROGRESS_INTERVAL_MIN {
        return Err(bad(format!(
            "progress_ms must be at least {}",
            watch::PROGRESS_INTERVAL_MIN.as_millis()
        )));
    }
    let from = match query.text("from").map_err(bad)? {
        Some(token) => Some(token.to_string()),
        None => match headers.get("last-event-id") {
            Some(id) => Some(
                id.to_str()
                    .map_err(|_| ApiError::bad_request("Last-Event-ID is not a token"))?
                    .to_string(),
            ),
            None => None,
        },
    };
    let watcher = state
        .node
        .watch_ready(
            selector,
            from.as_deref().filter(|t| !t.is_empty()),
            progress,
        )
        .await
        .map_err(|e| match e {
            WatchError::BadToken(_) => bad(e.to_string()),
            WatchError::Compacted(_) => ApiError::new(StatusCode::GONE, "compacted", e.to_string()),
            WatchError::Stopped
            | WatchError::OutOfTouch(_)
            | WatchError::Split(..)
            | WatchError::NotHere(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ),
        })?;
    let stream = watch::Stream::new(watcher, super::FRONTEND);
    let events = futures::stream::unfold(
        (Some(stream), Vec::<SseEvent>::new()),
        move |(mut stream, mut ready)| async move {
            loop {
                if !ready.is_empty() {
                    // The next part of a message: the client took the one before, unless it
                    // left it too long (then the watch ends, with the reason).
                    if let Some(ending) = stream.as_mut().and_then(watch::Stream::next_part) {
                        let events = sse_events(ending, values);
                        let event = events.into_iter().next()?;
                        return Some((Ok::<_, Infallible>(event), (None, Vec::new())));
                    }
                    let event = ready.remove(0);
                    return Some((Ok::<_, Infallible>(event), (stream, ready)));
                }
                let mut current = stream.take()?;
                let message = current.next().await?;
                let last = matches!(message, Message::Ended(_));
                ready = sse_events(message, values);
                if !last {
                    stream = Some(current);
                }
            }
        },
    );
    // The comment lines keep proxies from closing an idle stream between progress events.
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// The SSE events of one message of the watch.
fn sse_events(message: Message, values: bool) -> Vec<SseEvent> {
    let named = |name: &str, id: Option<String>, data: Value| {
        let event = SseEvent::default().event(name).data(data.to_string());
        match id {
            Some(id) => event.id(id),
            None => event,
        }
    };
    match message {
        Message::Created { token } => {
            let token = token.to_string();
            vec![named(
                "created",
                Some(token.clone()),
                json!({"type": "created", "token": token}),
            )]
        }
        Message::Progress { token } => {
            let token = token.to_string();
            vec![named(
                "progress",
                Some(token.clone()),
                json!({"type": "progress", "token": token}),
            )]
        }
        Message::Events { events, .. } => events
            .into_iter()
            .map(|(event, token)| {
                SseEvent::default()
                    .id(token)
                    .data(event_json(&event, values).to_string())
            })
            .collect(),
        Message::Ended(Ending::Compacted(c)) => vec![named(
            "compacted",
            None,
            json!({"type": "compacted", "shard": c.shard, "revision": c.revision}),
        )],
        Message::Ended(Ending::Canceled(reason)) => vec![named(
            "canceled",
            None,
            json!({"type": "canceled", "reason": reason}),
        )],
        // The stream just ends: EventSource reconnects (with Last-Event-ID) by itself.
        Message::Ended(Ending::Unavailable(_)) => Vec::new(),
    }
}

/// One change as the JSON object of its `data:` line.
pub(crate) fn event_json(event: &WatchEvent, values: bool) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("type".into(), event.event.kind.name().into());
    put_bytes(&mut out, "key", &event.event.key);
    out.insert("version".into(), event.revision.into());
    out.insert("shard".into(), event.shard.into());
    out.insert("revision".into(), event.revision.into());
    if event.event.kind == EventKind::Put {
        if let Some(at) = event.event.expires_at_ms {
            out.insert("expires_at_ms".into(), at.into());
        }
        if values {
            put_bytes(&mut out, "value", &event.event.value);
        }
    }
    Value::Object(out)
}

/// `name` as text when `bytes` are valid UTF-8, else base64 with `name_encoding: base64`.
fn put_bytes(out: &mut serde_json::Map<String, Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            out.insert(name.into(), text.into());
        }
        Err(_) => {
            out.insert(name.into(), BASE64.encode(bytes).into());
            out.insert(format!("{name}_encoding"), "base64".into());
        }
    }
}
