//! Watches (`Kv.Watch`) that outlive their connection: a [`Watch`] keeps the token of the
//! last message it handed out and, when the stream breaks (the node restarted, was killed or
//! is unreachable), opens it again from that token, on the endpoint or on any node the route
//! map names, so the caller sees every change once, in log order per shard.

use std::ops::Bound;
use std::time::Duration;

use bytes::Bytes;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::{Client, Error, Result, kv, proto};

/// Reconnection attempts in a row, without a message between them, before a watch gives up.
pub const RECONNECTS_MAX_DEFAULT: u32 = 40;
/// Sleep before the first reconnection; doubled up to [`RECONNECT_BACKOFF_MAX`].
pub const RECONNECT_BACKOFF_DEFAULT: Duration = Duration::from_millis(50);
/// Longest sleep between reconnections.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What a watch follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchSelector {
    Key(Bytes),
    Prefix(Bytes),
    Range {
        start: Bound<Bytes>,
        end: Bound<Bytes>,
    },
}

/// A watch request: build with [`WatchOptions::key`], [`WatchOptions::prefix`] or
/// [`WatchOptions::range`].
#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub selector: WatchSelector,
    /// Resume right after this token (from an earlier watch); `None`: start now.
    pub from: Option<String>,
    /// Put events carry their values.
    pub values: bool,
    /// Idle time before a progress notification (`None`: the server's default, 5 s).
    pub progress_interval: Option<Duration>,
}

impl WatchOptions {
    fn of(selector: WatchSelector) -> Self {
        WatchOptions {
            selector,
            from: None,
            values: false,
            progress_interval: None,
        }
    }
    pub fn key(key: impl Into<Bytes>) -> Self {
        Self::of(WatchSelector::Key(key.into()))
    }
    pub fn prefix(prefix: impl Into<Bytes>) -> Self {
        Self::of(WatchSelector::Prefix(prefix.into()))
    }
    pub fn range(start: Bound<Bytes>, end: Bound<Bytes>) -> Self {
        Self::of(WatchSelector::Range { start, end })
    }
    pub fn from(mut self, token: Option<String>) -> Self {
        self.from = token;
        self
    }
    pub fn values(mut self, values: bool) -> Self {
        self.values = values;
        self
    }
    pub fn progress_interval(mut self, every: Duration) -> Self {
        self.progress_interval = Some(every);
        self
    }

    fn to_proto(&self, token: &str) -> proto::WatchRequest {
        use proto::watch_request::Selector as P;
        let selector = match &self.selector {
            WatchSelector::Key(k) => P::Key(k.clone()),
            WatchSelector::Prefix(p) => P::Prefix(p.clone()),
            WatchSelector::Range { start, end } => {
                P::Range(crate::range_to_proto(start.clone(), end.clone()))
            }
        };
        proto::WatchRequest {
            selector: Some(selector),
            resume_token: token.to_string(),
            values: self.values,
            progress_interval_ms: self
                .progress_interval
                .map_or(0, |d| d.as_millis().min(u128::from(u32::MAX)) as u32),
        }
    }
}

/// What [`Watch::next`] gives.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchUpdate {
    /// Changes of one shard, in log order (each with the token right after it).
    Events(Vec<proto::WatchEvent>),
    /// Nothing changed for a while; [`Watch::token`] moved on all the same.
    Progress,
}

/// A running watch. Its token is where it stands: everything handed out so far is behind it.
#[derive(Debug)]
pub struct Watch {
    client: Client,
    options: WatchOptions,
    token: String,
    stream: Option<tonic::Streaming<proto::WatchResponse>>,
    /// Where the next (re)connection goes first: an index into the nodes known.
    next_node: usize,
    reconnects_max: u32,
}

impl Client {
    /// Starts watching: connects, and waits for the server's `created` message (so that a
    /// change made after this returns is seen).
    pub async fn watch(&self, options: WatchOptions) -> Result<Watch> {
        let mut watch = Watch {
            client: self.clone(),
            token: options.from.clone().unwrap_or_default(),
            options,
            stream: None,
            next_node: 0,
            reconnects_max: RECONNECTS_MAX_DEFAULT,
        };
        watch.connect().await?;
        Ok(watch)
    }
}

impl Watch {
    /// Where the watch stands: a watch started from it later sees what this one has not
    /// handed out yet, and nothing else.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// How many reconnections in a row it makes before [`Watch::next`] fails.
    pub fn set_reconnects_max(&mut self, reconnects: u32) {
        self.reconnects_max = reconnects;
    }

    /// The next changes or progress notification, reconnecting as needed. Fails with
    /// [`Error::Compacted`] when the history after its token is gone (read the keys again and
    /// watch from then), [`Error::WatchCanceled`] when the server ended the watch, or the
    /// last connection error once the reconnections ran out.
    pub async fn next(&mut self) -> Result<WatchUpdate> {
        loop {
            if self.stream.is_none() {
                self.connect().await?;
            }
            let stream = self.stream.as_mut().expect("connected above");
            match stream.message().await {
                Ok(Some(response)) => {
                    if let Some(update) = self.take(response)? {
                        return Ok(update);
                    }
                }
                Ok(None) => self.stream = None,
                Err(status) if broken(&status) => {
                    tracing::debug!(error = %status, "watch stream broke; resuming");
                    self.stream = None;
                    // The node that broke it (stopping, or out of touch with a shard's group)
                    // is tried last.
                    self.next_node += 1;
                }
                Err(status) => return Err(status_error(status)),
            }
        }
    }

    /// Applies one response: `None` for a `created` message.
    fn take(&mut self, response: proto::WatchResponse) -> Result<Option<WatchUpdate>> {
        if let Some(c) = response.compacted {
            self.stream = None;
            return Err(Error::Compacted {
                shard: c.shard,
                revision: c.revision,
            });
        }
        if !response.canceled.is_empty() {
            self.stream = None;
            return Err(Error::WatchCanceled(response.canceled));
        }
        self.token = response.token;
        if response.created {
            return Ok(None);
        }
        Ok(Some(if response.events.is_empty() {
            WatchUpdate::Progress
        } else {
            WatchUpdate::Events(response.events)
        }))
    }

    /// Opens the stream from the token, trying the nodes in turn with backoff; returns once
    /// the server said `created`.
    async fn connect(&mut self) -> Result<()> {
        let mut backoff = RECONNECT_BACKOFF_DEFAULT;
        let mut attempts = 0u32;
        loop {
            let channels = self.client.routing.every_node();
            let channel: Channel = channels[self.next_node % channels.len()].clone();
            let request = self.options.to_proto(&self.token);
            let failure = match kv(channel).watch(request).await {
                Ok(response) => {
                    let mut stream = response.into_inner();
                    match stream.message().await {
                        Ok(Some(first)) if first.created => {
                            self.stream = Some(stream);
                            self.take(first)?;
                            return Ok(());
                        }
                        Ok(Some(first)) => {
                            // A compacted or canceled answer fails here; anything else breaks
                            // the protocol.
                            self.take(first)?;
                            return Err(Error::Server {
                                code: Code::Internal,
                                message: "the watch did not begin with `created`".into(),
                            });
                        }
                        Ok(None) => Status::unavailable("the watch ended at once"),
                        Err(status) => status,
                    }
                }
                Err(status) => status,
            };
            if !broken(&failure) {
                return Err(status_error(failure));
            }
            attempts += 1;
            if attempts > self.reconnects_max {
                return Err(status_error(failure));
            }
            self.next_node += 1;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
        }
    }
}

/// Whether a failed stream is to be opened again from the token: the node was unreachable,
/// went away or cut the stream, as opposed to refusing the request.
fn broken(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal | Code::Aborted
    ) || status.code() == Code::DeadlineExceeded
}

fn status_error(status: Status) -> Error {
    if status.code() == Code::OutOfRange && status.message().starts_with("compacted") {
        return Error::Compacted {
            shard: number_after(status.message(), "shard ").unwrap_or(0) as u32,
            revision: number_after(status.message(), "revision ").unwrap_or(0),
        };
    }
    status.into()
}

fn number_after(text: &str, label: &str) -> Option<u64> {
    let rest = &text[text.find(label)? + label.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}
