//! A WebSocket connection as its shard sees it: who it is (tenant, subscriptions) and its
//! [`Outbound`] queue, whose goodbye is a WebSocket close frame.
//!
//! The connection is served on its shard by the session task (`session.rs`: reads
//! frames, hands them to the shard) and, for what it is sent, by the shard's send ring
//! (`send_ring.rs`), or by a writer task of its own ([`crate::outbound::run_writer`])
//! where the shard has no ring.

use std::cell::{Cell, RefCell};
use std::num::NonZeroU64;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use ringcast_protocol::event::PresenceSpelling;
use ringcast_protocol::ws::{close_frame, ping_frame};
use ringcast_protocol::{ChannelName, CloseCode};

use crate::clock::Millis;
use crate::keys::{ConnId, RequestId};
use crate::outbound::{ConnState, Outbound, Pushed};
use crate::subs::SubSet;
use crate::tenant::Tenant;
use crate::token::Grant;

/// The state of one of the connection's subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sub {
    /// Sent to the owner; waiting for the answer to this request. `live` is set when the
    /// connection already receives the channel (it subscribes again, or resumes, on a
    /// channel it is subscribed to).
    Pending {
        request: RequestId,
        live: Option<FirstLive>,
    },
    /// Receiving messages, admitted by the answer to this request.
    Active { request: RequestId, live: FirstLive },
}

impl Sub {
    /// The request whose answer the subscription waits for or was admitted by.
    pub fn request(self) -> RequestId {
        match self {
            Sub::Pending { request, .. } | Sub::Active { request, .. } => request,
        }
    }

    /// Since when the connection receives the channel live, if it does.
    pub fn live(self) -> Option<FirstLive> {
        match self {
            Sub::Pending { live, .. } => live,
            Sub::Active { live, .. } => Some(live),
        }
    }
}

/// The first seq a subscription was sent live: one past the `seq` of the answer that
/// made it live. A resume on a subscribed channel replays only the messages before it,
/// since the connection was sent the others live (found in review: a resume arriving
/// just after a plain subscribe was answered, as the SDK's order on open can, replayed
/// messages the connection had already been sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstLive(pub NonZeroU64);

impl FirstLive {
    /// Live after an answer at `seq`.
    pub fn after(seq: u64) -> FirstLive {
        FirstLive(NonZeroU64::new(seq.saturating_add(1)).unwrap_or(NonZeroU64::MAX))
    }

    /// The seq.
    pub fn seq(self) -> u64 {
        self.0.get()
    }
}

/// A channel a connection joined presence in, as its shard records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceHold {
    pub channel: ChannelName,
    /// The userId it joined as.
    pub user: Rc<str>,
    /// The latest join sent for it: only that join's refusal forgets the hold (an
    /// earlier join refused after a later one was accepted must not).
    pub join: RequestId,
    /// The join that made `user` this hold's user: only its answer, or a later one's,
    /// confirms the hold (an answer to a join as an earlier user does not; found in
    /// review).
    pub since: RequestId,
    /// Whether the owner accepted a join of this user: a later join that gets no
    /// answer then leaves the member alone (it was present before). A refused one
    /// drops the hold all the same: the owner refuses only a user it does not have.
    pub confirmed: bool,
}

/// What the idle sweep did with a connection (see [`Conn::check_idle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// It sent something since the last look (or is already closing): nothing to do.
    Heard,
    /// Quiet, already pinged or not yet due.
    Quiet,
    /// Quiet for half the timeout: pinged.
    Pinged,
    /// Quiet for the whole timeout: closed.
    Closed,
    /// The ping found its queue full: closed as a slow consumer (4008).
    Overflowed,
}

/// A WebSocket connection.
pub struct Conn {
    /// Shard-local id.
    pub id: ConnId,
    /// The tenant it belongs to.
    pub tenant: Arc<Tenant>,
    /// Its subscriptions. Touched only by the shard's handlers, never across an `.await`.
    pub subs: RefCell<SubSet>,
    /// The channels it joined presence in, with the userId it joined as (few per
    /// connection, bounded by the tenant's `max_presence_channels_per_connection`; empty
    /// costs no allocation). The members themselves live at each channel's owner.
    pub presence: RefCell<Vec<PresenceHold>>,
    /// Whether it sent a frame since its shard last told the owners it was seen.
    pub presence_seen: Cell<bool>,
    /// Whether it sent anything (any frame, pongs included) since the idle sweep last
    /// looked; set by its session, cleared by the sweep.
    pub heard: Cell<bool>,
    /// Its resumes (subscribes with `lastEventId`) sent to owners and not yet answered.
    /// Each answer may carry up to half the outbound buffer of replay, so the session
    /// stops reading at [`MAX_RESUMES_IN_FLIGHT`] (see [`Conn::may_read`]).
    pub resumes_in_flight: Cell<u8>,
    /// When the idle sweep last found it had sent something (or it was registered).
    last_heard: Cell<Millis>,
    /// When the idle sweep pinged it since then, if it did.
    pinged_at: Cell<Option<Millis>>,
    /// How presence events are spelled for it.
    pub presence_spelling: PresenceSpelling,
    /// What its connection token (`/_rt/ws?token=`) verified: its user, and any
    /// `private-` channels it grants. `None`: an anonymous connection.
    pub grant: Option<Box<Grant>>,
    /// Its client id (`connected.clientId`: the `cid` it gave, else generated), when at
    /// most [`MAX_SRC_LEN`] bytes: the `src` of its publishes' REN events, the id the
    /// SDK's `RenClient` compares with `getClientId()` to skip its own writes.
    pub client_id: Option<Box<str>>,
    out: Outbound,
}

/// The longest client id a connection's publishes carry as their REN `src`.
pub const MAX_SRC_LEN: usize = 128;

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.id)
            .field("tenant", &self.tenant.id)
            .field("out", &self.out)
            .finish()
    }
}

impl AsRef<Outbound> for Conn {
    fn as_ref(&self) -> &Outbound {
        &self.out
    }
}

fn websocket_farewell(code: CloseCode, reason: &str) -> Option<Bytes> {
    Some(close_frame(code, reason))
}

/// A connection's resumes in flight at most: their answers' replay, copied at the owner
/// and queued to this shard, then takes at most the outbound buffer (found in review:
/// 250 resumes in one read made the owner copy and queue about 1 MiB each, 275 MB in
/// all, before any was cut to the room left).
pub const MAX_RESUMES_IN_FLIGHT: u8 = 2;

impl Conn {
    /// Whether its session may act on another text frame: fewer than
    /// [`MAX_RESUMES_IN_FLIGHT`] resumes await their answers, and no answered one waits
    /// for room in its outbound queue ([`Outbound::want_room`]).
    pub fn may_read(&self) -> bool {
        self.resumes_in_flight.get() < MAX_RESUMES_IN_FLIGHT && !self.out.waits_for_room()
    }

    /// A new open connection with an outbound bound of `limit` bytes.
    pub fn new(id: ConnId, tenant: Arc<Tenant>, limit: usize) -> Conn {
        Conn {
            id,
            presence_spelling: tenant.presence_spelling,
            tenant,
            subs: RefCell::new(SubSet::default()),
            presence: RefCell::new(Vec::new()),
            presence_seen: Cell::new(false),
            heard: Cell::new(false),
            resumes_in_flight: Cell::new(0),
            last_heard: Cell::new(Millis(0)),
            pinged_at: Cell::new(None),
            grant: None,
            client_id: None,
            out: Outbound::new(limit, websocket_farewell),
        }
    }

    /// Starts its idle clock: it counts as heard from at `now` (its registration).
    pub fn start_idle_clock(&self, now: Millis) {
        self.last_heard.set(now);
    }

    /// The idle sweep's look at it at `now`: heard since the last look, its clock
    /// restarts; quiet for `ping_after_ms`, it is pinged once (a live peer answers with a
    /// pong, browsers by themselves, even in a background tab whose timers are
    /// throttled); quiet for `close_after_ms` and pinged at an earlier look, it is closed
    /// with 1001 (never without a ping first, however long the sweep took to come round;
    /// found in review). With `ping_after_ms` 0 it is pinged at every look, heard or
    /// not (a presence TTL of 2 s or less: a look that only restarted the clock would
    /// leave two ticks between pings, longer than such a member lasts). Returns what this
    /// look did.
    pub fn check_idle(&self, now: Millis, ping_after_ms: u64, close_after_ms: Option<u64>) -> Idle {
        if self.heard.replace(false) {
            self.last_heard.set(now);
            self.pinged_at.set(None);
            if ping_after_ms > 0 {
                return Idle::Heard;
            }
        }
        if self.state() != ConnState::Open {
            return Idle::Heard;
        }
        let quiet = now.since(self.last_heard.get());
        let Some(pinged_at) = self.pinged_at.get() else {
            if quiet < ping_after_ms {
                return Idle::Quiet;
            }
            self.pinged_at.set(Some(now));
            return match self.out.push(ping_frame()) {
                Pushed::Overflowed => Idle::Overflowed,
                _ => Idle::Pinged,
            };
        };
        // The peer has had half the timeout to answer the ping, however late the ping
        // went out (found in review: after a late sweep, one tick was all it had).
        let closing =
            close_after_ms.is_some_and(|close| quiet >= close && now.since(pinged_at) >= close / 2);
        if closing {
            self.out.close_idle("idle timeout: nothing received");
            return Idle::Closed;
        }
        Idle::Quiet
    }

    /// A ping to send it now, outside the sweep (noted as the sweep's own would be).
    pub fn ping_now(&self, now: Millis) -> Bytes {
        self.pinged_at.set(Some(now));
        ping_frame()
    }

    /// The same connection with presence events spelled `spelling`.
    pub fn with_presence_spelling(mut self, spelling: PresenceSpelling) -> Conn {
        self.presence_spelling = spelling;
        self
    }

    /// The same connection authenticated by a connection token.
    pub fn with_grant(mut self, grant: Option<Grant>) -> Conn {
        self.grant = grant.map(Box::new);
        self
    }

    /// Its client id, kept as its publishes' REN `src` unless longer than
    /// [`MAX_SRC_LEN`].
    pub fn with_client_id(mut self, client_id: &str) -> Conn {
        self.client_id = (client_id.len() <= MAX_SRC_LEN).then(|| Box::from(client_id));
        self
    }

    /// The userId its connection token verified.
    pub fn verified_user(&self) -> Option<&str> {
        self.grant.as_ref()?.user.as_deref()
    }

    /// The userId it joined `channel`'s presence as.
    pub fn presence_user(&self, channel: &ChannelName) -> Option<Rc<str>> {
        let presence = self.presence.borrow();
        presence
            .iter()
            .find(|h| h.channel == *channel)
            .map(|h| h.user.clone())
    }

    /// The outbound queue.
    pub fn outbound(&self) -> &Outbound {
        &self.out
    }

    /// The current state.
    pub fn state(&self) -> ConnState {
        self.out.state()
    }

    /// Queues a frame for writing.
    pub fn push(&self, frame: Bytes) -> Pushed {
        self.out.push(frame)
    }

    /// Drops everything queued, as if written (benchmarks).
    #[doc(hidden)]
    pub fn discard_queued(&self) -> usize {
        self.out.discard_queued()
    }

    /// Starts a close with `code`: the close frame goes after what is queued.
    pub fn close(&self, code: CloseCode, reason: &str) {
        self.out.close(code, reason);
    }

    /// The connection is gone: drop what is queued and stop the writer.
    pub fn mark_closed(&self) {
        self.out.mark_closed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::{Plan, TenantConfig, TenantTable};

    #[test]
    fn a_websocket_connection_says_goodbye_with_a_close_frame() {
        let tenant = TenantTable::new(&[TenantConfig::new("t", Plan::Free)], Some("t"))
            .resolve(None)
            .unwrap();
        let conn = Conn::new(ConnId(1), tenant, 100);
        conn.push(Bytes::from_static(b"x"));
        conn.push(Bytes::from(vec![0u8; 100]));
        let queued = conn.outbound().take_queued();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0][0], 0x88, "a close frame");
        assert_eq!(&queued[0][2..4], &4008u16.to_be_bytes());
    }
}
