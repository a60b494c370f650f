//! The REN handlers of [`ShardCore`] (synchronous and `&mut`, like every handler): the
//! owner side (a tenant's sequence and buffer), the stream side (this shard's SSE
//! streams), and the two hooks the channel owner calls after a publish or a presence
//! change. Data flow and ownership: `ren/mod.rs`.

use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use ringcast_protocol::ren::{IngestEvent, PendingChunk, RenFilter, OPENED, PING};
use ringcast_protocol::{ChannelName, CloseCode, TenantId};

use super::ShardCore;
use crate::clock::Millis;
use crate::keys::{tenant_owner, ChannelKey, ConnId, RequestId, ShardId};
use crate::mesh::{Answer, ShardMsg};
use crate::outbound::Pushed;
use crate::presence::Announce;
use crate::ren::buffer::RenBuffer;
use crate::ren::owner::RenLogs;
use crate::ren::stream::{LocalStreams, RenStream, StreamState};
use crate::ren::{MessageOrigin, Mirrored, RenEntry, RenLimits, RenMsg, Replay, Resume, PING_MS};
use crate::requests::AnswerReceiver;
use crate::tenant::Tenant;
use crate::token::Grant;

/// A shard's REN state: the logs of the tenants it is the REN owner of, and its streams.
#[derive(Debug)]
pub struct RenCore {
    logs: RenLogs,
    streams: LocalStreams,
    limits: RenLimits,
    next_ping: Millis,
    realtime: Arc<str>,
    presence: Arc<str>,
}

impl RenCore {
    /// Empty, with the buffer bounds of `[ren]`; the first pings go out at `now + 15 s`.
    pub fn new(limits: RenLimits, now: Millis) -> RenCore {
        RenCore {
            logs: RenLogs::default(),
            streams: LocalStreams::default(),
            limits,
            next_ping: now.plus(PING_MS),
            realtime: Arc::from(ringcast_protocol::ren::REALTIME_DOMAIN),
            presence: Arc::from(ringcast_protocol::ren::PRESENCE_DOMAIN),
        }
    }
}

impl ShardCore {
    // ----- streams (entry points from the stream's tasks on this shard) -----

    /// Registers an SSE stream of `tenant` and asks the tenant's REN owner for it; its
    /// first chunk (`head`, the response head) is queued when the owner answers, followed
    /// by what it missed since `resume` and then live events.
    pub fn ren_open(
        &mut self,
        tenant: Arc<Tenant>,
        filter: RenFilter,
        client_id: &str,
        resume: Resume,
        head: Vec<u8>,
    ) -> Rc<RenStream> {
        self.ren_open_with(tenant, filter, client_id, resume, head, None)
    }

    /// [`ShardCore::ren_open`] for a stream whose `token=` verified `grant` (it also
    /// gets the events of the `private-` channels the grant allows).
    pub fn ren_open_with(
        &mut self,
        tenant: Arc<Tenant>,
        filter: RenFilter,
        client_id: &str,
        resume: Resume,
        head: Vec<u8>,
        grant: Option<Grant>,
    ) -> Rc<RenStream> {
        let limit = self.shared.config.load().outbound_buffer_bytes;
        let id = ConnId(self.next_id());
        let request = self.next_request();
        let tenant_id = tenant.id.clone();
        // A stream admitted by a token ends when the token does, as a WebSocket does
        // (same deadline queue: streams and connections share the id space).
        if let Some(expires) = grant.as_ref().map(|g| Millis(g.expires_ms)) {
            let timer = self.conn_expiry.insert(expires, id);
            self.conn_timers.insert(id, timer);
        }
        let stream = Rc::new(
            RenStream::new(id, tenant, filter, client_id, head, request, limit).with_grant(grant),
        );
        self.ren.streams.open(stream.clone());
        let msg = RenMsg::Subscribe {
            tenant: tenant_id.clone(),
            from: self.id,
            stream: id,
            request,
            resume,
        };
        self.send_to(tenant_owner(&tenant_id, self.shards), ShardMsg::Ren(msg));
        self.run_local();
        stream
    }

    /// Forgets a stream that ended; the owner learns when no stream of its tenant is
    /// left on this shard.
    pub fn ren_close(&mut self, stream: &RenStream) {
        if let Some(timer) = self.conn_timers.remove(&stream.id) {
            self.conn_expiry.cancel(timer);
        }
        if let Some(tenant) = self.ren.streams.close(stream.id) {
            let msg = RenMsg::Unwatch {
                tenant: tenant.clone(),
                from: self.id,
            };
            self.send_to(tenant_owner(&tenant, self.shards), ShardMsg::Ren(msg));
        }
        self.run_local();
    }

    /// Hands app events (`POST /api/ren/events`) to their tenant's REN owner; the
    /// receiver resolves to `Answer::RenAccepted` once each has its id.
    pub fn ren_ingest_for_task(
        &mut self,
        tenant: TenantId,
        events: Vec<IngestEvent>,
        timeout_ms: u64,
    ) -> AnswerReceiver {
        let owner = tenant_owner(&tenant, self.shards);
        self.request_for_task(owner, timeout_ms, true, |reply| {
            ShardMsg::Ren(RenMsg::Ingest {
                tenant,
                events,
                reply,
            })
        })
    }

    /// Open SSE streams on this shard (pending and active).
    pub fn ren_stream_count(&self) -> usize {
        self.ren.streams.len()
    }

    /// Events kept in the resume buffers of the tenants this shard is REN owner of.
    pub fn ren_buffered(&self) -> usize {
        self.ren.logs.buffered()
    }

    /// Distinct filter classes among this shard's streams of `tenant`.
    pub fn ren_filter_classes(&self, tenant: &TenantId) -> usize {
        self.ren.streams.classes_of(tenant)
    }

    // ----- hooks of the channel owner -----

    /// After a publish on a channel this shard owns: mirrors it into the tenant's REN
    /// sequence, if the tenant is active. The parts travel (`data` is a slice of the
    /// already-encoded `frame`); the REN owner encodes. A `private-` channel's events
    /// reach only the streams whose token grants `subscribe` on it.
    pub(super) fn mirror_to_ren(
        &mut self,
        key: &ChannelKey,
        frame: &Bytes,
        data_span: Range<u32>,
        origin: MessageOrigin<'_>,
        seq: u64,
        ts: u64,
    ) {
        if !self.shared.ren.is_active(&key.tenant) {
            return;
        }
        let what = Mirrored::Message {
            channel: key.channel.clone(),
            data: frame.slice(data_span.start as usize..data_span.end as usize),
            uid: origin.uid.map(Box::from),
            src: origin.src.map(Box::from),
            seq,
            ts,
        };
        self.mirror(key, what);
    }

    /// On a presence change of a channel this shard owns (whether or not the channel
    /// has subscribers): mirrors it, if the tenant is active (`private-` channels only
    /// to the streams allowed, as above).
    pub(super) fn mirror_presence_to_ren(&mut self, key: &ChannelKey, announce: &Announce) {
        if !self.shared.ren.is_active(&key.tenant) {
            return;
        }
        let what = Mirrored::Presence {
            channel: key.channel.clone(),
            kind: announce.kind,
            uid: Box::from(&*announce.user_id),
            metadata: announce.metadata.clone(),
            ts: self.now().0,
        };
        self.mirror(key, what);
    }

    fn mirror(&mut self, key: &ChannelKey, what: Mirrored) {
        let msg = RenMsg::Mirror {
            tenant: key.tenant.clone(),
            what,
        };
        self.send_to(tenant_owner(&key.tenant, self.shards), ShardMsg::Ren(msg));
    }

    // ----- messages -----

    /// Handles one REN message (from the inbox or the local FIFO).
    pub(super) fn ren_handle(&mut self, msg: RenMsg) {
        match msg {
            RenMsg::Mirror { tenant, what } => {
                let (domain, chunk, channel) = match what {
                    Mirrored::Message {
                        channel,
                        data,
                        uid,
                        src,
                        seq,
                        ts,
                    } => {
                        let (uid, src) = (uid.as_deref(), src.as_deref());
                        let chunk =
                            PendingChunk::realtime(channel.as_str(), &data, uid, src, seq, ts);
                        (self.ren.realtime.clone(), chunk, channel)
                    }
                    Mirrored::Presence {
                        channel,
                        kind,
                        uid,
                        metadata,
                        ts,
                    } => (
                        self.ren.presence.clone(),
                        PendingChunk::presence(
                            kind,
                            channel.as_str(),
                            &uid,
                            metadata.as_deref(),
                            ts,
                        ),
                        channel,
                    ),
                };
                let private = channel.is_private().then_some(channel);
                self.ren_record(&tenant, [(domain, chunk, private)]);
            }
            RenMsg::Ingest {
                tenant,
                events,
                reply,
            } => {
                let accepted = events.len();
                let events = events
                    .into_iter()
                    .map(|e| (Arc::<str>::from(e.r), e.chunk, e.private));
                self.ren_record(&tenant, events);
                self.answer(Some(reply), Answer::RenAccepted { accepted });
            }
            RenMsg::Subscribe {
                tenant,
                from,
                stream,
                request,
                resume,
            } => self.ren_subscribe(&tenant, from, stream, request, resume),
            RenMsg::Subscribed {
                stream,
                request,
                replay,
            } => self.ren_subscribed(stream, request, replay),
            RenMsg::Unwatch { tenant, from } => {
                let now = self.now();
                self.ren.logs.unwatch(&tenant, from, now);
            }
            RenMsg::Deliver { tenant, events } => {
                let now = self.now().0;
                let delivered = self.ren.streams.deliver(&tenant, &events, now);
                let counters = self.counters();
                counters.ren_deliveries.add(delivered.queued);
                if delivered.overflowed > 0 {
                    counters.slow_consumer_closes.add(delivered.overflowed);
                }
            }
        }
    }

    /// The REN owner gives each event the next id of its tenant's sequence, keeps it,
    /// and sends the encoded chunks to every shard with streams of the tenant. A tenant
    /// that is not recording (no stream for `buffer_secs`) drops them: nobody could get
    /// them, not even by resuming.
    fn ren_record(
        &mut self,
        tenant: &TenantId,
        events: impl IntoIterator<Item = (Arc<str>, PendingChunk, Option<ChannelName>)>,
    ) {
        let now = self.now();
        let limits = self.ren.limits;
        let Some(log) = self.ren.logs.recording(tenant) else {
            return;
        };
        let entries: Vec<RenEntry> = events
            .into_iter()
            .map(|(domain, chunk, private)| {
                let id = log.buffer.next_id();
                let entry = RenEntry {
                    id,
                    domain,
                    chunk: chunk.finish(id),
                    private,
                };
                log.buffer.push(entry.clone(), now, &limits);
                entry
            })
            .collect();
        self.counters().ren_events.add(entries.len() as u64);
        let log = self.ren.logs.recording(tenant).expect("recording above");
        if log.watchers.is_empty() || entries.is_empty() {
            return;
        }
        let watchers = log.watchers.clone();
        let events: Arc<[RenEntry]> = entries.into();
        for shard in watchers.iter() {
            let msg = RenMsg::Deliver {
                tenant: tenant.clone(),
                events: events.clone(),
            };
            self.send_to(shard, ShardMsg::Ren(msg));
        }
    }

    /// The REN owner answers a stream's subscribe: in the same step it adds the stream's
    /// shard to the tenant's watchers and reads the replay, so every later event reaches
    /// that shard after the answer, through the same FIFO (no gap, no duplicate).
    fn ren_subscribe(
        &mut self,
        tenant: &TenantId,
        from: ShardId,
        stream: ConnId,
        request: RequestId,
        resume: Resume,
    ) {
        let now = self.now();
        let log = self.ren.logs.subscribe(tenant, from, now, &self.shared.ren);
        let replay = match resume {
            Resume::Fresh => Replay::default(),
            Resume::After(id) => match log.buffer.after(id) {
                Some(events) => Replay { meta: None, events },
                None => truncated(&log.buffer, &id.to_string(), now),
            },
            Resume::Unknown(id) => truncated(&log.buffer, &id, now),
        };
        if replay.meta.is_some() {
            self.counters().ren_truncated.inc();
        }
        let msg = RenMsg::Subscribed {
            stream,
            request,
            replay,
        };
        self.send_to(from, ShardMsg::Ren(msg));
    }

    /// The owner's answer reached the stream's shard: head, then `ren.meta` or the
    /// replay (filtered), then the stream is live.
    fn ren_subscribed(&mut self, stream: ConnId, request: RequestId, replay: Replay) {
        let Some((stream, head)) = self.ren.streams.activate(stream, request) else {
            self.counters().answers_unclaimed.inc();
            return;
        };
        let now = self.now().0;
        let mut queued = 0u64;
        let mut overflowed = false;
        let ids = (replay.events.first().zip(replay.events.last())).map(|(f, l)| (f.id, l.id));
        let mut events: Vec<Bytes> = replay
            .events
            .into_iter()
            .filter(|e| stream.filter.matches(&e.domain) && e.visible_to(&stream, now))
            .map(|e| e.chunk)
            .collect();
        let mut meta = replay.meta;
        let total = head.len()
            + OPENED.len()
            + meta.as_ref().map_or(0, Bytes::len)
            + events.iter().map(Bytes::len).sum::<usize>();
        // Half the stream's buffer at most, so live events of the same turn still fit.
        let room = stream.outbound().limit() / 2;
        if let Some((first, last)) = ids.filter(|_| total > room) {
            // The replay would not fit the stream's buffer: queued, it would close the
            // stream before its head went out, and the client would resume the same way
            // for ever (found in review). It is told it missed events instead, from the
            // id before the replay's first (ids are contiguous), and resumes after the
            // replay's last.
            events.clear();
            let asked = (first - 1).to_string();
            meta = Some(PendingChunk::truncated(&asked, now).finish(last));
            self.counters().ren_truncated.inc();
        }
        let chunks = [Bytes::from(head), Bytes::from_static(OPENED)]
            .into_iter()
            .chain(meta)
            .chain(events);
        for chunk in chunks {
            match stream.push(chunk) {
                Pushed::Queued => queued += 1,
                Pushed::Overflowed => overflowed = true,
                Pushed::Dropped => break,
            }
        }
        let counters = self.counters();
        counters.ren_deliveries.add(queued.saturating_sub(2));
        if overflowed {
            counters.slow_consumer_closes.inc();
        }
    }

    // ----- time and shutdown -----

    /// Once per housekeeping tick: buffers age out, idle tenants stop recording, idle
    /// streams give their write buffers back, and every 15 s each live stream gets
    /// `:ping` (the same static bytes for all).
    pub(super) fn ren_housekeeping(&mut self, now: Millis) {
        let limits = self.ren.limits;
        let stopped = self.ren.logs.housekeeping(now, &limits, &self.shared.ren);
        if stopped > 0 {
            tracing::debug!(shard = %self.id, stopped, "REN: tenants without streams stopped recording");
        }
        let ping = now >= self.ren.next_ping;
        if ping {
            self.ren.next_ping = now.plus(PING_MS);
        }
        self.ren
            .streams
            .sweep_idle_in_turn(super::CONN_SWEEP_PER_TICK);
        let mut overflowed = 0;
        if ping {
            // Every active stream gets its keep-alive: one pass per PING_MS.
            for stream in self.ren.streams.iter() {
                if stream.stream_state() == StreamState::Active
                    && stream.push(Bytes::from_static(PING)) == Pushed::Overflowed
                {
                    overflowed += 1;
                }
            }
        }
        let counters = self.shared.metrics.shard(self.id);
        counters.slow_consumer_closes.add(overflowed);
        counters.ren_streams.set(self.ren.streams.len() as u64);
        counters.ren_buffered.set(self.ren.logs.buffered() as u64);
    }

    /// The token of stream `id` expired: it is closed (`auth`), its client must come
    /// back with a new one.
    pub(super) fn ren_token_expired(&mut self, id: ConnId) {
        if let Some(stream) = self.ren.streams.get(id) {
            stream.close(CloseCode::AUTH_EXPIRED, "stream token expired");
        }
    }

    /// Closes the streams whose tenant a reload removed, as their WebSocket connections
    /// are (4510). Returns how many.
    pub(super) fn ren_close_removed_tenants(&mut self) -> u64 {
        let tenants = self.shared.tenants.load();
        let mut closed = 0;
        for stream in self.ren.streams.iter() {
            if !tenants.still_has(&stream.tenant) {
                stream.close(CloseCode::TENANT_REMOVED, "tenant removed");
                closed += 1;
            }
        }
        closed
    }

    /// Closes every stream (shutdown).
    pub(super) fn ren_close_all(&mut self) {
        for stream in self.ren.streams.iter() {
            stream.close(CloseCode::GOING_AWAY, "server shutting down");
        }
    }
}

/// `ren.meta` (truncated) for a stream that asked for events after `last_event_id`; it
/// carries the last id handed out, so the client's next resume starts from there.
fn truncated(buffer: &RenBuffer, last_event_id: &str, now: Millis) -> Replay {
    let meta = PendingChunk::truncated(last_event_id, now.0).finish(buffer.last_id());
    Replay {
        meta: Some(meta),
        events: Vec::new(),
    }
}
