//! Typed errors of command execution, worded as Redis words them so the RESP front end can send
//! `-{error}` as is; other front ends map the variant to their own status codes.

/// Why a command failed. `Display` is the exact Redis error line (without the leading `-`).
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("ERR value is not an integer or out of range")]
    NotInteger,
    #[error("ERR increment or decrement would overflow")]
    Overflow,
    #[error("ERR value is not a valid float")]
    NotFloat,
    #[error("ERR increment would produce NaN or Infinity")]
    NanOrInfinity,
    #[error("ERR no such key")]
    NoSuchKey,
    /// The expiry is out of range; the field is the lowercase command name (`set`, `expire`).
    #[error("ERR invalid expire time in '{0}' command")]
    InvalidExpireTime(std::borrow::Cow<'static, str>),
    #[error("ERR offset is out of range")]
    OffsetOutOfRange,
    /// APPEND/SETRANGE would grow the value past the value limit.
    #[error("ERR string exceeds maximum allowed size (proto-max-bulk-len)")]
    StringTooLong,
    #[error("ERR key is {len} bytes; the limit is {max}")]
    KeyTooLarge { len: usize, max: usize },
    #[error("ERR value is {len} bytes; the limit is {max}")]
    ValueTooLarge { len: usize, max: usize },
    #[error("ERR syntax error")]
    Syntax,
    /// A request the front end could not express otherwise; the text follows `ERR `.
    #[error("ERR {0}")]
    Invalid(String),
    /// The node is shutting down and takes no more writes.
    #[error("ERR node is shutting down")]
    ShuttingDown,
    /// A write could not be made durable; the node refuses writes from now on, and the text
    /// says why.
    #[error("ERR node refuses writes: {0}")]
    Fatal(String),
    /// A storage error that did not stop the node (e.g. a read error).
    #[error("ERR storage error: {0}")]
    Storage(String),
    /// A multi-key write whose keys live in different slots, where the caller asked for
    /// Redis Cluster's rule (cross-shard transactions lift it for the node's own requests).
    #[error("CROSSSLOT Keys in request don't hash to the same slot")]
    CrossSlot,
    /// A key of the request is locked by a cross-shard transaction in progress: nothing was
    /// done. [`crate::node::Node::execute`] waits for the transaction (resolving it when it
    /// outlived its deadline) and retries; a client that sees this may retry too.
    #[error("TRYAGAIN a key is locked by transaction {:032x} in progress", .0.lock.txn)]
    Locked(crate::txn::LockHolder),
    /// A transaction step refused because the transaction was aborted (by a resolver that
    /// found it past its deadline): nothing of it was or will be applied.
    #[error("TRYAGAIN the transaction was aborted before it committed")]
    TxnAborted,
    /// A transaction step refused because a key the transaction read at its primary changed
    /// since (or the keys it read can no longer be seen at one instant): nothing was done,
    /// and its coordinator starts it over.
    #[error("TRYAGAIN a key the transaction read changed before its commit")]
    ReadChanged,
    /// The shard cannot take the request right now (no leader, leader changing); nothing was
    /// done, and the request may be retried.
    #[error("TRYAGAIN {0}")]
    TryAgain(String),
    /// The write was handed to the shard's log but its fate is unknown (the leader changed
    /// before it was known to be committed): it may or may not have happened.
    #[error("ERR outcome unknown: {0}; the write may or may not have been applied")]
    OutcomeUnknown(String),
}

impl CommandError {
    /// A refusal: nothing happened, and the request may be sent again.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            CommandError::TryAgain(_)
                | CommandError::Locked(_)
                | CommandError::TxnAborted
                | CommandError::ReadChanged
        )
    }

    /// The answer to a write the shard's proposer took and then dropped unanswered (it
    /// stopped: shutdown, or its group failed): it may have been proposed and committed.
    pub fn proposer_stopped() -> CommandError {
        CommandError::OutcomeUnknown("the shard's proposer stopped with the write in flight".into())
    }
}

impl From<cairn_storage::Error> for CommandError {
    fn from(e: cairn_storage::Error) -> Self {
        match e {
            cairn_storage::Error::KeyTooLarge { len, max } => {
                CommandError::KeyTooLarge { len, max }
            }
            cairn_storage::Error::ValueTooLarge { len, max } => {
                CommandError::ValueTooLarge { len, max }
            }
            cairn_storage::Error::Poisoned(m) => CommandError::Fatal(m),
            other => CommandError::Storage(other.to_string()),
        }
    }
}
