//! A delivery run: consecutive messages of one channel, fanned out as one buffer.
//!
//! While a shard handles one batch (a session's read buffer and what it took without
//! waiting while the read was handled, see `session.rs`; an inbox batch), the
//! messages of one channel that arrive back to back (a publisher's burst) are not
//! queued to every subscriber one by one: the run keeps their encoded frames, and when
//! the run ends they are joined into one buffer that every local subscriber gets. Each
//! subscriber then takes one push and one iovec per run instead of one per message,
//! while the bytes on the wire are the same frames in the same order.
//!
//! Ending a run early is always correct (it is what the shard did before runs). The
//! shard ends the run before anything that could otherwise be reordered with it: a
//! frame for a connection subscribed to the run's channel, a change to the channel's
//! local subscribers or to a connection's subscriptions, a presence event, the end of
//! the batch. Outside a batch there is never a run: every entry point ends with the run
//! fanned out.
//!
//! `ringcast_deliveries_total` counts a run's messages for each subscriber that queued
//! it; a subscriber whose queue overflows on the run (closed with 4008) counts none of
//! them, where it used to count the messages queued before the one that overflowed.

use bytes::{Bytes, BytesMut};

use crate::conn::Conn;
use crate::keys::ChannelKey;

/// A run is ended once it holds this many bytes, so joined buffers stay small.
const MAX_RUN_BYTES: usize = 64 * 1024;

/// One channel's frames waiting to be fanned out together.
#[derive(Debug, Default)]
pub struct DeliveryRun {
    key: Option<ChannelKey>,
    frames: Vec<Bytes>,
    bytes: usize,
}

/// A finished run: the channel, its frames as one buffer, and how many messages that is.
#[derive(Debug)]
pub struct Joined {
    /// The channel.
    pub key: ChannelKey,
    /// The frames, in order, as one buffer (the frame itself for a run of one).
    pub frame: Bytes,
    /// Messages in `frame`.
    pub messages: u64,
}

impl DeliveryRun {
    /// Whether frames are waiting.
    #[cfg(test)]
    fn is_pending(&self) -> bool {
        self.key.is_some()
    }

    /// The run's channel, `None` when nothing is waiting.
    pub fn key(&self) -> Option<&ChannelKey> {
        self.key.as_ref()
    }

    /// Whether `key` can extend the run: it is the run's channel and there is room.
    pub fn extends(&self, key: &ChannelKey, frame: &Bytes) -> bool {
        self.key.as_ref() == Some(key) && self.bytes + frame.len() <= MAX_RUN_BYTES
    }

    /// Adds a frame of `key`. The caller has ended any run of another channel first.
    pub fn push(&mut self, key: ChannelKey, frame: Bytes) {
        debug_assert!(self.key.is_none() || self.key.as_ref() == Some(&key));
        self.bytes += frame.len();
        self.frames.push(frame);
        self.key = Some(key);
    }

    /// Whether a frame for `conn` must wait until the run is fanned out: `conn` follows
    /// (or is subscribing to) the run's channel.
    pub fn concerns(&self, conn: &Conn) -> bool {
        let Some(key) = &self.key else {
            return false;
        };
        conn.tenant.id == key.tenant && conn.subs.borrow().get(&key.channel).is_some()
    }

    /// Ends the run: its frames joined, or `None` when nothing was waiting. Keeps the
    /// frame vector's memory for the next run.
    pub fn take(&mut self) -> Option<Joined> {
        let key = self.key.take()?;
        let messages = self.frames.len() as u64;
        let frame = if self.frames.len() == 1 {
            self.frames.pop().expect("one frame")
        } else {
            let mut joined = BytesMut::with_capacity(self.bytes);
            for frame in self.frames.drain(..) {
                joined.extend_from_slice(&frame);
            }
            joined.freeze()
        };
        self.bytes = 0;
        Some(Joined {
            key,
            frame,
            messages,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_protocol::{ChannelName, TenantId};

    fn key(channel: &str) -> ChannelKey {
        ChannelKey::new(
            TenantId::new("t"),
            ChannelName::new(channel).expect("valid"),
        )
    }

    #[test]
    fn a_run_joins_its_frames_in_order() {
        let mut run = DeliveryRun::default();
        assert!(!run.is_pending());
        let a = key("a");
        run.push(a.clone(), Bytes::from_static(b"one"));
        assert!(run.extends(&a, &Bytes::from_static(b"two")));
        run.push(a.clone(), Bytes::from_static(b"two"));
        assert!(!run.extends(&key("b"), &Bytes::from_static(b"x")));
        let joined = run.take().expect("pending");
        assert_eq!(joined.key, a);
        assert_eq!(&joined.frame[..], b"onetwo");
        assert_eq!(joined.messages, 2);
        assert!(!run.is_pending());
        assert!(run.take().is_none());
    }

    #[test]
    fn a_run_of_one_is_the_frame_itself() {
        let mut run = DeliveryRun::default();
        let frame = Bytes::from(vec![7u8; 100]);
        run.push(key("a"), frame.clone());
        let joined = run.take().expect("pending");
        assert_eq!(joined.frame.as_ptr(), frame.as_ptr(), "not copied");
        assert_eq!(joined.messages, 1);
    }

    #[test]
    fn a_run_stops_growing_at_its_byte_bound() {
        let mut run = DeliveryRun::default();
        let a = key("a");
        let frame = Bytes::from(vec![0u8; MAX_RUN_BYTES / 2]);
        run.push(a.clone(), frame.clone());
        assert!(run.extends(&a, &frame));
        run.push(a.clone(), frame.clone());
        assert!(!run.extends(&a, &Bytes::from_static(b"x")));
    }
}
