//! The client's error type: gRPC status codes mapped to the failure kinds a caller acts on
//! (a missing key, a failed condition, bad input, an unreachable node), so callers match on
//! meaning instead of on `tonic::Code`.

use tonic::{Code, Status};

/// What went wrong with a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The endpoint string is not a valid URI.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    /// The key does not exist (or has expired).
    #[error("record not found")]
    NotFound,
    /// A put/delete condition (if-absent, if-present, if-version) did not hold; nothing was
    /// written.
    #[error("condition failed: {0}")]
    ConditionFailed(String),
    /// The request was refused as malformed or above a limit.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The node could not be reached or asked to retry, and the retry budget ran out.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The server lost track of a write (its leader changed or stepped down while the write
    /// was in flight): it may or may not have been applied. Never retried automatically; read
    /// the key back before deciding.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The request did not finish within the configured timeout.
    #[error("timed out: {0}")]
    Timeout(String),
    /// A watch's history is gone: it may resume only from `revision` of `shard` on (read
    /// the keys again, then watch from a fresh token).
    #[error("compacted: shard {shard} keeps history only after revision {revision}")]
    Compacted { shard: u32, revision: u64 },
    /// The server ended a watch, for the reason given (a client that did not read, a node
    /// shutting down).
    #[error("watch canceled: {0}")]
    WatchCanceled(String),
    /// Any other gRPC failure.
    #[error("server error ({code:?}): {message}")]
    Server { code: Code, message: String },
}

impl Error {
    /// Whether retrying the same request against the same cluster may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        let message = status.message().to_string();
        match status.code() {
            Code::NotFound => Error::NotFound,
            Code::FailedPrecondition => Error::ConditionFailed(message),
            Code::InvalidArgument | Code::OutOfRange => Error::InvalidArgument(message),
            Code::Unavailable => Error::Unavailable(message),
            Code::DeadlineExceeded => Error::Timeout(message),
            Code::Unknown if message.contains("outcome unknown") => Error::OutcomeUnknown(message),
            // tonic reports its own client-side timeout as CANCELLED "Timeout expired".
            Code::Cancelled if message.contains("imeout") => Error::Timeout(message),
            code => Error::Server { code, message },
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_failure_kinds() {
        assert!(matches!(
            Error::from(Status::not_found("x")),
            Error::NotFound
        ));
        assert!(matches!(
            Error::from(Status::failed_precondition("x")),
            Error::ConditionFailed(_)
        ));
        assert!(matches!(
            Error::from(Status::invalid_argument("x")),
            Error::InvalidArgument(_)
        ));
        assert!(matches!(
            Error::from(Status::out_of_range("too large")),
            Error::InvalidArgument(_)
        ));
        assert!(matches!(
            Error::from(Status::deadline_exceeded("x")),
            Error::Timeout(_)
        ));
        assert!(matches!(
            Error::from(Status::cancelled("Timeout expired")),
            Error::Timeout(_)
        ));
        assert!(matches!(
            Error::from(Status::cancelled("gone")),
            Error::Server {
                code: Code::Cancelled,
                ..
            }
        ));
        let unknown = Error::from(Status::unknown("ERR outcome unknown: leader changed"));
        assert!(matches!(unknown, Error::OutcomeUnknown(_)), "{unknown:?}");
        assert!(!unknown.is_retryable());
        let unavailable = Error::from(Status::unavailable("down"));
        assert!(unavailable.is_retryable());
        assert!(!Error::NotFound.is_retryable());
    }
}
