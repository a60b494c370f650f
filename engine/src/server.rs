//! Start-up and shutdown: bind one `SO_REUSEPORT` listener per shard (after checking that
//! nothing else holds the address, so two servers never share a port), start one pinned
//! thread per shard, each running a monoio runtime (io_uring, or the legacy driver with a
//! log line where io_uring is missing), print the listening line, and on SIGTERM/SIGINT
//! drain (`/readyz` answers 503 for `drain_ms` while everything else is served), then
//! close every connection with 1001 and exit. A second signal ends the drain at once.
//!
//! The main thread, once the shards run, waits for one to exit and meanwhile probes the
//! data directory once a second (`datadir::probe_writable`) for `/readyz`.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use anyhow::Context as _;
use socket2::{Domain, Protocol, Socket, Type};

use crate::accept_log::{AcceptLog, Logged};
use crate::clock::Clock;
use crate::config::Config;
use crate::datadir;
use crate::fd_table;
use crate::history::{self, HistoryStore};
use crate::http::serve_connection;
use crate::keys::ShardId;
use crate::mesh::Mesh;
use crate::reload::{self, ConfigSource};
use crate::send_ring::SendRing;
use crate::shard::{Shard, INBOX_BATCH};
use crate::shared::Shared;

/// Runs the server until a signal stops it (SIGHUP reloads `source`, see
/// `crate::reload`).
pub fn run(config: Config, source: ConfigSource) -> anyhow::Result<()> {
    let shards = config.shards;
    // Held until `run` returns; the kernel releases it if the process dies.
    let _lock = datadir::lock(&config.data_dir)?;
    // Before any thread starts: no `accept4` later waits for the table to grow.
    let wanted = config.max_connections.saturating_add(fd_table::RESERVE);
    match fd_table::reserve(wanted) {
        Ok(slots) => tracing::debug!(slots, "descriptor table reserved"),
        Err(e) => tracing::warn!(error = %e, wanted, "could not reserve the descriptor table"),
    }
    warn_if_few_descriptors(config.max_connections);
    // A port in use fails now, before a migration or reshard that may take long.
    probe_unused(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?;
    let mesh = Mesh::with_capacity(shards, config.inbox_capacity);
    let mut shared = Shared::new(config.clone(), mesh.clone());
    // Read before any shard runs: no request reads a file.
    shared.demo = config
        .demo
        .then(|| crate::demo::DemoSite::load(&config.demo_bundle));
    let shared = Arc::new(shared);
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    if !monoio::utils::detect_uring() {
        tracing::warn!("io_uring is unavailable: shards run on monoio's legacy (epoll) driver");
    }

    // Handlers go in before anything listens, so no signal is lost.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .context("cannot install signal handlers")?;
    let signal_handle = signals.handle();
    let (signal_mesh, signal_shared) = (mesh.clone(), shared.clone());
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == signal_hook::consts::SIGHUP {
                    reload::reload_and_log(&signal_shared, &source);
                    continue;
                }
                if !begin_drain(signal, &signal_shared, &signal_mesh) {
                    break;
                }
            }
        })?;

    // History first (a format-1 migration or a reshard runs here): nothing listens until
    // it is done, so no client connects to a server that cannot answer yet (found in
    // review), and a SIGTERM meanwhile stops the server once it is, without listening.
    let histories = history::open_all(&config.data_dir, &config.history, shards)
        .context("cannot open history")?;
    // A drain (`drain_ms` > 0) is for a server that listens; one asked to stop before it
    // does has nothing to drain (found in review: it then listened until the drain ran
    // out).
    if mesh.is_shutting_down() || shared.draining.load(Ordering::SeqCst) {
        mesh.shutdown_all();
        signal_handle.close();
        tracing::info!("stopped before listening");
        return Ok(());
    }
    let (listeners, addr) = bind_listeners(config.listen, shards)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let (events_tx, events_rx) = mpsc::channel::<ShardEvent>();
    let mut threads = Vec::with_capacity(shards);
    // One clock for every shard: each reading the wall clock on its own could disagree
    // for the life of the process after a clock step during start-up, and the rate
    // windows and per-address buckets that shards share assume one time (found in review).
    let clock = Clock::system();
    for (index, (listener, history)) in listeners.into_iter().zip(histories).enumerate() {
        let id = ShardId(index as u16);
        let core = (!cores.is_empty()).then(|| cores[index % cores.len()]);
        let (mesh, shared, events) = (mesh.clone(), shared.clone(), events_tx.clone());
        let clock = clock.clone();
        let thread = std::thread::Builder::new()
            .name(format!("shard-{index}"))
            .spawn(move || {
                let _exit = ExitNotice {
                    id,
                    events: events.clone(),
                };
                let wiring = ShardWiring {
                    mesh,
                    shared,
                    history,
                    clock,
                    events,
                };
                shard_thread(id, core, listener, wiring);
            })
            .context("cannot start shard thread")?;
        threads.push(thread);
    }
    drop(events_tx);

    let mut started = 0;
    while started < shards {
        match events_rx.recv() {
            Ok(ShardEvent::Ready) => started += 1,
            Ok(ShardEvent::Failed(id, e)) => {
                mesh.shutdown_all();
                anyhow::bail!("shard {id} failed to start: {e}");
            }
            // A SIGTERM while the shards start: they stop, and so does the server.
            Ok(ShardEvent::Exited(_)) if mesh.is_shutting_down() => break,
            Ok(ShardEvent::Exited(id)) => {
                mesh.shutdown_all();
                anyhow::bail!("shard {id} exited during start-up");
            }
            Err(_) => anyhow::bail!("shards exited during start-up"),
        }
    }
    if started == shards {
        for warning in config.warnings() {
            tracing::warn!("{warning}");
        }
        println!("ringcast listening on {addr} shards={shards}");
        tracing::info!(%addr, shards, dev = config.dev, "ringcast listening");
    }

    // The first shard to exit (after a signal, or a crash) takes the others down.
    // Meanwhile the data directory is probed once a second for /readyz.
    let mut writable = true;
    loop {
        match events_rx.recv_timeout(DATA_DIR_PROBE) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                writable = probe_data_dir(&shared, &config.data_dir, writable);
            }
            Ok(ShardEvent::Exited(id)) => {
                if !mesh.is_shutting_down() {
                    tracing::error!(shard = %id, "shard exited unexpectedly; shutting down");
                }
                break;
            }
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    mesh.shutdown_all();
    signal_handle.close();
    let mut clean = true;
    for thread in threads {
        clean &= thread.join().is_ok();
    }
    anyhow::ensure!(clean, "a shard thread panicked");
    tracing::info!("stopped");
    Ok(())
}

/// Warns when the soft `RLIMIT_NOFILE` cannot hold `max_connections` plus the server's
/// own descriptors: past it every accept fails (EMFILE) long before `max_connections`,
/// and the server does not raise its own limit.
fn warn_if_few_descriptors(max_connections: usize) {
    let Ok(soft) = fd_table::soft_limit() else {
        return;
    };
    let Some(needed) = descriptors_short(soft, max_connections) else {
        return;
    };
    tracing::warn!(
        soft_limit = soft,
        max_connections,
        needed,
        "the soft open-file limit is below max_connections + {}: accepts past it fail \
         (EMFILE); raise it (`ulimit -n {needed}` in the shell that starts ringcast, \
         LimitNOFILE= in its systemd unit) or lower max_connections; `ringcast doctor` \
         checks it",
        crate::doctor::limits::HEADROOM,
    );
}

/// The descriptors a server with `max_connections` should be allowed (the doctor's
/// `nofile` check asks the same), when the soft limit `soft` is below that.
fn descriptors_short(soft: usize, max_connections: usize) -> Option<u64> {
    let needed = crate::doctor::limits::descriptors_for(max_connections);
    ((soft as u64) < needed).then_some(needed)
}

/// How often the main thread probes the data directory.
const DATA_DIR_PROBE: Duration = Duration::from_secs(1);

/// Probes the data directory and publishes the answer for `/readyz`; logs when it
/// changes. Returns the new answer.
fn probe_data_dir(shared: &Shared, dir: &std::path::Path, was_writable: bool) -> bool {
    let probed = datadir::probe_writable(dir);
    let writable = probed.is_ok();
    shared.data_dir_writable.store(writable, Ordering::Relaxed);
    match probed {
        Err(e) if was_writable => tracing::error!(
            dir = %dir.display(),
            error = %e,
            "data directory not writable: /readyz answers 503"
        ),
        Ok(()) if !was_writable => {
            tracing::info!(dir = %dir.display(), "data directory writable again")
        }
        _ => {}
    }
    writable
}

/// SIGTERM/SIGINT: the first one marks the server draining for `drain_ms` (then a
/// timer thread shuts it down), or shuts down at once when `drain_ms` is 0; a second one
/// during the drain shuts down at once. Returns whether to keep listening for signals.
fn begin_drain(signal: i32, shared: &Arc<Shared>, mesh: &Arc<Mesh>) -> bool {
    let drain_ms = shared.config.load().drain_ms;
    let already = shared.draining.swap(true, Ordering::SeqCst);
    if already || drain_ms == 0 {
        tracing::info!(signal, "shutting down");
        mesh.shutdown_all();
        return false;
    }
    tracing::info!(
        signal,
        drain_ms,
        "draining: /readyz answers 503; connections close with 1001 when the drain ends"
    );
    let timer_mesh = mesh.clone();
    let started = std::thread::Builder::new()
        .name("drain".into())
        .spawn(move || {
            std::thread::sleep(Duration::from_millis(drain_ms));
            tracing::info!("drain over; shutting down");
            timer_mesh.shutdown_all();
        });
    if started.is_err() {
        mesh.shutdown_all();
        return false;
    }
    true
}

enum ShardEvent {
    Ready,
    Failed(ShardId, String),
    Exited(ShardId),
}

/// Tells the main thread a shard thread ended, however it ended (panics included).
struct ExitNotice {
    id: ShardId,
    events: mpsc::Sender<ShardEvent>,
}

impl Drop for ExitNotice {
    fn drop(&mut self) {
        let _ = self.events.send(ShardEvent::Exited(self.id));
    }
}

/// Binds one `SO_REUSEPORT` listener per shard on `addr` (port 0: a free port, the
/// same for all). Fails with `AddrInUse` when anything already holds `addr`, another
/// ringcast's listeners included (see [`probe_unused`]).
fn bind_listeners(
    addr: SocketAddr,
    shards: usize,
) -> std::io::Result<(Vec<std::net::TcpListener>, SocketAddr)> {
    probe_unused(addr)?;
    let mut bound = addr;
    let mut listeners = Vec::with_capacity(shards);
    for _ in 0..shards {
        let socket = Socket::new(
            Domain::for_address(bound),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        // Accepted sockets inherit TCP_NODELAY from the listener on Linux: no
        // `setsockopt` per connection.
        socket.set_tcp_nodelay(true)?;
        // A connection reaches `accept` with its request head (`nowait.rs`).
        crate::nowait::defer_accept(&socket)?;
        socket.bind(&bound.into())?;
        socket.listen(4096)?;
        // With port 0 the first bind picks the port; the other shards join it.
        bound = socket.local_addr()?.as_socket().unwrap_or(bound);
        listeners.push(socket.into());
    }
    Ok((listeners, bound))
}

/// Fails with `AddrInUse` when a socket already holds `addr`. The shards' listeners set
/// `SO_REUSEPORT`, so binding them would succeed next to another process of the same
/// user that did too (a second ringcast with another data directory), and the kernel
/// would split new connections between the two. A socket without `SO_REUSEPORT` cannot
/// share the port, so binding one first tells; `SO_REUSEADDR` keeps connections of an
/// earlier run in TIME_WAIT from counting. The probe is closed before the group binds.
/// Port 0 needs no probe: the kernel picks a free port.
fn probe_unused(addr: SocketAddr) -> std::io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    match probe.bind(&addr.into()) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "the address is already in use by another process (two ringcast servers on \
             one port would split its clients)",
        )),
        bound => bound,
    }
}

/// What a shard thread is handed besides its id, core and listener.
struct ShardWiring {
    mesh: Arc<Mesh>,
    shared: Arc<Shared>,
    history: HistoryStore,
    /// The server's one clock.
    clock: Clock,
    events: mpsc::Sender<ShardEvent>,
}

fn shard_thread(
    id: ShardId,
    core: Option<core_affinity::CoreId>,
    listener: std::net::TcpListener,
    wiring: ShardWiring,
) {
    let ShardWiring {
        mesh,
        shared,
        history,
        clock,
        events,
    } = wiring;
    if let Some(core) = core {
        if !core_affinity::set_for_current(core) {
            tracing::warn!(shard = %id, core = core.id, "could not pin shard to its core");
        }
    }
    let mut runtime = match build_runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = events.send(ShardEvent::Failed(id, e.to_string()));
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match monoio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => {
                let _ = events.send(ShardEvent::Failed(id, e.to_string()));
                return;
            }
        };
        let grace = Duration::from_millis(shared.config.load().shutdown_grace_ms);
        let shard = Rc::new(
            Shard::new(id, mesh.clone(), shared, history, clock).with_send_ring(send_ring()),
        );
        monoio::spawn(accept_loop(shard.clone(), listener));
        let timer = shard.clone();
        monoio::spawn(async move { timer.run_timer().await });
        shard.mark_ready();
        let _ = events.send(ShardEvent::Ready);
        run_inbox(&shard, &mesh, grace).await;
    });
}

/// The shard's send ring, with its tasks started (`None` on the legacy driver, where
/// the kernel refuses one, or with `RINGCAST_SEND_RING=0`: every connection then has a
/// writer task).
fn send_ring() -> Option<Rc<SendRing>> {
    if monoio::utils::is_legacy()
        || std::env::var_os("RINGCAST_SEND_RING").is_some_and(|v| v == "0")
    {
        return None;
    }
    match SendRing::new() {
        Ok(ring) => {
            ring.spawn_tasks();
            Some(ring)
        }
        Err(e) => {
            tracing::warn!(error = %e, "no send ring: connections get writer tasks");
            None
        }
    }
}

/// A shard's runtime: io_uring, or the legacy driver where io_uring is missing; both with
/// timers.
type ShardRuntime = monoio::FusionRuntime<
    monoio::time::TimeDriver<monoio::IoUringDriver>,
    monoio::time::TimeDriver<monoio::LegacyDriver>,
>;

/// Builds a shard's runtime. Its ring is set up with `IORING_SETUP_COOP_TASKRUN` where the
/// kernel has it (5.19+): a completion's work (a socket became readable, say) then waits
/// for the shard's next system call, which its loop makes every turn, instead of an
/// inter-processor interrupt stopping the shard at once for each one. On older kernels
/// the ring is set up without it.
fn build_runtime() -> std::io::Result<ShardRuntime> {
    let mut ring = io_uring::IoUring::builder();
    ring.setup_coop_taskrun();
    let cooperative = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .uring_builder(ring)
        .enable_timer()
        .build();
    cooperative.or_else(|_| {
        monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
    })
}

/// Handles inbox messages until shutdown, then until connections have closed (or the
/// grace period ends).
async fn run_inbox(shard: &Rc<Shard>, mesh: &Mesh, grace: Duration) {
    let mut batch = Vec::with_capacity(INBOX_BATCH);
    loop {
        mesh.recv_batch_or_shutdown(shard.id, &mut batch, INBOX_BATCH)
            .await;
        if mesh.is_shutting_down() {
            shard.begin_shutdown();
        }
        shard.handle_batch(&mut batch);
        if shard.is_shutting_down() {
            break;
        }
        // Let sessions and writers run between batches: writers flush everything the
        // batch queued in one writev each.
        yield_now().await;
    }
    // Every shard answers its inbox until none serves anyone (connections, SSE streams,
    // HTTP requests in progress) or the grace period ends: one with nothing of its own
    // may own channels another shard's requests wait on, and an HTTP request it was
    // reading is answered (found in review: such a shard exited at once).
    let deadline = monoio::time::Instant::now() + grace;
    let mut counted_busy = true;
    loop {
        let busy = shard.has_work();
        if busy != counted_busy {
            mesh.note_busy(busy);
            counted_busy = busy;
        }
        if !mesh.any_shard_busy() || monoio::time::Instant::now() >= deadline {
            break;
        }
        let _ = monoio::time::timeout(
            Duration::from_millis(20),
            mesh.inbox(shard.id).recv_batch(&mut batch, INBOX_BATCH),
        )
        .await;
        shard.handle_batch(&mut batch);
        // The timer loop has stopped: deadlines still fire (a request whose owner has
        // exited is answered with an error, not kept waiting to the grace's end).
        shard.on_tick();
    }
    shard.sync_history();
}

/// At most this many connections are taken from the backlog without waiting after each
/// io_uring accept: enough to empty a connect storm's queue in a few turns, few enough
/// that established connections still get every turn.
const ACCEPT_BATCH: usize = 64;

/// Accepts connections until shutdown. Each io_uring accept is followed by up to
/// `ACCEPT_BATCH` more taken from the backlog without an io_uring round trip each
/// (`nowait::accept_now`), as an epoll server empties its listener's queue.
async fn accept_loop(shard: Rc<Shard>, listener: monoio::net::TcpListener) {
    let mut log = AcceptLog::default();
    loop {
        let accepted = monoio::select! {
            accepted = listener.accept() => Some(accepted),
            _ = shard.until_shutdown() => None,
        };
        match accepted {
            None => break,
            Some(Ok((stream, peer))) => {
                if let Logged::Recovered { suppressed } = log.accepted(shard.now()) {
                    tracing::info!(shard = %shard.id, suppressed, "accepting again");
                }
                spawn_connection(&shard, stream, peer);
                take_backlog(&shard, &listener);
            }
            Some(Err(e)) => {
                // Typically EMFILE: back off instead of spinning, and log at most once a
                // second (the connection stays in the backlog, so every retry fails).
                if let Logged::Failure { suppressed } = log.failed(shard.now()) {
                    warn_accept_failed(&shard, &e, suppressed);
                }
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// The "accept failed" line; `suppressed` failures were left out since the one before.
fn warn_accept_failed(shard: &Shard, e: &std::io::Error, suppressed: u64) {
    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
        tracing::warn!(
            shard = %shard.id,
            error = %e,
            suppressed,
            "accept failed: out of file descriptors; raise the open-file limit (`ringcast doctor`)"
        );
    } else {
        tracing::warn!(shard = %shard.id, error = %e, suppressed, "accept failed");
    }
}

/// Takes up to `ACCEPT_BATCH - 1` more connections from the backlog without waiting. Any
/// error (the backlog is empty, or EMFILE) ends the batch; the next io_uring accept
/// reports a lasting one.
fn take_backlog(shard: &Rc<Shard>, listener: &monoio::net::TcpListener) {
    for _ in 1..ACCEPT_BATCH {
        match crate::nowait::accept_now(listener) {
            Ok((stream, peer)) => spawn_connection(shard, stream, peer),
            Err(_) => break,
        }
    }
}

fn spawn_connection(shard: &Rc<Shard>, stream: monoio::net::TcpStream, peer: SocketAddr) {
    let admission = crate::admission::admit(&shard.shared, shard.id, peer.ip(), shard.now().0);
    monoio::spawn(serve_connection(shard.clone(), stream, peer, admission));
}

/// Gives other tasks on this thread one turn.
pub(crate) async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connects to `addr`, speaks (accept is deferred until the client has), and returns
    /// the client and the server's side of the connection.
    fn connect_and_accept(
        listeners: &[std::net::TcpListener],
        addr: SocketAddr,
    ) -> (std::net::TcpStream, std::net::TcpStream) {
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        std::io::Write::write_all(&mut client, b"GET / HTTP/1.1\r\n").unwrap();
        // The kernel spreads connections over the SO_REUSEPORT group: poll all, bounded.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(Ok((stream, _))) = listeners.iter().map(|l| l.accept()).find(Result::is_ok)
            {
                return (client, stream);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no connection accepted"
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn accepted_sockets_inherit_nodelay_from_the_listener() {
        let (listeners, addr) = bind_listeners("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        assert_eq!(listeners.len(), 2);
        let (_client, accepted) = connect_and_accept(&listeners, addr);
        let nodelay = socket2::SockRef::from(&accepted).tcp_nodelay().unwrap();
        assert!(nodelay, "the server sets TCP_NODELAY only on its listeners");
    }

    #[test]
    fn a_port_another_group_listens_on_is_refused() {
        let (_first, addr) = bind_listeners("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let refused = bind_listeners(addr, 2).expect_err("a second group on a port in use");
        assert_eq!(refused.kind(), std::io::ErrorKind::AddrInUse, "{refused}");
        assert!(refused.to_string().contains("in use"), "{refused}");
    }

    #[test]
    fn connections_in_time_wait_do_not_stop_a_restart_on_the_port() {
        let (listeners, addr) = bind_listeners("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let (mut client, mut accepted) = connect_and_accept(&listeners, addr);
        // Read what the client sent (closing over unread bytes would reset), then close
        // first, so the server's side of the connection stays in TIME_WAIT.
        accepted.set_nonblocking(false).unwrap();
        let mut request = [0u8; 16];
        std::io::Read::read_exact(&mut accepted, &mut request).unwrap();
        drop(accepted);
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let read = std::io::Read::read(&mut client, &mut [0u8; 16]).unwrap();
        assert_eq!(read, 0, "the server's FIN");
        drop(client);
        drop(listeners);
        let (again, bound) = bind_listeners(addr, 2).expect("a restart on the same port");
        assert_eq!((again.len(), bound), (2, addr));
    }

    #[test]
    fn a_soft_limit_below_max_connections_plus_headroom_is_short() {
        let headroom = crate::doctor::limits::HEADROOM;
        assert_eq!(descriptors_short(256, 1000), Some(1000 + headroom));
        assert_eq!(descriptors_short(1 << 20, 100_000), None);
        let exact = usize::try_from(1000 + headroom).unwrap();
        assert_eq!(descriptors_short(exact, 1000), None);
        assert_eq!(descriptors_short(exact - 1, 1000), Some(1000 + headroom));
    }

    #[test]
    fn listeners_defer_accept_until_the_client_speaks() {
        let (listeners, _) = bind_listeners("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        for listener in &listeners {
            let secs = crate::nowait::deferred_accept_secs(listener).unwrap();
            assert!(secs >= 1, "TCP_DEFER_ACCEPT is {secs} s");
        }
    }
}
