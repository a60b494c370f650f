//! A shard's state and every handler, synchronous and `&mut`: the part of a shard that
//! knows no sockets, tasks or OS clock, so a test can drive it message by message
//! (`tests/harness.rs`).
//!
//! ```text
//!   session / HTTP task ──on_text / ask──►┐
//!   inbox loop ────────────handle(msg)───►│ ShardCore (&mut, one thread)
//!   timer loop ────────────on_tick(now)──►┘   │
//!                                              ├─► Conn outbound queues (frames)
//!                                              └─► Outgoing: local FIFO (drained before
//!                                                  the entry point returns) / other
//!                                                  shards' bounded inboxes / spills
//! ```
//!
//! Architecture invariant: a handler never calls another entry point. Messages to this
//! same shard go through the local FIFO and are handled after the producing handler has
//! returned, so re-entrancy cannot happen and ordering is the same as across shards.

mod ren;

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use hashbrown::{HashMap, HashSet};
use ringcast_protocol::client::{PresenceJoin, Publish, Subscribe};
use ringcast_protocol::event::PresenceSpelling;
use ringcast_protocol::{event, ChannelName, ClientFrame, CloseCode, ErrorCode, FrameParser};
use ringcast_store::SplitMap;

use crate::clock::{Clock, Millis};
use crate::close_log::{CloseLog, Closed};
use crate::conn::{Conn, FirstLive, Idle, PresenceHold, Sub};
use crate::deadline::{DeadlineQueue, TimerKey};
use crate::history::{HistoryError, HistoryStore, SubscribeAnswer};
use crate::idempotency::{IdempotencyTable, Remembered};
use crate::keys::{ChannelKey, ConnId, RequestId, ShardId};
use crate::line_limit::LineLimit;
use crate::mesh::{
    Answer, Mesh, PublishExtras, PublishReq, Question, ReplyTo, ShardMsg, SubscribeReq,
};
use crate::metrics::{CloseReason, ShardCounters, Transport};
use crate::outbound::Pushed;
use crate::outgoing::Outgoing;
use crate::owner::{ChannelLimitReached, OwnedChannels, ShardSet};
use crate::presence::{Announce, PresenceEvent, PresenceHolder, PresenceTable};
use crate::ren::MessageOrigin;
use crate::requests::{answer_channel, AnswerReceiver, PendingRequests, RequestFailed, Waiter};
use crate::run::DeliveryRun;
use crate::shared::Shared;
use crate::tenant::Tenant;
use crate::token::{self, Grant, Permission};
use crate::topic_table::{LocalTopics, Watch};
use crate::usage::PublishRefused;

/// Channels nobody watches are closed (their log unmapped) after this long idle.
const IDLE_CHANNEL_MS: u64 = 60_000;
/// Housekeeping (idle buffers, idle channels, interval flushes) runs this often.
pub const HOUSEKEEPING_MS: u64 = 1_000;
/// Connections (and, apart, REN streams) whose idle buffers one housekeeping tick sweeps:
/// every one each tick up to this many on the shard, beyond it a few seconds per round.
const CONN_SWEEP_PER_TICK: usize = 16_384;

const NEEDS_TOKEN: &str =
    "`private-` channels need a token with this channel (the action's `token`, or the connection's)";

/// Who an admitted action acts as, and until when its token allows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Access {
    /// The verified userId (a token's `sub`), replacing any the client gave.
    user: Option<String>,
    /// When the admitting token expires (`None`: a public channel).
    expires: Option<Millis>,
}

/// A private subscription to end when its token expires.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SubExpiry {
    conn: ConnId,
    channel: ChannelName,
    request: RequestId,
}

fn channel_limit_message(limit: ChannelLimitReached) -> String {
    format!(
        "the tenant has {} active channels, its plan's max_channels",
        limit.0
    )
}

/// One shard's state. Owned by its thread; every method takes `&mut self`.
#[derive(Debug)]
pub struct ShardCore {
    id: ShardId,
    shards: usize,
    shared: Arc<Shared>,
    clock: Clock,
    /// Split, so the housekeeping sweep can take a few parts a tick.
    conns: SplitMap<ConnId, Rc<Conn>>,
    /// The part of `conns` the idle-buffer sweep looks at next.
    conn_sweep_next: usize,
    local: LocalTopics,
    owned: OwnedChannels,
    /// Idempotency keys of HTTP publishes on the channels this shard owns.
    idempotency: IdempotencyTable,
    parser: FrameParser,
    next_id: u64,
    requests: PendingRequests,
    out: Outgoing,
    next_housekeeping: Millis,
    /// Presence members of the channels this shard owns.
    presence: PresenceTable,
    /// This shard's connections holding presence that sent a frame since the last tick.
    presence_seen: Vec<ConnId>,
    /// Private subscriptions of this shard's connections, by their token's expiry.
    sub_expiry: DeadlineQueue<SubExpiry>,
    /// The `sub_expiry` entry of each private subscription, by the request that
    /// subscribed (cancelled when the subscription ends otherwise).
    sub_timers: HashMap<RequestId, TimerKey>,
    /// Presence in private channels of this shard's connections, by the expiry of the
    /// token that admitted the latest join (`request` is that join).
    presence_expiry: DeadlineQueue<SubExpiry>,
    /// The `presence_expiry` entry of each such hold (replaced by a later join).
    presence_timers: HashMap<(ConnId, ChannelName), TimerKey>,
    /// Resumes sent to owners and not yet answered (each counted in its connection's
    /// `resumes_in_flight`).
    resumes: HashSet<RequestId>,
    /// The "publish failed" log line's rate limit.
    publish_failures: LineLimit,
    /// Connections admitted by a connection token, by its expiry (closed with 4001).
    conn_expiry: DeadlineQueue<ConnId>,
    /// The `conn_expiry` entry of each such connection.
    conn_timers: HashMap<ConnId, TimerKey>,
    /// The configuration reloads this shard has acted on.
    reloads_seen: u64,
    /// REN: the sequences of the tenants this shard is REN owner of, and its SSE streams.
    ren: ren::RenCore,
    /// Whether to count per tenant (`[metrics] tenant_labels`, fixed at start-up).
    tenant_labels: bool,
    /// Rate limit of the abnormal-close log lines.
    close_log: CloseLog,
    /// Messages of one channel waiting to be fanned out together (only during a batch).
    run: DeliveryRun,
    /// Inside a batch (`begin_batch` … `end_batch`): consecutive messages of one channel
    /// form a run.
    batching: bool,
}

impl ShardCore {
    /// A shard with empty tables.
    pub fn new(
        id: ShardId,
        mesh: Arc<Mesh>,
        shared: Arc<Shared>,
        history: HistoryStore,
        clock: Clock,
    ) -> ShardCore {
        let now = clock.now();
        shared
            .metrics
            .shard(id)
            .history_rings
            .set(history.ring_count() as u64);
        let ren = ren::RenCore::new(shared.config.load().ren.limits(), now);
        let idempotency = {
            let config = shared.config.load();
            IdempotencyTable::new(
                config.idempotency_ttl_secs.saturating_mul(1000),
                config.idempotency_max_keys,
            )
        };
        let tenant_labels = shared.metrics.tenant_labels();
        let local = if tenant_labels {
            LocalTopics::with_tenant_meter(id, mesh.shards())
        } else {
            LocalTopics::default()
        };
        ShardCore {
            id,
            shards: mesh.shards(),
            shared,
            clock,
            conns: SplitMap::new(),
            conn_sweep_next: 0,
            local,
            owned: OwnedChannels::new(history),
            idempotency,
            parser: FrameParser::new(),
            next_id: 1,
            requests: PendingRequests::default(),
            out: Outgoing::new(id, mesh),
            next_housekeeping: now.plus(HOUSEKEEPING_MS),
            presence: PresenceTable::default(),
            presence_seen: Vec::new(),
            sub_expiry: DeadlineQueue::default(),
            sub_timers: HashMap::new(),
            presence_expiry: DeadlineQueue::default(),
            presence_timers: HashMap::new(),
            resumes: HashSet::new(),
            publish_failures: LineLimit::default(),
            conn_expiry: DeadlineQueue::default(),
            conn_timers: HashMap::new(),
            reloads_seen: 0,
            ren,
            tenant_labels,
            close_log: CloseLog::default(),
            run: DeliveryRun::default(),
            batching: false,
        }
    }

    /// This shard.
    pub fn id(&self) -> ShardId {
        self.id
    }

    /// Now, by this shard's clock.
    pub fn now(&self) -> Millis {
        self.clock.now()
    }

    /// Now, for checking a token: the wall clock for its `exp` and `nbf`, this shard's
    /// clock for the deadline its grant carries.
    pub fn token_time(&self) -> token::CheckTime {
        token::CheckTime::read(&self.clock)
    }

    /// Channels this shard owns that are open now (history mapped).
    pub fn open_channel_count(&self) -> usize {
        self.owned.len()
    }

    /// Token-expiry deadlines held (private subscriptions, connection and REN stream
    /// tokens; tests).
    pub fn token_deadlines(&self) -> usize {
        self.sub_expiry.len() + self.conn_expiry.len() + self.presence_expiry.len()
    }

    /// The presence members of the channels this shard owns (read-only; tests, benches).
    pub fn presence(&self) -> &PresenceTable {
        &self.presence
    }

    fn counters(&self) -> &ShardCounters {
        self.shared.metrics.shard(self.id)
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn next_request(&mut self) -> RequestId {
        RequestId(self.next_id())
    }

    /// A client id for a connection that gave none.
    pub fn generate_client_id(&mut self) -> String {
        let (now, serial) = (self.now().0, self.next_id());
        format!("rc{:x}{:x}{:x}", now, self.id.0, serial)
    }

    // ----- connections -----

    /// Registers a new WebSocket connection and queues its `connected` event.
    pub fn register_conn(&mut self, tenant: Arc<Tenant>, client_id: &str) -> Rc<Conn> {
        self.register_conn_with(tenant, client_id, None)
    }

    /// Like [`ShardCore::register_conn`], with presence events spelled `spelling`
    /// (`?presence_events=`) instead of the tenant's setting.
    pub fn register_conn_with(
        &mut self,
        tenant: Arc<Tenant>,
        client_id: &str,
        spelling: Option<PresenceSpelling>,
    ) -> Rc<Conn> {
        self.register_authenticated(tenant, client_id, spelling, None)
    }

    /// Like [`ShardCore::register_conn_with`], for a connection whose connection token
    /// verified `grant` (its user, and the private channels it grants).
    pub fn register_authenticated(
        &mut self,
        tenant: Arc<Tenant>,
        client_id: &str,
        spelling: Option<PresenceSpelling>,
        grant: Option<Grant>,
    ) -> Rc<Conn> {
        self.register_after(tenant, client_id, spelling, grant, None)
    }

    /// Like [`ShardCore::register_authenticated`], with `preface` (the handshake's `101`
    /// response) queued before `connected`, so both leave in the writer's first
    /// `writev`: one write and one TCP segment less per connection.
    pub fn register_after(
        &mut self,
        tenant: Arc<Tenant>,
        client_id: &str,
        spelling: Option<PresenceSpelling>,
        grant: Option<Grant>,
        preface: Option<Bytes>,
    ) -> Rc<Conn> {
        let limit = self.shared.config.load().outbound_buffer_bytes;
        let expires = grant.as_ref().map(|g| Millis(g.expires_ms));
        let mut conn = Conn::new(ConnId(self.next_id()), tenant, limit)
            .with_grant(grant)
            .with_client_id(client_id);
        if let Some(expires) = expires {
            let timer = self.conn_expiry.insert(expires, conn.id);
            self.conn_timers.insert(conn.id, timer);
        }
        if let Some(spelling) = spelling {
            conn = conn.with_presence_spelling(spelling);
        }
        conn.start_idle_clock(self.now());
        let conn = Rc::new(conn);
        self.conns.insert(conn.id, conn.clone());
        self.counters().ws_connections.add(1);
        if self.tenant_labels {
            let tenant = conn.tenant.metrics.shard(self.id, self.shards);
            tenant.ws_connections.add(1);
        }
        if let Some(preface) = preface {
            self.push(&conn, preface);
        }
        let connected = event::connected(client_id, self.now().0);
        self.push(&conn, connected);
        conn
    }

    /// Forgets a connection: leaves its channels, tells owners of channels left
    /// unwatched; counts (and, when abnormal, logs) why it closed. `client` is its client
    /// address (as `client_addr` settled it), for the log line.
    pub fn unregister_conn(&mut self, conn: &Conn, client: Option<IpAddr>) {
        if self.conns.remove(&conn.id).is_some() {
            self.counters().ws_connections.add(-1);
            if self.tenant_labels {
                let tenant = conn.tenant.metrics.shard(self.id, self.shards);
                tenant.ws_connections.add(-1);
            }
            self.connection_closed(Closed {
                transport: Transport::Ws,
                reason: conn.outbound().close_reason(),
                client,
                tenant: Some(conn.tenant.id.as_str()),
                code: conn.outbound().close_code().map(|c| c.0),
            });
        }
        if let Some(timer) = self.conn_timers.remove(&conn.id) {
            self.conn_expiry.cancel(timer);
        }
        let subs = conn.subs.borrow_mut().take_all();
        for (channel, sub) in subs {
            self.cancel_sub_timer(Some(sub));
            let key = ChannelKey::new(conn.tenant.id.clone(), channel);
            self.leave_local(&key, conn.id);
        }
        for hold in conn.presence.borrow().iter() {
            self.cancel_presence_timer(conn.id, &hold.channel);
        }
        // Its members stay at their owners until the TTL; the owners only forget that
        // this connection holds them.
        let presence = std::mem::take(&mut *conn.presence.borrow_mut());
        if !presence.is_empty() {
            let seen = conn.presence_seen.replace(false);
            let mut owners = ShardSet::default();
            for hold in presence {
                owners.insert(
                    ChannelKey::new(conn.tenant.id.clone(), hold.channel).owner(self.shards),
                );
            }
            for owner in owners.iter() {
                let msg = ShardMsg::PresenceConnClosed {
                    from: self.id,
                    conn: conn.id,
                    seen,
                };
                self.send_to(owner, msg);
            }
        }
        self.run_local();
    }

    /// Number of WebSocket connections on this shard.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Counts a connection that ended and, when its reason is abnormal, logs one line
    /// (rate-limited per reason, see `close_log.rs`) naming its client address, tenant
    /// and close code when known. Every transport's end comes here: WebSocket sessions
    /// from [`ShardCore::unregister_conn`], plain HTTP connections from `http.rs`, SSE
    /// streams from their own code.
    pub fn connection_closed(&mut self, closed: Closed<'_>) {
        let Closed {
            transport,
            reason,
            client,
            tenant,
            code,
        } = closed;
        self.counters().closed(transport, reason);
        if !reason.is_abnormal() {
            return;
        }
        let admit = self.close_log.admit(reason, self.now());
        if admit.suppressed_before > 0 {
            log_suppressed(self.id, reason, admit.suppressed_before);
        }
        if !admit.log {
            return;
        }
        let shard = self.id.0;
        let tenant = tenant.unwrap_or("-");
        let code = code.unwrap_or(0);
        let client = client.map_or_else(|| "-".to_owned(), |ip| ip.to_string());
        match reason {
            CloseReason::SlowConsumer | CloseReason::Limit | CloseReason::Internal => {
                tracing::warn!(shard, %transport, %reason, code, %client, tenant, "connection closed");
            }
            _ => {
                tracing::info!(shard, %transport, %reason, code, %client, tenant, "connection closed")
            }
        }
    }

    /// msyncs this shard's history now (end of shutdown).
    pub fn sync_history(&mut self) {
        self.owned.sync_all();
    }

    /// Closes every connection with 1001 (shutdown).
    pub fn close_all(&mut self) {
        for conn in self.conns.values() {
            conn.close(CloseCode::GOING_AWAY, "server shutting down");
        }
        self.ren_close_all();
    }

    // ----- client actions (from sessions on this shard) -----

    /// Acts on one text message from `conn`.
    pub fn on_text(&mut self, conn: &Rc<Conn>, text: &[u8]) {
        self.mark_presence_seen(conn);
        self.on_client_frame(conn, text);
        self.run_local();
    }

    fn on_client_frame(&mut self, conn: &Rc<Conn>, text: &[u8]) {
        let parsed = self.parser.parse_frame(text);
        // Any error answering the frame echoes its `ref` (SPEC §3).
        let reference = parsed.as_ref().ok().and_then(|p| p.reference);
        match parsed.map(|p| p.frame) {
            Ok(ClientFrame::Subscribe(sub)) => self.subscribe(conn, sub, reference),
            Ok(ClientFrame::Unsubscribe { channel }) => self.unsubscribe(conn, channel, reference),
            Ok(ClientFrame::Publish(publish)) => self.publish(conn, publish),
            Ok(ClientFrame::Ping) => {
                let pong = event::pong(self.now().0);
                self.push(conn, pong);
            }
            Ok(ClientFrame::PresenceJoin(join)) => self.presence_join(conn, join, reference),
            Ok(ClientFrame::PresenceUpdate(update)) => {
                self.presence_update(conn, update, reference)
            }
            Ok(ClientFrame::PresenceLeave { channel }) => {
                self.presence_leave(conn, channel, reference)
            }
            Err(failure) => self.send_error(
                conn,
                failure.channel.as_deref(),
                failure.reference,
                failure.code,
                &failure.message,
            ),
        }
    }

    /// A WebSocket ping or pong (control frame) from `conn`: counts as seen for presence.
    pub fn on_ws_ping(&mut self, conn: &Rc<Conn>) {
        self.mark_presence_seen(conn);
    }

    /// Notes that `conn` sent something; its shard tells the owners once per tick.
    fn mark_presence_seen(&mut self, conn: &Conn) {
        if !conn.presence_seen.get() && !conn.presence.borrow().is_empty() {
            conn.presence_seen.set(true);
            self.presence_seen.push(conn.id);
        }
    }

    /// Answers a binary message.
    pub fn on_binary(&mut self, conn: &Rc<Conn>) {
        // Refused, but a frame: SPEC §4 counts any frame as seen (found in review).
        self.mark_presence_seen(conn);
        self.send_error(
            conn,
            None,
            None,
            ErrorCode::BadRequest,
            "binary frames are not supported; send JSON text",
        );
    }

    /// The tenant of `conn` as the configuration has it now (a reload may have changed
    /// its limits or keys since the connection opened).
    fn live_tenant(&self, conn: &Conn) -> Arc<Tenant> {
        self.shared
            .tenants
            .load()
            .get(conn.tenant.id.as_str())
            .unwrap_or_else(|| conn.tenant.clone())
    }

    /// Whether `conn` may act on `channel` with `permission`: anyone may on a public
    /// channel; a `private-` one needs `token` (or the connection's token) naming it.
    fn access(
        &self,
        conn: &Conn,
        channel: &ChannelName,
        token: Option<&str>,
        permission: Permission,
    ) -> Result<Access, token::Refused> {
        let connection_user = conn.verified_user().map(str::to_owned);
        if !channel.is_private() {
            return Ok(Access {
                user: connection_user,
                expires: None,
            });
        }
        let verified;
        let grant: &Grant = match (token, conn.grant.as_deref()) {
            (Some(token), _) => {
                let tenant = self.live_tenant(conn);
                verified = token::verify(token, &tenant, self.token_time());
                self.counters().token_verification(verified.is_ok());
                verified.as_ref().map_err(Clone::clone)?
            }
            (None, Some(grant)) if grant.names(channel.as_str()) => grant,
            (None, _) => {
                return Err(token::Refused {
                    code: ErrorCode::Unauthorized,
                    message: NEEDS_TOKEN.to_owned(),
                })
            }
        };
        grant.allows(channel.as_str(), permission)?;
        if grant.expires_ms <= self.now().0 {
            return Err(token::Refused {
                code: ErrorCode::Unauthorized,
                message: "the token expired".to_owned(),
            });
        }
        Ok(Access {
            user: grant.user.clone().or(connection_user),
            expires: Some(Millis(grant.expires_ms)),
        })
    }

    fn subscribe(&mut self, conn: &Rc<Conn>, sub: Subscribe, reference: Option<&[u8]>) {
        let permission = Permission::Subscribe;
        let access = match self.access(conn, &sub.channel, sub.token.as_deref(), permission) {
            Ok(access) => access,
            Err(refused) => {
                let channel = Some(sub.channel.as_str());
                self.send_error(conn, channel, reference, refused.code, &refused.message);
                return;
            }
        };
        let limit = self
            .live_tenant(conn)
            .limits
            .max_subscriptions_per_connection;
        let subs = conn.subs.borrow();
        if subs.get(&sub.channel).is_none() && subs.len() >= limit as usize {
            drop(subs);
            let message =
                format!("this connection is subscribed to {limit} channels, the tenant's limit");
            let channel = Some(sub.channel.as_str());
            self.send_error(conn, channel, reference, ErrorCode::ChannelLimit, &message);
            return;
        }
        drop(subs);
        let request = self.next_request();
        if let Some(expires) = access.expires {
            let expiry = SubExpiry {
                conn: conn.id,
                channel: sub.channel.clone(),
                request,
            };
            let timer = self.sub_expiry.insert(expires, expiry);
            self.sub_timers.insert(request, timer);
        }
        let live = conn.subs.borrow().get(&sub.channel).and_then(Sub::live);
        let previous = conn
            .subs
            .borrow_mut()
            .insert(sub.channel.clone(), Sub::Pending { request, live });
        self.cancel_sub_timer(previous);
        let key = ChannelKey::new(conn.tenant.id.clone(), sub.channel);
        if sub.last_event_id.is_some() {
            self.resumes.insert(request);
            let in_flight = &conn.resumes_in_flight;
            in_flight.set(in_flight.get().saturating_add(1));
        }
        self.end_run();
        self.local.begin_subscribe(&key);
        let msg = ShardMsg::Subscribe(SubscribeReq {
            key: key.clone(),
            from: self.id,
            conn: conn.id,
            request,
            last_event_id: sub.last_event_id,
            epoch: sub.epoch.map(String::into_boxed_str),
            max_replay_bytes: u32::try_from(conn.outbound().limit() / 2).unwrap_or(u32::MAX),
            replay_below: live.map(|first| first.0),
            reference: reference.map(Box::from),
        });
        self.send_to_owner(&key, msg);
    }

    /// A presence hold in a private channel ended or was joined again: its token-expiry
    /// entry goes.
    fn cancel_presence_timer(&mut self, conn: ConnId, channel: &ChannelName) {
        if self.presence_timers.is_empty() {
            return;
        }
        if let Some(timer) = self.presence_timers.remove(&(conn, channel.clone())) {
            self.presence_expiry.cancel(timer);
        }
    }

    /// A subscription ended (or was replaced): its token-expiry entry goes too.
    fn cancel_sub_timer(&mut self, sub: Option<Sub>) {
        let Some(request) = sub.map(Sub::request) else {
            return;
        };
        if let Some(timer) = self.sub_timers.remove(&request) {
            self.sub_expiry.cancel(timer);
        }
    }

    fn unsubscribe(&mut self, conn: &Rc<Conn>, channel: ChannelName, reference: Option<&[u8]>) {
        // The run goes first: once the channel leaves `subs`, `push` no longer sees that
        // the run concerns this connection.
        self.end_run();
        let Some(sub) = conn.subs.borrow_mut().remove(&channel) else {
            let message = "not subscribed to this channel";
            let name = Some(channel.as_str());
            self.send_error(conn, name, reference, ErrorCode::NotSubscribed, message);
            return;
        };
        self.cancel_sub_timer(Some(sub));
        let unsubscribed = event::unsubscribed(channel.as_str(), self.now().0);
        self.push(conn, unsubscribed);
        let key = ChannelKey::new(conn.tenant.id.clone(), channel);
        self.leave_local(&key, conn.id);
    }

    /// Tells the owner when this shard stopped watching `key`.
    fn report_watch(&mut self, key: &ChannelKey, watch: Watch) {
        if watch == Watch::Unwatched {
            let msg = ShardMsg::Unwatch {
                key: key.clone(),
                from: self.id,
            };
            self.send_to_owner(key, msg);
        }
    }

    fn leave_local(&mut self, key: &ChannelKey, conn: ConnId) {
        self.end_run();
        let watch = self.local.remove(key, conn);
        self.report_watch(key, watch);
    }

    fn publish(&mut self, conn: &Rc<Conn>, publish: Publish<'_>) {
        let (channel, reference) = (Some(publish.channel.as_str()), publish.reference);
        let limit = self.live_tenant(conn).limits.max_message_bytes;
        if publish.data.len() > limit {
            let message = format!(
                "data is {} bytes; the tenant's limit is {limit}",
                publish.data.len()
            );
            self.send_error(
                conn,
                channel,
                reference,
                ErrorCode::MessageTooLarge,
                &message,
            );
            return;
        }
        let token = publish.token.as_deref();
        let access = match self.access(conn, &publish.channel, token, Permission::Publish) {
            Ok(access) => access,
            Err(refused) => {
                let (code, message) = (refused.code, &refused.message);
                self.send_error(conn, channel, reference, code, message);
                return;
            }
        };
        let user_id = access
            .user
            .map(String::into_boxed_str)
            .or_else(|| publish.user_id.map(String::into_boxed_str));
        let request = self.next_request();
        let timeout = self.shared.config.load().request_timeout_ms;
        let waiter = Waiter::Conn {
            conn: conn.id,
            channel: publish.channel.clone(),
            reference: publish.reference.map(Bytes::copy_from_slice),
        };
        self.requests
            .insert(request, waiter, self.now().plus(timeout));
        let key = ChannelKey::new(conn.tenant.id.clone(), publish.channel);
        let msg = ShardMsg::Publish(PublishReq {
            key: key.clone(),
            data: Bytes::copy_from_slice(publish.data),
            user_id,
            http: self.ws_publish_extras(conn),
            reply: Some(ReplyTo {
                shard: self.id,
                request,
            }),
        });
        self.send_to_owner(&key, msg);
    }

    /// A WebSocket publish's REN `src`, its connection's client id, while its tenant has
    /// a REN stream (else the publish carries no box at all). The seed's self-filtering
    /// (`event.src === ren.getClientId()`) then works for writes over the SDK's
    /// `RealtimeClient`, which sends that id as `cid` (found in a SPEC audit: only HTTP
    /// publishes carried one).
    fn ws_publish_extras(&self, conn: &Conn) -> Option<Box<PublishExtras>> {
        let src = conn.client_id.as_ref()?;
        self.shared.ren.is_active(&conn.tenant.id).then(|| {
            Box::new(PublishExtras {
                src: Some(src.clone()),
                ..PublishExtras::default()
            })
        })
    }

    // ----- presence (client side: the member lives at the channel's owner) -----

    fn presence_join(
        &mut self,
        conn: &Rc<Conn>,
        mut join: PresenceJoin<'_>,
        reference: Option<&[u8]>,
    ) {
        let channel = join.channel.clone();
        let name = Some(channel.as_str());
        let token = join.token.as_deref();
        let access = match self.access(conn, &channel, token, Permission::Subscribe) {
            Ok(access) => access,
            Err(refused) => {
                self.send_error(conn, name, reference, refused.code, &refused.message);
                return;
            }
        };
        if let Some(user) = access.user {
            join.user_id = user;
        }
        if let Err(message) = crate::presence::check_user_id(&join.user_id) {
            self.send_error(conn, name, reference, ErrorCode::BadRequest, &message);
            return;
        }
        let limits = self.live_tenant(conn).limits.presence;
        if let Some(size) = join.metadata.map(<[u8]>::len) {
            if size > limits.max_metadata_bytes {
                let message = format!(
                    "presence metadata is {size} bytes; the tenant's limit is {}",
                    limits.max_metadata_bytes
                );
                self.send_error(conn, name, reference, ErrorCode::PresenceLimit, &message);
                return;
            }
        }
        let user: Rc<str> = Rc::from(join.user_id.as_str());
        // The request the join goes out as, recorded on the connection's hold.
        let join_request = self.next_request();
        match conn.presence_user(&channel) {
            Some(previous) if previous == user => {
                let mut presence = conn.presence.borrow_mut();
                if let Some(hold) = presence.iter_mut().find(|h| h.channel == channel) {
                    hold.join = join_request;
                }
            }
            Some(previous) => {
                // One member per connection and channel: joining as another user
                // leaves as the previous one first.
                // Its error, if any, answers the join's frame: it carries the join's ref.
                self.ask_for_conn(
                    conn,
                    channel.clone(),
                    None,
                    reference,
                    Question::PresenceLeave {
                        key: ChannelKey::new(conn.tenant.id.clone(), channel.clone()),
                        user_id: previous.to_string(),
                        holder: self.holder(conn),
                    },
                );
                let mut presence = conn.presence.borrow_mut();
                if let Some(hold) = presence.iter_mut().find(|h| h.channel == channel) {
                    hold.user = user.clone();
                    hold.join = join_request;
                    hold.since = join_request;
                    hold.confirmed = false;
                }
            }
            None => {
                let limit = limits.max_channels_per_connection;
                if conn.presence.borrow().len() >= limit as usize {
                    let message = format!(
                        "this connection is present in {limit} channels, the tenant's limit"
                    );
                    self.send_error(conn, name, reference, ErrorCode::PresenceLimit, &message);
                    return;
                }
                // Recorded before the owner answers, so a close right after still tells
                // the owner; a refused join forgets it again.
                conn.presence.borrow_mut().push(PresenceHold {
                    channel: channel.clone(),
                    user: user.clone(),
                    join: join_request,
                    since: join_request,
                    confirmed: false,
                });
            }
        }
        // A private channel's member leaves when the token that admitted its latest join
        // expires (found in review: it stayed, and its updates reached the channel's
        // subscribers, for as long as it pinged).
        self.cancel_presence_timer(conn.id, &channel);
        if let Some(expires) = access.expires {
            let expiry = SubExpiry {
                conn: conn.id,
                channel: channel.clone(),
                request: join_request,
            };
            let timer = self.presence_expiry.insert(expires, expiry);
            self.presence_timers
                .insert((conn.id, channel.clone()), timer);
        }
        // With a TTL this short the owner counts the join as seen now, yet the sweep's
        // first ping would come up to a tick later and its pong's "seen" a tick after
        // that: too late. The heartbeat starts at the join instead.
        if presence_ping_after_ms(limits.ttl_secs) == 0 {
            let ping = conn.ping_now(self.now());
            self.push(conn, ping);
        }
        let question = Question::PresenceJoin {
            key: ChannelKey::new(conn.tenant.id.clone(), channel.clone()),
            user_id: join.user_id,
            metadata: join.metadata.map(Bytes::copy_from_slice),
            holder: self.holder(conn),
        };
        self.ask_as(join_request, conn, channel, Some(user), reference, question);
    }

    fn presence_update(
        &mut self,
        conn: &Rc<Conn>,
        mut update: PresenceJoin<'_>,
        reference: Option<&[u8]>,
    ) {
        let channel = update.channel.clone();
        let name = Some(channel.as_str());
        // A member joined with a verified userId is updated as that user, whatever
        // userId the client names.
        let verified = channel.is_private() || conn.verified_user().is_some();
        if let Some(user) = conn.presence_user(&channel).filter(|_| verified) {
            update.user_id = user.to_string();
        }
        let joined = conn
            .presence_user(&channel)
            .is_some_and(|user| *user == *update.user_id);
        if !joined {
            let message = "join presence in this channel as this userId before updating";
            self.send_error(conn, name, reference, ErrorCode::BadRequest, message);
            return;
        }
        let limit = self.live_tenant(conn).limits.presence.max_metadata_bytes;
        if let Some(size) = update.metadata.map(<[u8]>::len).filter(|s| *s > limit) {
            let message =
                format!("presence metadata is {size} bytes; the tenant's limit is {limit}");
            self.send_error(conn, name, reference, ErrorCode::PresenceLimit, &message);
            return;
        }
        let question = Question::PresenceUpdate {
            key: ChannelKey::new(conn.tenant.id.clone(), channel.clone()),
            user_id: update.user_id,
            metadata: update.metadata.map(Bytes::copy_from_slice),
            holder: self.holder(conn),
        };
        self.ask_for_conn(conn, channel, None, reference, question);
    }

    fn presence_leave(&mut self, conn: &Rc<Conn>, channel: ChannelName, reference: Option<&[u8]>) {
        self.cancel_presence_timer(conn.id, &channel);
        let user = {
            let mut presence = conn.presence.borrow_mut();
            presence
                .iter()
                .position(|h| h.channel == channel)
                .map(|at| presence.swap_remove(at).user)
        };
        let Some(user) = user else {
            let message = "not present in this channel";
            let name = Some(channel.as_str());
            self.send_error(conn, name, reference, ErrorCode::BadRequest, message);
            return;
        };
        let question = Question::PresenceLeave {
            key: ChannelKey::new(conn.tenant.id.clone(), channel.clone()),
            user_id: user.to_string(),
            holder: self.holder(conn),
        };
        self.ask_for_conn(conn, channel, None, reference, question);
    }

    fn holder(&self, conn: &Conn) -> PresenceHolder {
        PresenceHolder::Conn {
            shard: self.id,
            conn: conn.id,
        }
    }

    /// Sends a connection's presence `question` to the channel's owner; the answer (or
    /// the deadline) resolves a [`Waiter::PresenceConn`].
    fn ask_for_conn(
        &mut self,
        conn: &Conn,
        channel: ChannelName,
        join_as: Option<Rc<str>>,
        reference: Option<&[u8]>,
        question: Question,
    ) {
        let request = self.next_request();
        self.ask_as(request, conn, channel, join_as, reference, question);
    }

    /// [`ShardCore::ask_for_conn`] with the request id chosen by the caller.
    fn ask_as(
        &mut self,
        request: RequestId,
        conn: &Conn,
        channel: ChannelName,
        join_as: Option<Rc<str>>,
        reference: Option<&[u8]>,
        question: Question,
    ) {
        let key = ChannelKey::new(conn.tenant.id.clone(), channel.clone());
        let timeout = self.shared.config.load().request_timeout_ms;
        let waiter = Waiter::PresenceConn {
            conn: conn.id,
            channel,
            join_as,
            reference: reference.map(Bytes::copy_from_slice),
        };
        self.ask_owner(&key, request, waiter, timeout, question);
    }

    /// Sends `question` to `key`'s owner as `request`, `waiter` waiting for its answer
    /// for `timeout_ms`.
    fn ask_owner(
        &mut self,
        key: &ChannelKey,
        request: RequestId,
        waiter: Waiter,
        timeout_ms: u64,
        question: Question,
    ) {
        let deadline = self.now().plus(timeout_ms);
        self.requests.insert(request, waiter, deadline);
        let reply = ReplyTo {
            shard: self.id,
            request,
        };
        let question = Box::new(question);
        self.send_to_owner(key, ShardMsg::Ask { reply, question });
    }

    /// Tells each owner which of this shard's presence-holding connections were seen
    /// since the last tick: one message per owner, however many pings and members.
    fn flush_presence_seen(&mut self) {
        if self.presence_seen.is_empty() {
            return;
        }
        let mut by_owner: Vec<Vec<ConnId>> = vec![Vec::new(); self.shards];
        for id in std::mem::take(&mut self.presence_seen) {
            let Some(conn) = self.conns.get(&id) else {
                continue;
            };
            conn.presence_seen.set(false);
            for hold in conn.presence.borrow().iter() {
                let owner = ChannelKey::new(conn.tenant.id.clone(), hold.channel.clone());
                let list = &mut by_owner[owner.owner(self.shards).index()];
                if list.last() != Some(&id) {
                    list.push(id);
                }
            }
        }
        for (owner, conns) in by_owner.into_iter().enumerate() {
            if !conns.is_empty() {
                let msg = ShardMsg::PresenceSeen {
                    from: self.id,
                    conns,
                };
                self.send_to(ShardId(owner as u16), msg);
            }
        }
    }

    // ----- typed requests from async tasks (HTTP handlers) -----

    /// Sends `question` to `key`'s owner; the receiver resolves to its answer, or to
    /// [`RequestFailed`] at `timeout_ms` or when the owner's inbox is full.
    pub fn ask(&mut self, key: &ChannelKey, question: Question, timeout_ms: u64) -> AnswerReceiver {
        let owner = key.owner(self.shards);
        self.ask_shard(owner, question, timeout_ms)
    }

    /// Sends `question` to `shard` (for questions every shard answers, such as
    /// [`Question::ActiveChannels`]).
    pub fn ask_shard(
        &mut self,
        shard: ShardId,
        question: Question,
        timeout_ms: u64,
    ) -> AnswerReceiver {
        let fans_out = question.fans_out();
        self.request_for_task(shard, timeout_ms, fans_out, |reply| ShardMsg::Ask {
            reply,
            question: Box::new(question),
        })
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// Publishes on behalf of an async task (the HTTP API): the receiver resolves to
    /// `Answer::Published` once the message is in history and fanned out.
    pub fn publish_for_task(
        &mut self,
        key: ChannelKey,
        data: Bytes,
        user_id: Option<Box<str>>,
        timeout_ms: u64,
    ) -> AnswerReceiver {
        self.publish_for_task_once(key, data, user_id, PublishExtras::default(), timeout_ms)
    }

    /// [`ShardCore::publish_for_task`] with what only HTTP publishes carry: an
    /// idempotency key (a publish whose key the owner remembers on this channel is
    /// answered with the first one's seq and ts) and the client it came from (`src`).
    pub fn publish_for_task_once(
        &mut self,
        key: ChannelKey,
        data: Bytes,
        user_id: Option<Box<str>>,
        http: PublishExtras,
        timeout_ms: u64,
    ) -> AnswerReceiver {
        let owner = key.owner(self.shards);
        let http = (!http.is_empty()).then(|| Box::new(http));
        self.request_for_task(owner, timeout_ms, true, |reply| {
            ShardMsg::Publish(PublishReq {
                key,
                data,
                user_id,
                http,
                reply: Some(reply),
            })
        })
    }

    /// Sends the request `make` builds to `owner`, with a task waiting for the answer.
    /// A full inbox refuses it at once (`Overloaded`): tasks are never spilled. One that
    /// `fans_out` (a publish, a presence change, REN events) is refused too while any shard
    /// spills, as WebSocket publishers are held back then (found in review: HTTP
    /// publishes went on fanning out into a spill that had no bound).
    fn request_for_task(
        &mut self,
        owner: ShardId,
        timeout_ms: u64,
        fans_out: bool,
        make: impl FnOnce(ReplyTo) -> ShardMsg,
    ) -> AnswerReceiver {
        let request = self.next_request();
        let (tx, rx) = answer_channel();
        if fans_out && self.out.under_pressure() {
            self.counters().publisher_holdbacks.inc();
            tx.send(Err(RequestFailed::Overloaded));
            return rx;
        }
        let reply = ReplyTo {
            shard: self.id,
            request,
        };
        match self.out.try_send(owner, make(reply)) {
            Ok(()) => {
                let deadline = self.now().plus(timeout_ms);
                self.requests.insert(request, Waiter::Task(tx), deadline);
            }
            Err(_) => {
                tx.send(Err(RequestFailed::Overloaded));
            }
        }
        self.run_local();
        rx
    }

    // ----- messages (from the inbox, or this shard's local queue) -----

    /// Handles a message from another shard's inbox, then whatever it queued locally.
    pub fn handle(&mut self, msg: ShardMsg) {
        self.dispatch(msg);
        self.run_local();
    }

    /// Handles what this shard sent itself, until nothing is left; then refreshes the
    /// gauges of its tables (every entry point ends here).
    fn run_local(&mut self) {
        while let Some(msg) = self.out.pop_local() {
            self.dispatch(msg);
        }
        self.publish_gauges();
    }

    /// Copies the sizes of this shard's tables into its gauges: three plain stores.
    fn publish_gauges(&self) {
        let counters = self.shared.metrics.shard(self.id);
        counters
            .subscriptions
            .set(self.local.subscriptions() as u64);
        counters.channels.set(self.owned.len() as u64);
        counters
            .presence_members
            .set(self.presence.total_members() as u64);
    }

    fn dispatch(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::Publish(req) => self.owner_publish(req),
            ShardMsg::Subscribe(req) => self.owner_subscribe(req),
            ShardMsg::Unwatch { key, from } => {
                self.owned.unwatch(&key, from);
                self.settle_channel(&key);
            }
            ShardMsg::Deliver { key, frame } => self.deliver(key, frame),
            ShardMsg::Subscribed {
                key,
                conn,
                request,
                outcome,
            } => self.finish_subscribe(&key, conn, request, outcome),
            ShardMsg::Ask { reply, question } => self.owner_answer(reply, *question),
            ShardMsg::Answer { request, answer } => self.complete(request, Ok(answer)),
            ShardMsg::Presence { key, event } => self.deliver_presence(&key, &event),
            ShardMsg::PresenceSeen { from, conns } => {
                let now = self.now();
                self.presence.seen(from, &conns, now);
            }
            ShardMsg::PresenceConnClosed { from, conn, seen } => {
                let now = self.now();
                self.presence.conn_closed(from, conn, seen, now);
            }
            ShardMsg::Ren(msg) => self.ren_handle(msg),
        }
    }

    fn send_to_owner(&mut self, key: &ChannelKey, msg: ShardMsg) {
        let owner = key.owner(self.shards);
        self.send_to(owner, msg);
    }

    fn send_to(&mut self, shard: ShardId, msg: ShardMsg) {
        let counters = self.shared.metrics.shard(self.id);
        self.out.send(shard, msg, counters);
    }

    fn answer(&mut self, reply: Option<ReplyTo>, answer: Answer) {
        if let Some(ReplyTo { shard, request }) = reply {
            self.send_to(shard, ShardMsg::Answer { request, answer });
        }
    }

    fn owner_publish(&mut self, mut req: PublishReq) {
        let now = self.now().0;
        let idempotency_key = req.http.as_ref().and_then(|h| h.idempotency_key.as_ref());
        if let Some(idempotency_key) = idempotency_key {
            if let Some(first) = self.idempotency.get(&req.key, idempotency_key, now) {
                let answer = Answer::Published {
                    seq: first.seq,
                    ts: first.ts,
                };
                self.answer(req.reply, answer);
                return;
            }
        }
        let Some(tenant) = self.shared.tenants.load().get(req.key.tenant.as_str()) else {
            let failed = Answer::Failed {
                code: ErrorCode::Unauthorized,
                message: "the tenant no longer exists".to_owned(),
            };
            self.answer(req.reply, failed);
            return;
        };
        // The rate and the channel count are checked (and recorded) in one step: a
        // refused publish leaves neither.
        let was_counted = self.owned.is_counted(&req.key);
        let count_channel = (!was_counted).then_some(tenant.limits.max_channels);
        let rate = tenant.limits.publishes_per_minute;
        let recorded = match tenant.usage.try_publish_counting(now, rate, count_channel) {
            Ok(recorded) => recorded,
            Err(PublishRefused::Rate(retry)) => {
                let limited = Answer::RateLimited {
                    retry_after_secs: retry.secs(),
                };
                self.answer(req.reply, limited);
                return;
            }
            Err(PublishRefused::ChannelLimit) => {
                let limit = ChannelLimitReached(tenant.limits.max_channels.unwrap_or(u32::MAX));
                let failed = Answer::Failed {
                    code: ErrorCode::ChannelLimit,
                    message: channel_limit_message(limit),
                };
                self.answer(req.reply, failed);
                return;
            }
        };
        let channel = req.key.channel.as_str();
        let user_id = req.user_id.as_deref();
        let published = self.owned.publish(&req.key, &tenant, now, user_id, |seq| {
            event::message_with_span(channel, &req.data, user_id, seq, now)
        });
        let (seq, frame, ren_data) = match published {
            Ok(published) => {
                let counters = self.shared.metrics.shard(self.id);
                for shard in published.channel.watchers.iter() {
                    let deliver = ShardMsg::Deliver {
                        key: req.key.clone(),
                        frame: published.frame.clone(),
                    };
                    self.out.send(shard, deliver, counters);
                }
                (published.seq, published.frame, published.data)
            }
            Err(e) => {
                // Not published: give back its place in the rate window and its count.
                tenant.usage.refund_publish(recorded);
                if !was_counted {
                    self.settle_channel(&req.key);
                }
                // What the client sent cannot be kept: its error, not the server's.
                let refused = match &e {
                    HistoryError::RecordTooLarge { len, max } => Some((
                        ErrorCode::MessageTooLarge,
                        format!(
                            "the message is {len} bytes as kept; this server's history keeps at most {max} per message ([history] max_bytes_per_channel)"
                        ),
                    )),
                    HistoryError::UidTooLong { len, max } => Some((
                        ErrorCode::BadRequest,
                        format!("userId is {len} bytes; at most {max}"),
                    )),
                    _ => None,
                };
                match refused {
                    Some((code, message)) => {
                        let failed = Answer::Failed { code, message };
                        self.answer(req.reply, failed);
                    }
                    None => {
                        let message = format!("history append failed: {e}");
                        self.publish_failed(&req, message);
                    }
                }
                return;
            }
        };
        let origin = MessageOrigin {
            uid: req.user_id.as_deref(),
            src: req.http.as_ref().and_then(|h| h.src.as_deref()),
        };
        self.mirror_to_ren(&req.key, &frame, ren_data, origin, seq, now);
        let counters = self.shared.metrics.shard(self.id);
        counters.messages_published.inc();
        counters.history_appends.inc();
        counters.history_appended_bytes.add(frame.len() as u64);
        if self.tenant_labels {
            let per_tenant = tenant.metrics.shard(self.id, self.shards);
            per_tenant.messages_published.inc();
        }
        if seq == 1 {
            counters.history_rings.set(self.owned.ring_count() as u64);
        }
        if let Some(idempotency_key) = req.http.as_mut().and_then(|h| h.idempotency_key.take()) {
            let first = Remembered { seq, ts: now };
            self.idempotency
                .remember(&req.key, idempotency_key, first, now);
        }
        self.answer(req.reply, Answer::Published { seq, ts: now });
    }

    fn publish_failed(&mut self, req: &PublishReq, message: String) {
        // A full node refuses every publish to a new channel: one line a second, not one
        // per publish (found in review).
        if let Some(suppressed) = self.publish_failures.admit(self.now()) {
            tracing::error!(channel = %req.key.channel, message, suppressed, "publish failed");
        }
        let failed = Answer::Failed {
            code: ErrorCode::Overloaded,
            message,
        };
        self.answer(req.reply, failed);
    }

    fn owner_subscribe(&mut self, req: SubscribeReq) {
        let now = self.now().0;
        let tenant = self.shared.tenants.load().get(req.key.tenant.as_str());
        let opened = match &tenant {
            Some(tenant) => match self.owned.open_counted(&req.key, tenant, now) {
                Ok(_) => {
                    self.owned.watch(&req.key, req.from);
                    Ok(())
                }
                Err(limit) => Err((ErrorCode::ChannelLimit, channel_limit_message(limit))),
            },
            None => Err((
                ErrorCode::Unauthorized,
                "tenant no longer exists".to_owned(),
            )),
        };
        let outcome = match opened {
            Ok(()) => {
                let answer = self.owned.subscribe_answer(
                    &req.key,
                    req.last_event_id,
                    req.epoch.as_deref(),
                    req.max_replay_bytes as usize,
                    req.replay_below.map(std::num::NonZeroU64::get),
                );
                if req.last_event_id.is_some() {
                    let counters = self.counters();
                    counters.history_replays.inc();
                    if !answer.recovered {
                        counters.history_truncations.inc();
                    }
                }
                Ok(answer)
            }
            Err((code, message)) => {
                let channel = Some(req.key.channel.as_str());
                self.counters().error_event(code);
                Err(event::error(
                    channel,
                    req.reference.as_deref(),
                    code,
                    &message,
                    now,
                ))
            }
        };
        let msg = ShardMsg::Subscribed {
            key: req.key,
            conn: req.conn,
            request: req.request,
            outcome,
        };
        self.send_to(req.from, msg);
    }

    fn owner_answer(&mut self, reply: ReplyTo, question: Question) {
        let answer = match question {
            Question::HistoryPage { key, query } => {
                let tenant = self.shared.tenants.load().get(key.tenant.as_str());
                match tenant.map(|t| self.owned.history_page(&key, &t, &query)) {
                    Some(page) => Answer::HistoryPage(page),
                    None => Answer::Failed {
                        code: ErrorCode::Unauthorized,
                        message: "the tenant no longer exists".to_owned(),
                    },
                }
            }
            // A channel is active here while some shard has subscribers on it or it has
            // presence members.
            Question::ActiveChannels { tenant } => {
                let mut channels: Vec<ChannelName> = self
                    .owned
                    .watched_channels(&tenant)
                    .chain(self.presence.channels_of(&tenant))
                    .cloned()
                    .collect();
                channels.sort_unstable();
                channels.dedup();
                Answer::ActiveChannels(channels)
            }
            Question::ChannelState { key } => {
                let tenant = self.shared.tenants.load().get(key.tenant.as_str());
                match tenant.map(|t| self.owned.peek(&key, &t)) {
                    Some((seq, epoch)) => Answer::ChannelState { seq, epoch },
                    None => Answer::Failed {
                        code: ErrorCode::Unauthorized,
                        message: "the tenant no longer exists".to_owned(),
                    },
                }
            }
            question => self.owner_presence(question),
        };
        self.answer(Some(reply), answer);
    }

    /// The owner side of presence questions.
    fn owner_presence(&mut self, question: Question) -> Answer {
        let now = self.now();
        let gone = || Answer::Failed {
            code: ErrorCode::Unauthorized,
            message: "the tenant no longer exists".to_owned(),
        };
        let refused = |e: crate::presence::PresenceRefused| Answer::Failed {
            code: ErrorCode::PresenceLimit,
            message: e.to_string(),
        };
        match question {
            Question::ChannelState { .. }
            | Question::HistoryPage { .. }
            | Question::ActiveChannels { .. } => unreachable!("answered by owner_answer"),
            Question::PresenceMembers { key } => {
                // Listing never shows a member whose TTL passed.
                self.expire_presence(now);
                Answer::PresenceMembers {
                    members: self.presence.members(&key),
                }
            }
            Question::PresenceJoin {
                key,
                user_id,
                metadata,
                holder,
            } => {
                let Some(tenant) = self.shared.tenants.load().get(key.tenant.as_str()) else {
                    return gone();
                };
                let limits = tenant.limits.presence;
                // Joined first (nothing announced yet), counted second: a join the
                // presence limits refuse never counts the channel, and one the channel
                // limit refuses is taken back unseen (a channel with members always
                // counts already, so only a new member can be refused).
                let joined = self
                    .presence
                    .join(&key, &user_id, metadata, holder, &limits, now);
                if joined.is_ok() {
                    if let Err(limit) = self.owned.open_counted(&key, &tenant, now.0) {
                        self.presence.forget(&key, &user_id);
                        return Answer::Failed {
                            code: ErrorCode::ChannelLimit,
                            message: channel_limit_message(limit),
                        };
                    }
                }
                match joined {
                    Ok(joined) => {
                        if let Some(announce) = joined.announce {
                            self.announce(&key, announce);
                        }
                        Answer::PresenceJoined {
                            is_new: joined.is_new,
                        }
                    }
                    Err(e) => refused(e),
                }
            }
            Question::PresenceUpdate {
                key,
                user_id,
                metadata,
                holder,
            } => {
                let Some(tenant) = self.shared.tenants.load().get(key.tenant.as_str()) else {
                    return gone();
                };
                let limits = tenant.limits.presence;
                match self
                    .presence
                    .update(&key, &user_id, metadata, holder, &limits, now)
                {
                    Ok(announce) => {
                        let updated = announce.is_some();
                        if let Some(announce) = announce {
                            self.announce(&key, announce);
                        }
                        Answer::PresenceUpdated { updated }
                    }
                    Err(e) => refused(e),
                }
            }
            Question::PresenceLeave {
                key,
                user_id,
                holder,
            } => {
                let (was_present, announce) = self.presence.leave(&key, &user_id, holder, now);
                if let Some(announce) = announce {
                    self.announce(&key, announce);
                }
                self.settle_channel(&key);
                Answer::PresenceLeft { was_present }
            }
        }
    }

    /// Sends a presence change to every shard watching `key` (itself included, through
    /// the local FIFO), after any message of the channel sent before it.
    fn announce(&mut self, key: &ChannelKey, announce: Announce) {
        self.mirror_presence_to_ren(key, &announce);
        let Some(channel) = self.owned.get(key) else {
            return;
        };
        if channel.watchers.is_empty() {
            return;
        }
        let event = PresenceEvent::new(key.channel.clone(), announce, self.clock.now().0);
        let counters = self.shared.metrics.shard(self.id);
        for shard in channel.watchers.iter() {
            let msg = ShardMsg::Presence {
                key: key.clone(),
                event: event.clone(),
            };
            self.out.send(shard, msg, counters);
        }
    }

    /// Expires every member whose TTL passed by `now`, announcing each leave.
    fn expire_presence(&mut self, now: Millis) {
        while let Some((key, announce)) = self.presence.pop_expired(now) {
            self.announce(&key, announce);
            self.settle_channel(&key);
        }
    }

    /// Stops counting `key` against its tenant's `max_channels` if nothing keeps it
    /// active (owner side).
    fn settle_channel(&mut self, key: &ChannelKey) {
        let has_members = self.presence.has_members(key);
        self.owned.settle(key, has_members, self.now().0);
    }

    fn finish_subscribe(
        &mut self,
        key: &ChannelKey,
        conn_id: ConnId,
        request: RequestId,
        outcome: Result<SubscribeAnswer, Bytes>,
    ) {
        let ok = outcome.is_ok();
        let conn = self.conns.get(&conn_id).cloned();
        if self.resumes.remove(&request) {
            if let Some(conn) = &conn {
                let in_flight = &conn.resumes_in_flight;
                let was = in_flight.replace(in_flight.get().saturating_sub(1));
                if was >= crate::conn::MAX_RESUMES_IN_FLIGHT {
                    // Its session may wait for this ([`Conn::may_read`]).
                    conn.outbound().wake_reader();
                }
            }
        }
        // The answer is for the connection's latest subscribe of the channel, or for an
        // earlier one answered before it (a client may subscribe again before the first
        // answer: found in review, the earlier answer was dropped, and with it a
        // resume's replay). An earlier answer is applied as to a re-subscribe and leaves
        // the latest pending: its own answer decides.
        let state = conn
            .as_ref()
            .and_then(|c| c.subs.borrow().get(&key.channel));
        let superseded =
            matches!(state, Some(Sub::Pending { request: latest, .. }) if latest > request);
        // Superseded by a resume, the answer lists no live subscriber: the resume's
        // replay carries what comes between, and its answer lists the connection (found
        // in review: the SDK's plain subscribe then resume on open got a message live
        // and again in the replay, out of order).
        let before_resume = matches!(
            state,
            Some(Sub::Pending { request: latest, .. })
                if latest > request && self.resumes.contains(&latest)
        );
        let waiting = conn.filter(|_| {
            superseded
                || state.is_some_and(|s| matches!(s, Sub::Pending { .. }) && s.request() == request)
        });
        let activate = waiting.clone().filter(|_| ok && !before_resume);
        // Live from here unless it was already: a resume on a subscribed channel then
        // replays only what came before.
        let answered_seq = outcome.as_ref().map_or(0, |answer| answer.seq);
        let live = state
            .and_then(Sub::live)
            .unwrap_or(FirstLive::after(answered_seq));
        self.end_run();
        let mut watch = self.local.finish_subscribe(key, activate.clone());
        if let Some(conn) = &waiting {
            // A superseded answer is sent, and nothing else: the latest one's follows.
            if !superseded && ok {
                conn.subs
                    .borrow_mut()
                    .insert(key.channel.clone(), Sub::Active { request, live });
            } else if superseded && activate.is_some() {
                // Listed live by this earlier answer: the latest one, still pending,
                // keeps when.
                let latest = state.map_or(request, Sub::request);
                let pending = Sub::Pending {
                    request: latest,
                    live: Some(live),
                };
                conn.subs.borrow_mut().insert(key.channel.clone(), pending);
            } else if !superseded {
                conn.subs.borrow_mut().remove(&key.channel);
                self.cancel_sub_timer(state);
                // A refused re-subscribe ends the earlier subscription too (the
                // connection was told `subscribed` before; now it gets the error).
                let listed = self
                    .local
                    .get(key)
                    .is_some_and(|c| c.subscribers().iter().any(|s| s.id == conn.id));
                if listed {
                    watch = self.local.remove(key, conn.id);
                }
            }
            match outcome {
                Ok(mut answer) => {
                    if let Some(first) = state.and_then(Sub::live) {
                        answer.drop_from(first.seq());
                    }
                    self.push_subscribed(conn, key, answer)
                }
                Err(error) => {
                    self.push(conn, error);
                }
            }
        }
        self.report_watch(key, watch);
    }

    /// Queues a subscribe's replay and its `subscribed` event. The replay takes at most
    /// half the connection's free room, its newest messages first: one too big for the
    /// buffer used to close the connection with 4008, on every reconnect again, so the
    /// client never caught up (found in review). A cut replay says `recovered: false`.
    fn push_subscribed(&mut self, conn: &Rc<Conn>, key: &ChannelKey, mut answer: SubscribeAnswer) {
        let recovered = answer.recovered;
        // Decided before the cut: a replay cut to nothing still pauses (found in review).
        let replayed = !answer.replay.is_empty();
        if answer.truncate_to(conn.outbound().room() / 2) && recovered {
            self.counters().history_truncations.inc();
        }
        self.counters()
            .history_replayed_messages
            .add(answer.replay.len() as u64);
        for frame in answer.replay {
            self.push(conn, frame);
        }
        let subscribed = event::subscribed(
            key.channel.as_str(),
            answer.seq,
            &answer.epoch,
            answer.recovered,
            self.now().0,
        );
        self.push(conn, subscribed);
        // Only a replay pauses the reader (found in review: any answer did, so a
        // connection kept past half full by live traffic stopped reading on a plain
        // subscribe, pongs included, and could be closed as idle).
        if replayed {
            conn.outbound().want_room();
        }
    }

    /// An answer came back for `request`.
    fn complete(&mut self, request: RequestId, outcome: Result<Answer, RequestFailed>) {
        let Some(waiter) = self.requests.take(request) else {
            self.counters().answers_unclaimed.inc();
            return;
        };
        self.resolve(request, waiter, outcome);
    }

    fn resolve(
        &mut self,
        request: RequestId,
        waiter: Waiter,
        outcome: Result<Answer, RequestFailed>,
    ) {
        match waiter {
            Waiter::Task(tx) => {
                if !tx.send(outcome) {
                    self.counters().answers_unclaimed.inc();
                }
            }
            Waiter::Conn {
                conn,
                channel,
                reference,
            } => {
                let Some(conn) = self.conns.get(&conn).cloned() else {
                    self.counters().answers_unclaimed.inc();
                    return;
                };
                let (code, message) = match outcome {
                    Ok(Answer::Published { seq, ts }) => {
                        if let Some(reference) = reference {
                            let ack = event::ack(&reference, channel.as_str(), seq, ts);
                            self.push(&conn, ack);
                        }
                        return;
                    }
                    Ok(Answer::Failed { code, message }) => (code, message),
                    Ok(Answer::RateLimited { retry_after_secs }) => (
                        ErrorCode::RateLimited,
                        format!(
                            "the tenant's publishes_per_minute is reached; retry in {retry_after_secs} s"
                        ),
                    ),
                    Ok(other) => {
                        tracing::error!(?other, "unexpected answer to a publish");
                        (ErrorCode::Overloaded, "unexpected answer".to_owned())
                    }
                    Err(failed) => (ErrorCode::Overloaded, failed.to_string()),
                };
                let reference = reference.as_deref();
                self.send_error(&conn, Some(channel.as_str()), reference, code, &message);
            }
            Waiter::PresenceConn {
                conn,
                channel,
                join_as,
                reference,
            } => {
                let Some(conn) = self.conns.get(&conn).cloned() else {
                    self.counters().answers_unclaimed.inc();
                    return;
                };
                let (code, message) = match outcome {
                    Ok(Answer::PresenceJoined { .. }) => {
                        if let Some(user) = join_as {
                            let mut presence = conn.presence.borrow_mut();
                            let hold = presence.iter_mut().find(|h| {
                                h.channel == channel && h.user == user && request >= h.since
                            });
                            if let Some(hold) = hold {
                                hold.confirmed = true;
                            }
                        }
                        return;
                    }
                    Ok(Answer::PresenceLeft { .. }) => return,
                    Ok(Answer::PresenceUpdated { updated: true }) => return,
                    Ok(Answer::PresenceUpdated { updated: false }) => (
                        ErrorCode::BadRequest,
                        "not a presence member of this channel (expired?); join again".to_owned(),
                    ),
                    Ok(Answer::Failed { code, message }) => {
                        // The owner refused: the connection holds nothing there, unless a
                        // later join for it is in flight (its answer decides). Also after
                        // an accepted earlier join: the owner refuses only a user it does
                        // not have (the member expired; found in review: the hold stayed).
                        // A metadata refusal raced by a reload is the one exception; that
                        // member then expires unheld.
                        if let Some(user) = join_as {
                            let dropped = {
                                let mut presence = conn.presence.borrow_mut();
                                let before = presence.len();
                                presence.retain(|h| {
                                    !(h.channel == channel && h.user == user && h.join == request)
                                });
                                presence.len() < before
                            };
                            if dropped {
                                // The deadline was set for this join, the hold's latest
                                // (found in review: a refused private join's stayed until
                                // its token's `exp`, a close not removing it).
                                self.cancel_presence_timer(conn.id, &channel);
                            }
                        }
                        (code, message)
                    }
                    Ok(other) => {
                        tracing::error!(?other, "unexpected answer to a presence action");
                        (ErrorCode::Overloaded, "unexpected answer".to_owned())
                    }
                    Err(failed) => {
                        if let Some(user) = join_as {
                            self.undo_join(&conn, channel.clone(), user, request);
                        }
                        (ErrorCode::Overloaded, failed.to_string())
                    }
                };
                let (name, reference) = (Some(channel.as_str()), reference.as_deref());
                self.send_error(&conn, name, reference, code, &message);
            }
            Waiter::Quiet => {}
        }
    }

    /// A join that got no answer (timed out, or its owner's inbox was full) is an error
    /// to the client, so the connection is not left present: unless a later join of the
    /// channel is in flight (its answer decides) or an earlier join of the user was
    /// accepted (it stays present, as before the join), the hold is forgotten and a leave
    /// follows the join to the owner (found in review: the hold stayed, and with it a
    /// member the client was told had not joined, for as long as it pinged). The leave's
    /// answer is dropped; if it is lost too, the member expires, no longer seen.
    fn undo_join(&mut self, conn: &Conn, channel: ChannelName, user: Rc<str>, join: RequestId) {
        let held = {
            let mut presence = conn.presence.borrow_mut();
            let at = presence.iter().position(|h| {
                h.channel == channel && h.user == user && h.join == join && !h.confirmed
            });
            at.map(|at| presence.swap_remove(at)).is_some()
        };
        if !held {
            return;
        }
        // Its token-expiry entry (a private channel's) goes with it (found in review).
        self.cancel_presence_timer(conn.id, &channel);
        let key = ChannelKey::new(conn.tenant.id.clone(), channel);
        let question = Question::PresenceLeave {
            key: key.clone(),
            user_id: user.to_string(),
            holder: self.holder(conn),
        };
        let request = self.next_request();
        let timeout = self.shared.config.load().request_timeout_ms;
        self.ask_owner(&key, request, Waiter::Quiet, timeout, question);
    }

    /// Queues a presence change to every local subscriber of `key`, in the spelling each
    /// asked for (each spelling encoded once, shared by all).
    fn deliver_presence(&mut self, key: &ChannelKey, event: &PresenceEvent) {
        self.end_run();
        let Some(channel) = self.local.get(key) else {
            return;
        };
        let (mut delivered, mut overflowed) = (0u64, 0u64);
        for conn in channel.subscribers() {
            match conn.push(event.frame(conn.presence_spelling).clone()) {
                Pushed::Queued => delivered += 1,
                Pushed::Overflowed => overflowed += 1,
                Pushed::Dropped => {}
            }
        }
        if self.tenant_labels && delivered > 0 {
            if let Some(first) = channel.subscribers().first() {
                let per_tenant = first.tenant.metrics.shard(self.id, self.shards);
                per_tenant.deliveries.add(delivered);
            }
        }
        let counters = self.counters();
        counters.deliveries.add(delivered);
        if overflowed > 0 {
            counters.slow_consumer_closes.add(overflowed);
        }
    }

    // ----- batches and delivery runs (see `run.rs`) -----

    /// Starts a batch: until `end_batch`, consecutive messages of one channel are fanned
    /// out together.
    pub fn begin_batch(&mut self) {
        self.batching = true;
    }

    /// Ends the batch: the run waiting, if any, goes to its subscribers now.
    pub fn end_batch(&mut self) {
        self.batching = false;
        self.end_run();
    }

    /// How many local subscribers the run waiting would reach: 0 without a run.
    pub fn run_reach(&self) -> usize {
        self.run
            .key()
            .and_then(|key| self.local.get(key))
            .map_or(0, |channel| channel.subscribers().len())
    }

    /// A message of `key` for this shard's subscribers: joins the run in a batch, goes
    /// out at once otherwise.
    fn deliver(&mut self, key: ChannelKey, frame: Bytes) {
        if !self.batching {
            return self.deliver_local(&key, &frame, 1);
        }
        if !self.run.extends(&key, &frame) {
            self.end_run();
        }
        self.run.push(key, frame);
    }

    /// Fans out the run waiting, if any.
    fn end_run(&mut self) {
        if let Some(joined) = self.run.take() {
            self.deliver_local(&joined.key, &joined.frame, joined.messages);
        }
    }

    /// Queues `frame` (`messages` message frames) to every local subscriber of `key`
    /// (the same bytes for all).
    fn deliver_local(&mut self, key: &ChannelKey, frame: &Bytes, messages: u64) {
        let Some(channel) = self.local.get(key) else {
            return;
        };
        let (mut delivered, mut overflowed) = (0u64, 0u64);
        for conn in channel.subscribers() {
            match conn.push(frame.clone()) {
                Pushed::Queued => delivered += messages,
                Pushed::Overflowed => overflowed += 1,
                Pushed::Dropped => {}
            }
        }
        if self.tenant_labels && delivered > 0 {
            if let Some(first) = channel.subscribers().first() {
                let per_tenant = first.tenant.metrics.shard(self.id, self.shards);
                per_tenant.deliveries.add(delivered);
            }
        }
        let counters = self.counters();
        counters.deliveries.add(delivered);
        if overflowed > 0 {
            counters.slow_consumer_closes.add(overflowed);
        }
    }

    /// Queues one frame for one connection, after the run waiting if `conn` follows its
    /// channel (so the connection sees everything in the order it happened).
    pub fn push(&mut self, conn: &Conn, frame: Bytes) {
        if self.run.concerns(conn) {
            self.end_run();
        }
        if conn.push(frame) == Pushed::Overflowed {
            self.counters().slow_consumer_closes.inc();
        }
    }

    /// Sends an `error` event and counts it.
    fn send_error(
        &mut self,
        conn: &Conn,
        channel: Option<&str>,
        reference: Option<&[u8]>,
        code: ErrorCode,
        message: &str,
    ) {
        self.counters().error_event(code);
        let frame = event::error(channel, reference, code, message, self.now().0);
        self.push(conn, frame);
    }

    // ----- time -----

    /// Fires every deadline due by now, and housekeeping when its tick is due. Returns
    /// when this should be called next.
    pub fn on_tick(&mut self) -> Millis {
        let now = self.now();
        while let Some((request, waiter)) = self.requests.pop_expired(now) {
            self.counters().requests_timed_out.inc();
            self.resolve(request, waiter, Err(RequestFailed::Timeout));
        }
        self.expire_presence(now);
        while let Some((_, expiry)) = self.sub_expiry.pop_expired(now) {
            self.end_expired_subscription(expiry);
        }
        while let Some((_, expiry)) = self.presence_expiry.pop_expired(now) {
            self.end_expired_presence(expiry);
        }
        while let Some((_, conn)) = self.conn_expiry.pop_expired(now) {
            self.conn_timers.remove(&conn);
            if let Some(conn) = self.conns.get(&conn) {
                conn.close(CloseCode::AUTH_EXPIRED, "connection token expired");
            } else {
                self.ren_token_expired(conn);
            }
        }
        if now >= self.next_housekeeping {
            self.housekeeping(now);
            self.next_housekeeping = now.plus(HOUSEKEEPING_MS);
        }
        self.run_local();
        self.next_deadline()
    }

    /// When [`ShardCore::on_tick`] should run next.
    pub fn next_deadline(&mut self) -> Millis {
        [
            self.requests.next_deadline(),
            self.presence.next_deadline(),
            self.sub_expiry.next_deadline(),
            self.presence_expiry.next_deadline(),
            self.conn_expiry.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .fold(self.next_housekeeping, Millis::min)
    }

    /// The token that admitted a private subscription expired: `unauthorized` for the
    /// channel, then `unsubscribed`, and the subscription ends (a later one, admitted by
    /// a fresh token, is left alone).
    fn end_expired_subscription(&mut self, expiry: SubExpiry) {
        self.sub_timers.remove(&expiry.request);
        let Some(conn) = self.conns.get(&expiry.conn).cloned() else {
            return;
        };
        let state = conn.subs.borrow().get(&expiry.channel);
        match state {
            Some(sub) if sub.request() == expiry.request => {}
            _ => return,
        }
        self.end_run();
        conn.subs.borrow_mut().remove(&expiry.channel);
        let name = Some(expiry.channel.as_str());
        let message = "the token for this channel expired; subscribe again with a fresh one";
        self.send_error(&conn, name, None, ErrorCode::Unauthorized, message);
        let unsubscribed = event::unsubscribed(expiry.channel.as_str(), self.now().0);
        self.push(&conn, unsubscribed);
        // Pending or not, the connection leaves the local subscribers: a re-subscribe
        // still pending leaves it listed from the subscription before (found in
        // review). A pending one's in-flight count keeps the channel watched until the
        // owner's answer, which then finds the subscription gone.
        let key = ChannelKey::new(conn.tenant.id.clone(), expiry.channel);
        self.leave_local(&key, conn.id);
    }

    /// The token that admitted a private channel's member expired: `unauthorized` for
    /// the channel, and the member leaves as on `presence:leave` (a later join, with a
    /// fresh token, replaced this entry).
    fn end_expired_presence(&mut self, expiry: SubExpiry) {
        self.presence_timers
            .remove(&(expiry.conn, expiry.channel.clone()));
        let Some(conn) = self.conns.get(&expiry.conn).cloned() else {
            return;
        };
        let joined = conn
            .presence
            .borrow()
            .iter()
            .any(|h| h.channel == expiry.channel && h.join == expiry.request);
        if !joined {
            return;
        }
        let name = Some(expiry.channel.as_str());
        let message = "the token for presence in this channel expired; join again with a fresh one";
        self.send_error(&conn, name, None, ErrorCode::Unauthorized, message);
        self.presence_leave(&conn, expiry.channel, None);
    }

    /// After a configuration reload: connections of removed tenants are closed.
    fn apply_reload(&mut self) {
        let reloads = self.shared.reload_count();
        if reloads == self.reloads_seen {
            return;
        }
        self.reloads_seen = reloads;
        let tenants = self.shared.tenants.load();
        self.presence.follow_ttls(|tenant| {
            let tenant = tenants.get(tenant.as_str())?;
            Some(tenant.limits.presence.ttl_secs.saturating_mul(1000))
        });
        let mut closed = 0u64;
        for conn in self.conns.values() {
            if !tenants.still_has(&conn.tenant) {
                conn.close(CloseCode::TENANT_REMOVED, "tenant removed");
                closed += 1;
            }
        }
        // SSE streams too (found in review: they stayed open, kept their slots and,
        // once the tenant came back, got its events whatever its new settings said).
        closed += self.ren_close_removed_tenants();
        if closed > 0 {
            tracing::info!(shard = %self.id, closed, "closed connections of removed tenants");
        }
    }

    /// Periodic work: presence heartbeats to owners, idle connections' write buffers and
    /// quiet connections' pings and closes,
    /// idle channel eviction (never of a channel with presence members), interval
    /// flushes, idle log removal.
    fn housekeeping(&mut self, now: Millis) {
        self.apply_reload();
        for (reason, suppressed) in self.close_log.flush(now) {
            log_suppressed(self.id, reason, suppressed);
        }
        self.flush_presence_seen();
        self.ren_housekeeping(now);
        self.sweep_connections(now);
        let idle_before = now.0.saturating_sub(IDLE_CHANNEL_MS);
        self.idempotency.expire(now.0);
        let presence = &self.presence;
        let freed = self
            .owned
            // Every tick also sweeps the next slice of the idle history rings.
            .housekeeping(now.0, idle_before, true, |key| presence.has_members(key));
        if freed > 0 {
            tracing::info!(shard = %self.id, freed, "freed idle channels' history rings");
        }
        let stats = self.owned.store_stats();
        let counters = self.shared.metrics.shard(self.id);
        counters.history_rings.set(stats.rings as u64);
        counters.history_bytes.set(stats.bytes_used);
        counters.history_evictions.set(stats.evictions);
        counters.history_space_waits.set(stats.space_waits);
        counters
            .history_segments_prepared
            .set(stats.segments_prepared);
        counters.history_growths.set(stats.growths);
        counters
            .history_records_not_kept
            .set(stats.records_not_kept);
    }

    /// Part of the connection table (in turn, [`CONN_SWEEP_PER_TICK`] a tick): idle
    /// connections give their write buffers back, and quiet ones are pinged, then
    /// closed (`idle_timeout_secs`; found in review: a peer gone without a FIN stayed
    /// for good).
    fn sweep_connections(&mut self, now: Millis) {
        let timeout_ms = self
            .shared
            .config
            .load()
            .idle_timeout_secs
            .saturating_mul(1000);
        let close_after = (timeout_ms > 0).then_some(timeout_ms);
        let tenants = self.shared.tenants.load();
        let (mut closed, mut overflowed) = (0u64, 0u64);
        self.conns
            .for_each_in_turn(&mut self.conn_sweep_next, CONN_SWEEP_PER_TICK, |_, conn| {
                conn.outbound().sweep_idle();
                // A connection present in a channel is pinged within half its tenant's
                // presence TTL: its pong counts as seen, so a member whose browser tab
                // throttles the SDK's 25 s pings (a background tab: about once a minute)
                // does not expire while its socket is open (found in review: it did, and
                // never came back). See `presence_ping_after_ms`.
                let presence_ping = if conn.presence.borrow().is_empty() {
                    None
                } else {
                    tenants
                        .get(conn.tenant.id.as_str())
                        .map(|t| presence_ping_after_ms(t.limits.presence.ttl_secs))
                };
                let idle_ping = close_after.map(|close| close / 2);
                let Some(ping_after) = idle_ping.into_iter().chain(presence_ping).min() else {
                    return;
                };
                match conn.check_idle(now, ping_after, close_after) {
                    Idle::Closed => closed += 1,
                    Idle::Overflowed => overflowed += 1,
                    Idle::Heard | Idle::Quiet | Idle::Pinged => {}
                }
            });
        self.counters().slow_consumer_closes.add(overflowed);
        if closed > 0 {
            tracing::debug!(shard = %self.id, closed, "closed idle connections");
        }
    }

    /// Moves spilled messages on while other inboxes have room.
    pub fn retry_spills(&mut self) {
        self.out.retry_spills();
    }
}

/// How long a connection holding presence in a tenant with a TTL of `ttl_secs` may be
/// quiet before the sweep pings it: half the TTL, less one tick. The sweep looks once a
/// tick and the pong's "seen" reaches the owner at the next one, so a ping at half the
/// TTL could be answered too late for a short TTL; for 2 s or less this is 0: pinged at
/// every tick, and at the join (found with the second soak, `tests/tests/soak_http.rs`,
/// run with a 1 s TTL for its blink tenant: pings went out every other tick, and a
/// member answering every one expired about two seconds after its join).
pub fn presence_ping_after_ms(ttl_secs: u64) -> u64 {
    (ttl_secs.saturating_mul(1000) / 2).saturating_sub(HOUSEKEEPING_MS)
}

/// The summary line of close log lines left out by the rate limit.
fn log_suppressed(shard: ShardId, reason: CloseReason, suppressed: u64) {
    tracing::warn!(
        shard = shard.0,
        %reason,
        suppressed,
        per_second = crate::close_log::LINES_PER_SECOND,
        "connection closed: lines suppressed by the log rate limit"
    );
}
