//! A batch of shared frames handed to `writev` without copying.
//!
//! One of the engine's two unsafe modules (with `nowait`): monoio's `IoVecBuf` is an
//! unsafe trait because the kernel reads the iovec array (and the memory it points to)
//! while the write is in flight. The batch owns both the `Bytes` (keeping the frames
//! alive) and the iovecs.
#![allow(unsafe_code)]

use std::collections::VecDeque;

use bytes::{Buf, Bytes};

/// At most this many frames per `writev` (Linux's `IOV_MAX`).
pub const MAX_IOVECS: usize = 1024;

/// Frames queued for one connection, taken out of its queue for one write.
#[derive(Default)]
pub struct FrameBatch {
    frames: Vec<Bytes>,
    iovecs: Vec<libc::iovec>,
}

impl std::fmt::Debug for FrameBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameBatch")
            .field("frames", &self.frames.len())
            .field("bytes", &self.len())
            .finish()
    }
}

impl FrameBatch {
    /// Moves frames from the front of `queue` into the batch, up to [`MAX_IOVECS`].
    /// Returns the number of bytes moved.
    pub fn fill_from(&mut self, queue: &mut VecDeque<Bytes>) -> usize {
        let mut moved = 0;
        while self.frames.len() < MAX_IOVECS {
            let Some(frame) = queue.pop_front() else {
                break;
            };
            moved += frame.len();
            self.frames.push(frame);
        }
        self.rebuild();
        moved
    }

    /// Drops the first `written` bytes (whole frames, then part of the next one).
    pub fn advance(&mut self, mut written: usize) {
        let mut done = 0;
        while done < self.frames.len() && written >= self.frames[done].len() {
            written -= self.frames[done].len();
            done += 1;
        }
        self.frames.drain(..done);
        if written > 0 {
            if let Some(first) = self.frames.first_mut() {
                first.advance(written);
            }
        }
        self.rebuild();
    }

    /// Takes the batch's only frame out (`None` unless it holds exactly one), for a plain
    /// send without an iovec array.
    pub fn take_single(&mut self) -> Option<Bytes> {
        if self.frames.len() != 1 {
            return None;
        }
        let frame = self.frames.pop();
        self.iovecs.clear();
        frame
    }

    /// Puts back what is left of a frame taken with [`FrameBatch::take_single`].
    pub fn put_back(&mut self, frame: Bytes) {
        debug_assert!(self.frames.is_empty(), "only into an emptied batch");
        self.frames.push(frame);
        self.rebuild();
    }

    /// Gives back the batch's memory if everything was written (the idle sweep asks for
    /// this, so idle connections hold none and busy ones keep it from batch to batch).
    pub fn trim(&mut self) {
        if self.frames.is_empty() {
            self.frames = Vec::new();
            self.iovecs = Vec::new();
        }
    }

    /// The iovecs of what is still to write (one per frame or part of a frame).
    pub fn iovecs(&self) -> &[libc::iovec] {
        &self.iovecs
    }

    /// Frames (or parts of frames) still to write.
    pub fn frames(&self) -> usize {
        self.frames.len()
    }

    /// Bytes still to write.
    pub fn len(&self) -> usize {
        self.frames.iter().map(Bytes::len).sum()
    }

    /// Whether everything was written.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    fn rebuild(&mut self) {
        self.iovecs.clear();
        self.iovecs.extend(self.frames.iter().map(|f| libc::iovec {
            iov_base: f.as_ptr() as *mut libc::c_void,
            iov_len: f.len(),
        }));
    }
}

// SAFETY: `iovecs` always describes exactly the bytes of `frames` (rebuilt after every
// change), and each `Bytes` keeps its heap memory alive and unmoved for as long as it is
// held. Moving a `FrameBatch` moves only the `Vec` headers, not their heap buffers, so
// the pointer and the memory it describes stay valid while the runtime owns the batch.
unsafe impl monoio::buf::IoVecBuf for FrameBatch {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iovecs.as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        self.iovecs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_frame_comes_out_and_its_rest_goes_back() {
        let mut queue: VecDeque<Bytes> = [Bytes::from_static(b"abcdef")].into();
        let mut batch = FrameBatch::default();
        batch.fill_from(&mut queue);
        let mut frame = batch.take_single().expect("one frame");
        assert!(batch.is_empty());
        assert!(batch.iovecs.is_empty());
        frame.advance(4);
        batch.put_back(frame);
        assert_eq!(batch.len(), 2);
        assert_eq!(batch.iovecs.len(), 1);
        assert_eq!(batch.iovecs[0].iov_len, 2);

        let mut two: VecDeque<Bytes> = [&b"a"[..], b"b"]
            .into_iter()
            .map(Bytes::from_static)
            .collect();
        let mut batch = FrameBatch::default();
        batch.fill_from(&mut two);
        assert!(batch.take_single().is_none(), "two frames stay a writev");
        assert_eq!(batch.frames(), 2);
    }

    #[test]
    fn advance_through_partial_writes() {
        let mut queue: VecDeque<Bytes> = [&b"abc"[..], b"de", b"fghij"]
            .into_iter()
            .map(Bytes::from_static)
            .collect();
        let mut batch = FrameBatch::default();
        assert_eq!(batch.fill_from(&mut queue), 10);
        batch.advance(4);
        assert_eq!(batch.len(), 6);
        assert_eq!(batch.iovecs.len(), 2);
        assert_eq!(batch.iovecs[0].iov_len, 1);
        batch.advance(6);
        assert!(batch.is_empty());
    }

    #[test]
    fn caps_at_iov_max() {
        let mut queue: VecDeque<Bytes> = (0..MAX_IOVECS + 5)
            .map(|_| Bytes::from_static(b"x"))
            .collect();
        let mut batch = FrameBatch::default();
        batch.fill_from(&mut queue);
        assert_eq!(queue.len(), 5);
        assert_eq!(batch.len(), MAX_IOVECS);
    }
}
