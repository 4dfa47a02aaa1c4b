//! Client-side caching on a RESP connection: `CLIENT TRACKING`, `CLIENT CACHING`,
//! `CLIENT GETREDIR`, `CLIENT TRACKINGINFO` with Redis's options, replies and errors, and the
//! invalidations pushed to a connection ([`invalidation_frame`]): a RESP3 `invalidate` push,
//! or, for a RESP2 connection that others redirect to, a message on `__redis__:invalidate`.
//! The table of who cached what is [`crate::tracking`].
//!
//! `NOLOOP`: a client is not told of the changes it made itself when the node knows which
//! entry carried them (its writes to shards this node leads); a write forwarded to another
//! node, or spread over shards, is told as others' are. An extra invalidation costs the
//! client a cache miss, never a stale value. See [`crate::tracking`].

use bytes::Bytes;
use cairn_resp::{Frame, Protocol};

use crate::resp::session::{Session, Shared};
use crate::tracking::{Invalidation, Mode};

/// The channel a RESP2 connection subscribes to for the invalidations redirected to it.
pub const INVALIDATE_CHANNEL: &str = "__redis__:invalidate";

/// A connection's tracking options while tracking is on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// The connection invalidations go to (`REDIRECT`); 0 for this one.
    pub redirect: u64,
    pub bcast: bool,
    pub prefixes: Vec<Bytes>,
    pub optin: bool,
    pub optout: bool,
    pub noloop: bool,
}

fn err(text: &str) -> Frame {
    Frame::Error(Bytes::copy_from_slice(text.as_bytes()))
}

fn bulk(text: &'static str) -> Frame {
    Frame::Bulk(Bytes::from_static(text.as_bytes()))
}

fn eq(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}

/// `CLIENT TRACKING on|off [REDIRECT id] [PREFIX p]... [BCAST] [OPTIN] [OPTOUT] [NOLOOP]`
/// (`args` from `TRACKING` on).
pub fn tracking(args: &[Bytes], session: &mut Session, shared: &Shared) -> Frame {
    let mut options = Options::default();
    let mut redirect_given = false;
    let mut j = 1;
    while j < args.len() {
        let more = args.len() - j - 1;
        let arg = &args[j];
        if eq(arg, "redirect") && more >= 1 {
            if redirect_given {
                return err("ERR A client can only redirect to a single other client");
            }
            let Some(id) = cairn_resp::parse_i64(&args[j + 1]) else {
                return err("ERR value is not an integer or out of range");
            };
            redirect_given = true;
            options.redirect = id.max(0) as u64;
            j += 2;
        } else if eq(arg, "bcast") {
            options.bcast = true;
            j += 1;
        } else if eq(arg, "optin") {
            options.optin = true;
            j += 1;
        } else if eq(arg, "optout") {
            options.optout = true;
            j += 1;
        } else if eq(arg, "noloop") {
            options.noloop = true;
            j += 1;
        } else if eq(arg, "prefix") && more >= 1 {
            options.prefixes.push(args[j + 1].clone());
            j += 2;
        } else {
            return err("ERR syntax error");
        }
    }
    if eq(&args[0], "off") {
        shared.tracking.disable(session.id);
        session.tracking = None;
        session.caching = None;
        return Frame::ok();
    }
    if !eq(&args[0], "on") {
        return err("ERR syntax error");
    }
    if redirect_given
        && (options.redirect == 0
            || (options.redirect != session.id && !shared.clients.exists(options.redirect)))
    {
        return err("ERR The client ID you want redirect to does not exist");
    }
    if !options.bcast && !options.prefixes.is_empty() {
        return err("ERR PREFIX option requires BCAST mode to be enabled");
    }
    if let Some(current) = &session.tracking {
        if current.bcast != options.bcast {
            return err(
                "ERR You can't switch BCAST mode on/off before disabling tracking for this client, and then re-enabling it with a different mode.",
            );
        }
    }
    if options.optin && options.optout {
        return err("ERR You can't specify both OPTIN mode and OPTOUT mode");
    }
    if (options.optin || options.optout) && options.bcast {
        return err("ERR OPTIN and OPTOUT are not compatible with BCAST");
    }
    // Prefixes accumulate over calls, as in Redis; none may overlap another (Redis's order
    // of checks: each new one against those held, then against the new ones after it).
    let held = session
        .tracking
        .as_ref()
        .map(|t| t.prefixes.clone())
        .unwrap_or_default();
    let overlap = |a: &Bytes, b: &Bytes| a.starts_with(b) || b.starts_with(a);
    for (i, prefix) in options.prefixes.iter().enumerate() {
        if let Some(other) = held.iter().find(|p| overlap(p, prefix)) {
            return err(&format!(
                "ERR Prefix '{}' overlaps with an existing prefix '{}'. Prefixes for a single client must not overlap.",
                String::from_utf8_lossy(prefix),
                String::from_utf8_lossy(other)
            ));
        }
        if let Some(other) = options.prefixes[i + 1..]
            .iter()
            .find(|p| overlap(p, prefix))
        {
            return err(&format!(
                "ERR Prefix '{}' overlaps with another provided prefix '{}'. Prefixes for a single client must not overlap.",
                String::from_utf8_lossy(prefix),
                String::from_utf8_lossy(other)
            ));
        }
    }
    let mut prefixes = held;
    for prefix in &options.prefixes {
        if !prefixes.contains(prefix) {
            prefixes.push(prefix.clone());
        }
    }
    prefixes.sort();
    options.prefixes = prefixes;
    let sink = if options.redirect == 0 {
        session.id
    } else {
        options.redirect
    };
    let mode = Mode {
        sink,
        bcast: options.bcast.then(|| options.prefixes.clone()),
    };
    // The answer waits for it to stand (`Action::Standing`).
    shared.tracking.start(&shared.node);
    if let Err(e) = shared.tracking.enable(session.id, mode) {
        return err(e);
    }
    if sink == session.id && session.invalidations.is_none() {
        session.invalidations = Some(shared.tracking.inbox(session.id));
    }
    session.tracking = Some(options);
    Frame::ok()
}

/// `CLIENT CACHING yes|no`: whether the next command's reads are tracked (OPTIN / OPTOUT).
pub fn caching(args: &[Bytes], session: &mut Session) -> Frame {
    let Some(options) = &session.tracking else {
        return err(
            "ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled",
        );
    };
    if eq(&args[0], "yes") {
        if !options.optin {
            return err(
                "ERR CLIENT CACHING YES is only valid when tracking is enabled in OPTIN mode.",
            );
        }
        session.caching = Some(true);
    } else if eq(&args[0], "no") {
        if !options.optout {
            return err(
                "ERR CLIENT CACHING NO is only valid when tracking is enabled in OPTOUT mode.",
            );
        }
        session.caching = Some(false);
    } else {
        return err("ERR syntax error");
    }
    Frame::ok()
}

/// `CLIENT GETREDIR`: -1 without tracking, 0 without a redirect, else the connection's id.
pub fn getredir(session: &Session) -> Frame {
    Frame::Integer(session.tracking.as_ref().map_or(-1, |t| t.redirect as i64))
}

/// `CLIENT TRACKINGINFO`: flags, redirect and prefixes.
pub fn trackinginfo(session: &Session, shared: &Shared) -> Frame {
    let mut flags = Vec::new();
    match &session.tracking {
        None => flags.push(bulk("off")),
        Some(t) => {
            flags.push(bulk("on"));
            for (set, name) in [
                (t.bcast, "bcast"),
                (t.optin, "optin"),
                (t.optout, "optout"),
                (session.caching == Some(true), "caching-yes"),
                (session.caching == Some(false), "caching-no"),
                (t.noloop, "noloop"),
                (
                    t.redirect != 0 && !shared.clients.exists(t.redirect),
                    "broken_redirect",
                ),
            ] {
                if set {
                    flags.push(bulk(name));
                }
            }
        }
    }
    let prefixes = session
        .tracking
        .as_ref()
        .map(|t| t.prefixes.iter().cloned().map(Frame::Bulk).collect())
        .unwrap_or_default();
    Frame::Map(vec![
        (bulk("flags"), Frame::Set(flags)),
        (bulk("redirect"), getredir(session)),
        (bulk("prefixes"), Frame::Array(prefixes)),
    ])
}

/// Whether the connection tracks with `NOLOOP` (its own changes are not told to it).
pub fn noloop(session: &Session) -> bool {
    session.tracking.as_ref().is_some_and(|t| t.noloop)
}

/// Whether this connection's reads of its next command are to be remembered (tracking on in
/// default mode, and OPTIN's `CACHING yes` or no OPTOUT `CACHING no` before it).
pub fn tracks_reads(session: &Session) -> bool {
    match &session.tracking {
        Some(t) if !t.bcast => {
            if t.optin {
                session.caching == Some(true)
            } else if t.optout {
                session.caching != Some(false)
            } else {
                true
            }
        }
        _ => false,
    }
}

/// How an invalidation reaches this connection: a RESP3 push, or for a RESP2 connection
/// subscribed to [`INVALIDATE_CHANNEL`] a message there; `None` when it has no way to take it.
pub fn invalidation_frame(invalidation: Invalidation, session: &Session) -> Option<Frame> {
    let keys = match invalidation {
        Invalidation::Keys(keys) => Frame::Array(keys.into_iter().map(Frame::Bulk).collect()),
        Invalidation::All => Frame::Null,
    };
    if session.protocol == Protocol::Resp3 {
        return Some(Frame::Push(vec![bulk("invalidate"), keys]));
    }
    let subscribed = session
        .subscriber
        .as_ref()
        .is_some_and(|s| s.is_subscribed(INVALIDATE_CHANNEL.as_bytes()));
    subscribed.then(|| {
        Frame::Push(vec![
            bulk("message"),
            Frame::Bulk(Bytes::from_static(INVALIDATE_CHANNEL.as_bytes())),
            keys,
        ])
    })
}
