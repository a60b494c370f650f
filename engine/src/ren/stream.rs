//! An SSE stream as its shard sees it ([`RenStream`]: tenant, filter, the shared
//! [`Outbound`] queue with no farewell frame) and the shard's table of them
//! ([`LocalStreams`]), grouped by tenant and then by filter class, so an event is tested
//! against each distinct filter once, not once per stream.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use hashbrown::HashMap;
use ringcast_protocol::ren::RenFilter;
use ringcast_protocol::{CloseCode, TenantId};
use ringcast_store::SplitMap;

use crate::keys::{ConnId, RequestId};
use crate::outbound::{ConnState, Outbound, Pushed};
use crate::ren::RenEntry;
use crate::tenant::Tenant;
use crate::token::Grant;

/// SSE has no goodbye frame: a closing stream just ends.
fn no_farewell(_: CloseCode, _: &str) -> Option<Bytes> {
    None
}

/// Where a stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamState {
    /// Waiting for the REN owner's answer to this subscribe; nothing sent yet.
    Pending(RequestId),
    /// Head sent; receiving events.
    Active,
}

/// One `GET /api/maravilla/ren` stream.
pub struct RenStream {
    /// Shard-local id (from the same counter as WebSocket connections).
    pub id: ConnId,
    /// Its tenant.
    pub tenant: Arc<Tenant>,
    /// Which domains it wants.
    pub filter: RenFilter,
    /// `?cid=`, for correlation (the client drops events whose `src` is its own id).
    pub client_id: Box<str>,
    /// What its `token=` verified (`None`: anonymous): which `private-` channels'
    /// events it may see.
    pub grant: Option<Grant>,
    state: Cell<StreamState>,
    /// Its index in its filter class's list (while active).
    slot: Cell<usize>,
    /// The response head, sent when the owner answers (so a client that sees the stream
    /// open knows the tenant's events are being mirrored).
    head: RefCell<Option<Vec<u8>>>,
    out: Outbound,
}

impl std::fmt::Debug for RenStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenStream")
            .field("id", &self.id)
            .field("tenant", &self.tenant.id)
            .field("filter", &self.filter)
            .field("state", &self.state.get())
            .field("out", &self.out)
            .finish()
    }
}

impl AsRef<Outbound> for RenStream {
    fn as_ref(&self) -> &Outbound {
        &self.out
    }
}

impl RenStream {
    /// A stream waiting for `request`'s answer, with an outbound bound of `limit` bytes.
    pub fn new(
        id: ConnId,
        tenant: Arc<Tenant>,
        filter: RenFilter,
        client_id: &str,
        head: Vec<u8>,
        request: RequestId,
        limit: usize,
    ) -> RenStream {
        RenStream {
            id,
            tenant,
            filter,
            client_id: client_id.into(),
            grant: None,
            state: Cell::new(StreamState::Pending(request)),
            slot: Cell::new(0),
            head: RefCell::new(Some(head)),
            out: Outbound::new(limit, no_farewell),
        }
    }

    /// The same stream, admitted by a token that verified `grant`.
    pub fn with_grant(mut self, grant: Option<Grant>) -> RenStream {
        self.grant = grant;
        self
    }

    /// Where it stands.
    pub fn stream_state(&self) -> StreamState {
        self.state.get()
    }

    /// The outbound queue.
    pub fn outbound(&self) -> &Outbound {
        &self.out
    }

    /// The queue's state.
    pub fn state(&self) -> ConnState {
        self.out.state()
    }

    /// Queues a chunk.
    pub fn push(&self, chunk: Bytes) -> Pushed {
        self.out.push(chunk)
    }

    /// Starts closing (nothing more is queued; what is queued is flushed).
    pub fn close(&self, code: CloseCode, reason: &str) {
        self.out.close(code, reason);
    }

    /// The stream is gone.
    pub fn mark_closed(&self) {
        self.out.mark_closed();
    }
}

/// Streams of one tenant with the same filter: a dense list (fan-out walks it), each
/// stream knowing its index (removal is a swap).
#[derive(Debug)]
struct FilterClass {
    filter: RenFilter,
    streams: Vec<Rc<RenStream>>,
}

impl FilterClass {
    fn insert(&mut self, stream: Rc<RenStream>) {
        stream.slot.set(self.streams.len());
        self.streams.push(stream);
    }

    fn remove(&mut self, stream: &RenStream) {
        let at = stream.slot.get();
        if self.streams.get(at).is_some_and(|s| s.id == stream.id) {
            self.streams.swap_remove(at);
            if let Some(moved) = self.streams.get(at) {
                moved.slot.set(at);
            }
        }
    }
}

#[derive(Debug, Default)]
struct TenantStreams {
    /// Subscribing, not yet answered.
    pending: usize,
    classes: Vec<FilterClass>,
}

impl TenantStreams {
    fn is_empty(&self) -> bool {
        self.pending == 0 && self.classes.is_empty()
    }
}

/// Outcome of delivering events to a shard's streams.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Chunks queued.
    pub queued: u64,
    /// Streams closed because their buffer was full.
    pub overflowed: u64,
}

/// Every stream of one shard.
#[derive(Debug, Default)]
pub struct LocalStreams {
    /// Split in parts, so the idle-buffer sweep takes a bounded share each tick.
    streams: SplitMap<ConnId, Rc<RenStream>>,
    /// The part [`LocalStreams::sweep_idle_in_turn`] goes on from.
    sweep_next: usize,
    tenants: HashMap<TenantId, TenantStreams>,
}

impl LocalStreams {
    /// Adds a pending stream.
    pub fn open(&mut self, stream: Rc<RenStream>) {
        self.tenants
            .entry_ref(&stream.tenant.id)
            .or_default()
            .pending += 1;
        self.streams.insert(stream.id, stream);
    }

    /// The owner answered `request` for `id`: the stream, now active (in its filter
    /// class), and its head; `None` when it closed meanwhile or the answer is stale.
    pub fn activate(&mut self, id: ConnId, request: RequestId) -> Option<(Rc<RenStream>, Vec<u8>)> {
        let stream = self.streams.get(&id)?.clone();
        if stream.state.get() != StreamState::Pending(request) {
            return None;
        }
        stream.state.set(StreamState::Active);
        let tenant = self.tenants.entry_ref(&stream.tenant.id).or_default();
        tenant.pending -= 1;
        match tenant
            .classes
            .iter_mut()
            .find(|c| c.filter == stream.filter)
        {
            Some(class) => class.insert(stream.clone()),
            None => {
                let mut class = FilterClass {
                    filter: stream.filter.clone(),
                    streams: Vec::new(),
                };
                class.insert(stream.clone());
                tenant.classes.push(class);
            }
        }
        let head = stream.head.borrow_mut().take().unwrap_or_default();
        Some((stream, head))
    }

    /// Forgets a stream. Returns its tenant when no stream of it is left on this shard
    /// (the shard stops watching the tenant).
    pub fn close(&mut self, id: ConnId) -> Option<TenantId> {
        let stream = self.streams.remove(&id)?;
        let tenant_id = &stream.tenant.id;
        let tenant = self.tenants.get_mut(tenant_id)?;
        match stream.state.get() {
            StreamState::Pending(_) => tenant.pending -= 1,
            StreamState::Active => {
                if let Some(at) = tenant
                    .classes
                    .iter()
                    .position(|c| c.filter == stream.filter)
                {
                    let class = &mut tenant.classes[at];
                    class.remove(&stream);
                    if class.streams.is_empty() {
                        tenant.classes.swap_remove(at);
                    }
                }
            }
        }
        if tenant.is_empty() {
            self.tenants.remove(tenant_id);
            return Some(tenant_id.clone());
        }
        None
    }

    /// Queues each event, in order, to every active stream of `tenant` whose filter
    /// takes its domain: one test per filter class, the same `Bytes` for every stream.
    ///
    /// An event of a `private-` channel goes only to the streams whose token allows it
    /// (tested per stream: private channels are the exception).
    pub fn deliver(&self, tenant: &TenantId, events: &[RenEntry], now_ms: u64) -> Delivered {
        let mut delivered = Delivered::default();
        let Some(tenant) = self.tenants.get(tenant) else {
            return delivered;
        };
        for event in events {
            for class in &tenant.classes {
                if !class.filter.matches(&event.domain) {
                    continue;
                }
                for stream in &class.streams {
                    if event.private.is_some() && !event.visible_to(stream, now_ms) {
                        continue;
                    }
                    match stream.push(event.chunk.clone()) {
                        Pushed::Queued => delivered.queued += 1,
                        Pushed::Overflowed => delivered.overflowed += 1,
                        Pushed::Dropped => {}
                    }
                }
            }
        }
        delivered
    }

    /// The stream `id`.
    pub fn get(&self, id: ConnId) -> Option<&Rc<RenStream>> {
        self.streams.get(&id)
    }

    /// Every stream.
    pub fn iter(&self) -> impl Iterator<Item = &Rc<RenStream>> {
        self.streams.values()
    }

    /// About `budget` streams (whole parts of the table) give back the buffers they did
    /// not use since their last sweep; the next call goes on where this one stopped (a
    /// shard with up to `budget` streams sweeps them all every call). Returns how many
    /// it visited.
    pub fn sweep_idle_in_turn(&mut self, budget: usize) -> usize {
        self.streams
            .for_each_in_turn(&mut self.sweep_next, budget, |_, stream| {
                stream.outbound().sweep_idle();
            })
    }

    /// Number of streams (pending and active).
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Distinct filter classes of `tenant` here (tests, benches).
    pub fn classes_of(&self, tenant: &TenantId) -> usize {
        self.tenants.get(tenant).map_or(0, |t| t.classes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::{Plan, TenantConfig, TenantTable};

    fn free_tenant() -> Arc<Tenant> {
        TenantTable::new(&[TenantConfig::new("t", Plan::Free)], Some("t"))
            .resolve(None)
            .unwrap()
    }

    fn entry(domain: &str) -> RenEntry {
        RenEntry {
            id: 1,
            domain: Arc::from(domain),
            chunk: Bytes::from_static(b"x"),
            private: None,
        }
    }

    #[test]
    fn classes_keep_their_streams_through_swaps_and_report_the_last_close() {
        let tenant = free_tenant();
        let mut table = LocalStreams::default();
        let streams: Vec<Rc<RenStream>> = (0..4)
            .map(|i| {
                let filter = if i == 3 {
                    RenFilter::Domains(vec!["db".into()].into())
                } else {
                    RenFilter::All
                };
                let stream = Rc::new(RenStream::new(
                    ConnId(i),
                    tenant.clone(),
                    filter,
                    "c",
                    b"HEAD".to_vec(),
                    RequestId(i),
                    1000,
                ));
                table.open(stream.clone());
                stream
            })
            .collect();
        assert!(
            table.activate(ConnId(0), RequestId(9)).is_none(),
            "stale answer"
        );
        for s in &streams {
            let (_, head) = table.activate(s.id, RequestId(s.id.0)).unwrap();
            assert_eq!(head, b"HEAD");
            s.outbound().take_queued();
        }
        assert_eq!(table.classes_of(&tenant.id), 2);
        assert_eq!(table.close(ConnId(0)), None, "others are left");
        let delivered = table.deliver(&tenant.id, &[entry("kv"), entry("db")], 0);
        assert_eq!(delivered.queued, 2 + 2 + 1);
        assert!(streams[0].outbound().take_queued().is_empty());
        for s in &streams[1..3] {
            assert_eq!(s.outbound().take_queued().len(), 2, "{:?}", s.id);
        }
        assert_eq!(streams[3].outbound().take_queued().len(), 1);
        assert_eq!(table.close(ConnId(2)), None);
        assert_eq!(table.close(ConnId(3)), None);
        assert_eq!(
            table.close(ConnId(1)),
            Some(tenant.id.clone()),
            "the last one"
        );
        assert_eq!(table.deliver(&tenant.id, &[entry("kv")], 0).queued, 0);
    }

    #[test]
    fn the_idle_sweep_takes_a_bounded_share_and_reaches_every_stream() {
        let tenant = free_tenant();
        let mut table = LocalStreams::default();
        let open = |table: &mut LocalStreams, i: u64| {
            table.open(Rc::new(RenStream::new(
                ConnId(i),
                tenant.clone(),
                RenFilter::All,
                "c",
                Vec::new(),
                RequestId(i),
                1000,
            )));
        };
        for i in 0..100 {
            open(&mut table, i);
        }
        assert_eq!(table.sweep_idle_in_turn(1000), 100, "a small table: all");
        for i in 100..6000 {
            open(&mut table, i);
        }
        let mut seen = 0;
        for call in 0..6 {
            let visited = table.sweep_idle_in_turn(1000);
            assert!(visited < 2000, "call {call}: {visited} of 6000");
            seen += visited;
        }
        assert!(
            (6000..8000).contains(&seen),
            "six calls cover the table: {seen}"
        );
    }
}
