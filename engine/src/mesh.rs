//! The queues between shards. Every shard has one inbox: a bounded, lock-free
//! `crossbeam` `ArrayQueue` created at start-up, plus an `AtomicWaker` so a push wakes
//! the owning shard only when it is idle (at most one cross-thread wake per drain, not
//! per message).
//!
//! Bounded: [`Mesh::try_send`] hands the message back when the inbox is full. The
//! sender keeps it, in order, in a spill queue of its own (`outgoing.rs`) and registers
//! for room; while any shard holds spilled messages the mesh is *under pressure* and
//! every shard stops reading client frames (publishers are held back) until the spills
//! drain. Nothing is dropped.
//!
//! Architecture invariant: messages from one shard to another arrive in the order they
//! were sent (the queue is FIFO, and a spill keeps order by taking every later message
//! for that destination too). Per-channel order across shards rests on this.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use ringcast_protocol::{ChannelName, ErrorCode, TenantId};

use crate::history::{HistoryPage, HistoryQuery, SubscribeAnswer};
use crate::keys::{ChannelKey, ConnId, RequestId, ShardId};
use crate::presence::{PresenceEvent, PresenceHolder, PresenceMember};
use crate::ren::RenMsg;

/// Default bound of each inbox, in messages.
pub const DEFAULT_INBOX_CAPACITY: usize = 8192;

/// A message crossing from one shard to another (or queued to itself).
#[derive(Debug)]
pub enum ShardMsg {
    /// To the owner: publish on one of its channels.
    Publish(PublishReq),
    /// To the owner: a connection on `from` subscribes.
    Subscribe(SubscribeReq),
    /// To the owner: shard `from` has no subscribers left on `key`.
    Unwatch {
        /// The channel.
        key: ChannelKey,
        /// The shard that stopped watching.
        from: ShardId,
    },
    /// From the owner: a message for the local subscribers of `key`.
    Deliver {
        /// The channel.
        key: ChannelKey,
        /// The encoded frame, shared by every subscriber.
        frame: Bytes,
    },
    /// From the owner: the answer to a `Subscribe`. The subscriber's shard encodes the
    /// `subscribed` event: it may replay fewer messages than the owner sent (the
    /// connection's free room decides), and then says `recovered: false`.
    Subscribed {
        /// The channel.
        key: ChannelKey,
        /// The subscribing connection.
        conn: ConnId,
        /// Which subscribe request this answers.
        request: RequestId,
        /// The replay and the channel's position, or the refusal's error event.
        outcome: Result<SubscribeAnswer, Bytes>,
    },
    /// To the owner: a typed question; the owner answers with [`ShardMsg::Answer`].
    Ask {
        /// Where the answer goes.
        reply: ReplyTo,
        /// What is asked (boxed: the largest question would make every message
        /// in the inboxes bigger).
        question: Box<Question>,
    },
    /// The answer to a `Publish` that asked for one, or to an `Ask`.
    Answer {
        /// The request answered.
        request: RequestId,
        /// The typed answer.
        answer: Answer,
    },
    /// From the owner: a presence change for the local subscribers of `key`, in the
    /// same FIFO as `Deliver` (so it keeps its place among the channel's messages).
    Presence {
        /// The channel.
        key: ChannelKey,
        /// The change, encoded lazily once per spelling and shared by every shard.
        event: Arc<PresenceEvent>,
    },
    /// To an owner, once per housekeeping tick: these connections of `from`, holding
    /// presence in channels of that owner, sent a frame (or ping) since the last one.
    PresenceSeen {
        /// The connections' shard.
        from: ShardId,
        /// The connections seen.
        conns: Vec<ConnId>,
    },
    /// To each owner a connection holds presence with: it closed. Its members stay
    /// until their TTL (a reconnect within it is no leave/join).
    PresenceConnClosed {
        /// The connection's shard.
        from: ShardId,
        /// The connection.
        conn: ConnId,
        /// It was seen since the last `PresenceSeen`.
        seen: bool,
    },
    /// REN: mirrors and app events to a tenant's REN owner, its events to the shards
    /// with streams (see `ren/mod.rs`).
    Ren(RenMsg),
}

/// Where an owner sends its answer: the asking shard and its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyTo {
    /// The asking shard.
    pub shard: ShardId,
    /// The request on that shard.
    pub request: RequestId,
}

/// A typed question to a channel's owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Question {
    /// The channel's latest seq and epoch.
    ChannelState {
        /// The channel.
        key: ChannelKey,
    },
    /// The channel's presence members (expired ones are removed first). Answer:
    /// [`Answer::PresenceMembers`].
    PresenceMembers {
        /// The channel.
        key: ChannelKey,
    },
    /// `user_id` joins (or refreshes its membership: an HTTP join must be repeated
    /// within the TTL). Answer: [`Answer::PresenceJoined`], or `Failed` with
    /// `presence_limit`.
    PresenceJoin {
        /// The channel.
        key: ChannelKey,
        /// The member's key.
        user_id: String,
        /// Raw JSON metadata; `None` keeps what a member had (`null` for a new one).
        metadata: Option<Bytes>,
        /// Who holds the membership: a WebSocket connection or the HTTP API.
        holder: PresenceHolder,
    },
    /// Replaces a member's metadata without a leave/join. Answer:
    /// [`Answer::PresenceUpdated`] (`updated: false` when not a member), or `Failed`
    /// with `presence_limit`.
    PresenceUpdate {
        /// The channel.
        key: ChannelKey,
        /// The member's key.
        user_id: String,
        /// Raw JSON metadata (`None`: `null`).
        metadata: Option<Bytes>,
        /// Who updates: only an HTTP update renews the member's HTTP hold.
        holder: PresenceHolder,
    },
    /// `holder` leaves: a connection's leave removes the member once no other holder
    /// is left; an HTTP leave removes it. Answer: [`Answer::PresenceLeft`].
    PresenceLeave {
        /// The channel.
        key: ChannelKey,
        /// The member's key.
        user_id: String,
        /// Who leaves.
        holder: PresenceHolder,
    },
    /// A page of the channel's history (`GET /api/realtime/history/{channel}`).
    HistoryPage {
        /// The channel.
        key: ChannelKey,
        /// Which messages.
        query: HistoryQuery,
    },
    /// Sent to every shard, not to one owner: the channels of `tenant` this shard owns
    /// that are active (`GET /api/realtime/channels`).
    ActiveChannels {
        /// The tenant.
        tenant: TenantId,
    },
}

/// A typed answer from a channel's owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The publish was appended to history and fanned out.
    Published {
        /// Its seq.
        seq: u64,
        /// Its `ts` (epoch milliseconds).
        ts: u64,
    },
    /// The channel's state.
    ChannelState {
        /// Latest seq (0: never published to in this epoch).
        seq: u64,
        /// The epoch, as sent to clients.
        epoch: String,
    },
    /// The answer to `PresenceMembers`: `{members:[{userId, metadata, lastSeen}]}`.
    PresenceMembers {
        /// By userId.
        members: Vec<PresenceMember>,
    },
    /// The answer to `PresenceJoin`: `{isNew}`.
    PresenceJoined {
        /// The user was not a member before.
        is_new: bool,
    },
    /// The answer to `PresenceUpdate`: `{updated}`.
    PresenceUpdated {
        /// The user was a member and its metadata was replaced.
        updated: bool,
    },
    /// The answer to `PresenceLeave`: `{wasPresent}`.
    PresenceLeft {
        /// The user was a member.
        was_present: bool,
    },
    /// A page of history, oldest first.
    HistoryPage(HistoryPage),
    /// The active channels of a tenant that the answering shard owns.
    ActiveChannels(Vec<ChannelName>),
    /// A publish over the tenant's `publishes_per_minute`: nothing was published.
    RateLimited {
        /// When the tenant may publish again, in whole seconds (`Retry-After`).
        retry_after_secs: u64,
    },
    /// The answer to `RenMsg::Ingest`: every event was given an id (`{ok, accepted}`).
    RenAccepted {
        /// How many.
        accepted: usize,
    },
    /// The request failed at the owner.
    Failed {
        /// The error-event code.
        code: ErrorCode,
        /// What went wrong, for the client.
        message: String,
    },
}

/// A publish on its way to the owner shard.
#[derive(Debug)]
pub struct PublishReq {
    /// The channel.
    pub key: ChannelKey,
    /// The raw JSON of `data`.
    pub data: Bytes,
    /// The `userId` to show on the message.
    pub user_id: Option<Box<str>>,
    /// What some publishes carry (boxed: a plain WebSocket publish stays small, and so
    /// does every inbox slot).
    pub http: Option<Box<PublishExtras>>,
    /// Where the owner sends `Answer::Published` or `Answer::Failed`; `None`: nobody waits.
    pub reply: Option<ReplyTo>,
}

/// The parts of a publish only some give: an HTTP publish's idempotency key, and the
/// client a publish came from (the REN event's `src`).
#[derive(Debug, Default)]
pub struct PublishExtras {
    /// Its idempotency key: a retry with the same key (on the same channel, within the
    /// TTL) is answered with the first publish's seq and ts and publishes nothing.
    pub idempotency_key: Option<Box<str>>,
    /// The client it came from: an HTTP publish's `X-Ren-Client`, a WebSocket publish's
    /// connection `cid` (while its tenant has a REN stream). The `src` of its REN event,
    /// so that client can skip its own writes.
    pub src: Option<Box<str>>,
}

impl PublishExtras {
    /// Whether it carries nothing (then the publish carries no box at all).
    pub fn is_empty(&self) -> bool {
        self.idempotency_key.is_none() && self.src.is_none()
    }
}

/// A subscribe on its way to the owner shard.
#[derive(Debug)]
pub struct SubscribeReq {
    /// The channel.
    pub key: ChannelKey,
    /// The subscriber's shard.
    pub from: ShardId,
    /// The subscriber.
    pub conn: ConnId,
    /// Matches the answer to the request.
    pub request: RequestId,
    /// Replay after this seq.
    pub last_event_id: Option<u64>,
    /// The epoch the client saw `last_event_id` in.
    pub epoch: Option<Box<str>>,
    /// At most this many bytes of replay: half the connection's outbound buffer (its
    /// shard may keep fewer, see [`ShardMsg::Subscribed`]).
    pub max_replay_bytes: u32,
    /// Replay only seqs below this one: the connection was sent the others live (a
    /// resume on a channel it is subscribed to).
    pub replay_below: Option<std::num::NonZeroU64>,
    /// The frame's raw `ref`, echoed by an error event the owner answers with.
    pub reference: Option<Box<[u8]>>,
}

impl Question {
    /// Whether answering it may send every watching shard a message (so it waits out
    /// backpressure as a publish does).
    pub fn fans_out(&self) -> bool {
        matches!(
            self,
            Question::PresenceJoin { .. }
                | Question::PresenceUpdate { .. }
                | Question::PresenceLeave { .. }
        )
    }
}

/// One shard's inbox.
#[derive(Debug)]
pub struct Inbox {
    queue: ArrayQueue<ShardMsg>,
    waker: AtomicWaker,
    /// Set by a bare [`Inbox::wake`], cleared when a wait ends: `AtomicWaker` drops a wake
    /// that finds no waker registered (the shard is busy, between waits), and a bare wake
    /// leaves nothing queued for the next wait to find.
    notified: AtomicBool,
    /// Shards (bit per shard) whose messages to this inbox spilled: woken when it drains.
    waiting_for_room: Vec<AtomicU64>,
}

impl Inbox {
    fn new(capacity: usize, shards: usize) -> Inbox {
        Inbox {
            queue: ArrayQueue::new(capacity.max(1)),
            waker: AtomicWaker::new(),
            notified: AtomicBool::new(false),
            waiting_for_room: (0..shards.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    /// Queues `msg` and wakes the shard if it waits; hands `msg` back when full.
    pub fn try_push(&self, msg: ShardMsg) -> Result<(), ShardMsg> {
        self.queue.push(msg)?;
        self.waker.wake();
        Ok(())
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The bound.
    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }

    /// Wakes the shard that owns this inbox (its loop then looks at every source of work):
    /// its wait now, or its next one when it is not waiting.
    pub fn wake(&self) {
        self.notified.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    /// Waits until a message is queued, the shard is woken or `stop` is set, then moves up
    /// to `max` into `out` (possibly none, after a bare wake or a stop).
    ///
    /// `stop` and the bare-wake flag are read after the waker is registered: a flag set
    /// (then a wake) by another thread while the shard was not waiting is seen here
    /// instead of lost with the wake that found no waker.
    async fn recv_batch_until(&self, out: &mut Vec<ShardMsg>, max: usize, stop: &AtomicBool) {
        let stopped = || stop.load(Ordering::SeqCst);
        let mut woken = false;
        poll_fn(|cx| {
            self.drain_into(out, max);
            if !out.is_empty() || woken || stopped() || self.take_notified() {
                // The turn this wait ends is the one a bare wake asked for.
                self.notified.store(false, Ordering::SeqCst);
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // A push, a stop or a bare wake between the drain and the registration would
            // otherwise be missed.
            self.drain_into(out, max);
            if out.is_empty() && !stopped() && !self.take_notified() {
                woken = true;
                Poll::Pending
            } else {
                self.notified.store(false, Ordering::SeqCst);
                Poll::Ready(())
            }
        })
        .await
    }

    fn take_notified(&self) -> bool {
        self.notified.load(Ordering::SeqCst) && self.notified.swap(false, Ordering::SeqCst)
    }

    /// Waits until a message is queued or the shard is woken, then moves up to `max` into
    /// `out` (possibly none, after a bare wake). For the shutdown grace period, when the
    /// stop flag is already set.
    pub async fn recv_batch(&self, out: &mut Vec<ShardMsg>, max: usize) {
        self.recv_batch_until(out, max, &AtomicBool::new(false))
            .await
    }

    /// Moves up to `max` queued messages into `out` without waiting.
    pub fn try_recv_batch(&self, out: &mut Vec<ShardMsg>, max: usize) {
        self.drain_into(out, max);
    }

    fn drain_into(&self, out: &mut Vec<ShardMsg>, max: usize) {
        while out.len() < max {
            match self.queue.pop() {
                Some(msg) => out.push(msg),
                None => break,
            }
        }
    }

    fn wait_for_room(&self, shard: ShardId) {
        let (word, bit) = (shard.index() / 64, shard.index() % 64);
        self.waiting_for_room[word].fetch_or(1 << bit, Ordering::SeqCst);
    }

    /// The shards waiting for room, cleared.
    fn take_waiting(&self) -> impl Iterator<Item = ShardId> + '_ {
        self.waiting_for_room
            .iter()
            .enumerate()
            .flat_map(|(word, bits)| {
                let taken = if bits.load(Ordering::Relaxed) == 0 {
                    0
                } else {
                    bits.swap(0, Ordering::SeqCst)
                };
                (0..64)
                    .filter(move |b| taken & (1 << b) != 0)
                    .map(move |b| ShardId((word * 64 + b) as u16))
            })
    }
}

/// Every shard's inbox, shared by all shards.
#[derive(Debug)]
pub struct Mesh {
    inboxes: Vec<Inbox>,
    shutting_down: AtomicBool,
    /// Shards holding spilled messages; publishers everywhere wait while it is not zero.
    spilling: AtomicUsize,
    /// During shutdown: shards that still serve someone (all of them until each has
    /// looked). Every shard answers its inbox until it is zero.
    busy: AtomicUsize,
}

impl Mesh {
    /// A mesh of `shards` empty inboxes, each bounded at `capacity` messages.
    pub fn new(shards: usize) -> Arc<Mesh> {
        Mesh::with_capacity(shards, DEFAULT_INBOX_CAPACITY)
    }

    /// A mesh whose inboxes hold at most `capacity` messages each.
    pub fn with_capacity(shards: usize, capacity: usize) -> Arc<Mesh> {
        Arc::new(Mesh {
            inboxes: (0..shards).map(|_| Inbox::new(capacity, shards)).collect(),
            shutting_down: AtomicBool::new(false),
            spilling: AtomicUsize::new(0),
            busy: AtomicUsize::new(shards),
        })
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.inboxes.len()
    }

    /// The inbox of `shard`.
    pub fn inbox(&self, shard: ShardId) -> &Inbox {
        &self.inboxes[shard.index()]
    }

    /// Waits until `shard`'s inbox holds a message, the shard is woken or shutdown is
    /// requested, then moves up to `max` messages into `out` (possibly none).
    pub async fn recv_batch_or_shutdown(
        &self,
        shard: ShardId,
        out: &mut Vec<ShardMsg>,
        max: usize,
    ) {
        self.inbox(shard)
            .recv_batch_until(out, max, &self.shutting_down)
            .await
    }

    /// Sends `msg` to `shard`, handing it back when that inbox is full.
    pub fn try_send(&self, shard: ShardId, msg: ShardMsg) -> Result<(), ShardMsg> {
        self.inbox(shard).try_push(msg)
    }

    /// `from` spilled messages for `to`: wake `from` when `to` has drained some.
    pub fn wait_for_room(&self, to: ShardId, from: ShardId) {
        self.inbox(to).wait_for_room(from);
    }

    /// Called by `shard` after draining its inbox: wakes the shards waiting for room.
    pub fn drained(&self, shard: ShardId) {
        for waiting in self.inbox(shard).take_waiting() {
            self.inbox(waiting).wake();
        }
    }

    /// A shard started holding spilled messages.
    pub fn spill_started(&self) {
        self.spilling.fetch_add(1, Ordering::SeqCst);
    }

    /// A shard's spills drained; the last one wakes every shard so held-back publishers
    /// resume.
    pub fn spill_ended(&self) {
        if self.spilling.fetch_sub(1, Ordering::SeqCst) == 1 {
            for inbox in &self.inboxes {
                inbox.wake();
            }
        }
    }

    /// Whether some shard holds spilled messages (publishers wait).
    pub fn under_pressure(&self) -> bool {
        self.spilling.load(Ordering::Relaxed) != 0
    }

    /// During shutdown: a shard that was counted busy has nothing left to serve, or the
    /// other way round.
    pub fn note_busy(&self, busy: bool) {
        if busy {
            self.busy.fetch_add(1, Ordering::SeqCst);
        } else {
            self.busy.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// During shutdown: whether some shard still serves someone.
    pub fn any_shard_busy(&self) -> bool {
        self.busy.load(Ordering::SeqCst) != 0
    }

    /// Asks every shard to shut down.
    pub fn shutdown_all(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        for inbox in &self.inboxes {
            inbox.wake();
        }
    }

    /// Whether shutdown was requested.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_protocol::{ChannelName, TenantId};

    fn unwatch(from: u16) -> ShardMsg {
        ShardMsg::Unwatch {
            key: ChannelKey::new(TenantId::new("t"), ChannelName::new("c").unwrap()),
            from: ShardId(from),
        }
    }

    #[test]
    fn a_full_inbox_hands_the_message_back() {
        let mesh = Mesh::with_capacity(2, 2);
        assert!(mesh.try_send(ShardId(1), unwatch(0)).is_ok());
        assert!(mesh.try_send(ShardId(1), unwatch(0)).is_ok());
        let back = mesh.try_send(ShardId(1), unwatch(7));
        assert!(matches!(
            back,
            Err(ShardMsg::Unwatch {
                from: ShardId(7),
                ..
            })
        ));
        let mut batch = Vec::new();
        mesh.inbox(ShardId(1)).try_recv_batch(&mut batch, 10);
        assert_eq!(batch.len(), 2);
    }

    #[test]
    fn a_shutdown_requested_before_the_shard_first_waits_ends_the_wait() {
        // The signal thread may set the flag and wake before the shard's loop has ever
        // registered a waker: that wake finds nobody, so the wait must read the flag.
        let mesh = Mesh::new(1);
        mesh.shutdown_all();
        let mut runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        let ended = runtime.block_on(async {
            let mut batch = Vec::new();
            monoio::time::timeout(
                std::time::Duration::from_secs(5),
                mesh.recv_batch_or_shutdown(ShardId(0), &mut batch, 8),
            )
            .await
        });
        assert!(
            ended.is_ok(),
            "the wait missed a shutdown requested before it"
        );
    }

    /// A bare wake (room made, spills ended) that lands while the shard is busy, with no
    /// waker registered, must still end the shard's next wait: nothing is queued for it
    /// to find, and if that wake were lost, the spill it should retry would wait for some
    /// unrelated message, and every held-back publisher with it (found in review).
    #[test]
    fn a_bare_wake_while_the_shard_is_busy_ends_its_next_wait() {
        let mesh = Mesh::new(2);
        // Whether a wait of `shard` ends at its first poll (any later poll ends it too:
        // it was woken).
        let ends_at_once = |shard: u16| {
            let mut batch = Vec::new();
            let wait = mesh.recv_batch_or_shutdown(ShardId(shard), &mut batch, 8);
            let mut wait = std::pin::pin!(wait);
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            std::future::Future::poll(wait.as_mut(), &mut cx).is_ready()
        };
        assert!(!ends_at_once(1), "nothing to do: the wait waits");
        // Shard 1 spilled to shard 0; shard 0 drains while shard 1 is between waits.
        mesh.wait_for_room(ShardId(0), ShardId(1));
        mesh.drained(ShardId(0));
        assert!(ends_at_once(1), "the room-made wake was lost");
        assert!(!ends_at_once(1), "one wake ends one wait");
        // The last spill ends while shard 0 is between waits.
        mesh.spill_started();
        mesh.spill_ended();
        assert!(ends_at_once(0), "the spill-ended wake was lost");
    }

    #[test]
    fn waiting_shards_are_listed_once() {
        let mesh = Mesh::with_capacity(70, 1);
        mesh.wait_for_room(ShardId(0), ShardId(3));
        mesh.wait_for_room(ShardId(0), ShardId(69));
        mesh.wait_for_room(ShardId(0), ShardId(3));
        let waiting: Vec<_> = mesh.inbox(ShardId(0)).take_waiting().collect();
        assert_eq!(waiting, vec![ShardId(3), ShardId(69)]);
        assert_eq!(mesh.inbox(ShardId(0)).take_waiting().count(), 0);
    }

    #[test]
    fn pressure_is_counted_per_spilling_shard() {
        let mesh = Mesh::new(2);
        assert!(!mesh.under_pressure());
        mesh.spill_started();
        mesh.spill_started();
        mesh.spill_ended();
        assert!(mesh.under_pressure());
        mesh.spill_ended();
        assert!(!mesh.under_pressure());
    }
}
