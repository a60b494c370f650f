//! A shard: one thread, one core, one monoio runtime. [`Shard`] is the handle its async
//! tasks share (sessions, HTTP connections, the inbox loop, the timer loop); the state
//! and every handler live in [`ShardCore`], borrowed once per entry point.
//!
//! Architecture invariant: the `RefCell` around the core is borrowed only by the entry
//! points below, never across an `.await`, and no handler can reach this handle, so the
//! borrow can never be taken twice (handlers talk to themselves through the core's local
//! queue instead).

use std::cell::{Cell, RefCell, RefMut};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use ringcast_protocol::api::{
    ApiParser, PresenceAction, PresenceBody, PublishBody, Refusal, TokenBody,
};
use ringcast_protocol::event::PresenceSpelling;

use crate::clock::{Clock, Millis};
use crate::conn::Conn;
use crate::core::ShardCore;
use crate::history::HistoryStore;
use crate::keys::{ChannelKey, ShardId};
use crate::mesh::{Mesh, PublishExtras, Question, ShardMsg};
use crate::requests::Outcome;
use crate::send_ring::SendRing;
use crate::shared::Shared;
use crate::tenant::Tenant;
use crate::token::Grant;

/// Messages handled per inbox batch before other tasks get a turn.
pub const INBOX_BATCH: usize = 256;

/// The handle a shard's tasks share. Lives in an `Rc` on its own thread.
#[derive(Debug)]
pub struct Shard {
    /// This shard.
    pub id: ShardId,
    /// Every shard's inbox.
    pub mesh: Arc<Mesh>,
    /// Cross-shard shared state.
    pub shared: Arc<Shared>,
    core: RefCell<ShardCore>,
    shutting_down: Cell<bool>,
    shutdown_waker: RefCell<Option<Waker>>,
    /// Sessions waiting for the mesh's pressure to pass.
    held_back: RefCell<Vec<Waker>>,
    /// The timer loop, to re-arm when an earlier deadline appears.
    timer_waker: RefCell<Option<Waker>>,
    /// When the timer loop will next wake by itself.
    armed: Cell<Millis>,
    /// Parses HTTP API bodies (its buffers are reused; borrowed only while parsing).
    api_parser: RefCell<ApiParser>,
    /// The shard's own io_uring ring for what connections and SSE streams are sent
    /// (`None`: writer tasks send).
    pub send_ring: Option<Rc<SendRing>>,
    /// HTTP requests between their head and their answer (shutdown waits for them).
    requests_in_progress: Cell<usize>,
}

/// An HTTP request in progress on its shard, until dropped (see
/// [`Shard::request_in_progress`]).
#[derive(Debug)]
pub struct RequestInProgress<'a>(&'a Cell<usize>);

impl Drop for RequestInProgress<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

impl Shard {
    /// A shard with empty tables reading time from `clock`.
    pub fn new(
        id: ShardId,
        mesh: Arc<Mesh>,
        shared: Arc<Shared>,
        history: HistoryStore,
        clock: Clock,
    ) -> Shard {
        let core = ShardCore::new(id, mesh.clone(), shared.clone(), history, clock);
        Shard {
            id,
            mesh,
            shared,
            core: RefCell::new(core),
            shutting_down: Cell::new(false),
            shutdown_waker: RefCell::new(None),
            held_back: RefCell::new(Vec::new()),
            timer_waker: RefCell::new(None),
            armed: Cell::new(Millis(0)),
            api_parser: RefCell::new(ApiParser::new()),
            send_ring: None,
            requests_in_progress: Cell::new(0),
        }
    }

    /// Sends what connections and SSE streams are sent through `ring` from now on (its
    /// tasks must be running).
    pub fn with_send_ring(mut self, ring: Option<Rc<SendRing>>) -> Shard {
        self.send_ring = ring;
        self
    }

    /// The core, for one entry point's synchronous work.
    fn core(&self) -> RefMut<'_, ShardCore> {
        self.core.borrow_mut()
    }

    /// A client id for a connection that gave none.
    pub fn generate_client_id(&self) -> String {
        self.core().generate_client_id()
    }

    /// Registers a new WebSocket connection; its first queued frame is `connected`.
    /// `presence_events` (`?presence_events=`) overrides the tenant's spelling.
    /// `grant`: what its connection token verified.
    /// `preface`: bytes sent before `connected` (the handshake's `101` response).
    pub fn register_conn(
        &self,
        tenant: Arc<Tenant>,
        client_id: &str,
        presence_events: Option<PresenceSpelling>,
        grant: Option<Grant>,
        preface: Option<Bytes>,
    ) -> Rc<Conn> {
        self.core()
            .register_after(tenant, client_id, presence_events, grant, preface)
    }

    /// Forgets a connection of client address `client`.
    pub fn unregister_conn(&self, conn: &Conn, client: Option<std::net::IpAddr>) {
        self.core().unregister_conn(conn, client);
    }

    /// Counts (and logs, when abnormal) a connection that ended here without a
    /// session: a plain HTTP connection, or an SSE stream (the SSE code counts its own).
    pub fn connection_closed(
        &self,
        transport: crate::metrics::Transport,
        reason: crate::metrics::CloseReason,
        client: std::net::IpAddr,
    ) {
        self.core().connection_closed(crate::close_log::Closed {
            transport,
            reason,
            client: Some(client),
            tenant: None,
            code: None,
        });
    }

    /// Number of WebSocket connections on this shard.
    pub fn connection_count(&self) -> usize {
        self.core.borrow().connection_count()
    }

    /// Counts an HTTP request as in progress until the guard drops: from its head until
    /// its answer is written.
    pub fn request_in_progress(&self) -> RequestInProgress<'_> {
        self.requests_in_progress
            .set(self.requests_in_progress.get() + 1);
        RequestInProgress(&self.requests_in_progress)
    }

    /// Whether this shard still serves someone: WebSocket connections, SSE streams, or
    /// HTTP requests in progress.
    pub fn has_work(&self) -> bool {
        let core = self.core.borrow();
        core.connection_count() > 0
            || core.ren_stream_count() > 0
            || self.requests_in_progress.get() > 0
    }

    /// Acts on one text message from `conn`.
    pub fn on_text(&self, conn: &Rc<Conn>, text: &[u8]) {
        self.core().on_text(conn, text);
        self.rearm_timer();
    }

    /// Starts a batch: consecutive messages of one channel go out together, when
    /// [`Shard::end_batch`] is called or sooner (`run.rs`). No `.await` in between.
    pub fn begin_batch(&self) {
        self.core().begin_batch();
    }

    /// How many local subscribers the batch's waiting run would reach (0 without one).
    pub fn run_reach(&self) -> usize {
        self.core().run_reach()
    }

    /// Ends the batch: what it held for subscribers is queued now.
    pub fn end_batch(&self) {
        self.core().end_batch();
    }

    /// Answers a binary message.
    pub fn on_binary(&self, conn: &Rc<Conn>) {
        self.core().on_binary(conn);
    }

    /// A WebSocket pong (answering the idle sweep's ping, or unsolicited as a
    /// keep-alive): counts as seen for presence.
    pub fn on_ws_pong(&self, conn: &Rc<Conn>) {
        self.core().on_ws_ping(conn);
    }

    /// Answers a WebSocket ping with `pong` (which counts as seen for presence).
    pub fn on_ws_ping(&self, conn: &Rc<Conn>, pong: Bytes) {
        let mut core = self.core();
        core.on_ws_ping(conn);
        core.push(conn, pong);
    }

    /// Queues one frame for one connection.
    pub fn push(&self, conn: &Conn, frame: Bytes) {
        self.core().push(conn, frame);
    }

    /// Asks `key`'s owner `question`, waiting at most `timeout_ms`.
    pub async fn ask(&self, key: &ChannelKey, question: Question, timeout_ms: u64) -> Outcome {
        let answer = self.core().ask(key, question, timeout_ms);
        self.rearm_timer();
        answer.await
    }

    /// Publishes `data` on `key` for an HTTP caller; resolves once appended and fanned out.
    pub async fn publish(
        &self,
        key: ChannelKey,
        data: Bytes,
        user_id: Option<Box<str>>,
        timeout_ms: u64,
    ) -> Outcome {
        let answer = self.core().publish_for_task(key, data, user_id, timeout_ms);
        self.rearm_timer();
        answer.await
    }

    /// Parses an HTTP API token request body.
    pub fn parse_token_request(&self, body: &[u8]) -> Result<TokenBody, Refusal> {
        self.api_parser.borrow_mut().token_request(body)
    }

    /// Parses an HTTP API publish body.
    pub fn parse_publish<'a>(&self, body: &'a [u8]) -> Result<PublishBody<'a>, Refusal> {
        self.api_parser.borrow_mut().publish(body)
    }

    /// Parses an HTTP API presence body (join, update or leave).
    pub fn parse_presence<'a>(
        &self,
        action: PresenceAction,
        body: &'a [u8],
    ) -> Result<PresenceBody<'a>, Refusal> {
        self.api_parser.borrow_mut().presence(action, body)
    }

    /// [`Shard::publish`] with an idempotency key (see `idempotency.rs`) and the client
    /// it came from (`src`, shown on its REN event).
    pub async fn publish_once(
        &self,
        key: ChannelKey,
        data: Bytes,
        user_id: Option<Box<str>>,
        http: PublishExtras,
        timeout_ms: u64,
    ) -> Outcome {
        let answer = self
            .core()
            .publish_for_task_once(key, data, user_id, http, timeout_ms);
        self.rearm_timer();
        answer.await
    }

    /// Asks every shard `question` (all sent before any answer is awaited), waiting at
    /// most `timeout_ms` for each; the outcomes in shard order.
    pub async fn ask_all(&self, question: Question, timeout_ms: u64) -> Vec<Outcome> {
        let receivers: Vec<_> = {
            let mut core = self.core();
            (0..core.shards())
                .map(|i| core.ask_shard(ShardId(i as u16), question.clone(), timeout_ms))
                .collect()
        };
        self.rearm_timer();
        let mut outcomes = Vec::with_capacity(receivers.len());
        for receiver in receivers {
            outcomes.push(receiver.await);
        }
        outcomes
    }

    // ----- REN (SSE streams, app events) -----

    /// Registers a checked REN stream; its head goes out once the tenant's REN owner
    /// answered.
    pub fn ren_open(&self, open: crate::api::ren::RenOpen) -> Rc<crate::ren::stream::RenStream> {
        let crate::api::ren::RenOpen {
            tenant,
            filter,
            client_id,
            resume,
            grant,
            head,
        } = open;
        let stream = self
            .core()
            .ren_open_with(tenant, filter, &client_id, resume, head, grant);
        self.rearm_timer();
        stream
    }

    /// Forgets a REN stream that ended.
    pub fn ren_close(&self, stream: &crate::ren::stream::RenStream) {
        self.core().ren_close(stream);
    }

    /// Parses a `POST /api/ren/events` body.
    pub fn parse_ren_events(
        &self,
        body: &[u8],
        now: u64,
        header_src: Option<&str>,
        max_data_bytes: usize,
    ) -> Result<Vec<ringcast_protocol::ren::IngestEvent>, Refusal> {
        self.api_parser
            .borrow_mut()
            .ren_events(body, now, header_src, max_data_bytes)
    }

    /// Hands app events to their tenant's REN owner; resolves once each has its id.
    pub async fn ren_ingest(
        &self,
        tenant: ringcast_protocol::TenantId,
        events: Vec<ringcast_protocol::ren::IngestEvent>,
        timeout_ms: u64,
    ) -> Outcome {
        let answer = self.core().ren_ingest_for_task(tenant, events, timeout_ms);
        self.rearm_timer();
        answer.await
    }

    // ----- the shard's own loops -----

    /// Handles one batch from the inbox, then retries spills and reports the drain.
    /// The time it takes goes into `ringcast_loop_turn_seconds`.
    pub fn handle_batch(&self, batch: &mut Vec<ShardMsg>) {
        if batch.is_empty() {
            return self.handle_batch_untimed(batch);
        }
        let started = std::time::Instant::now();
        self.handle_batch_untimed(batch);
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.shared.metrics.shard(self.id).loop_turn.observe(nanos);
    }

    fn handle_batch_untimed(&self, batch: &mut Vec<ShardMsg>) {
        {
            let mut core = self.core();
            core.begin_batch();
            for msg in batch.drain(..) {
                core.handle(msg);
            }
            core.end_batch();
            core.retry_spills();
        }
        self.mesh.drained(self.id);
        if !self.mesh.under_pressure() {
            for waker in self.held_back.borrow_mut().drain(..) {
                waker.wake();
            }
        }
        self.rearm_timer();
    }

    /// Fires due deadlines; returns when to call again.
    pub fn on_tick(&self) -> Millis {
        self.core().on_tick()
    }

    /// Runs the timer: fires deadlines when due, sleeping in between. Woken early when
    /// an entry point adds a deadline earlier than the one it sleeps for.
    pub async fn run_timer(&self) {
        while !self.is_shutting_down() {
            let next = self.on_tick();
            self.armed.set(next);
            let wait = Duration::from_millis(next.since(self.now()).max(1));
            let mut woken = false;
            let rearmed = std::future::poll_fn(|cx| {
                if woken {
                    return Poll::Ready(());
                }
                woken = true;
                *self.timer_waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            });
            monoio::select! {
                _ = monoio::time::sleep(wait) => {},
                _ = rearmed => {},
            }
        }
    }

    fn rearm_timer(&self) {
        let next = self.core().next_deadline();
        if next < self.armed.get() {
            if let Some(waker) = self.timer_waker.borrow_mut().take() {
                waker.wake();
            }
        }
    }

    /// Now, by this shard's clock.
    pub fn now(&self) -> Millis {
        self.core.borrow().now()
    }

    /// Now, for checking or minting a token ([`crate::token::CheckTime`]).
    pub fn token_time(&self) -> crate::token::CheckTime {
        self.core.borrow().token_time()
    }

    /// Waits while some shard spills (publishers stop reading until the spills drain).
    pub async fn until_no_pressure(&self) {
        self.shared.metrics.shard(self.id).publisher_holdbacks.inc();
        std::future::poll_fn(|cx| {
            if !self.mesh.under_pressure() || self.is_shutting_down() {
                return Poll::Ready(());
            }
            self.held_back.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Waits until `conn` may act on another text frame ([`Conn::may_read`]), or the
    /// shard shuts down. Woken through the connection's reader waker: by the answer
    /// that brings its resumes in flight below the bound, by room in its outbound
    /// queue, and by its close (found in review: a shard-wide list, woken whole by every
    /// inbox batch, cost each batch time quadratic in the sessions waiting).
    pub async fn until_may_read(&self, conn: &Conn) {
        std::future::poll_fn(|cx| {
            if conn.may_read() || self.is_shutting_down() {
                return Poll::Ready(());
            }
            conn.outbound().register_reader(cx.waker());
            Poll::Pending
        })
        .await
    }

    // ----- lifecycle -----

    /// Writes this shard's history to disk (the last step of shutdown).
    pub fn sync_history(&self) {
        self.core().sync_history();
    }

    /// Stops accepting and closes every connection with 1001.
    pub fn begin_shutdown(&self) {
        if self.shutting_down.replace(true) {
            return;
        }
        if let Some(waker) = self.shutdown_waker.borrow_mut().take() {
            waker.wake();
        }
        for waker in self.held_back.borrow_mut().drain(..) {
            waker.wake();
        }
        self.core().close_all();
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

    /// Counts this shard as ready.
    pub fn mark_ready(&self) {
        self.shared.ready_shards.fetch_add(1, Ordering::SeqCst);
    }
}
