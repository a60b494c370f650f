//! A deterministic, in-process harness for shards (quinn's `Pair` is the model): real
//! [`ShardCore`]s and a real [`Mesh`], no sockets, no tasks, no OS clock. A test sends
//! client frames in, moves messages between shards one step at a time (or until quiet),
//! moves a [`ManualClock`], and reads the exact events each connection was sent.

#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use ringcast_engine::clock::{Clock, ManualClock, Millis};
use ringcast_engine::config::{Config, Overrides};
use ringcast_engine::conn::Conn;
use ringcast_engine::core::ShardCore;
use ringcast_engine::history;
use ringcast_engine::keys::{ChannelKey, ShardId};
use ringcast_engine::mesh::Mesh;
use ringcast_engine::requests::{AnswerReceiver, Outcome};
use ringcast_engine::shared::Shared;
use ringcast_protocol::event::PresenceSpelling;
use ringcast_protocol::{ChannelName, TenantId};
use serde_json::Value;

/// Bound on any pumping loop.
const MAX_STEPS: usize = 100_000;

/// N shards of one server, driven by the test.
pub struct Cluster {
    pub mesh: Arc<Mesh>,
    pub shared: Arc<Shared>,
    pub clock: ManualClock,
    pub shards: Vec<ShardCore>,
    _data: tempfile::TempDir,
}

impl Cluster {
    /// `shards` shards of a `--dev` server with default settings.
    pub fn new(shards: usize) -> Cluster {
        Cluster::with(shards, |_| {})
    }

    /// Like [`Cluster::new`], with the config adjusted by `tweak`.
    pub fn with(shards: usize, tweak: impl FnOnce(&mut Config)) -> Cluster {
        let data = tempfile::tempdir().expect("temp dir");
        let flags = Overrides {
            dev: true,
            shards: Some(shards),
            data_dir: Some(data.path().to_path_buf()),
            ..Overrides::default()
        };
        let mut config = Config::load(None, &flags).expect("dev config");
        // The harness's connections are silent while tests move time by minutes; the
        // idle sweep is tested where it is turned back on.
        config.idle_timeout_secs = 0;
        tweak(&mut config);
        let mesh = Mesh::with_capacity(shards, config.inbox_capacity);
        let shared = Arc::new(Shared::new(config.clone(), mesh.clone()));
        let clock = ManualClock::new(Millis(1_700_000_000_000));
        let histories = history::open_all(data.path(), &config.history, shards).expect("history");
        let shards = histories
            .into_iter()
            .enumerate()
            .map(|(i, history)| {
                ShardCore::new(
                    ShardId(i as u16),
                    mesh.clone(),
                    shared.clone(),
                    history,
                    Clock::Manual(clock.clone()),
                )
            })
            .collect();
        Cluster {
            mesh,
            shared,
            clock,
            shards,
            _data: data,
        }
    }

    /// A WebSocket connection of the dev tenant on `shard`; its `connected` is consumed.
    /// (The tenant is the one of the current table, as the server's handshake finds it.)
    pub fn connect(&mut self, shard: usize) -> Rc<Conn> {
        let tenant = self
            .shared
            .tenants
            .load()
            .resolve(None)
            .expect("dev tenant");
        let conn = self.shards[shard].register_conn(tenant, "test");
        let events = take(&conn);
        assert_eq!(events[0]["event"], "connected");
        conn
    }

    /// Like [`Cluster::connect`], with presence events spelled `spelling`.
    pub fn connect_spelled(&mut self, shard: usize, spelling: PresenceSpelling) -> Rc<Conn> {
        let tenant = self
            .shared
            .tenants
            .load()
            .resolve(None)
            .expect("dev tenant");
        let conn = self.shards[shard].register_conn_with(tenant, "test", Some(spelling));
        let events = take(&conn);
        assert_eq!(events[0]["event"], "connected");
        conn
    }

    /// `conn` (on `shard`) sends the text frame `json`.
    pub fn send(&mut self, shard: usize, conn: &Rc<Conn>, json: &str) {
        self.shards[shard].on_text(conn, json.as_bytes());
    }

    /// `conn` (on `shard`) sends these text frames in one read, handled as one batch as
    /// the session handles a read.
    pub fn send_burst(&mut self, shard: usize, conn: &Rc<Conn>, frames: &[String]) {
        let core = &mut self.shards[shard];
        core.begin_batch();
        for json in frames {
            core.on_text(conn, json.as_bytes());
        }
        core.end_batch();
    }

    /// Lets `shard` handle up to `max` messages from its inbox. Returns how many.
    pub fn step(&mut self, shard: usize, max: usize) -> usize {
        let mut batch = Vec::new();
        self.mesh
            .inbox(ShardId(shard as u16))
            .try_recv_batch(&mut batch, max);
        let n = batch.len();
        // One batch, as `Shard::handle_batch` does.
        let core = &mut self.shards[shard];
        core.begin_batch();
        for msg in batch {
            core.handle(msg);
        }
        core.end_batch();
        core.retry_spills();
        self.mesh.drained(ShardId(shard as u16));
        n
    }

    /// Moves messages until every inbox is empty and nothing is spilled.
    pub fn pump(&mut self) {
        for _ in 0..MAX_STEPS {
            let mut moved = 0;
            for shard in 0..self.shards.len() {
                moved += self.step(shard, 256);
            }
            if moved == 0 && !self.mesh.under_pressure() {
                return;
            }
        }
        panic!("the cluster did not go quiet within {MAX_STEPS} steps");
    }

    /// Moves the clock and ticks every shard.
    pub fn advance(&mut self, ms: u64) {
        self.clock.advance(ms);
        for core in &mut self.shards {
            core.on_tick();
        }
    }

    /// A dev-tenant channel whose owner is `shard`, named `prefix…`.
    pub fn channel_owned_by(&self, shard: usize, prefix: &str) -> String {
        (0..10_000)
            .map(|i| format!("{prefix}{i}"))
            .find(|name| key(name).owner(self.shards.len()) == ShardId(shard as u16))
            .expect("some name hashes to every shard")
    }
}

/// The dev tenant's channel `name`.
pub fn key(name: &str) -> ChannelKey {
    ChannelKey::new(
        TenantId::new("dev"),
        ChannelName::new(name).expect("channel"),
    )
}

/// Every event queued for `conn` since the last call, decoded (a queued buffer may hold
/// several frames: a delivery run).
pub fn take(conn: &Conn) -> Vec<Value> {
    take_buffers(conn).iter().flatten().cloned().collect()
}

/// The buffers queued for `conn` since the last call, each as the events it holds.
pub fn take_buffers(conn: &Conn) -> Vec<Vec<Value>> {
    conn.outbound()
        .take_queued()
        .iter()
        .map(|buffer| {
            let mut events = Vec::new();
            let mut at = 0;
            while at < buffer.len() {
                let len = server_frame_len(&buffer[at..]);
                events.push(decode_server_frame(&buffer[at..at + len]));
                at += len;
            }
            events
        })
        .collect()
}

/// The length of the server→client frame at the start of `bytes`.
fn server_frame_len(bytes: &[u8]) -> usize {
    let (header, payload) = server_frame_header(bytes);
    header + payload
}

/// The header length and payload length of the (unmasked) server→client frame at the
/// start of `bytes`.
fn server_frame_header(bytes: &[u8]) -> (usize, usize) {
    match bytes[1] & 0x7f {
        126 => (4, u16::from_be_bytes([bytes[2], bytes[3]]) as usize),
        127 => (
            10,
            u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
        ),
        n => (2, n as usize),
    }
}

/// A server→client WebSocket frame: text frames as their JSON, close frames as
/// `{"close": code}`.
pub fn decode_server_frame(frame: &[u8]) -> Value {
    let opcode = frame[0] & 0x0f;
    let (at, len) = server_frame_header(frame);
    let payload = &frame[at..at + len];
    match opcode {
        0x1 => serde_json::from_slice(payload).expect("server frames are JSON"),
        0x8 => serde_json::json!({"close": u16::from_be_bytes([payload[0], payload[1]])}),
        0x9 => serde_json::json!({"ping": payload.len()}),
        other => panic!("unexpected opcode {other}"),
    }
}

/// Polls an answer once (the harness has no executor: answers arrive while pumping).
pub fn poll_answer(rx: &mut AnswerReceiver) -> Option<Outcome> {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(rx).poll(&mut cx) {
        Poll::Ready(outcome) => Some(outcome),
        Poll::Pending => None,
    }
}

/// The `seq`s of the `realtime.message` events in `events`.
pub fn seqs(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e["event"] == "realtime.message")
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect()
}
