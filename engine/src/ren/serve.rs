//! How one SSE stream is served, after `http.rs` read its request: what it is sent goes
//! out through the shard's send ring (`send_ring.rs`), or the shared [`crate::outbound::run_writer`] task
//! where the shard has none (one `writev` per turn with everything queued either way),
//! and a reader task only watches for the client going away (SSE clients send nothing
//! after the request).
//! The stream holds its `max_connections` slot until the reader ends.

use std::rc::Rc;

use monoio::io::{AsyncReadRent, OwnedReadHalf, Splitable};
use monoio::net::TcpStream;

use crate::admission::ConnectionSlot;
use crate::api::ren::RenOpen;
use crate::metrics::Transport;
use crate::outbound::{ConnState, WriteMeter};
use crate::per_ip::IpSlot;
use crate::ren::stream::RenStream;
use crate::send_ring::start_sending;
use crate::shard::Shard;

/// How long a stream being closed by the server may take to flush and shut down.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Starts serving an accepted `GET /api/maravilla/ren` on `socket`.
pub fn start_stream(
    shard: Rc<Shard>,
    socket: TcpStream,
    open: RenOpen,
    slot: (ConnectionSlot, IpSlot),
) {
    let stream = shard.ren_open(open);
    let (reader, writer) = socket.into_split();
    count_stream(&shard, &stream, 1);
    let meter = WriteMeter {
        counters: shard.shared.metrics.shard_handle(shard.id),
        transport: Transport::Sse,
    };
    start_sending(shard.send_ring.as_ref(), &stream, &reader, writer, meter);
    monoio::spawn(run_reader(shard, stream, reader, slot));
}

/// Reads (and drops) whatever the client sends until it closes or the stream is closed
/// by the server (slow consumer, shutdown), then forgets the stream.
async fn run_reader(
    shard: Rc<Shard>,
    stream: Rc<RenStream>,
    mut reader: OwnedReadHalf<TcpStream>,
    slot: (ConnectionSlot, IpSlot),
) {
    let mut buf = Vec::with_capacity(64);
    loop {
        buf.clear();
        let read = reader.read(buf);
        let outcome = monoio::select! {
            (result, returned) = read => Some((result, returned)),
            _ = stream.outbound().until_not_open() => None,
        };
        let Some((result, returned)) = outcome else {
            break;
        };
        buf = returned;
        if matches!(result, Ok(0) | Err(_)) {
            break;
        }
    }
    // A stream the server is closing (slow reader, shutdown) gives its writer a moment
    // to flush and shut the socket down; a writer stuck on a reader that never reads is
    // stopped after it. One whose client left is done at once.
    if stream.state() != ConnState::Open {
        let _ = monoio::time::timeout(CLOSE_GRACE, stream.outbound().reader_until_closed()).await;
    }
    let reason = stream.outbound().close_reason();
    stream.mark_closed();
    shard.ren_close(&stream);
    count_stream(&shard, &stream, -1);
    shard.connection_closed(Transport::Sse, reason, slot.1.addr());
    drop(slot);
}

/// Moves the open-stream gauges by `delta`: the shard's, and with `[metrics]
/// tenant_labels` its tenant's (`ringcast_tenant_connections{transport="sse"}`). The
/// same `Arc<Tenant>` is counted down as was counted up, whatever a reload did meanwhile.
fn count_stream(shard: &Shard, stream: &RenStream, delta: i64) {
    let metrics = &shard.shared.metrics;
    metrics.shard(shard.id).sse_connections.add(delta);
    if metrics.tenant_labels() {
        let tenant = stream.tenant.metrics.shard(shard.id, shard.mesh.shards());
        tenant.sse_connections.add(delta);
    }
}
