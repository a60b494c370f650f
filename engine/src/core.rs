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

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use hashbrown::HashMap;
use ringcast_protocol::client::{Publish, Subscribe};
use ringcast_protocol::{event, ChannelName, ClientFrame, CloseCode, ErrorCode, FrameParser};

use crate::clock::{Clock, Millis};
use crate::conn::{Conn, Sub};
use crate::history::HistoryStore;
use crate::idempotency::{IdempotencyTable, Remembered};
use crate::keys::{ChannelKey, ConnId, RequestId, ShardId};
use crate::mesh::{Answer, Mesh, PublishReq, Question, ReplyTo, ShardMsg, SubscribeReq};
use crate::metrics::ShardCounters;
use crate::outbound::Pushed;
use crate::outgoing::Outgoing;
use crate::owner::OwnedChannels;
use crate::requests::{answer_channel, AnswerReceiver, PendingRequests, RequestFailed, Waiter};
use crate::shared::Shared;
use crate::tenant::Tenant;
use crate::topic_table::{LocalTopics, Watch};

/// Channels nobody watches are closed (their log unmapped) after this long idle.
const IDLE_CHANNEL_MS: u64 = 60_000;
/// Housekeeping (idle buffers, idle channels, interval flushes) runs this often.
pub const HOUSEKEEPING_MS: u64 = 1_000;
/// Idle history logs are looked for every this many housekeeping ticks.
const IDLE_LOG_TICKS: u64 = 600;

const PRESENCE_NOT_BUILT: &str = "presence is not available in this release of Ringcast";
const PRIVATE_NOT_BUILT: &str =
    "`private-` channels need a channel token, and token verification is not available in this release";

/// One shard's state. Owned by its thread; every method takes `&mut self`.
#[derive(Debug)]
pub struct ShardCore {
    id: ShardId,
    shards: usize,
    shared: Arc<Shared>,
    clock: Clock,
    conns: HashMap<ConnId, Rc<Conn>>,
    local: LocalTopics,
    owned: OwnedChannels,
    /// Idempotency keys of HTTP publishes on the channels this shard owns.
    idempotency: IdempotencyTable,
    parser: FrameParser,
    next_id: u64,
    requests: PendingRequests,
    out: Outgoing,
    next_housekeeping: Millis,
    housekeeping_ticks: u64,
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
        let idempotency = {
            let config = shared.config.load();
            IdempotencyTable::new(
                config.idempotency_ttl_secs.saturating_mul(1000),
                config.idempotency_max_keys,
            )
        };
        ShardCore {
            id,
            shards: mesh.shards(),
            shared,
            clock,
            conns: HashMap::new(),
            local: LocalTopics::default(),
            owned: OwnedChannels::new(history),
            idempotency,
            parser: FrameParser::new(),
            next_id: 1,
            requests: PendingRequests::default(),
            out: Outgoing::new(id, mesh),
            next_housekeeping: now.plus(HOUSEKEEPING_MS),
            housekeeping_ticks: 0,
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
        let limit = self.shared.config.load().outbound_buffer_bytes;
        let conn = Rc::new(Conn::new(ConnId(self.next_id()), tenant, limit));
        self.conns.insert(conn.id, conn.clone());
        let connected = event::connected(client_id, self.now().0);
        self.push(&conn, connected);
        conn
    }

    /// Forgets a connection: leaves its channels, tells owners of channels left unwatched.
    pub fn unregister_conn(&mut self, conn: &Conn) {
        self.conns.remove(&conn.id);
        let subs = std::mem::take(&mut *conn.subs.borrow_mut());
        for channel in subs.into_keys() {
            let key = ChannelKey::new(conn.tenant.id.clone(), channel);
            self.leave_local(&key, conn.id);
        }
        self.run_local();
    }

    /// Number of WebSocket connections on this shard.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Closes every connection with 1001.
    pub fn close_all(&mut self) {
        for conn in self.conns.values() {
            conn.close(CloseCode::GOING_AWAY, "server shutting down");
        }
    }

    // ----- client actions (from sessions on this shard) -----

    /// Acts on one text message from `conn`.
    pub fn on_text(&mut self, conn: &Rc<Conn>, text: &[u8]) {
        self.on_client_frame(conn, text);
        self.run_local();
    }

    fn on_client_frame(&mut self, conn: &Rc<Conn>, text: &[u8]) {
        let parsed = self.parser.parse(text);
        match parsed {
            Ok(ClientFrame::Subscribe(sub)) => self.subscribe(conn, sub),
            Ok(ClientFrame::Unsubscribe { channel }) => self.unsubscribe(conn, channel),
            Ok(ClientFrame::Publish(publish)) => self.publish(conn, publish),
            Ok(ClientFrame::Ping) => {
                let pong = event::pong(self.now().0);
                self.push(conn, pong);
            }
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
    pub fn on_binary(&mut self, conn: &Rc<Conn>) {
        self.send_error(
            conn,
            None,
            None,
            ErrorCode::BadRequest,
            "binary frames are not supported; send JSON text",
        );
    }

    fn subscribe(&mut self, conn: &Rc<Conn>, sub: Subscribe) {
        if sub.channel.is_private() {
            let channel = Some(sub.channel.as_str());
            self.send_error(
                conn,
                channel,
                None,
                ErrorCode::Unauthorized,
                PRIVATE_NOT_BUILT,
            );
            return;
        }
        let request = self.next_request();
        conn.subs
            .borrow_mut()
            .insert(sub.channel.clone(), Sub::Pending(request));
        let key = ChannelKey::new(conn.tenant.id.clone(), sub.channel);
        self.local.begin_subscribe(&key);
        let msg = ShardMsg::Subscribe(SubscribeReq {
            key: key.clone(),
            from: self.id,
            conn: conn.id,
            request,
            last_event_id: sub.last_event_id,
            epoch: sub.epoch,
        });
        self.send_to_owner(&key, msg);
    }

    fn unsubscribe(&mut self, conn: &Rc<Conn>, channel: ChannelName) {
        if conn.subs.borrow_mut().remove(&channel).is_none() {
            let message = "not subscribed to this channel";
            let name = Some(channel.as_str());
            self.send_error(conn, name, None, ErrorCode::NotSubscribed, message);
            return;
        }
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
        let watch = self.local.remove(key, conn);
        self.report_watch(key, watch);
    }

    fn publish(&mut self, conn: &Rc<Conn>, publish: Publish<'_>) {
        let (channel, reference) = (Some(publish.channel.as_str()), publish.reference);
        let limit = conn.tenant.limits.max_message_bytes;
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
        if publish.channel.is_private() {
            let code = ErrorCode::Unauthorized;
            self.send_error(conn, channel, reference, code, PRIVATE_NOT_BUILT);
            return;
        }
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
            user_id: publish.user_id.map(String::into_boxed_str),
            idempotency_key: None,
            reply: Some(ReplyTo {
                shard: self.id,
                request,
            }),
        });
        self.send_to_owner(&key, msg);
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
        self.request_for_task(shard, timeout_ms, |reply| ShardMsg::Ask { reply, question })
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
        self.publish_for_task_once(key, data, user_id, None, timeout_ms)
    }

    /// [`ShardCore::publish_for_task`] with an idempotency key: a publish whose key the
    /// owner remembers on this channel is answered with the first one's seq and ts.
    pub fn publish_for_task_once(
        &mut self,
        key: ChannelKey,
        data: Bytes,
        user_id: Option<Box<str>>,
        idempotency_key: Option<Box<str>>,
        timeout_ms: u64,
    ) -> AnswerReceiver {
        let owner = key.owner(self.shards);
        self.request_for_task(owner, timeout_ms, |reply| {
            ShardMsg::Publish(PublishReq {
                key,
                data,
                user_id,
                idempotency_key,
                reply: Some(reply),
            })
        })
    }

    /// Sends the request `make` builds to `owner`, with a task waiting for the answer.
    /// A full inbox refuses it at once (`Overloaded`): tasks are never spilled.
    fn request_for_task(
        &mut self,
        owner: ShardId,
        timeout_ms: u64,
        make: impl FnOnce(ReplyTo) -> ShardMsg,
    ) -> AnswerReceiver {
        let request = self.next_request();
        let (tx, rx) = answer_channel();
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

    /// Handles what this shard sent itself, until nothing is left.
    fn run_local(&mut self) {
        while let Some(msg) = self.out.pop_local() {
            self.dispatch(msg);
        }
    }

    fn dispatch(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::Publish(req) => self.owner_publish(req),
            ShardMsg::Subscribe(req) => self.owner_subscribe(req),
            ShardMsg::Unwatch { key, from } => self.owned.unwatch(&key, from),
            ShardMsg::Deliver { key, frame } => self.deliver_local(&key, &frame),
            ShardMsg::Subscribed {
                key,
                conn,
                request,
                ok,
                frames,
            } => self.finish_subscribe(&key, conn, request, ok, frames),
            ShardMsg::Ask { reply, question } => self.owner_answer(reply, question),
            ShardMsg::Answer { request, answer } => self.complete(request, Ok(answer)),
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
        if let Some(idempotency_key) = &req.idempotency_key {
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
        let channel = match self.owned.open(&req.key, &tenant, now) {
            Ok(channel) => channel,
            Err(e) => {
                let message = format!("history unavailable: {e}");
                self.publish_failed(&req, message);
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
        if let Err(e) = self
            .owned
            .append(&req.key, now, req.user_id.as_deref(), &frame)
        {
            let message = format!("history append failed: {e}");
            self.publish_failed(&req, message);
            return;
        }
        let watchers = self
            .owned
            .get(&req.key)
            .expect("opened above")
            .watchers
            .clone();
        for shard in watchers.iter() {
            let deliver = ShardMsg::Deliver {
                key: req.key.clone(),
                frame: frame.clone(),
            };
            self.send_to(shard, deliver);
        }
        self.counters().messages_published.inc();
        if let Some(idempotency_key) = req.idempotency_key.take() {
            let first = Remembered { seq, ts: now };
            self.idempotency
                .remember(&req.key, idempotency_key, first, now);
        }
        self.answer(req.reply, Answer::Published { seq, ts: now });
    }

    fn publish_failed(&mut self, req: &PublishReq, message: String) {
        tracing::error!(channel = %req.key.channel, message, "publish failed");
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
            Some(tenant) => self
                .owned
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
                frames.push(event::subscribed(
                    req.key.channel.as_str(),
                    answer.seq,
                    &answer.epoch,
                    answer.recovered,
                    now,
                ));
                (true, frames)
            }
            Err(message) => {
                tracing::error!(channel = %req.key.channel, %message, "subscribe failed");
                let channel = Some(req.key.channel.as_str());
                let code = ErrorCode::Overloaded;
                (
                    false,
                    vec![event::error(channel, None, code, &message, now)],
                )
            }
        };
        let msg = ShardMsg::Subscribed {
            key: req.key,
            conn: req.conn,
            request: req.request,
            ok,
            frames,
        };
        self.send_to(req.from, msg);
    }

    fn owner_answer(&mut self, reply: ReplyTo, question: Question) {
        let answer = match question {
            Question::HistoryPage { key, query } => {
                let tenant = self.shared.tenants.load().get(key.tenant.as_str());
                match tenant.map(|t| self.owned.history_page(&key, &t, &query)) {
                    Some(Ok(page)) => Answer::HistoryPage(page),
                    Some(Err(e)) => Answer::Failed {
                        code: ErrorCode::Overloaded,
                        message: format!("history unavailable: {e}"),
                    },
                    None => Answer::Failed {
                        code: ErrorCode::Unauthorized,
                        message: "the tenant no longer exists".to_owned(),
                    },
                }
            }
            // A channel is active here while some shard has subscribers on it. The
            // presence work adds channels with presence members on this same line.
            Question::ActiveChannels { tenant } => {
                Answer::ActiveChannels(self.owned.watched_channels(&tenant).cloned().collect())
            }
            Question::ChannelState { key } => {
                let tenant = self.shared.tenants.load().get(key.tenant.as_str());
                match tenant.map(|t| self.owned.peek(&key, &t)) {
                    Some(Ok((seq, epoch))) => Answer::ChannelState { seq, epoch },
                    Some(Err(e)) => Answer::Failed {
                        code: ErrorCode::Overloaded,
                        message: format!("history unavailable: {e}"),
                    },
                    None => Answer::Failed {
                        code: ErrorCode::Unauthorized,
                        message: "the tenant no longer exists".to_owned(),
                    },
                }
            }
        };
        self.answer(Some(reply), answer);
    }

    fn finish_subscribe(
        &mut self,
        key: &ChannelKey,
        conn_id: ConnId,
        request: RequestId,
        ok: bool,
        frames: Vec<Bytes>,
    ) {
        let conn = self.conns.get(&conn_id).cloned();
        let waiting =
            conn.filter(|c| c.subs.borrow().get(&key.channel) == Some(&Sub::Pending(request)));
        let activate = waiting.clone().filter(|_| ok);
        let watch = self.local.finish_subscribe(key, activate);
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

    /// An answer came back for `request`.
    fn complete(&mut self, request: RequestId, outcome: Result<Answer, RequestFailed>) {
        let Some(waiter) = self.requests.take(request) else {
            self.counters().answers_unclaimed.inc();
            return;
        };
        self.resolve(waiter, outcome);
    }

    fn resolve(&mut self, waiter: Waiter, outcome: Result<Answer, RequestFailed>) {
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
                    Ok(other) => {
                        tracing::error!(?other, "unexpected answer to a publish");
                        (ErrorCode::Overloaded, "unexpected answer".to_owned())
                    }
                    Err(failed) => (ErrorCode::Overloaded, failed.to_string()),
                };
                let reference = reference.as_deref();
                self.send_error(&conn, Some(channel.as_str()), reference, code, &message);
            }
        }
    }

    /// Queues `frame` to every local subscriber of `key` (the same bytes for all).
    fn deliver_local(&mut self, key: &ChannelKey, frame: &Bytes) {
        let Some(channel) = self.local.get(key) else {
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
        let counters = self.counters();
        counters.deliveries.add(delivered);
        if overflowed > 0 {
            counters.slow_consumer_closes.add(overflowed);
        }
    }

    /// Queues one frame for one connection.
    pub fn push(&self, conn: &Conn, frame: Bytes) {
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
        while let Some((_, waiter)) = self.requests.pop_expired(now) {
            self.counters().requests_timed_out.inc();
            self.resolve(waiter, Err(RequestFailed::Timeout));
        }
        if now >= self.next_housekeeping {
            self.housekeeping_ticks += 1;
            let remove_idle_logs = self.housekeeping_ticks % IDLE_LOG_TICKS == 1;
            self.housekeeping(now, remove_idle_logs);
            self.next_housekeeping = now.plus(HOUSEKEEPING_MS);
        }
        self.run_local();
        self.next_deadline()
    }

    /// When [`ShardCore::on_tick`] should run next.
    pub fn next_deadline(&mut self) -> Millis {
        match self.requests.next_deadline() {
            Some(deadline) => deadline.min(self.next_housekeeping),
            None => self.next_housekeeping,
        }
    }

    /// Periodic work: idle connections' write buffers, idle channel eviction, interval
    /// flushes, idle log removal.
    fn housekeeping(&mut self, now: Millis, remove_idle_logs: bool) {
        for conn in self.conns.values() {
            conn.outbound().sweep_idle();
        }
        let idle_before = now.0.saturating_sub(IDLE_CHANNEL_MS);
        self.owned.housekeeping(now.0, idle_before);
        self.idempotency.expire(now.0);
        if remove_idle_logs {
            let removed = self.owned.remove_idle_logs(now.0, self.id, self.shards);
            if removed > 0 {
                tracing::info!(shard = %self.id, removed, "removed idle history logs");
            }
        }
    }

    /// Moves spilled messages on while other inboxes have room.
    pub fn retry_spills(&mut self) {
        self.out.retry_spills();
    }
}
