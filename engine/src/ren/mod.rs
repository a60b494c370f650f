//! REN (SPEC §7): the tenant-wide stream of resource events over Server-Sent Events.
//! One role per file: [`activity`] (which tenants mirror at all), [`buffer`] (the bounded
//! resume buffer), [`owner`] (the per-tenant sequence, on the tenant's REN owner shard),
//! [`stream`] (an SSE stream and the shard's table of them), [`serve`] (a stream's
//! tasks). The handlers live in `core/ren.rs`, the HTTP routes in `api/ren.rs`, the wire
//! format in `ringcast_protocol::ren`.
//!
//! ```text
//!  channel owner: owner_publish / announce ──RenMsg::Mirror{parts}──┐  only while the tenant
//!  HTTP task: POST /api/ren/events ──RenMsg::Ingest{chunks, reply}──┤  is active (activity.rs)
//!                                                                   ▼
//!  REN owner = hash(tenant) % shards: id = next of the tenant's sequence, chunk encoded
//!             ONCE (PendingChunk::finish), kept in the tenant's RenBuffer
//!                 │ RenMsg::Deliver{Arc<[RenEntry]>} to every shard with streams of the
//!                 ▼ tenant (itself through the local FIFO)
//!  stream's shard: per filter class, one match test, the same Bytes into each stream's
//!                  Outbound (coalesced writev, 4008-style close when full)
//!
//!  GET /api/maravilla/ren ──► stream registered Pending ──RenMsg::Subscribe{resume}──► owner
//!     owner: watchers += shard, replay (or ren.meta) from the buffer, in the same step
//!     ◄──RenMsg::Subscribed{replay}── stream's shard: head, replay, then live (no gap)
//! ```

pub mod activity;
pub mod buffer;
pub mod owner;
pub mod serve;
pub mod stream;

use std::sync::Arc;

use bytes::Bytes;
use ringcast_protocol::event::PresenceKind;
use ringcast_protocol::ren::IngestEvent;
use ringcast_protocol::{ChannelName, TenantId};

use crate::keys::{ConnId, RequestId, ShardId};
use crate::mesh::ReplyTo;

/// How often every stream gets a `:ping` comment.
pub const PING_MS: u64 = 15_000;

/// One event of a tenant's sequence: its id, its domain (what `s=` filters on), and its
/// complete SSE chunk, shared by every stream that gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenEntry {
    /// Its place in the tenant's sequence (the `id:` line).
    pub id: u64,
    /// `r`.
    pub domain: Arc<str>,
    /// `id: …\nevent: …\ndata: …\n\n`.
    pub chunk: Bytes,
    /// The `private-` channel it mirrors: only streams whose token grants `subscribe`
    /// on it get it. `None` for public channels and app events.
    pub private: Option<ChannelName>,
}

impl RenEntry {
    /// Whether `stream` may see it (its filter aside).
    pub fn visible_to(&self, stream: &stream::RenStream, now_ms: u64) -> bool {
        match &self.private {
            None => true,
            Some(channel) => stream.grant.as_ref().is_some_and(|grant| {
                grant.expires_ms > now_ms
                    && grant
                        .allows(channel.as_str(), crate::token::Permission::Subscribe)
                        .is_ok()
            }),
        }
    }
}

/// Where a (re)connecting stream starts, from `Last-Event-ID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// No id: live events only.
    Fresh,
    /// Everything after this id.
    After(u64),
    /// An id this server never hands out: the stream is told it was truncated.
    Unknown(Box<str>),
}

impl Resume {
    /// Reads a `Last-Event-ID` value (`None` or empty: [`Resume::Fresh`]).
    pub fn parse(value: Option<&str>) -> Resume {
        match value.map(str::trim).filter(|v| !v.is_empty()) {
            None => Resume::Fresh,
            Some(v) => match v.parse::<u64>() {
                Ok(id) => Resume::After(id),
                Err(_) => Resume::Unknown(v.chars().take(64).collect::<String>().into()),
            },
        }
    }
}

/// Something that happened on a channel, as its owner hands it to the tenant's REN owner:
/// the parts of the already-encoded message, not a second encoding.
#[derive(Debug)]
pub enum Mirrored {
    /// A published message (`realtime.message`).
    Message {
        /// The channel.
        channel: ChannelName,
        /// The raw `data`, a slice of the channel's encoded frame (no copy).
        data: Bytes,
        /// The message's `userId`.
        uid: Option<Box<str>>,
        /// The client it came from (`src`; an HTTP publish's `X-Ren-Client`).
        src: Option<Box<str>>,
        /// Its seq (`v`).
        seq: u64,
        /// Its `ts`.
        ts: u64,
    },
    /// A presence change (`presence.join|update|leave`).
    Presence {
        /// The channel.
        channel: ChannelName,
        /// Join, update or leave.
        kind: PresenceKind,
        /// The member.
        uid: Box<str>,
        /// Its metadata (joins and updates).
        metadata: Option<Bytes>,
        /// When.
        ts: u64,
    },
}

/// Who a published message is from, as its REN event names it.
#[derive(Debug, Clone, Copy, Default)]
pub struct MessageOrigin<'a> {
    /// Its `userId` (`uid`).
    pub uid: Option<&'a str>,
    /// The client it came from (`src`).
    pub src: Option<&'a str>,
}

/// What a stream's shard gets back for its subscribe: what to send before live events.
#[derive(Debug, Default)]
pub struct Replay {
    /// `ren.meta` (truncated): the events the stream asked for are no longer all kept.
    pub meta: Option<Bytes>,
    /// Kept events after its `Last-Event-ID`, oldest first (unfiltered: the stream's
    /// shard applies the stream's filter).
    pub events: Vec<RenEntry>,
}

/// The REN messages between shards (one `ShardMsg::Ren` variant carries them all).
#[derive(Debug)]
pub enum RenMsg {
    /// Channel owner → the tenant's REN owner: mirror this.
    Mirror {
        /// The tenant.
        tenant: TenantId,
        /// What happened.
        what: Mirrored,
    },
    /// HTTP task's shard → REN owner: sequence these app events; answer
    /// `Answer::RenAccepted`.
    Ingest {
        /// The tenant.
        tenant: TenantId,
        /// Checked and encoded, waiting for ids.
        events: Vec<IngestEvent>,
        /// Where the answer goes.
        reply: ReplyTo,
    },
    /// Stream's shard → REN owner: a stream of `tenant` opens on `from`.
    Subscribe {
        /// The tenant.
        tenant: TenantId,
        /// The stream's shard.
        from: ShardId,
        /// The stream.
        stream: ConnId,
        /// Matches the answer.
        request: RequestId,
        /// From where.
        resume: Resume,
    },
    /// REN owner → stream's shard: the answer to `Subscribe`.
    Subscribed {
        /// The stream.
        stream: ConnId,
        /// The request answered.
        request: RequestId,
        /// What comes before live events.
        replay: Replay,
    },
    /// Stream's shard → REN owner: no stream of `tenant` is left on `from`.
    Unwatch {
        /// The tenant.
        tenant: TenantId,
        /// The shard.
        from: ShardId,
    },
    /// REN owner → every shard with streams of `tenant`: new events, in id order.
    Deliver {
        /// The tenant.
        tenant: TenantId,
        /// Shared by every shard.
        events: Arc<[RenEntry]>,
    },
}

/// `[ren]` bounds of each tenant's resume buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenLimits {
    /// Events kept.
    pub max_events: usize,
    /// Bytes of chunks kept.
    pub max_bytes: usize,
    /// How long an event is kept, and how long a tenant with no stream keeps mirroring.
    pub max_age_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_ids() {
        assert_eq!(Resume::parse(None), Resume::Fresh);
        assert_eq!(Resume::parse(Some(" ")), Resume::Fresh);
        assert_eq!(Resume::parse(Some("42")), Resume::After(42));
        assert_eq!(Resume::parse(Some("x-1")), Resume::Unknown("x-1".into()));
    }
}
