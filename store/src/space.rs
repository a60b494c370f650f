//! The store's background thread: creates segment files ahead of need, msyncs, and
//! appends tombstones.
//!
//! The shard thread must not block on open/set_len/mmap/msync. A [`Space`] owns one
//! `std::thread` that takes [`Job`]s over a channel and answers with [`Done`]s, which the
//! store picks up with a non-blocking `try_recv` on its next call. The thread never reads
//! or writes a segment's bytes after handing the mapping over: it only holds
//! [`FlushHandle`]s, which can msync, advise read-ahead and fault pages in ahead of
//! need (which leaves their bytes as they are), nothing else.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::mmap::{FlushHandle, SegmentMap};
use crate::slot_format::{self, SegmentHeader};
use crate::tombstones;

/// Work for the background thread.
#[derive(Debug)]
pub(crate) enum Job {
    /// Create `path` (through `path.tmp` and a rename, so a half-made file never carries
    /// the final name), set its length, map it, write the segment header.
    Create {
        path: PathBuf,
        header: SegmentHeader,
    },
    /// msync these `(mapping, offset, len)` ranges; answered with `Synced` and the
    /// job's serial.
    Sync {
        ranges: Vec<(FlushHandle, usize, usize)>,
        serial: u64,
    },
    /// Give the mapping's first `until` bytes normal read-ahead back (their pages are no
    /// longer holes; see `ShardStore::read_ahead_behind`). Advisory: nothing answers.
    ReadAhead { map: FlushHandle, until: usize },
    /// Fault `[at, at + len)` (fresh slots) in for writing, ahead of the shard's first
    /// write (see `ShardStore::populate_ahead`). Advisory: nothing answers.
    Populate {
        map: FlushHandle,
        at: usize,
        len: usize,
    },
    /// Append a record to the store's tombstone file at `path` (`tombstones.rs`); a
    /// failure is answered with `TombstoneFailed`.
    Tombstone {
        path: PathBuf,
        record: Vec<u8>,
        cap: usize,
    },
    /// Answered with `Barrier` once every job queued before it is done.
    Barrier,
}

impl Job {
    /// Read-ahead and populate jobs only save the shard page faults later; nothing
    /// waits for them and nothing is lost without them.
    fn is_advisory(&self) -> bool {
        matches!(self, Job::ReadAhead { .. } | Job::Populate { .. })
    }
}

/// What the background thread reports back.
#[derive(Debug)]
pub(crate) enum Done {
    Created {
        path: PathBuf,
        header: SegmentHeader,
        map: SegmentMap,
    },
    CreateFailed {
        header: SegmentHeader,
        path: PathBuf,
        error: io::Error,
    },
    /// The `Sync` job with this serial is done: every range reached the disk (`ok`), or
    /// some msync failed.
    Synced { serial: u64, ok: bool },
    /// A tombstone record could not be appended: that channel's next ring, after a
    /// restart, starts a new epoch at seq 1 as if it had none.
    TombstoneFailed,
    /// Every job queued before the `Barrier` job is done.
    Barrier,
}

/// Handle on the background thread; dropping it finishes the queued jobs that matter
/// (creates, syncs), skips the advisory ones (nobody will write those pages now), and
/// joins.
#[derive(Debug)]
pub(crate) struct Space {
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    thread: Option<JoinHandle<()>>,
    closing: Arc<AtomicBool>,
}

impl Space {
    pub(crate) fn start() -> io::Result<Space> {
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::channel::<Done>();
        let closing = Arc::new(AtomicBool::new(false));
        let closed = closing.clone();
        let thread = std::thread::Builder::new()
            .name("ringcast-store-space".into())
            .spawn(move || {
                let mut tombstones = tombstones::Appender::default();
                for job in job_rx {
                    if closed.load(Ordering::Relaxed) && job.is_advisory() {
                        continue;
                    }
                    let answer = run(job, &mut tombstones);
                    if let Some(a) = answer {
                        if done_tx.send(a).is_err() {
                            break;
                        }
                    }
                }
            })?;
        Ok(Space {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
            closing,
        })
    }

    /// Queues a job; never blocks. Returns false if the thread is gone.
    pub(crate) fn send(&self, job: Job) -> bool {
        self.jobs.as_ref().is_some_and(|j| j.send(job).is_ok())
    }

    /// From now on the thread skips advisory jobs (the store is closing).
    pub(crate) fn skip_advisory(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }

    /// The next answer, if one is ready.
    pub(crate) fn try_recv(&self) -> Option<Done> {
        // Empty or disconnected: nothing to pick up either way.
        self.done.try_recv().ok()
    }

    /// Waits for the next answer (only when no space is ready: counted as a wait).
    pub(crate) fn recv(&self) -> Option<Done> {
        self.done.recv().ok()
    }
}

impl Drop for Space {
    fn drop(&mut self) {
        self.skip_advisory();
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(job: Job, tombstones: &mut tombstones::Appender) -> Option<Done> {
    match job {
        Job::Create { path, header } => Some(match create(&path, &header) {
            Ok(map) => Done::Created { path, header, map },
            Err(error) => Done::CreateFailed {
                header,
                path,
                error,
            },
        }),
        Job::Sync { ranges, serial } => {
            let mut ok = true;
            for (h, at, len) in ranges {
                ok &= h.flush_range(at, len).is_ok();
            }
            Some(Done::Synced { serial, ok })
        }
        Job::ReadAhead { map, until } => {
            map.read_ahead_until(until);
            None
        }
        Job::Populate { map, at, len } => {
            map.populate_for_write(at, len);
            None
        }
        Job::Tombstone { path, record, cap } => tombstones
            .append(&path, &record, cap)
            .err()
            .map(|_| Done::TombstoneFailed),
        Job::Barrier => Some(Done::Barrier),
    }
}

/// Creates a segment file with its header written; used by the thread and by `open`.
pub(crate) fn create(path: &std::path::Path, header: &SegmentHeader) -> io::Result<SegmentMap> {
    let tmp = path.with_extension("seg.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut map = SegmentMap::create(&tmp, header.file_len())?;
    slot_format::write_segment_header(map.bytes_mut(), header);
    map.flush_range(0, slot_format::SEG_HEADER_LEN)?;
    std::fs::rename(&tmp, path)?;
    Ok(map)
}
