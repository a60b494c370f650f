//! The queues between shards. Every shard has one inbox: a lock-free `crossbeam`
//! `SegQueue` created at start-up, plus an `AtomicWaker` so a push wakes the owning shard
//! only when it is idle (at most one cross-thread wake per drain, not per message).
//!
//! Architecture invariant: messages from one shard to another arrive in the order they
//! were sent (one producer's pushes to a `SegQueue` are FIFO). Per-channel order across
//! shards rests on this.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use crossbeam_queue::SegQueue;

use crate::keys::{ChannelKey, ConnId, ShardId};

/// A message crossing from one shard to another.
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
    /// From the owner: the answer to a `Subscribe` (replay frames, then `subscribed`).
    Subscribed {
        /// The channel.
        key: ChannelKey,
        /// The subscribing connection.
        conn: ConnId,
        /// Which subscribe request this answers.
        request: u64,
        /// Whether the subscription took effect (false: `frames` holds an error event).
        ok: bool,
        /// Replayed messages followed by the `subscribed` event, or the error event.
        frames: Vec<Bytes>,
    },
    /// From the owner: one frame for one connection (an `ack` or an `error`).
    Reply {
        /// The connection.
        conn: ConnId,
        /// The frame.
        frame: Bytes,
    },
    /// Stop accepting and close every connection with 1001.
    Shutdown,
}

/// Who published, so the owner can answer with `ack` or `error`.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The publisher's shard.
    pub shard: ShardId,
    /// The publisher's connection.
    pub conn: ConnId,
    /// The raw `ref` of the publish, if any.
    pub reference: Option<Bytes>,
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
    /// The publishing connection, when it came over WebSocket.
    pub origin: Option<Origin>,
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
    pub request: u64,
    /// Replay after this seq.
    pub last_event_id: Option<u64>,
    /// The epoch the client saw `last_event_id` in.
    pub epoch: Option<String>,
}

/// One shard's inbox.
#[derive(Debug, Default)]
pub struct Inbox {
    queue: SegQueue<ShardMsg>,
    waker: AtomicWaker,
}

impl Inbox {
    /// Queues `msg` and wakes the shard if it waits.
    pub fn push(&self, msg: ShardMsg) {
        self.queue.push(msg);
        self.waker.wake();
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Waits until at least one message is queued, then moves up to `max` into `out`.
    pub async fn recv_batch(&self, out: &mut Vec<ShardMsg>, max: usize) {
        poll_fn(|cx| {
            self.drain_into(out, max);
            if !out.is_empty() {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // A push between the drain and the registration would otherwise be missed.
            self.drain_into(out, max);
            if out.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
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
}

/// Every shard's inbox, shared by all shards.
#[derive(Debug)]
pub struct Mesh {
    inboxes: Vec<Inbox>,
    shutting_down: AtomicBool,
}

impl Mesh {
    /// A mesh of `shards` empty inboxes.
    pub fn new(shards: usize) -> Arc<Mesh> {
        Arc::new(Mesh {
            inboxes: (0..shards).map(|_| Inbox::default()).collect(),
            shutting_down: AtomicBool::new(false),
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

    /// Sends `msg` to `shard`.
    pub fn send(&self, shard: ShardId, msg: ShardMsg) {
        self.inbox(shard).push(msg);
    }

    /// Asks every shard to shut down.
    pub fn shutdown_all(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        for inbox in &self.inboxes {
            inbox.push(ShardMsg::Shutdown);
        }
    }

    /// Whether shutdown was requested.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// The deepest inbox, used to hold back publishers when the owners fall behind.
    pub fn deepest_inbox(&self) -> usize {
        self.inboxes.iter().map(Inbox::len).max().unwrap_or(0)
    }
}
