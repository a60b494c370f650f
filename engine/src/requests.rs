//! Requests a shard's handlers sent to owner shards, waiting for their typed answers.
//!
//! Every request has an id ([`RequestId`]) and a deadline in the shard's deadline queue.
//! The answer comes back as [`ShardMsg::Answer`](crate::mesh::ShardMsg::Answer) and goes
//! to its waiter: a WebSocket connection (which gets an `ack` or `error` event) or an
//! async task such as an HTTP handler (which awaits an [`AnswerReceiver`]). An answer
//! whose waiter is gone (the connection closed, the task was dropped, the deadline
//! passed) is answered into nothing and counted; a waiter never outlives its deadline.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use hashbrown::HashMap;
use ringcast_protocol::ChannelName;

use crate::clock::Millis;
use crate::deadline::{DeadlineQueue, TimerKey};
use crate::keys::{ConnId, RequestId};
use crate::mesh::Answer;

/// Why a request got no answer from its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestFailed {
    /// The deadline passed.
    #[error("the channel's owner shard did not answer in time")]
    Timeout,
    /// The owner's inbox is full: the request was not sent.
    #[error("the channel's owner shard is overloaded")]
    Overloaded,
    /// The shard stopped before answering.
    #[error("the server is shutting down")]
    Gone,
}

/// Who waits for an answer.
#[derive(Debug)]
pub enum Waiter {
    /// A WebSocket connection's publish: an `ack` (when it had a `ref`) or an `error`.
    Conn {
        /// The publishing connection.
        conn: ConnId,
        /// The channel published to.
        channel: ChannelName,
        /// The publish's raw `ref`.
        reference: Option<Bytes>,
    },
    /// A WebSocket connection's presence action: nothing on success, an `error` event
    /// on failure.
    PresenceConn {
        /// The connection.
        conn: ConnId,
        /// The channel.
        channel: ChannelName,
        /// For a join: the userId it joined as, forgotten from the connection's record
        /// when the owner refuses the join.
        join_as: Option<Rc<str>>,
        /// The frame's raw `ref`, echoed by the error event.
        reference: Option<Bytes>,
    },
    /// An async task on this shard.
    Task(AnswerSender),
    /// A request the shard sent on its own behalf (the leave that undoes a presence join
    /// that timed out): its answer, whatever it is, is dropped.
    Quiet,
}

/// This shard's requests in flight.
#[derive(Debug, Default)]
pub struct PendingRequests {
    waiting: HashMap<RequestId, (Waiter, TimerKey)>,
    deadlines: DeadlineQueue<RequestId>,
}

impl PendingRequests {
    /// Records that `waiter` waits for `request` until `deadline`.
    pub fn insert(&mut self, request: RequestId, waiter: Waiter, deadline: Millis) {
        let timer = self.deadlines.insert(deadline, request);
        self.waiting.insert(request, (waiter, timer));
    }

    /// The waiter of `request`, if it still waits.
    pub fn take(&mut self, request: RequestId) -> Option<Waiter> {
        let (waiter, timer) = self.waiting.remove(&request)?;
        self.deadlines.cancel(timer);
        Some(waiter)
    }

    /// One waiter whose deadline passed by `now`.
    pub fn pop_expired(&mut self, now: Millis) -> Option<(RequestId, Waiter)> {
        let (_, request) = self.deadlines.pop_expired(now)?;
        let (waiter, _) = self.waiting.remove(&request)?;
        Some((request, waiter))
    }

    /// The earliest deadline.
    pub fn next_deadline(&mut self) -> Option<Millis> {
        self.deadlines.next_deadline()
    }

    /// Requests in flight.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether none is in flight.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

/// The outcome a task waits for.
pub type Outcome = Result<Answer, RequestFailed>;

#[derive(Debug, Default)]
struct Slot {
    outcome: Option<Outcome>,
    waker: Option<Waker>,
    receiver_gone: bool,
    sender_gone: bool,
}

/// A one-shot channel on one thread, from the shard's handlers to one waiting task.
pub fn answer_channel() -> (AnswerSender, AnswerReceiver) {
    let slot = Rc::new(RefCell::new(Slot::default()));
    (AnswerSender(slot.clone()), AnswerReceiver(slot))
}

/// Sends one outcome to an [`AnswerReceiver`].
#[derive(Debug)]
pub struct AnswerSender(Rc<RefCell<Slot>>);

impl AnswerSender {
    /// Delivers `outcome`; false when the receiver is gone (nobody was waiting).
    pub fn send(self, outcome: Outcome) -> bool {
        let mut slot = self.0.borrow_mut();
        if slot.receiver_gone {
            return false;
        }
        slot.outcome = Some(outcome);
        if let Some(waker) = slot.waker.take() {
            waker.wake();
        }
        true
    }
}

impl Drop for AnswerSender {
    fn drop(&mut self) {
        let mut slot = self.0.borrow_mut();
        slot.sender_gone = true;
        if let Some(waker) = slot.waker.take() {
            waker.wake();
        }
    }
}

/// Resolves to the outcome of one request (`Gone` if the shard dropped it unanswered).
#[derive(Debug)]
pub struct AnswerReceiver(Rc<RefCell<Slot>>);

impl Future for AnswerReceiver {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut slot = self.0.borrow_mut();
        if let Some(outcome) = slot.outcome.take() {
            return Poll::Ready(outcome);
        }
        if slot.sender_gone {
            return Poll::Ready(Err(RequestFailed::Gone));
        }
        slot.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for AnswerReceiver {
    fn drop(&mut self) {
        self.0.borrow_mut().receiver_gone = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn poll(rx: &mut AnswerReceiver) -> Poll<Outcome> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(rx).poll(&mut cx)
    }

    #[test]
    fn an_answer_reaches_its_task() {
        let (tx, mut rx) = answer_channel();
        assert!(poll(&mut rx).is_pending());
        let answer = Answer::Published { seq: 1, ts: 2 };
        assert!(tx.send(Ok(answer.clone())));
        assert_eq!(poll(&mut rx), Poll::Ready(Ok(answer)));
    }

    #[test]
    fn a_dropped_task_is_answered_into_nothing() {
        let (tx, rx) = answer_channel();
        drop(rx);
        assert!(!tx.send(Err(RequestFailed::Timeout)));
    }

    #[test]
    fn a_dropped_sender_resolves_as_gone() {
        let (tx, mut rx) = answer_channel();
        drop(tx);
        assert_eq!(poll(&mut rx), Poll::Ready(Err(RequestFailed::Gone)));
    }

    #[test]
    fn waiters_expire_at_their_deadline_and_not_after_an_answer() {
        let mut pending = PendingRequests::default();
        let conn = |n| Waiter::Conn {
            conn: ConnId(n),
            channel: ChannelName::new("c").unwrap(),
            reference: None,
        };
        pending.insert(RequestId(1), conn(1), Millis(100));
        pending.insert(RequestId(2), conn(2), Millis(200));
        assert!(pending.take(RequestId(1)).is_some());
        assert!(
            pending.pop_expired(Millis(150)).is_none(),
            "answered: no expiry"
        );
        let (id, _) = pending.pop_expired(Millis(200)).unwrap();
        assert_eq!(id, RequestId(2));
        assert!(
            pending.take(RequestId(2)).is_none(),
            "a late answer finds no waiter"
        );
        assert!(pending.is_empty());
    }
}
