//! `cairn.v1.Kv/Watch`: a [`crate::watch::Stream`] as a server-streaming RPC. The request
//! becomes a [`Selector`] and a resume token for [`Node::watch`]; each message of the stream
//! becomes one `WatchResponse`.

use std::pin::Pin;
use std::time::Duration;

use cairn_proto::v1 as pb;
use futures::Stream;
use tonic::Status;

use super::kv::range_of;
use crate::feed::EventKind;
use crate::node::Node;
use crate::watch::{self, Ending, Message, Selector, WatchError};

/// The stream of a `Watch` call.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

/// Starts the watch `request` asks for on `node`.
pub(super) async fn start(node: &Node, request: pb::WatchRequest) -> Result<WatchStream, Status> {
    let selector = match request.selector {
        Some(pb::watch_request::Selector::Key(key)) => Selector::Key(key),
        Some(pb::watch_request::Selector::Prefix(prefix)) => Selector::Prefix(prefix),
        Some(pb::watch_request::Selector::Range(range)) => Selector::Range(range_of(range)),
        None => Selector::Prefix(Default::default()),
    };
    let progress = match request.progress_interval_ms {
        0 => watch::PROGRESS_INTERVAL_DEFAULT,
        ms => Duration::from_millis(u64::from(ms)),
    };
    if progress < watch::PROGRESS_INTERVAL_MIN {
        return Err(Status::invalid_argument(format!(
            "progress_interval_ms must be at least {}",
            watch::PROGRESS_INTERVAL_MIN.as_millis()
        )));
    }
    let from = (!request.resume_token.is_empty()).then_some(request.resume_token.as_str());
    let watcher = node
        .watch_ready(selector, from, progress)
        .await
        .map_err(|e| match e {
            WatchError::BadToken(_) => Status::invalid_argument(e.to_string()),
            WatchError::Compacted(_) => Status::out_of_range(e.to_string()),
            WatchError::Stopped
            | WatchError::OutOfTouch(_)
            | WatchError::Split(..)
            | WatchError::NotHere(_) => Status::unavailable(e.to_string()),
        })?;
    let values = request.values;
    let stream = watch::Stream::new(watcher, super::FRONTEND);
    Ok(Box::pin(futures::stream::unfold(
        Some(stream),
        move |stream| async move {
            let mut stream = stream?;
            let message = stream.next().await?;
            let last = matches!(message, Message::Ended(_));
            if let Message::Ended(Ending::Unavailable(reason)) = message {
                // Retriable: the client resumes from its token on another node or later.
                return Some((Err(Status::unavailable(reason)), None));
            }
            let response = response_of(message, values);
            Some((Ok(response), (!last).then_some(stream)))
        },
    )))
}

fn response_of(message: Message, values: bool) -> pb::WatchResponse {
    match message {
        Message::Created { token } => pb::WatchResponse {
            token: token.to_string(),
            created: true,
            ..Default::default()
        },
        Message::Events { events, token } => pb::WatchResponse {
            token: token.to_string(),
            events: events
                .into_iter()
                .map(|(e, token)| pb::WatchEvent {
                    r#type: match e.event.kind {
                        EventKind::Put => pb::watch_event::Type::Put,
                        EventKind::Delete => pb::watch_event::Type::Delete,
                        EventKind::Expire => pb::watch_event::Type::Expire,
                    } as i32,
                    key: e.event.key,
                    version: e.revision,
                    shard: e.shard,
                    value: if values {
                        e.event.value
                    } else {
                        Default::default()
                    },
                    expires_at_ms: e.event.expires_at_ms,
                    token,
                })
                .collect(),
            ..Default::default()
        },
        Message::Progress { token } => pb::WatchResponse {
            token: token.to_string(),
            ..Default::default()
        },
        Message::Ended(Ending::Compacted(c)) => pb::WatchResponse {
            compacted: Some(pb::WatchCompacted {
                shard: c.shard,
                revision: c.revision,
            }),
            ..Default::default()
        },
        Message::Ended(Ending::Canceled(reason)) => pb::WatchResponse {
            canceled: reason,
            ..Default::default()
        },
        Message::Ended(Ending::Unavailable(reason)) => pb::WatchResponse {
            canceled: reason,
            ..Default::default()
        },
    }
}
