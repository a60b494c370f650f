//! A randomized soak of slow consumers and catch-up under small history bounds, against
//! the real binary (two shards): publisher threads publish at their own rates and sizes
//! (some at or near the tenant's message limit, some just over it) on four channels, two
//! owned by each shard, while reader threads follow some of them and walk at random
//! over subscribes, resumes (`lastEventId`) from the last seq they handled and from
//! older positions, unsubscribes, plain reconnects and, for three of the five, pauses:
//! a reader with a small `SO_RCVBUF` stops reading until a random number of bytes was
//! published on its channels (short of the server's buffer, up to what the kernel may
//! hold as well, or past both), perhaps resuming or unsubscribing a channel meanwhile,
//! then reads again. One that fell behind by more than the buffer may be closed as a
//! slow consumer (4008, or an EOF when it read nothing through the 2 s farewell:
//! docs/wire-contract.md, close codes); it reconnects and resumes every channel it
//! followed from the last seq it handled, all at once as the SDK does on open.
//!
//! The bounds, small so that every path is hit often: `outbound_buffer_bytes` 512 KiB,
//! `history_messages` 24, `[history] max_bytes_per_channel` 80 KiB (about nine
//! near-limit messages), the tenant's `max_message_bytes` 8 KiB. (The idle TTL and
//! `max_total_bytes` free only closed channels' rings, a minute after their last
//! subscriber left: out of a 30 s walk's reach.)
//!
//! What every reader checks as it goes: within one connection each followed channel is
//! delivered in seq order with no gap and no duplicate from what its subscribe or resume
//! promised; a plain subscribe is `recovered: true` and nothing comes before its answer;
//! a resume's replay is one run ending at its answer's seq, starting right after the
//! position asked for when `recovered: true`, later when `recovered: false`, never more
//! than the history bounds or half the buffer; each frame is as long as the server's
//! encoding says; the epoch never changes; no `error` arrives; no close but a slow
//! consumer's, never to a reader that kept reading (two readers never pause, and
//! publishers hold back while one of them is more than 128 KiB behind), and always to
//! one that fell behind by more than the buffer and the kernel's socket buffers
//! together. Publishers check that every publish is acked but the ones over the limit,
//! which get `message_too_large` and take no seq.
//!
//! Checked at the end, with every acked publish known: each channel's seqs are 1..=N
//! with no hole; every message any reader got carries the data its publish was acked
//! with; a resume whose missing messages were surely still kept (within both bounds,
//! with room for the ring's wasted tail) was `recovered: true`, one from a surely
//! evicted position `recovered: false`, and a `recovered: false` replay holds every
//! message surely kept, unless the resume was sent while its reader was not reading
//! (then the replay may be cut to the room left in the buffer); every slow-consumer
//! close came to a connection that had more than the buffer unread when it could have
//! overflowed (counting every message sent to it after what it had read by then), and
//! the server counted exactly those closes (`ringcast_slow_consumer_closes_total`); a
//! fresh client's resume from 0 and `GET /api/realtime/history` give each channel's
//! newest messages, every one surely kept among them, within the bounds, with their
//! acked data. `RINGCAST_SOAK_SEED=<0x-hex>` replays a walk (the ops; the interleaving
//! with the publishers is the machine's).

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ringcast_tests::walk::{soak_seed, time_left, Rng, Trail};
use ringcast_tests::{encode_component, http_get, json, Client, Closed, Server, TIMEOUT};
use serde_json::Value;
use tungstenite::Message;

/// `slow:0` and `slow:3` are owned by shard 0, `slow:1` and `slow:2` by shard 1 (tenant
/// `dev` on two shards, `engine/src/keys.rs`). Their traffic: small messages, mostly
/// near-limit ones, a mix, and a quiet one.
const CHANNELS: [&str; 4] = ["slow:0", "slow:1", "slow:2", "slow:3"];
const PUBLISHERS: usize = 3;
const READERS: usize = 5;
/// Readers `0..STEADY` never pause; the others do at random.
const STEADY: usize = 2;
const READER_OPS: usize = 60;
/// Bursts one publisher sends at most (it stops earlier once every reader is done).
const PUBLISHER_BURSTS: usize = 20_000;
/// The bounds the server runs with.
const OUTBOUND_BYTES: u64 = 512 * 1024;
const HISTORY_MESSAGES: u64 = 24;
const RING_BYTES: u64 = 80 * 1024;
const MAX_DATA: usize = 8 * 1024;
/// Publishers to a channel wait while a steady reader of it has more than this unread
/// (plus what is in flight: at most PUBLISHERS × 4 frames of 8 KiB), well below
/// `OUTBOUND_BYTES`: steady readers are never closed.
const STEADY_WINDOW: u64 = 128 * 1024;
/// A pausing reader's receive buffer (the kernel doubles it).
const SMALL_RCVBUF: usize = 8 * 1024;
/// How long the server tries to send a closing connection its close frame
/// (docs/wire-contract.md, 4008).
const FAREWELL: Duration = Duration::from_secs(2);
/// The longest a reader pauses, whatever was published meanwhile.
const LONGEST_PAUSE: Duration = Duration::from_secs(3);
/// No reader starts an op after this; publishers stop a little later at the latest.
const WALK_TIME: Duration = Duration::from_secs(16);
/// The whole soak fails past this (every loop is bounded by it).
const SOAK_LIMIT: Duration = Duration::from_secs(90);
/// Frames other than messages a connection may have had queued beside them (answers,
/// pongs), for the slow-consumer check.
const OTHER_FRAMES_SLACK: u64 = 8 * 1024;

fn digits(n: u64) -> u64 {
    n.checked_ilog10().map_or(1, |d| u64::from(d) + 1)
}

/// Bytes of the JSON of a `realtime.message` without `userId`, as the server encodes it
/// (`{"event":"realtime.message","channel":…,"data":…,"seq":…,"ts":…}`,
/// `protocol/src/event.rs`).
fn message_json_len(channel: &str, data_len: usize, seq: u64, ts: u64) -> u64 {
    62 + channel.len() as u64 + data_len as u64 + digits(seq) + digits(ts)
}

/// A server frame of `json` bytes, WebSocket header included.
fn with_header(json: u64) -> u64 {
    json + match json {
        0..=125 => 2,
        126..=65_535 => 4,
        _ => 10,
    }
}

/// A message's whole frame, with a 13-digit `ts` (until 2286).
fn frame_len(channel: &str, data_len: usize, seq: u64) -> u64 {
    with_header(message_json_len(channel, data_len, seq, 1_000_000_000_000))
}

/// Bytes a message's history record takes in its ring: the frame after a 40-byte header,
/// padded to 8 (`store/src/slot_format.rs`).
fn record_len(frame: u64) -> u64 {
    (40 + frame).div_ceil(8) * 8
}

/// The largest record any channel's ring keeps.
fn max_record() -> u64 {
    record_len(frame_len("slow:0", MAX_DATA, 9_999_999))
}

fn hash_of(text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

fn channel_index(ev: &Value) -> Result<usize> {
    CHANNELS
        .iter()
        .position(|c| ev["channel"] == *c)
        .with_context(|| format!("an event for no channel of the walk: {ev}"))
}

/// One acknowledged publish.
#[derive(Debug, Clone)]
struct Acked {
    data: String,
    /// Its frame's bytes.
    frame: u64,
    /// When its publish frame was sent (before the server could queue it anywhere).
    sent: Instant,
}

/// A channel's acknowledged publishes.
#[derive(Debug)]
struct ChannelLog {
    acked: BTreeMap<u64, Acked>,
    /// `sums[s]`: frame bytes of seqs 1..=s, for the run acked without a hole.
    sums: Vec<u64>,
}

impl ChannelLog {
    fn new() -> ChannelLog {
        ChannelLog {
            acked: BTreeMap::new(),
            sums: vec![0],
        }
    }

    /// The latest seq with every one up to it acked.
    fn contiguous(&self) -> u64 {
        self.sums.len() as u64 - 1
    }

    /// Frame bytes acked after `pos` (in the run without a hole).
    fn bytes_after(&self, pos: u64) -> u64 {
        let top = self.contiguous();
        self.sums[top as usize] - self.sums[pos.min(top) as usize]
    }

    fn ack(&mut self, seq: u64, acked: Acked) -> Result<()> {
        ensure!(
            self.acked.insert(seq, acked).is_none(),
            "seq {seq} acked twice"
        );
        while let Some(next) = self.acked.get(&(self.contiguous() + 1)) {
            let sum = self.sums.last().copied().unwrap_or(0) + next.frame;
            self.sums.push(sum);
        }
        Ok(())
    }

    /// The oldest seq that a ring must still keep when `upto` is its newest: the newest
    /// messages within `history_messages` whose records fill at most the ring less two of
    /// the largest records (a ring's records are contiguous but for one wasted stretch at
    /// its end, shorter than a record, and a newcomer needs one free stretch as long as
    /// itself: `store/src/ring.rs`, `Ring::plan`).
    fn surely_kept_from(&self, upto: u64) -> u64 {
        let budget = RING_BYTES - 2 * max_record();
        let (mut from, mut bytes) = (upto + 1, 0);
        while from > 1 && upto + 1 - from < HISTORY_MESSAGES {
            let rec = record_len(self.acked[&(from - 1)].frame);
            if bytes + rec > budget {
                break;
            }
            bytes += rec;
            from -= 1;
        }
        from
    }

    /// Whether no ring could still hold every message after `from` up to `upto`.
    fn surely_evicted(&self, from: u64, upto: u64) -> bool {
        let bytes: u64 = (from + 1..=upto)
            .map(|s| record_len(self.acked[&s].frame))
            .sum();
        upto - from > HISTORY_MESSAGES || bytes > RING_BYTES
    }
}

/// What publishers and readers share.
#[derive(Debug)]
struct BoardState {
    channels: Vec<ChannelLog>,
    /// Each steady reader's position per channel (`None`: not followed; the whole entry
    /// `None` once the reader is done).
    steady: Vec<Option<[Option<u64>; 4]>>,
    /// The epoch every `subscribed` of a channel must carry (no history is lost here).
    epochs: [Option<String>; 4],
    readers_left: usize,
}

impl BoardState {
    /// A steady reader following `channel` with more than the window unread, and how
    /// much it has.
    fn steady_behind(&self, channel: usize) -> Option<(usize, u64)> {
        self.steady.iter().enumerate().find_map(|(r, pos)| {
            let pos = pos.as_ref()?;
            pos[channel]?;
            let unread: u64 = pos
                .iter()
                .enumerate()
                .filter_map(|(c, p)| p.map(|p| self.channels[c].bytes_after(p)))
                .sum();
            (unread > STEADY_WINDOW).then_some((r, unread))
        })
    }

    /// Frame bytes acked on `channels` so far.
    fn published_on(&self, channels: &[usize]) -> u64 {
        channels
            .iter()
            .map(|&c| self.channels[c].bytes_after(0))
            .sum()
    }
}

#[derive(Debug)]
struct Board {
    state: Mutex<BoardState>,
    changed: Condvar,
}

impl Board {
    fn lock(&self) -> MutexGuard<'_, BoardState> {
        self.state.lock().expect("board lock")
    }
}

/// A resume's answer, kept to be judged once every publish is known.
#[derive(Debug, Clone)]
struct ResumeSeen {
    reader: usize,
    channel: usize,
    from: u64,
    seq: u64,
    recovered: bool,
    /// The first replayed seq.
    first: Option<u64>,
    /// Sent while the reader was not reading.
    behind: bool,
}

/// Where one channel stands on one connection, for the slow-consumer check.
#[derive(Debug, Clone, Default)]
struct ChannelTrack {
    /// Nothing at or below this seq is sent to the connection for this channel (what its
    /// subscribe or resume promised; a plain one's lower bound until its answer).
    floor: u64,
    /// Messages read: when, and their seq.
    reads: Vec<(Instant, u64)>,
}

/// A connection closed under a reader as a slow consumer.
#[derive(Debug)]
struct SlowClose {
    reader: usize,
    how: Closed,
    /// When the reader saw it (the overflow came before).
    seen: Instant,
    channels: BTreeMap<usize, ChannelTrack>,
}

/// One followed channel on the reader's connection.
#[derive(Debug)]
enum Follow {
    /// A plain subscribe sent: nothing may come before its answer.
    Subscribing,
    /// A resume from `from` sent (`behind`: while the reader was not reading, so its
    /// replay may be cut to the room left in the buffer): what it replayed so far, seqs
    /// and frame bytes.
    Resuming {
        from: u64,
        behind: bool,
        replay: Vec<(u64, u64)>,
    },
    /// Live, the next seq due.
    Live { next: u64 },
    /// `unsubscribe` sent; messages until `unsubscribed` still in order.
    Leaving { next: u64 },
}

/// What a read gave.
enum Read {
    Event(Value),
    Closed(Closed),
}

/// What a reader hands back.
#[derive(Debug, Default)]
struct ReaderReport {
    seen: BTreeMap<(usize, u64), u64>,
    resumes: Vec<ResumeSeen>,
    slow_closes: Vec<SlowClose>,
    pauses: usize,
    reconnects: usize,
}

struct Reader<'a> {
    id: usize,
    steady: bool,
    server: &'a Server,
    board: &'a Board,
    client: Client,
    rng: Rng,
    trail: Trail,
    following: BTreeMap<usize, Follow>,
    /// This connection's channels, for the slow-consumer check.
    tracks: BTreeMap<usize, ChannelTrack>,
    /// The last seq handled per channel, across connections: where a resume starts.
    last: [Option<u64>; 4],
    epoch: [Option<Value>; 4],
    report: ReaderReport,
    /// What the kernel may hold of a connection's unread bytes (see [`kernel_bytes`]).
    kernel_bytes: u64,
    /// What it did hold when this reader was last closed after a pause: what it read
    /// from then on.
    kernel_held: Option<u64>,
    /// Frame bytes read on this connection, and that figure when it was closed.
    read_bytes: u64,
    read_bytes_at_close: u64,
    deadline: Instant,
}

/// What the kernel may hold of a paused reader's unread bytes besides the server's
/// buffer: the server socket's send buffer, which autotuning grows up to the third
/// `tcp_wmem` value even toward a small receive window (loopback's MSS is 64 KiB), and
/// the reader's doubled receive buffer.
fn kernel_bytes() -> u64 {
    let wmem_max = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|t| t.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20);
    wmem_max + 2 * SMALL_RCVBUF as u64
}

impl<'a> Reader<'a> {
    fn connect(server: &Server, steady: bool) -> Result<Client> {
        let mut client = if steady {
            Client::connect(server, "")?.0
        } else {
            Client::connect_with_rcvbuf(server, "", SMALL_RCVBUF)?.0
        };
        client.expect_connected()?;
        Ok(client)
    }

    fn left(&self) -> Result<Duration> {
        time_left(self.deadline, &format!("reader {}", self.id))
    }

    fn set_steady_pos(&self, channel: usize, pos: Option<u64>) {
        if self.steady {
            let mut board = self.board.lock();
            if let Some(p) = board.steady[self.id].as_mut() {
                p[channel] = pos;
            }
            drop(board);
            self.board.changed.notify_all();
        }
    }

    /// Sends `frame`; `Ok(false)` when the connection turned out closed (then it was
    /// judged and replaced, and the frame is not sent).
    fn send(&mut self, frame: &Value) -> Result<bool> {
        self.trail.note(format!("-> {frame}"));
        match self.client.send_json(frame) {
            Ok(()) => Ok(true),
            Err(e) => {
                self.closed(Closed::Dropped(format!("send: {e:#}")))?;
                self.reconnect()?;
                Ok(false)
            }
        }
    }

    /// Reads one frame and checks it against the model.
    fn read(&mut self) -> Result<Read> {
        let left = self.left()?;
        let msg = match self.client.recv_message(left) {
            Ok(msg) => msg,
            Err(e) => {
                let how = match e.downcast_ref::<tungstenite::Error>() {
                    Some(
                        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
                    ) => "closed".to_owned(),
                    Some(tungstenite::Error::Io(io)) => io.to_string(),
                    Some(tungstenite::Error::Protocol(p)) => p.to_string(),
                    _ => return Err(e.context(format!("reader {} reading", self.id))),
                };
                self.trail.note(format!("<- dropped: {how}"));
                return Ok(Read::Closed(Closed::Dropped(how)));
            }
        };
        let text = match msg {
            Message::Text(t) => t.as_str().to_owned(),
            Message::Close(frame) => {
                let how = frame
                    .map(|f| Closed::Code(u16::from(f.code)))
                    .unwrap_or(Closed::NoCode);
                self.trail.note(format!("<- close {how:?}"));
                return Ok(Read::Closed(how));
            }
            other => bail!("reader {}: a frame that is not text: {other:?}", self.id),
        };
        self.trail.note(format!("<- {text}"));
        self.read_bytes += with_header(text.len() as u64);
        let ev: Value = serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))?;
        self.check(&ev, text.len())?;
        Ok(Read::Event(ev))
    }

    fn check(&mut self, ev: &Value, text_len: usize) -> Result<()> {
        let id = self.id;
        match ev["event"].as_str().unwrap_or("") {
            "realtime.message" => {
                let c = channel_index(ev)?;
                let seq = ev["seq"].as_u64().context("message seq")?;
                let ts = ev["ts"].as_u64().context("message ts")?;
                let data = ev["data"].to_string();
                ensure!(
                    text_len as u64 == message_json_len(CHANNELS[c], data.len(), seq, ts),
                    "a frame of {text_len} bytes, not as the server encodes messages: {ev}"
                );
                let f = self
                    .following
                    .get_mut(&c)
                    .with_context(|| format!("a message for an unfollowed channel: {ev}"))?;
                match f {
                    Follow::Subscribing => bail!("a message before its subscribe's answer: {ev}"),
                    Follow::Resuming { from, replay, .. } => {
                        match replay.last() {
                            Some(&(l, _)) => ensure!(seq == l + 1, "replay {l} then {seq}: {ev}"),
                            None => ensure!(seq > *from, "resume from {from} replayed {seq}"),
                        }
                        replay.push((seq, with_header(text_len as u64)));
                    }
                    Follow::Live { next } | Follow::Leaving { next } => {
                        ensure!(
                            seq == *next,
                            "seq {seq}, expected {next} (gap, duplicate or reorder): {ev}"
                        );
                        *next += 1;
                    }
                }
                let last = self.last[c].get_or_insert(0);
                *last = (*last).max(seq);
                let hash = hash_of(&data);
                if let Some(before) = self.report.seen.insert((c, seq), hash) {
                    ensure!(
                        before == hash,
                        "{} seq {seq} came with other data",
                        CHANNELS[c]
                    );
                }
                self.tracks
                    .entry(c)
                    .or_default()
                    .reads
                    .push((Instant::now(), seq));
                self.set_steady_pos(c, Some(seq));
            }
            "subscribed" => {
                let c = channel_index(ev)?;
                let seq = ev["seq"].as_u64().context("subscribed seq")?;
                let recovered = ev["recovered"].as_bool().context("recovered")?;
                let epoch = ev["epoch"].as_str().context("epoch")?.to_owned();
                {
                    let mut board = self.board.lock();
                    let known = board.epochs[c].get_or_insert_with(|| epoch.clone());
                    ensure!(*known == epoch, "epoch {epoch}, before {known}: {ev}");
                }
                self.epoch[c] = Some(ev["epoch"].clone());
                let f = self
                    .following
                    .get_mut(&c)
                    .with_context(|| format!("an unasked subscribed: {ev}"))?;
                match f {
                    Follow::Subscribing => {
                        ensure!(recovered, "a plain subscribe not recovered: {ev}");
                        self.tracks.entry(c).or_default().floor = seq;
                    }
                    Follow::Resuming {
                        from,
                        behind,
                        replay,
                    } => {
                        let (from, behind) = (*from, *behind);
                        let first = replay.first().map(|&(s, _)| s);
                        match (first, replay.last()) {
                            (Some(first), Some(&(l, _))) => {
                                ensure!(l == seq, "replay up to {l}, answered at {seq}: {ev}");
                                if recovered {
                                    ensure!(
                                        first == from + 1,
                                        "recovered, but replayed from {first} after {from}"
                                    );
                                } else {
                                    ensure!(
                                        first > from + 1,
                                        "not recovered, yet replayed from {first} after {from}"
                                    );
                                }
                            }
                            // Nothing fitted in the room left: live from the answer on.
                            _ if behind && !recovered && from < seq => {}
                            _ => ensure!(
                                from == seq && recovered,
                                "a resume from {from} answered at {seq} recovered {recovered} \
                                 with nothing replayed"
                            ),
                        }
                        let sent: u64 = replay.iter().map(|&(_, f)| f).sum();
                        ensure!(
                            sent <= OUTBOUND_BYTES / 2,
                            "a replay of {sent} bytes, over half the buffer"
                        );
                        ensure!(
                            replay.len() as u64 <= HISTORY_MESSAGES,
                            "replayed {} messages; history keeps {HISTORY_MESSAGES}",
                            replay.len()
                        );
                        let bytes: u64 = replay.iter().map(|&(_, f)| record_len(f)).sum();
                        ensure!(
                            bytes <= RING_BYTES,
                            "replayed {bytes} bytes of records; a ring keeps {RING_BYTES}"
                        );
                        self.report.resumes.push(ResumeSeen {
                            reader: id,
                            channel: c,
                            from,
                            seq,
                            recovered,
                            first,
                            behind,
                        });
                    }
                    _ => bail!("a subscribed nothing asked for: {ev}"),
                }
                *f = Follow::Live { next: seq + 1 };
                let last = self.last[c].get_or_insert(0);
                *last = (*last).max(seq);
                self.set_steady_pos(c, Some(seq));
            }
            "unsubscribed" => {
                let c = channel_index(ev)?;
                let f = self.following.remove(&c);
                ensure!(
                    matches!(f, Some(Follow::Leaving { .. })),
                    "unsubscribed without unsubscribe: {ev}"
                );
                self.tracks.remove(&c);
                self.set_steady_pos(c, None);
            }
            "pong" => {}
            "error" => bail!("reader {id}: an error: {ev}"),
            other => bail!("reader {id}: an unexpected event {other}: {ev}"),
        }
        Ok(())
    }

    /// The connection ended under the reader: only a slow consumer's close may come, and
    /// never to a steady reader.
    fn closed(&mut self, how: Closed) -> Result<()> {
        ensure!(
            !self.steady,
            "reader {} kept reading and was closed: {how:?}",
            self.id
        );
        ensure!(
            matches!(how, Closed::Code(4008) | Closed::Dropped(_)),
            "reader {} closed with {how:?}, not as a slow consumer (4008)",
            self.id
        );
        self.read_bytes_at_close = self.read_bytes;
        self.report.slow_closes.push(SlowClose {
            reader: self.id,
            how,
            seen: Instant::now(),
            channels: std::mem::take(&mut self.tracks),
        });
        Ok(())
    }

    /// A new connection, resuming every followed channel from the last seq handled (a
    /// plain subscribe where none was), all sent at once as the SDK does on open.
    fn reconnect(&mut self) -> Result<()> {
        self.report.reconnects += 1;
        let channels: Vec<usize> = self
            .following
            .iter()
            .filter(|(_, f)| !matches!(f, Follow::Leaving { .. }))
            .map(|(&c, _)| c)
            .collect();
        for attempt in 0..5 {
            self.following.clear();
            self.tracks.clear();
            for c in 0..CHANNELS.len() {
                self.set_steady_pos(c, None);
            }
            self.client = Reader::connect(self.server, self.steady)
                .with_context(|| format!("reader {} reconnecting", self.id))?;
            self.read_bytes = 0;
            let mut sent = true;
            for &c in &channels {
                sent = match self.last[c] {
                    Some(from) => self.send_resume_raw(c, from, false),
                    None => self.send_subscribe_raw(c),
                };
                if !sent {
                    break;
                }
            }
            let mut closed = None;
            for _ in 0..100_000 {
                let answered = self
                    .following
                    .values()
                    .all(|f| matches!(f, Follow::Live { .. }));
                if closed.is_some() || !sent || answered {
                    break;
                }
                if let Read::Closed(how) = self.read()? {
                    closed = Some(how);
                }
            }
            let answered = self
                .following
                .values()
                .all(|f| matches!(f, Follow::Live { .. }));
            match closed {
                None if sent && answered => return Ok(()),
                None if sent => bail!("resumes not answered in 100,000 frames"),
                None => self.closed(Closed::Dropped("send failed".into()))?,
                Some(how) => self.closed(how)?,
            }
            self.trail
                .note(format!("reconnect attempt {attempt} closed"));
        }
        bail!("reader {}: five reconnects closed at once", self.id)
    }

    /// Sends a plain subscribe (no reconnect on failure: `false`).
    fn send_subscribe_raw(&mut self, c: usize) -> bool {
        let floor = self.board.lock().channels[c].contiguous();
        self.following.insert(c, Follow::Subscribing);
        self.tracks.insert(
            c,
            ChannelTrack {
                floor,
                reads: Vec::new(),
            },
        );
        self.set_steady_pos(c, Some(floor));
        let frame = json!({"action": "subscribe", "channel": CHANNELS[c]});
        self.trail.note(format!("-> {frame}"));
        self.client.send_json(&frame).is_ok()
    }

    /// Sends a resume from `from` (no reconnect on failure: `false`).
    fn send_resume_raw(&mut self, c: usize, from: u64, behind: bool) -> bool {
        self.following.insert(
            c,
            Follow::Resuming {
                from,
                behind,
                replay: Vec::new(),
            },
        );
        self.tracks.insert(
            c,
            ChannelTrack {
                floor: from,
                reads: Vec::new(),
            },
        );
        self.set_steady_pos(c, Some(from));
        let mut frame = json!({"action": "subscribe", "channel": CHANNELS[c], "lastEventId": from});
        // The SDK sends no epoch; a resume may carry the one it was last told.
        let with_epoch = self.rng.chance(2);
        if let Some(epoch) = self.epoch[c].as_ref().filter(|_| with_epoch) {
            frame["epoch"] = epoch.clone();
        }
        self.trail.note(format!("-> {frame}"));
        self.client.send_json(&frame).is_ok()
    }

    /// Reads until `c` is answered (live) or gone.
    fn settle(&mut self, c: usize) -> Result<()> {
        for _ in 0..100_000 {
            if !matches!(
                self.following.get(&c),
                Some(Follow::Subscribing | Follow::Resuming { .. } | Follow::Leaving { .. })
            ) {
                return Ok(());
            }
            if let Read::Closed(how) = self.read()? {
                self.closed(how)?;
                self.reconnect()?;
            }
        }
        bail!("{} not settled in 100,000 frames", CHANNELS[c])
    }

    /// Reads everything queued for the connection: a ping's pong comes after it.
    fn catch_up(&mut self) -> Result<()> {
        for _ in 0..5 {
            if !self.send(&json!({"action": "ping"}))? {
                continue;
            }
            for _ in 0..100_000 {
                match self.read()? {
                    Read::Event(ev) if ev["event"] == "pong" => return Ok(()),
                    Read::Event(_) => {}
                    Read::Closed(how) => {
                        self.closed(how)?;
                        self.reconnect()?;
                        break;
                    }
                }
            }
        }
        bail!("reader {}: no pong in five tries", self.id)
    }

    fn subscribe(&mut self, c: usize) -> Result<()> {
        if self.send_subscribe_raw(c) {
            self.settle(c)
        } else {
            self.closed(Closed::Dropped("send failed".into()))?;
            self.reconnect()
        }
    }

    fn resume(&mut self, c: usize, from: u64) -> Result<()> {
        if self.send_resume_raw(c, from, false) {
            self.settle(c)
        } else {
            self.closed(Closed::Dropped("send failed".into()))?;
            self.reconnect()
        }
    }

    /// Waits (not reading) until `at_least` bytes were published on `channels` in all,
    /// at most `timeout`; returns the bytes published on each channel so far.
    fn wait_published(&self, channels: &[usize], at_least: u64, timeout: Duration) -> Vec<u64> {
        let board = self.board.lock();
        let (board, _) = self
            .board
            .changed
            .wait_timeout_while(board, timeout, |b| b.published_on(channels) < at_least)
            .expect("board lock");
        (0..CHANNELS.len())
            .map(|c| board.published_on(&[c]))
            .collect()
    }

    /// Stops reading until `target` more bytes were published on the followed channels
    /// (at most [`LONGEST_PAUSE`]), then reads again. Meanwhile it may resume channels
    /// or unsubscribe one, their answers queued behind what it has not read; the last
    /// such op, when it came late, ends the pause so that its answer is read before the
    /// buffer overflows. A reader that fell behind by more than the server's buffer and
    /// the kernel's together is closed by the time it has read what was queued.
    fn pause(&mut self, target: u64) -> Result<()> {
        let followed: Vec<usize> = self.following.keys().copied().collect();
        self.report.pauses += 1;
        self.trail
            .note(format!("pause for {target} bytes on {followed:?}"));
        let until = Instant::now() + LONGEST_PAUSE.min(self.left()?);
        let start = self.wait_published(&[], 0, Duration::ZERO);
        let start_on: u64 = followed.iter().map(|&c| start[c]).sum();
        let read_before = self.read_bytes;
        // Where the server's buffer starts to fill: once the kernel holds what it held
        // when this reader was last cut (or most of what it may hold).
        let full = self.kernel_held.unwrap_or(self.kernel_bytes * 3 / 4);
        // Perhaps an op early on, perhaps one late.
        let mut away_at = Vec::new();
        if self.rng.chance(2) {
            away_at.push(self.rng.below(target.min(full) as usize + 1) as u64);
        }
        if let Some(past) = target
            .checked_sub(full)
            .filter(|&p| p > 0 && !self.rng.chance(3))
        {
            // Where the buffer is a quarter to half full, by what was acked (which lags):
            // the room left may be too small for a replay there.
            let quarter = OUTBOUND_BYTES / 4;
            let late = quarter + self.rng.below(quarter as usize) as u64;
            away_at.push(full + late.min(past));
        }
        let mut target = target;
        for at in away_at {
            let wait = until.saturating_duration_since(Instant::now());
            self.wait_published(&followed, start_on + at, wait);
            if self.away_op(at > full) && at > full {
                // Read again now, to see the replay before the buffer overflows.
                target = at;
                break;
            }
        }
        let wait = until.saturating_duration_since(Instant::now());
        let now = self.wait_published(&followed, start_on + target, wait);
        // What came on the channels followed throughout (not one left meanwhile).
        let behind: u64 = followed
            .iter()
            .filter(|c| matches!(self.following.get(c), Some(Follow::Live { .. })))
            .map(|&c| now[c] - start[c])
            .sum();
        if behind >= target && target > OUTBOUND_BYTES + self.kernel_bytes && self.rng.chance(3) {
            // Away past the server's 2 s farewell: the close frame is not sent then, the
            // reader finds what the kernel held and an EOF.
            self.trail.note("away past the farewell".into());
            std::thread::sleep(FAREWELL + Duration::from_millis(500));
        }
        self.trail
            .note(format!("read again, {behind} bytes published meanwhile"));
        let closes = self.report.slow_closes.len();
        self.catch_up()?;
        let cut_by_frame = self.report.slow_closes[closes..]
            .first()
            .is_some_and(|c| c.how == Closed::Code(4008));
        if self.report.slow_closes.len() == closes + 1 && cut_by_frame {
            self.kernel_held = Some(self.read_bytes_at_close - read_before);
        }
        // Past the buffer and whatever the kernel holds, with room for messages still
        // on their way between shards at the pause's end.
        let must_close = OUTBOUND_BYTES + self.kernel_bytes + OUTBOUND_BYTES;
        ensure!(
            behind < must_close || self.report.slow_closes.len() > closes,
            "reader {} fell {behind} bytes behind and was not closed",
            self.id
        );
        Ok(())
    }

    /// While not reading: a resume of a channel not followed (then true), or an
    /// unsubscribe; a `late` one resumes from 0, so that its replay is as long as it
    /// gets. A send that fails is found by the next
    /// read (the connection was closed).
    fn away_op(&mut self, late: bool) -> bool {
        let unfollowed: Vec<usize> = (0..CHANNELS.len())
            .filter(|c| !self.following.contains_key(c))
            .collect();
        let c = match unfollowed.len() {
            0 => self.rng.below(CHANNELS.len()),
            n => unfollowed[self.rng.below(n)],
        };
        match self.following.get(&c) {
            None => {
                // From its own position, or from the oldest the ring surely still keeps
                // (one it may have learnt from the history API), or a little after it.
                let from = match (late, self.rng.below(3)) {
                    // All the ring keeps: the longest replay there is.
                    (true, _) => 0,
                    (false, 0) => self.last[c].unwrap_or(0),
                    (false, k) => {
                        let board = self.board.lock();
                        let log = &board.channels[c];
                        let latest = log.contiguous();
                        let kept = log.surely_kept_from(latest).saturating_sub(1);
                        drop(board);
                        let after = if k == 2 { self.rng.below(4) as u64 } else { 0 };
                        (kept + after).min(latest)
                    }
                };
                self.send_resume_raw(c, from, true);
                true
            }
            Some(Follow::Live { next }) => {
                let next = *next;
                let frame = json!({"action": "unsubscribe", "channel": CHANNELS[c]});
                self.trail.note(format!("-> {frame}"));
                if self.client.send_json(&frame).is_ok() {
                    self.following.insert(c, Follow::Leaving { next });
                }
                false
            }
            Some(_) => false,
        }
    }

    fn step(&mut self) -> Result<()> {
        let c = self.rng.below(CHANNELS.len());
        let followed = self.following.contains_key(&c);
        match self.rng.below(100) {
            0..=13 if !followed => self.subscribe(c)?,
            14..=27 if !followed && self.last[c].is_some() => {
                let from = self.last[c].unwrap_or(0);
                self.resume(c, from)?;
            }
            28..=35 if !followed => {
                let back = self.rng.below(3 * HISTORY_MESSAGES as usize) as u64;
                let from = self.last[c].unwrap_or(0).saturating_sub(back);
                self.resume(c, from)?;
            }
            36..=47 if followed => {
                let next = match self.following.get(&c) {
                    Some(Follow::Live { next }) => *next,
                    other => bail!("{} not settled: {other:?}", CHANNELS[c]),
                };
                if self.send(&json!({"action": "unsubscribe", "channel": CHANNELS[c]}))? {
                    self.following.insert(c, Follow::Leaving { next });
                    self.settle(c)?;
                }
            }
            48..=55 => {
                // A plain reconnect: close, then resume on a new connection.
                let _ = self.client.close();
                self.reconnect()?;
            }
            56..=79 if !self.steady && !self.following.is_empty() => {
                self.catch_up()?;
                // Short of the buffer (never closed), up to what the kernel may hold too
                // (perhaps closed), or past both (closed, when that much came in time).
                let (kernel, rng) = (self.kernel_bytes, &mut self.rng);
                let target = match rng.below(10) {
                    0..=2 => rng.below(OUTBOUND_BYTES as usize / 4) as u64,
                    3..=4 => OUTBOUND_BYTES + rng.below(kernel as usize) as u64,
                    _ => OUTBOUND_BYTES + kernel + rng.below(2 * OUTBOUND_BYTES as usize) as u64,
                };
                self.pause(target)?;
            }
            _ => {
                for _ in 0..self.rng.below(3) {
                    self.catch_up()?;
                }
            }
        }
        self.catch_up()
    }

    fn walk(&mut self, walk_end: Instant) -> Result<()> {
        for _ in 0..1 + self.rng.below(3) {
            let c = self.rng.below(CHANNELS.len());
            if !self.following.contains_key(&c) {
                self.subscribe(c)?;
            }
        }
        for op in 0..READER_OPS {
            if Instant::now() >= walk_end {
                break;
            }
            self.trail.note(format!("op {op}"));
            self.step()?;
        }
        self.catch_up()
    }
}

struct Publisher<'a> {
    id: usize,
    client: Client,
    rng: Rng,
    board: &'a Board,
    trail: Trail,
    deadline: Instant,
    sent: u64,
    refused: u64,
}

impl Publisher<'_> {
    fn channel(&mut self) -> usize {
        match self.rng.below(100) {
            0..=34 => 0,
            35..=69 => 1,
            70..=94 => 2,
            _ => 3,
        }
    }

    /// The length of the next publish's `data` on `c`; over [`MAX_DATA`] one time in 40.
    fn data_len(&mut self, c: usize) -> usize {
        if self.rng.chance(40) {
            return MAX_DATA + 1 + self.rng.below(64);
        }
        let near_limit = MAX_DATA - self.rng.below(512);
        match (c, self.rng.below(10)) {
            (0, _) => 20 + self.rng.below(280),
            (1, 0..=7) | (2, 8..) => near_limit,
            (1, _) => 2_000 + self.rng.below(4_000),
            (2, 0..=4) => 20 + self.rng.below(280),
            (2, _) => 1_000 + self.rng.below(2_000),
            _ => 20 + self.rng.below(600),
        }
    }

    /// `{"n":…,"p":…,"pad":"xx…"}` of exactly `len` bytes (at least the bare object's).
    fn data(&self, len: usize) -> String {
        let n = self.sent;
        let base = json!({"n": n, "p": self.id, "pad": ""}).to_string().len();
        json!({"n": n, "p": self.id, "pad": "x".repeat(len.saturating_sub(base))}).to_string()
    }

    fn recv(&mut self) -> Result<Value> {
        let left = time_left(self.deadline, &format!("publisher {}", self.id))?;
        let ev = self.client.recv_event(left)?;
        self.trail.note(format!("<- {ev}"));
        Ok(ev)
    }

    /// Waits while a steady reader of `c` is more than the window behind.
    fn wait_for_room(&mut self, c: usize) -> Result<()> {
        let board = self.board.lock();
        let wait = Duration::from_secs(10).min(time_left(self.deadline, "publisher")?);
        let (board, timeout) = self
            .board
            .changed
            .wait_timeout_while(board, wait, |b| b.steady_behind(c).is_some())
            .expect("board lock");
        if timeout.timed_out() {
            if let Some((r, unread)) = board.steady_behind(c) {
                bail!("steady reader {r} stayed {unread} bytes behind for {wait:?}");
            }
        }
        Ok(())
    }

    fn run(&mut self, stop_after: Instant) -> Result<()> {
        // Publisher 0 sends bursts of up to 4 back to back, 1 pairs a few ms apart, 2 one
        // at a time up to 12 ms apart: the gaps set their rates, they synchronise nothing.
        let (max_burst, max_gap_ms) = [(4, 0), (2, 3), (1, 12)][self.id % 3];
        for _ in 0..PUBLISHER_BURSTS {
            if self.board.lock().readers_left == 0 || Instant::now() >= stop_after {
                break;
            }
            let c = self.channel();
            self.wait_for_room(c)?;
            let mut pending = BTreeMap::new();
            for _ in 0..1 + self.rng.below(max_burst) {
                let len = self.data_len(c);
                self.sent += 1;
                let data = self.data(len);
                let reference = format!("p{}-{}", self.id, self.sent);
                let frame = format!(
                    r#"{{"action":"publish","channel":"{}","data":{data},"ref":"{reference}"}}"#,
                    CHANNELS[c]
                );
                self.trail.note(format!("-> {frame}"));
                let sent = Instant::now();
                self.client.send_raw_text(&frame)?;
                pending.insert(reference, (data, sent));
            }
            while !pending.is_empty() {
                let ev = self.recv()?;
                let reference = ev["ref"].as_str().unwrap_or("").to_owned();
                let (data, sent) = pending
                    .remove(&reference)
                    .with_context(|| format!("an answer to no publish: {ev}"))?;
                ensure!(
                    ev["channel"] == CHANNELS[c],
                    "answer for another channel: {ev}"
                );
                if data.len() > MAX_DATA {
                    ensure!(
                        ev["event"] == "error" && ev["data"]["code"] == "message_too_large",
                        "a publish over the limit answered {ev}"
                    );
                    self.refused += 1;
                    continue;
                }
                ensure!(ev["event"] == "ack", "publish refused: {ev}");
                let seq = ev["seq"].as_u64().context("ack seq")?;
                let frame = frame_len(CHANNELS[c], data.len(), seq);
                self.board.lock().channels[c].ack(seq, Acked { data, frame, sent })?;
                self.board.changed.notify_all();
            }
            if max_gap_ms > 0 {
                std::thread::sleep(Duration::from_millis(self.rng.below(max_gap_ms + 1) as u64));
            }
        }
        Ok(())
    }
}

/// What a connection closed as a slow consumer could have had unread when its buffer
/// overflowed, at most. The overflow came after every message it received was sent by
/// its publisher (it was queued before the overflow), so after `t` = the latest send
/// time of the last message it got per channel: by then it had read at least what it
/// read up to `t`, and what it had not read is among the messages sent after that, and
/// before it saw the close.
fn unread_bound(channels: &[ChannelLog], close: &SlowClose) -> u64 {
    let t = close
        .channels
        .iter()
        .filter_map(|(&c, track)| {
            let &(_, seq) = track.reads.last()?;
            Some(channels[c].acked[&seq].sent)
        })
        .max();
    close
        .channels
        .iter()
        .map(|(&c, track)| {
            let read_by_t = track
                .reads
                .iter()
                .filter(|(at, _)| t.is_some_and(|t| *at <= t))
                .map(|&(_, seq)| seq)
                .max()
                .unwrap_or(0);
            let pos = track.floor.max(read_by_t);
            channels[c]
                .acked
                .range(pos + 1..)
                .filter(|(_, a)| a.sent <= close.seen)
                .map(|(_, a)| a.frame)
                .sum::<u64>()
        })
        .sum::<u64>()
        + OTHER_FRAMES_SLACK
}

#[test]
fn slow_consumers_are_cut_and_catch_up_from_bounded_history_without_gaps() -> Result<()> {
    let seed = soak_seed(0x5eed_0000_0000_0051)?;
    let config = format!(
        "outbound_buffer_bytes = {OUTBOUND_BYTES}\n\
         [[tenants]]\nid = \"dev\"\nplan = \"enterprise\"\n\
         history_messages = {HISTORY_MESSAGES}\nmax_message_bytes = {MAX_DATA}\n\
         [history]\nmax_bytes_per_channel = {RING_BYTES}\n"
    );
    let (server, _config_path) = Server::start_with_config(&config, &["--dev"])?;
    let started = Instant::now();
    let deadline = started + SOAK_LIMIT;
    let walk_end = started + WALK_TIME;
    let board = Board {
        state: Mutex::new(BoardState {
            channels: (0..CHANNELS.len()).map(|_| ChannelLog::new()).collect(),
            steady: (0..READERS)
                .map(|r| (r < STEADY).then_some([None; 4]))
                .collect(),
            epochs: Default::default(),
            readers_left: READERS,
        }),
        changed: Condvar::new(),
    };

    let (reports, refused) = std::thread::scope(|scope| -> Result<_> {
        let mut publishers = Vec::new();
        for id in 0..PUBLISHERS {
            let client = Client::connect_on_shard(&server, (id % 2) as u32)?;
            let mut publisher = Publisher {
                id,
                client,
                rng: Rng::new(seed, 100 + id as u64),
                board: &board,
                trail: Trail::new(20, 160),
                deadline,
                sent: 0,
                refused: 0,
            };
            publishers.push(scope.spawn(move || {
                let ran = publisher.run(walk_end + Duration::from_secs(10));
                ran.map(|()| publisher.refused).map_err(|e| {
                    e.context(format!(
                        "publisher {id}, seed {seed:#x}; last frames:\n{}",
                        publisher.trail.text()
                    ))
                })
            }));
        }
        let mut readers = Vec::new();
        for id in 0..READERS {
            let steady = id < STEADY;
            let mut reader = Reader {
                id,
                steady,
                server: &server,
                board: &board,
                client: Reader::connect(&server, steady)?,
                rng: Rng::new(seed, id as u64),
                trail: Trail::new(40, 160),
                following: BTreeMap::new(),
                tracks: BTreeMap::new(),
                last: [None; 4],
                epoch: Default::default(),
                report: ReaderReport::default(),
                kernel_bytes: kernel_bytes(),
                kernel_held: None,
                read_bytes: 0,
                read_bytes_at_close: 0,
                deadline,
            };
            let board = &board;
            readers.push(scope.spawn(move || {
                let walked = reader.walk(walk_end);
                {
                    let mut state = board.lock();
                    state.readers_left -= 1;
                    state.steady[id] = None;
                }
                board.changed.notify_all();
                walked.map(|()| reader.report).map_err(|e| {
                    e.context(format!(
                        "reader {id} (steady: {steady}), seed {seed:#x}; last frames:\n{}",
                        reader.trail.text()
                    ))
                })
            }));
        }
        let mut reports = Vec::new();
        let mut first_error = None;
        for r in readers {
            match r.join().expect("reader thread") {
                Ok(report) => reports.push(report),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let mut refused = 0;
        for p in publishers {
            match p.join().expect("publisher thread") {
                Ok(n) => refused += n,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok((reports, refused)),
        }
    })?;
    let walked = started.elapsed();
    let state = board.state.into_inner().expect("board lock");
    let logs = &state.channels;

    // Every publish but the refused ones took the next seq of its channel.
    for (c, log) in logs.iter().enumerate() {
        ensure!(
            log.acked.keys().copied().eq(1..=log.acked.len() as u64),
            "{}: acked seqs have holes",
            CHANNELS[c]
        );
    }
    // Every message a reader got carries its acked data.
    for report in &reports {
        for (&(c, seq), &hash) in &report.seen {
            let acked = logs[c]
                .acked
                .get(&seq)
                .with_context(|| format!("{} seq {seq} was delivered, never acked", CHANNELS[c]))?;
            ensure!(
                hash_of(&acked.data) == hash,
                "{} seq {seq}: delivered data is not the acked {}",
                CHANNELS[c],
                acked.data
            );
        }
    }
    // Resumes, judged with every message's size known.
    let (mut kept, mut evicted, mut between, mut cut) = (0, 0, 0, 0);
    for r in reports.iter().flat_map(|r| &r.resumes) {
        let log = &logs[r.channel];
        if r.from == r.seq {
            continue;
        }
        let sure_from = log.surely_kept_from(r.seq);
        let what = format!(
            "reader {} resumed {} from {} (answered at {}, recovered {}, replay from {:?}; \
             surely kept from {sure_from}), seed {seed:#x}",
            r.reader, CHANNELS[r.channel], r.from, r.seq, r.recovered, r.first
        );
        // A replay that leaves out messages the ring surely kept was cut to the room
        // its connection had left: only one sent while the reader was not reading may
        // be (docs/wire-contract.md, "A replay takes at most half …").
        let cut_short = !r.recovered && r.first.is_none_or(|f| f > sure_from);
        if cut_short {
            ensure!(r.behind, "{what}: the replay left out messages still kept");
            cut += 1;
        } else if r.from + 1 >= sure_from {
            ensure!(r.recovered, "{what}: every missing message was kept");
            kept += 1;
        } else if log.surely_evicted(r.from, r.seq) {
            ensure!(!r.recovered, "{what}: history cannot hold all that");
            evicted += 1;
        } else {
            between += 1;
        }
    }
    // Slow-consumer closes: each came to a connection that had fallen behind by more
    // than the buffer, and the server counted exactly those.
    let closes: Vec<&SlowClose> = reports.iter().flat_map(|r| &r.slow_closes).collect();
    let (mut frames, mut tightest) = (0, u64::MAX);
    for close in &closes {
        frames += usize::from(close.how == Closed::Code(4008));
        let unread = unread_bound(logs, close);
        tightest = tightest.min(unread);
        ensure!(
            unread > OUTBOUND_BYTES,
            "reader {} was closed ({:?}) with at most {unread} bytes unread, under the \
             {OUTBOUND_BYTES}-byte buffer; seed {seed:#x}",
            close.reader,
            close.how
        );
    }
    let counted = server
        .metric("ringcast_slow_consumer_closes_total")?
        .unwrap_or(0.0);
    ensure!(
        counted == closes.len() as f64,
        "the server counted {counted} slow-consumer closes, readers saw {}; seed {seed:#x}",
        closes.len()
    );
    if !closes.is_empty() {
        let line = server.await_log_line(&["connection closed", "reason=slow_consumer"])?;
        ensure!(line.contains("code=4008"), "{line}");
    }

    // A fresh client replays each channel from 0: the newest messages, every one surely
    // kept among them, each with its acked data; the history API agrees.
    let mut fresh = Client::open(&server, "")?;
    for (c, log) in logs.iter().enumerate() {
        let latest = log.contiguous();
        if latest == 0 {
            continue;
        }
        fresh
            .send_json(&json!({"action": "subscribe", "channel": CHANNELS[c], "lastEventId": 0}))?;
        let mut replay: Vec<(u64, String)> = Vec::new();
        let answer = loop {
            let ev = fresh.recv_event(TIMEOUT)?;
            match ev["event"].as_str() {
                Some("realtime.message") => {
                    replay.push((ev["seq"].as_u64().context("seq")?, ev["data"].to_string()))
                }
                Some("subscribed") => break ev,
                _ => bail!("the fresh client got {ev}"),
            }
        };
        let name = CHANNELS[c];
        ensure!(
            answer["seq"] == latest,
            "{name}: answered {answer}, latest {latest}"
        );
        let first = replay
            .first()
            .map(|(s, _)| *s)
            .context("nothing replayed")?;
        ensure!(
            replay.iter().map(|(s, _)| *s).eq(first..=latest),
            "{name}: the replay is not one run up to {latest}"
        );
        ensure!(
            answer["recovered"] == (first == 1),
            "{name}: replay from {first}, {answer}"
        );
        ensure!(
            first <= log.surely_kept_from(latest),
            "{name}: kept from {first}, but surely kept from {}",
            log.surely_kept_from(latest)
        );
        ensure!(
            replay.len() as u64 <= HISTORY_MESSAGES,
            "{name}: over history_messages"
        );
        let kept_bytes: u64 = replay
            .iter()
            .map(|(s, _)| record_len(log.acked[s].frame))
            .sum();
        ensure!(kept_bytes <= RING_BYTES, "{name}: {kept_bytes} bytes kept");
        for (seq, data) in &replay {
            ensure!(
                *data == log.acked[seq].data,
                "{name} seq {seq}: kept {data}, acked {}",
                log.acked[seq].data
            );
        }
        let page = http_get(
            server.addr(),
            &format!(
                "/api/realtime/history/{}?limit=1000",
                encode_component(name)
            ),
        )?;
        ensure!(page.status == 200, "history: {}", page.body_text());
        let page = page.json()?;
        let listed: Vec<(u64, String)> = page["messages"]
            .as_array()
            .context("messages")?
            .iter()
            .map(|m| Ok((m["seq"].as_u64().context("seq")?, m["data"].to_string())))
            .collect::<Result<_>>()?;
        ensure!(
            listed == replay,
            "{name}: the history API and the replay differ"
        );
    }
    let published: usize = logs.iter().map(|l| l.acked.len()).sum();
    let resumes: usize = reports.iter().map(|r| r.resumes.len()).sum();
    let away = reports
        .iter()
        .flat_map(|r| &r.resumes)
        .filter(|r| r.behind)
        .count();
    let pauses: usize = reports.iter().map(|r| r.pauses).sum();
    let reconnects: usize = reports.iter().map(|r| r.reconnects).sum();
    let channels_seen: BTreeSet<usize> = reports
        .iter()
        .flat_map(|r| r.seen.keys().map(|&(c, _)| c))
        .collect();
    eprintln!(
        "seed {seed:#x}: walked {walked:.1?}; {published} acked ({refused} refused as too \
         large), {pauses} pauses, {} slow-consumer closes ({frames} with the 4008 frame, the \
         others an EOF; the closest had at most {tightest} bytes unread), {reconnects} \
         reconnects, {resumes} resumes ({kept} surely kept, {evicted} surely evicted, \
         {between} between; {away} sent while not reading, {cut} of them cut to the room \
         left)",
        closes.len()
    );
    ensure!(
        channels_seen.len() == CHANNELS.len(),
        "some channel reached no reader"
    );
    ensure!(!closes.is_empty(), "no slow-consumer close in the walk");
    ensure!(
        kept > 0 && evicted > 0,
        "the walk resumed from too few kinds of position"
    );
    ensure!(refused > 0, "no publish over the limit");
    // Still healthy.
    fresh.ping_pong()?;
    Ok(())
}
