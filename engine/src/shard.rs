//! A shard: one thread, one core, one monoio runtime, and the state it alone owns —
//! its connections, its local topic table, and the channels it owns.
//!
//! Client actions arrive from sessions on this shard; anything about a channel goes to
//! the channel's owner shard, inline when that is this shard, else through the owner's
//! inbox. The owner assigns seq, appends history, and sends the encoded frame once to
//! each shard that watches the channel; each shard then queues the same bytes to its
//! local subscribers.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};

use arc_swap::ArcSwap;
use bytes::Bytes;
use hashbrown::HashMap;
use ringcast_protocol::client::{Publish, Subscribe};
use ringcast_protocol::{event, ChannelName, ClientFrame, CloseCode, ErrorCode, FrameParser};

use crate::clock::now_ms;
use crate::config::Config;
use crate::conn::{Conn, Pushed, Sub};
use crate::history::HistoryStore;
use crate::keys::{ChannelKey, ConnId, ShardId};
use crate::mesh::{Mesh, Origin, PublishReq, ShardMsg, SubscribeReq};
use crate::metrics::Metrics;
use crate::owner::OwnedChannels;
use crate::tenant::{Tenant, TenantTable};
use crate::topic_table::{LocalTopics, Watch};

/// State shared by every shard (read-mostly; live-replaceable parts behind `ArcSwap`).
#[derive(Debug)]
pub struct Shared {
    /// The configuration in force.
    pub config: ArcSwap<Config>,
    /// Tenants and their limits.
    pub tenants: ArcSwap<TenantTable>,
    /// Metrics.
    pub metrics: Metrics,
    /// Open TCP connections on all shards (for `max_connections`).
    pub open_connections: AtomicUsize,
    /// Shards whose loops run (for `/readyz`).
    pub ready_shards: AtomicUsize,
}

/// One shard's state. Lives in an `Rc` on its own thread; never shared across threads.
#[derive(Debug)]
pub struct Shard {
    /// This shard.
    pub id: ShardId,
    /// Every shard's inbox.
    pub mesh: Arc<Mesh>,
    /// Cross-shard shared state.
    pub shared: Arc<Shared>,
    conns: RefCell<HashMap<ConnId, Rc<Conn>>>,
    local: RefCell<LocalTopics>,
    owned: RefCell<OwnedChannels>,
    parser: RefCell<FrameParser>,
    next_id: Cell<u64>,
    shutting_down: Cell<bool>,
    shutdown_waker: RefCell<Option<Waker>>,
}

impl Shard {
    /// A shard with empty tables.
    pub fn new(id: ShardId, mesh: Arc<Mesh>, shared: Arc<Shared>, history: HistoryStore) -> Shard {
        Shard {
            id,
            mesh,
            shared,
            conns: RefCell::new(HashMap::new()),
            local: RefCell::new(LocalTopics::default()),
            owned: RefCell::new(OwnedChannels::new(history)),
            parser: RefCell::new(FrameParser::new()),
            next_id: Cell::new(1),
            shutting_down: Cell::new(false),
            shutdown_waker: RefCell::new(None),
        }
    }

    fn next_id(&self) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }

    /// A client id for a connection that gave none.
    pub fn generate_client_id(&self) -> String {
        format!("rc{:x}{:x}{:x}", now_ms(), self.id.0, self.next_id())
    }

    /// Registers a new WebSocket connection.
    pub fn register_conn(&self, tenant: Arc<Tenant>) -> Rc<Conn> {
        let limit = self.shared.config.load().outbound_buffer_bytes;
        let conn = Rc::new(Conn::new(ConnId(self.next_id()), tenant, limit));
        self.conns.borrow_mut().insert(conn.id, conn.clone());
        conn
    }

    /// Forgets a connection: leaves its channels, tells owners of channels left unwatched.
    pub fn unregister_conn(&self, conn: &Conn) {
        self.conns.borrow_mut().remove(&conn.id);
        let subs = std::mem::take(&mut *conn.subs.borrow_mut());
        for channel in subs.into_keys() {
            let key = ChannelKey::new(conn.tenant.id.clone(), channel);
            self.leave_local(&key, conn.id);
        }
    }

    /// Number of WebSocket connections on this shard.
    pub fn connection_count(&self) -> usize {
        self.conns.borrow().len()
    }

    // ----- client actions (from sessions on this shard) -----

    /// Acts on one text message from `conn`.
    pub fn on_text(&self, conn: &Rc<Conn>, text: &[u8]) {
        let parsed = self.parser.borrow_mut().parse(text);
        match parsed {
            Ok(ClientFrame::Subscribe(sub)) => self.subscribe(conn, sub),
            Ok(ClientFrame::Unsubscribe { channel }) => self.unsubscribe(conn, channel),
            Ok(ClientFrame::Publish(publish)) => self.publish(conn, publish),
            Ok(ClientFrame::Ping) => self.push(conn, event::pong(now_ms())),
            Ok(ClientFrame::PresenceJoin(p) | ClientFrame::PresenceUpdate(p)) => self.send_error(
                conn,
                Some(p.channel.as_str()),
                None,
                ErrorCode::NotImplemented,
                PRESENCE_NOT_BUILT,
            ),
            Ok(ClientFrame::PresenceLeave { channel }) => self.send_error(
                conn,
                Some(channel.as_str()),
                None,
                ErrorCode::NotImplemented,
                PRESENCE_NOT_BUILT,
            ),
            Err(failure) => self.send_error(
                conn,
                failure.channel.as_deref(),
                failure.reference,
                failure.code,
                &failure.message,
            ),
        }
    }

    /// Answers a binary message.
    pub fn on_binary(&self, conn: &Rc<Conn>) {
        self.send_error(
            conn,
            None,
            None,
            ErrorCode::BadRequest,
            "binary frames are not supported; send JSON text",
        );
    }

    fn subscribe(&self, conn: &Rc<Conn>, sub: Subscribe) {
        if sub.channel.is_private() {
            self.send_error(
                conn,
                Some(sub.channel.as_str()),
                None,
                ErrorCode::Unauthorized,
                PRIVATE_NOT_BUILT,
            );
            return;
        }
        let request = self.next_id();
        conn.subs
            .borrow_mut()
            .insert(sub.channel.clone(), Sub::Pending(request));
        let key = ChannelKey::new(conn.tenant.id.clone(), sub.channel);
        self.local.borrow_mut().begin_subscribe(&key);
        let msg = ShardMsg::Subscribe(SubscribeReq {
            key: key.clone(),
            from: self.id,
            conn: conn.id,
            request,
            last_event_id: sub.last_event_id,
            epoch: sub.epoch,
        });
        self.to_owner(&key, msg);
    }

    fn unsubscribe(&self, conn: &Rc<Conn>, channel: ChannelName) {
        if conn.subs.borrow_mut().remove(&channel).is_none() {
            let message = "not subscribed to this channel";
            self.send_error(
                conn,
                Some(channel.as_str()),
                None,
                ErrorCode::NotSubscribed,
                message,
            );
            return;
        }
        let now = now_ms();
        self.push(conn, event::unsubscribed(channel.as_str(), now));
        let key = ChannelKey::new(conn.tenant.id.clone(), channel);
        self.leave_local(&key, conn.id);
    }

    /// Tells the owner when this shard stopped watching `key`.
    fn report_watch(&self, key: &ChannelKey, watch: Watch) {
        if watch == Watch::Unwatched {
            let msg = ShardMsg::Unwatch {
                key: key.clone(),
                from: self.id,
            };
            self.to_owner(key, msg);
        }
    }

    fn leave_local(&self, key: &ChannelKey, conn: ConnId) {
        let watch = self.local.borrow_mut().remove(key, conn);
        self.report_watch(key, watch);
    }

    fn publish(&self, conn: &Rc<Conn>, publish: Publish<'_>) {
        let limit = conn.tenant.limits.max_message_bytes;
        if publish.data.len() > limit {
            let message = format!(
                "data is {} bytes; the tenant's limit is {limit}",
                publish.data.len()
            );
            let (channel, reference) = (Some(publish.channel.as_str()), publish.reference);
            self.send_error(
                conn,
                channel,
                reference,
                ErrorCode::MessageTooLarge,
                &message,
            );
            return;
        }
        if publish.channel.is_private() {
            let (channel, reference) = (Some(publish.channel.as_str()), publish.reference);
            self.send_error(
                conn,
                channel,
                reference,
                ErrorCode::Unauthorized,
                PRIVATE_NOT_BUILT,
            );
            return;
        }
        let key = ChannelKey::new(conn.tenant.id.clone(), publish.channel);
        let origin = Origin {
            shard: self.id,
            conn: conn.id,
            reference: publish.reference.map(Bytes::copy_from_slice),
        };
        let msg = ShardMsg::Publish(PublishReq {
            key: key.clone(),
            data: Bytes::copy_from_slice(publish.data),
            user_id: publish.user_id.map(String::into_boxed_str),
            origin: Some(origin),
        });
        self.to_owner(&key, msg);
    }

    // ----- messages (from the inbox, or inline when this shard owns the channel) -----

    /// Handles a message addressed to this shard.
    pub fn handle(&self, msg: ShardMsg) {
        match msg {
            ShardMsg::Publish(req) => self.owner_publish(req),
            ShardMsg::Subscribe(req) => self.owner_subscribe(req),
            ShardMsg::Unwatch { key, from } => self.owned.borrow_mut().unwatch(&key, from),
            ShardMsg::Deliver { key, frame } => self.deliver_local(&key, &frame),
            ShardMsg::Subscribed {
                key,
                conn,
                request,
                ok,
                frames,
            } => self.finish_subscribe(&key, conn, request, ok, frames),
            ShardMsg::Reply { conn, frame } => {
                let conn = self.conns.borrow().get(&conn).cloned();
                if let Some(conn) = conn {
                    self.push(&conn, frame);
                }
            }
            ShardMsg::Shutdown => self.begin_shutdown(),
        }
    }

    fn to_owner(&self, key: &ChannelKey, msg: ShardMsg) {
        let owner = key.owner(self.mesh.shards());
        if owner == self.id {
            self.handle(msg);
        } else {
            self.mesh.send(owner, msg);
        }
    }

    fn send_to(&self, shard: ShardId, msg: ShardMsg) {
        if shard == self.id {
            self.handle(msg);
        } else {
            self.mesh.send(shard, msg);
        }
    }

    fn owner_publish(&self, req: PublishReq) {
        let now = now_ms();
        let Some(tenant) = self.shared.tenants.load().get(req.key.tenant.as_str()) else {
            return;
        };
        let mut owned = self.owned.borrow_mut();
        let channel = match owned.open(&req.key, &tenant, now) {
            Ok(channel) => channel,
            Err(e) => {
                drop(owned);
                self.publish_failed(&req, &format!("history unavailable: {e}"));
                return;
            }
        };
        let seq = channel.history.next_seq();
        let frame = event::message(
            req.key.channel.as_str(),
            &req.data,
            req.user_id.as_deref(),
            seq,
            now,
        );
        if let Err(e) = owned.append(&req.key, now, req.user_id.as_deref(), &frame) {
            drop(owned);
            self.publish_failed(&req, &format!("history append failed: {e}"));
            return;
        }
        let watchers = &owned.get(&req.key).expect("opened above").watchers;
        for shard in watchers.iter() {
            if shard == self.id {
                self.deliver_local(&req.key, &frame);
            } else {
                self.mesh.send(
                    shard,
                    ShardMsg::Deliver {
                        key: req.key.clone(),
                        frame: frame.clone(),
                    },
                );
            }
        }
        drop(owned);
        self.shared.metrics.messages_published.inc();
        if let Some(Origin {
            shard,
            conn,
            reference: Some(reference),
        }) = req.origin
        {
            let ack = event::ack(&reference, req.key.channel.as_str(), seq, now);
            self.send_to(shard, ShardMsg::Reply { conn, frame: ack });
        }
    }

    fn publish_failed(&self, req: &PublishReq, message: &str) {
        tracing::error!(channel = %req.key.channel, message, "publish failed");
        self.shared.metrics.error(ErrorCode::Overloaded.as_str());
        if let Some(origin) = &req.origin {
            let frame = event::error(
                Some(req.key.channel.as_str()),
                origin.reference.as_deref(),
                ErrorCode::Overloaded,
                message,
                now_ms(),
            );
            self.send_to(
                origin.shard,
                ShardMsg::Reply {
                    conn: origin.conn,
                    frame,
                },
            );
        }
    }

    fn owner_subscribe(&self, req: SubscribeReq) {
        let now = now_ms();
        let tenant = self.shared.tenants.load().get(req.key.tenant.as_str());
        let mut owned = self.owned.borrow_mut();
        let opened = match &tenant {
            Some(tenant) => owned
                .open(&req.key, tenant, now)
                .map_err(|e| format!("history unavailable: {e}")),
            None => Err("tenant no longer exists".to_owned()),
        };
        let (ok, frames) = match opened {
            Ok(channel) => {
                channel.watchers.insert(req.from);
                let answer = channel
                    .history
                    .subscribe_answer(req.last_event_id, req.epoch.as_deref());
                let mut frames = answer.replay;
                let channel_name = req.key.channel.as_str();
                frames.push(event::subscribed(
                    channel_name,
                    answer.seq,
                    &answer.epoch,
                    answer.recovered,
                    now,
                ));
                (true, frames)
            }
            Err(message) => {
                tracing::error!(channel = %req.key.channel, %message, "subscribe failed");
                (
                    false,
                    vec![event::error(
                        Some(req.key.channel.as_str()),
                        None,
                        ErrorCode::Overloaded,
                        &message,
                        now,
                    )],
                )
            }
        };
        drop(owned);
        let msg = ShardMsg::Subscribed {
            key: req.key,
            conn: req.conn,
            request: req.request,
            ok,
            frames,
        };
        self.send_to(req.from, msg);
    }

    fn finish_subscribe(
        &self,
        key: &ChannelKey,
        conn_id: ConnId,
        request: u64,
        ok: bool,
        frames: Vec<Bytes>,
    ) {
        let conn = self.conns.borrow().get(&conn_id).cloned();
        let waiting =
            conn.filter(|c| c.subs.borrow().get(&key.channel) == Some(&Sub::Pending(request)));
        let activate = waiting.clone().filter(|_| ok);
        let watch = self
            .local
            .borrow_mut()
            .finish_subscribe(key, activate.clone());
        if let Some(conn) = &waiting {
            if ok {
                conn.subs
                    .borrow_mut()
                    .insert(key.channel.clone(), Sub::Active);
            } else {
                conn.subs.borrow_mut().remove(&key.channel);
            }
            for frame in frames {
                self.push(conn, frame);
            }
        }
        self.report_watch(key, watch);
    }

    /// Queues `frame` to every local subscriber of `key` (the same bytes for all).
    fn deliver_local(&self, key: &ChannelKey, frame: &Bytes) {
        let local = self.local.borrow();
        let Some(channel) = local.get(key) else {
            return;
        };
        let (mut delivered, mut overflowed) = (0u64, 0u64);
        for conn in channel.subscribers() {
            match conn.push(frame.clone()) {
                Pushed::Queued => delivered += 1,
                Pushed::Overflowed => overflowed += 1,
                Pushed::Dropped => {}
            }
        }
        self.shared.metrics.deliveries.inc_by(delivered);
        if overflowed > 0 {
            self.shared.metrics.slow_consumer_closes.inc_by(overflowed);
        }
    }

    /// Queues one frame for one connection.
    pub fn push(&self, conn: &Conn, frame: Bytes) {
        if conn.push(frame) == Pushed::Overflowed {
            self.shared.metrics.slow_consumer_closes.inc();
        }
    }

    /// Sends an `error` event and counts it.
    pub fn send_error(
        &self,
        conn: &Conn,
        channel: Option<&str>,
        reference: Option<&[u8]>,
        code: ErrorCode,
        message: &str,
    ) {
        self.shared.metrics.error(code.as_str());
        self.push(
            conn,
            event::error(channel, reference, code, message, now_ms()),
        );
    }

    // ----- lifecycle -----

    /// Stops accepting and closes every connection with 1001.
    pub fn begin_shutdown(&self) {
        if self.shutting_down.replace(true) {
            return;
        }
        if let Some(waker) = self.shutdown_waker.borrow_mut().take() {
            waker.wake();
        }
        let conns: Vec<Rc<Conn>> = self.conns.borrow().values().cloned().collect();
        for conn in conns {
            conn.close(CloseCode::GOING_AWAY, "server shutting down");
        }
    }

    /// Whether shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.get()
    }

    /// Resolves when shutdown begins. One waiter at a time (the accept loop).
    pub async fn until_shutdown(&self) {
        std::future::poll_fn(|cx| {
            if self.shutting_down.get() {
                return Poll::Ready(());
            }
            *self.shutdown_waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Periodic work: idle connections' write buffers, idle channel eviction, interval
    /// flushes, idle log removal.
    pub fn housekeeping(&self, remove_idle_logs: bool) {
        for conn in self.conns.borrow().values() {
            conn.sweep_idle();
        }
        let now = now_ms();
        let mut owned = self.owned.borrow_mut();
        owned.housekeeping(now, now.saturating_sub(IDLE_CHANNEL_MS));
        if remove_idle_logs {
            let removed = owned.remove_idle_logs(now, self.id, self.mesh.shards());
            if removed > 0 {
                tracing::info!(shard = %self.id, removed, "removed idle history logs");
            }
        }
    }

    /// Counts this shard as ready.
    pub fn mark_ready(&self) {
        self.shared.ready_shards.fetch_add(1, Ordering::SeqCst);
    }
}

/// Channels nobody watches are closed (their log unmapped) after this long idle.
const IDLE_CHANNEL_MS: u64 = 60_000;

const PRESENCE_NOT_BUILT: &str = "presence is not available in this release of Ringcast";
const PRIVATE_NOT_BUILT: &str =
    "`private-` channels need a channel token, and token verification is not available in this release";
