//! One WebSocket connection's shared state and its writer task.
//!
//! A connection is served by two tasks on its shard: the session (reads frames, acts on
//! them) and the writer (drains the outbound queue with `writev`). Fan-out only appends
//! shared `Bytes` to the queue and wakes the writer; everything queued while the writer
//! was busy goes out in the next single `writev` — the per-connection coalescing.
//!
//! The queue is bounded by `outbound_buffer_bytes` (queued plus in flight). A push that
//! would exceed it drops what is queued and closes the connection with 4008.
//!
//! A busy connection keeps its queue's and batch's memory from one write to the next (no
//! regrowing them per batch); the shard's once-a-second sweep ([`Conn::sweep_idle`]) gives
//! that memory back once a connection has written nothing for a whole tick, so idle
//! connections hold none.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use hashbrown::HashMap;
use monoio::io::{AsyncWriteRent, OwnedWriteHalf};
use monoio::net::TcpStream;
use ringcast_protocol::ws::close_frame;
use ringcast_protocol::{ChannelName, CloseCode};

use crate::iovec::FrameBatch;
use crate::keys::ConnId;
use crate::tenant::Tenant;

/// How long a closing connection may take to flush its last frames.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Serving.
    Open,
    /// A close frame with this code is queued; flush, then shut the socket down.
    Closing(CloseCode),
    /// Gone: stop writing.
    Closed,
}

/// The state of one of the connection's subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sub {
    /// Sent to the owner; waiting for the answer with this request number.
    Pending(u64),
    /// Receiving messages.
    Active,
}

/// What happened to a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued for writing.
    Queued,
    /// The connection is closing; the frame was dropped.
    Dropped,
    /// The buffer overflowed: the connection is now closing with 4008.
    Overflowed,
}

/// Whether the connection holds write buffers the idle sweep should give back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Buffers {
    /// Nothing held (new, or trimmed by the sweep).
    Released,
    /// Written since the last sweep.
    Busy,
    /// Nothing written since the last sweep: the next one trims.
    Idle,
}

#[derive(Debug)]
struct Outbound {
    frames: VecDeque<Bytes>,
    /// Queued plus in-flight bytes.
    bytes: usize,
    limit: usize,
    state: ConnState,
}

/// A connection as its shard sees it.
pub struct Conn {
    /// Shard-local id.
    pub id: ConnId,
    /// The tenant it belongs to.
    pub tenant: Arc<Tenant>,
    /// Its subscriptions.
    pub subs: RefCell<HashMap<ChannelName, Sub>>,
    out: RefCell<Outbound>,
    writer_waker: Cell<Option<Waker>>,
    session_waker: Cell<Option<Waker>>,
    buffers: Cell<Buffers>,
    /// Set by the sweep: the writer gives back its batch's memory at its next turn.
    trim_requested: Cell<bool>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.id)
            .field("tenant", &self.tenant.id)
            .field("state", &self.state())
            .finish()
    }
}

impl Conn {
    /// A new open connection with an outbound bound of `limit` bytes.
    pub fn new(id: ConnId, tenant: Arc<Tenant>, limit: usize) -> Conn {
        Conn {
            id,
            tenant,
            subs: RefCell::new(HashMap::new()),
            out: RefCell::new(Outbound {
                frames: VecDeque::new(),
                bytes: 0,
                limit,
                state: ConnState::Open,
            }),
            writer_waker: Cell::new(None),
            session_waker: Cell::new(None),
            buffers: Cell::new(Buffers::Released),
            trim_requested: Cell::new(false),
        }
    }

    /// The current state.
    pub fn state(&self) -> ConnState {
        self.out.borrow().state
    }

    /// Queues a frame for writing.
    pub fn push(&self, frame: Bytes) -> Pushed {
        let mut out = self.out.borrow_mut();
        if out.state != ConnState::Open {
            return Pushed::Dropped;
        }
        if out.bytes + frame.len() > out.limit {
            // Memory stays bounded: what is queued goes; the client catches up from history.
            out.frames.clear();
            out.bytes = 0;
            out.state = ConnState::Closing(CloseCode::SLOW_CONSUMER);
            out.frames
                .push_back(close_frame(CloseCode::SLOW_CONSUMER, "slow consumer"));
            drop(out);
            self.wake_both();
            return Pushed::Overflowed;
        }
        out.bytes += frame.len();
        let was_empty = out.frames.is_empty();
        out.frames.push_back(frame);
        drop(out);
        if was_empty {
            wake(&self.writer_waker);
        }
        Pushed::Queued
    }

    /// Drops everything queued, as if it had been written (benchmarks use this to
    /// measure fan-out without a socket).
    #[doc(hidden)]
    pub fn discard_queued(&self) -> usize {
        let mut out = self.out.borrow_mut();
        let n = out.frames.len();
        out.frames.clear();
        out.bytes = 0;
        n
    }

    /// Starts a close with `code`: the close frame goes after what is queued.
    pub fn close(&self, code: CloseCode, reason: &str) {
        let mut out = self.out.borrow_mut();
        if out.state != ConnState::Open {
            return;
        }
        out.state = ConnState::Closing(code);
        out.frames.push_back(close_frame(code, reason));
        drop(out);
        self.wake_both();
    }

    /// The connection is gone: drop what is queued and stop the writer.
    pub fn mark_closed(&self) {
        let mut out = self.out.borrow_mut();
        out.state = ConnState::Closed;
        out.frames.clear();
        out.bytes = 0;
        drop(out);
        self.wake_both();
    }

    /// Called by the shard once per housekeeping tick: a connection that wrote nothing
    /// since the previous tick gives back its queue's memory now and its writer's batch
    /// at the writer's next turn.
    pub fn sweep_idle(&self) {
        match self.buffers.get() {
            Buffers::Released => {}
            Buffers::Busy => self.buffers.set(Buffers::Idle),
            Buffers::Idle => {
                self.buffers.set(Buffers::Released);
                let mut out = self.out.borrow_mut();
                if out.frames.is_empty() {
                    out.frames = VecDeque::new();
                }
                drop(out);
                self.trim_requested.set(true);
                wake(&self.writer_waker);
            }
        }
    }

    /// Resolves once the connection is no longer open.
    pub async fn until_not_open(&self) {
        poll_fn(|cx| {
            if self.state() != ConnState::Open {
                return Poll::Ready(());
            }
            register(&self.session_waker, cx.waker());
            Poll::Pending
        })
        .await
    }

    async fn until_closed(&self) {
        poll_fn(|cx| {
            if self.state() == ConnState::Closed {
                return Poll::Ready(());
            }
            register(&self.writer_waker, cx.waker());
            Poll::Pending
        })
        .await
    }

    /// Resolves when there is something to write, the state changed, or the sweep asked
    /// for the batch's memory back.
    async fn until_writable(&self) {
        poll_fn(|cx| {
            let out = self.out.borrow();
            if !out.frames.is_empty() || out.state != ConnState::Open || self.trim_requested.get() {
                return Poll::Ready(());
            }
            register(&self.writer_waker, cx.waker());
            Poll::Pending
        })
        .await
    }

    fn wake_both(&self) {
        wake(&self.writer_waker);
        wake(&self.session_waker);
    }
}

/// Stores `waker` in `slot`, cloning only when the slot does not already hold one that
/// wakes the same task (a task polled again without being woken keeps its waker).
fn register(slot: &Cell<Option<Waker>>, waker: &Waker) {
    match slot.take() {
        Some(held) if held.will_wake(waker) => slot.set(Some(held)),
        _ => slot.set(Some(waker.clone())),
    }
}

fn wake(slot: &Cell<Option<Waker>>) {
    if let Some(waker) = slot.take() {
        waker.wake();
    }
}

/// The writer task: one `writev` per turn with everything queued, until closed.
pub async fn run_writer(conn: Rc<Conn>, mut writer: OwnedWriteHalf<TcpStream>) {
    let mut batch = FrameBatch::default();
    loop {
        conn.until_writable().await;
        if conn.trim_requested.replace(false) {
            batch.trim();
        }
        let state = {
            let mut out = conn.out.borrow_mut();
            batch.fill_from(&mut out.frames);
            out.state
        };
        if batch.is_empty() {
            if state != ConnState::Open {
                break;
            }
            continue;
        }
        let written = if state == ConnState::Open {
            // Boxed: the write's state (the in-flight op, the select) lives on the heap
            // only while writing, so an idle connection's task is 112 bytes, not 352.
            // One small allocation per batch; W1 showed no difference in CPU per delivery.
            Box::pin(write_batch(&conn, &mut writer, &mut batch)).await
        } else {
            // Closing: the last frames get a deadline (boxed: a rare path kept out of
            // every idle connection's task).
            let flush = monoio::time::timeout(
                CLOSE_FLUSH_TIMEOUT,
                write_batch(&conn, &mut writer, &mut batch),
            );
            Box::pin(flush).await.unwrap_or(false)
        };
        if !written {
            conn.mark_closed();
            return;
        }
        conn.buffers.set(Buffers::Busy);
    }
    if matches!(conn.state(), ConnState::Closing(_)) {
        let _ = Box::pin(monoio::time::timeout(
            CLOSE_FLUSH_TIMEOUT,
            writer.shutdown(),
        ))
        .await;
    }
}

/// Writes the whole batch; false when the socket failed or the connection went away.
async fn write_batch(
    conn: &Conn,
    writer: &mut OwnedWriteHalf<TcpStream>,
    batch: &mut FrameBatch,
) -> bool {
    while !batch.is_empty() {
        let write = writer.writev(std::mem::take(batch));
        let result = monoio::select! {
            result = write => Some(result),
            _ = conn.until_closed() => None,
        };
        let Some((result, returned)) = result else {
            return false;
        };
        *batch = returned;
        match result {
            Ok(0) | Err(_) => return false,
            Ok(written) => {
                batch.advance(written);
                let mut out = conn.out.borrow_mut();
                out.bytes = out.bytes.saturating_sub(written);
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::{Plan, TenantConfig, TenantTable};

    fn conn(limit: usize) -> Conn {
        let tenant = TenantTable::new(&[TenantConfig::new("t", Plan::Free)], Some("t"))
            .resolve(None)
            .unwrap();
        Conn::new(ConnId(1), tenant, limit)
    }

    #[test]
    fn overflow_closes_with_4008_and_frees_the_queue() {
        let c = conn(100);
        assert_eq!(c.push(Bytes::from(vec![0u8; 60])), Pushed::Queued);
        assert_eq!(c.push(Bytes::from(vec![0u8; 60])), Pushed::Overflowed);
        assert_eq!(c.state(), ConnState::Closing(CloseCode::SLOW_CONSUMER));
        let out = c.out.borrow();
        assert_eq!(out.frames.len(), 1, "only the close frame is left");
        assert_eq!(&out.frames[0][2..4], &4008u16.to_be_bytes());
        drop(out);
        assert_eq!(c.push(Bytes::from_static(b"x")), Pushed::Dropped);
    }

    #[test]
    fn idle_sweep_gives_buffers_back_only_after_a_quiet_tick() {
        let c = conn(1000);
        c.push(Bytes::from_static(b"a"));
        c.discard_queued();
        c.buffers.set(Buffers::Busy); // what the writer records after a write
        c.sweep_idle();
        assert!(
            c.out.borrow().frames.capacity() > 0,
            "written this tick: kept"
        );
        assert!(!c.trim_requested.get());
        c.sweep_idle();
        assert_eq!(
            c.out.borrow().frames.capacity(),
            0,
            "a quiet tick: released"
        );
        assert!(
            c.trim_requested.get(),
            "the writer is asked to trim its batch"
        );
        assert_eq!(c.buffers.get(), Buffers::Released);
    }

    #[test]
    fn close_queues_behind_pending_frames() {
        let c = conn(1000);
        c.push(Bytes::from_static(b"a"));
        c.close(CloseCode::GOING_AWAY, "shutdown");
        c.close(CloseCode::NORMAL, "again");
        let out = c.out.borrow();
        assert_eq!(out.frames.len(), 2);
        assert_eq!(&out.frames[1][2..4], &1001u16.to_be_bytes());
    }
}
