//! What one shard counts: [`ShardCounters`], written only by that shard's thread with
//! plain loads and stores (one writer per counter: no atomic read-modify-write, no lock,
//! no allocation), read by any thread at scrape.
//!
//! Who writes what (all on the shard's own thread):
//!
//! | field | written by |
//! |---|---|
//! | `connections`, `connections_accepted` | the accept loop (`admission.rs`) |
//! | `ws_connections`, closes of WebSocket sessions | `ShardCore::register_*` / `unregister_conn` |
//! | `sse_connections`, closes of SSE streams | the SSE stream code (`ren/serve.rs`): +1 when a stream starts, −1 and [`ShardCounters::closed`] when it ends (with tenant labels, the tenant's `sse_connections` too) |
//! | closes of plain HTTP connections, `http_*` | `http.rs` |
//! | `bytes_out`, `write_batch_frames` | the shard's flush pass (`send_ring.rs`), or the writer task of each connection where there is no send ring (`outbound.rs`) |
//! | `loop_turn` | the inbox loop (`server.rs`) |
//! | the rest | `ShardCore` handlers |

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use ringcast_protocol::ErrorCode;

use super::histogram::{self, Histogram};
use super::labels::{status_index, CloseReason, HttpRoute, Transport, ERROR_LABELS, HTTP_STATUSES};

/// A counter one shard writes.
#[derive(Debug, Default)]
pub struct Count(AtomicU64);

impl Count {
    /// Adds `n`. Only the owning shard's thread calls this.
    pub fn add(&self, n: u64) {
        // One writer: a plain load and store, no read-modify-write.
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Sets the count to a total kept elsewhere (monotonic). Only the owning shard's
    /// thread calls this.
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }

    /// The value (any thread).
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge one shard writes.
#[derive(Debug, Default)]
pub struct Level(AtomicI64);

impl Level {
    /// Adds `n` (negative to lower it). Only the owning shard's thread calls this.
    pub fn add(&self, n: i64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Sets the value. Only the owning shard's thread calls this.
    pub fn set(&self, n: u64) {
        self.0.store(n as i64, Ordering::Relaxed);
    }

    /// The value (any thread).
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One shard's counters.
#[derive(Debug)]
pub struct ShardCounters {
    /// Open TCP connections on this shard, whatever they carry (HTTP, WebSocket, SSE).
    pub connections: Level,
    /// Of those, WebSocket sessions.
    pub ws_connections: Level,
    /// Of those, SSE streams. The SSE code adds one when a stream starts and takes it
    /// back when the stream ends (and counts the end with [`ShardCounters::closed`]).
    pub sse_connections: Level,
    /// Connections accepted.
    pub connections_accepted: Count,
    /// Subscriptions of this shard's connections (entries of its local topic table).
    pub subscriptions: Level,
    /// Channels this shard owns that are open (history mapped, seq in memory).
    pub channels: Level,
    /// Presence members of the channels this shard owns.
    pub presence_members: Level,
    /// Messages published on channels this shard owns.
    pub messages_published: Count,
    /// Messages queued to this shard's subscribers.
    pub deliveries: Count,
    /// Connections closed with 4008.
    pub slow_consumer_closes: Count,
    /// Messages that found another shard's inbox full and waited in this shard's spill.
    pub inbox_spills: Count,
    /// Times a publisher stopped reading, or an HTTP publish, presence change or REN
    /// ingest was refused (503), because a shard was spilling.
    pub publisher_holdbacks: Count,
    /// Answers that arrived for a request nobody waits for any more (asker gone, or
    /// deadline passed).
    pub answers_unclaimed: Count,
    /// Requests to another shard that passed their deadline unanswered.
    pub requests_timed_out: Count,
    /// Channel history rings in this shard's store.
    pub history_rings: Level,
    /// Slot bytes those rings use (what `[history] max_total_bytes` bounds).
    pub history_bytes: Level,
    /// Rings evicted to stay under `max_total_bytes` (copied from the store).
    pub history_evictions: Count,
    /// Times a ring's creation or growth waited for the store's background thread to
    /// make a segment (copied from the store; each wait stalls the shard).
    pub history_space_waits: Count,
    /// Segment files the store's background thread made ahead of need (copied).
    pub history_segments_prepared: Count,
    /// Rings moved to a bigger slot as they filled (copied from the store).
    pub history_growths: Count,
    /// Messages given a seq but not kept in history (copied from the store, where it
    /// stays 0: what history cannot keep is refused before it takes a seq).
    pub history_records_not_kept: Count,
    /// Messages appended to history.
    pub history_appends: Count,
    /// Bytes of those messages (their encoded frames).
    pub history_appended_bytes: Count,
    /// Subscribes with `lastEventId` (resumes) answered.
    pub history_replays: Count,
    /// Messages replayed to them.
    pub history_replayed_messages: Count,
    /// Resumes answered `recovered: false` (the history no longer held what was missed,
    /// or the epoch changed).
    pub history_truncations: Count,
    /// Inbox loop turns: how long handling one batch took.
    pub loop_turn: Histogram,
    /// Frames per `writev` of this shard's connection writers.
    pub write_batch_frames: Histogram,
    /// REN events given an id by this shard (the REN owner of their tenant).
    pub ren_events: Count,
    /// REN chunks queued to this shard's SSE streams.
    pub ren_deliveries: Count,
    /// Streams that asked to resume from an id the buffer no longer covers (`ren.meta`).
    pub ren_truncated: Count,
    /// Open SSE streams on this shard (set at each housekeeping tick).
    pub ren_streams: Level,
    /// REN events held in the resume buffers of the tenants this shard owns.
    pub ren_buffered: Level,
    tokens_accepted: Count,
    tokens_refused: Count,
    errors: Box<[Count]>,
    closed: Box<[Count]>,
    bytes_out: Box<[Count]>,
    http_requests: Box<[Count]>,
    http_durations: Box<[Histogram]>,
}

fn counts(n: usize) -> Box<[Count]> {
    (0..n).map(|_| Count::default()).collect()
}

impl Default for ShardCounters {
    fn default() -> Self {
        ShardCounters {
            connections: Level::default(),
            ws_connections: Level::default(),
            sse_connections: Level::default(),
            connections_accepted: Count::default(),
            subscriptions: Level::default(),
            channels: Level::default(),
            presence_members: Level::default(),
            messages_published: Count::default(),
            deliveries: Count::default(),
            slow_consumer_closes: Count::default(),
            inbox_spills: Count::default(),
            publisher_holdbacks: Count::default(),
            answers_unclaimed: Count::default(),
            requests_timed_out: Count::default(),
            history_rings: Level::default(),
            history_bytes: Level::default(),
            history_evictions: Count::default(),
            history_space_waits: Count::default(),
            history_segments_prepared: Count::default(),
            history_growths: Count::default(),
            history_records_not_kept: Count::default(),
            history_appends: Count::default(),
            history_appended_bytes: Count::default(),
            history_replays: Count::default(),
            history_replayed_messages: Count::default(),
            history_truncations: Count::default(),
            loop_turn: Histogram::new(histogram::LOOP_TURN),
            write_batch_frames: Histogram::new(histogram::WRITE_BATCH),
            ren_events: Count::default(),
            ren_deliveries: Count::default(),
            ren_truncated: Count::default(),
            ren_streams: Level::default(),
            ren_buffered: Level::default(),
            tokens_accepted: Count::default(),
            tokens_refused: Count::default(),
            errors: counts(ERROR_LABELS.len()),
            closed: counts(Transport::COUNT * CloseReason::COUNT),
            bytes_out: counts(Transport::COUNT),
            http_requests: counts(HttpRoute::COUNT * HTTP_STATUSES.len()),
            http_durations: (0..HttpRoute::COUNT)
                .map(|_| Histogram::new(histogram::HTTP_REQUEST))
                .collect(),
        }
    }
}

impl ShardCounters {
    /// Counts one error answered with `code`.
    pub fn error(&self, code: &str) {
        let index = ERROR_LABELS
            .iter()
            .position(|label| *label == code)
            .unwrap_or(ERROR_LABELS.len() - 1);
        self.errors[index].inc();
    }

    /// Counts one error event.
    pub fn error_event(&self, code: ErrorCode) {
        self.error(code.as_str());
    }

    /// Counts one token verification.
    pub fn token_verification(&self, accepted: bool) {
        if accepted {
            self.tokens_accepted.inc();
        } else {
            self.tokens_refused.inc();
        }
    }

    /// Counts one connection of `transport` that ended for `reason`.
    pub fn closed(&self, transport: Transport, reason: CloseReason) {
        self.closed[transport.index() * CloseReason::COUNT + reason.index()].inc();
    }

    /// Counts `n` bytes written to sockets of `transport`.
    pub fn bytes_out(&self, transport: Transport, n: u64) {
        self.bytes_out[transport.index()].add(n);
    }

    /// Counts one HTTP request of `route` answered with `status` after `nanos`.
    pub fn http_request(&self, route: HttpRoute, status: u16, nanos: u64) {
        let at = route.index() * HTTP_STATUSES.len() + status_index(status);
        self.http_requests[at].inc();
        self.http_durations[route.index()].observe(nanos);
    }

    // ----- reads, for the collector -----

    pub(super) fn error_count(&self, index: usize) -> u64 {
        self.errors[index].get()
    }

    pub(super) fn tokens(&self, accepted: bool) -> u64 {
        if accepted {
            self.tokens_accepted.get()
        } else {
            self.tokens_refused.get()
        }
    }

    pub(super) fn closed_count(&self, transport: Transport, reason: CloseReason) -> u64 {
        self.closed[transport.index() * CloseReason::COUNT + reason.index()].get()
    }

    pub(super) fn bytes_out_count(&self, transport: Transport) -> u64 {
        self.bytes_out[transport.index()].get()
    }

    pub(super) fn http_count(&self, route: HttpRoute, status_at: usize) -> u64 {
        self.http_requests[route.index() * HTTP_STATUSES.len() + status_at].get()
    }

    pub(super) fn http_duration(&self, route: HttpRoute) -> &Histogram {
        &self.http_durations[route.index()]
    }
}
