//! End-to-end test harness: starts the real `ringcast` binary on a free loopback port and
//! speaks to it as clients do (WebSocket over plain TCP, raw HTTP, raw frames).
//!
//! ```text
//! Server::start(args) ── cargo build (once per test process) ── ringcast serve --dev ...
//!        │                 waits for "ringcast listening on ADDR shards=N" on stdout
//!        ├── Client::connect / connect_on_shard  (tungstenite over std TcpStream)
//!        └── http_request                        (raw bytes in, status/headers/body out)
//! ```
//!
//! Every wait is bounded in time and in count; nothing sleeps to synchronise where an event
//! can be awaited.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

pub use serde_json::json;

pub mod node;
pub mod sse;
pub mod walk;

/// Default wait for one expected event.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// How long the server may take to print its startup line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The workspace root (the directory holding the workspace `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Path of the `ringcast` binary: `$RINGCAST_BIN` if set, else built once per test process
/// with the same profile as the test binary.
pub fn ringcast_bin() -> &'static Path {
    // The outcome is kept either way, so a failed build is tried once per test process,
    // not once per test.
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    let bin = BIN.get_or_init(|| match std::env::var_os("RINGCAST_BIN") {
        Some(path) => Ok(PathBuf::from(path)),
        None => build_ringcast().map_err(|e| format!("{e:#}")),
    });
    match bin {
        Ok(path) => path,
        Err(e) => panic!("cannot build the ringcast binary: {e}"),
    }
}

fn build_ringcast() -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root()).args([
        "build",
        "-p",
        "ringcast-engine",
        "--bin",
        "ringcast",
        "--message-format=json-render-diagnostics",
    ]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build")?;
    if !out.status.success() {
        bail!(
            "cargo build -p ringcast-engine --bin ringcast failed: {}",
            out.status
        );
    }
    // Cargo says where it put the executable; this respects CARGO_TARGET_DIR and friends.
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in stdout.lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "ringcast" {
            if let Some(exe) = msg["executable"].as_str() {
                return Ok(PathBuf::from(exe));
            }
        }
    }
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    Ok(workspace_root()
        .join("target")
        .join(profile)
        .join("ringcast"))
}

/// Runs `ringcast ARGS` (stdout and stderr captured) and waits up to `timeout` for it to
/// exit; past that it is killed and this fails. For commands expected to end on their
/// own (a server that refuses to start, `check-config`, `doctor`).
pub fn run_to_exit(args: &[&str], timeout: Duration) -> Result<std::process::Output> {
    let child = Command::new(ringcast_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning ringcast {args:?}"))?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(output) => Ok(output?),
        Err(_) => {
            let pid = libc::pid_t::try_from(pid)?;
            // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our own child,
            // not reaped yet (the waiting thread has not returned).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            bail!("ringcast {args:?} did not exit within {timeout:?}")
        }
    }
}

/// A running `ringcast serve` process. Dropping it kills the process (SIGKILL) and waits.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    addr: SocketAddr,
    shards: usize,
    args: Vec<String>,
    data_dir: tempfile::TempDir,
    log_dir: tempfile::TempDir,
    starts: u32,
    /// The soft `RLIMIT_NOFILE` the process starts with (`None`: the test's own).
    open_file_limit: Option<u64>,
}

/// Flags `Server::start` passes unless the caller passes its own value for them.
const DEFAULT_FLAGS: &[(&str, &str)] = &[("--listen", "127.0.0.1:0"), ("--shards", "2")];

impl Server {
    /// `ringcast serve --dev --listen 127.0.0.1:0 --shards 2 --data-dir <tempdir>` plus
    /// `extra` (a flag in `extra` replaces the default of the same name).
    pub fn start(extra: &[&str]) -> Result<Server> {
        Server::start_dev(extra, None)
    }

    /// [`Server::start`] with the soft open-file limit (`ulimit -S -n`) set to `limit` for
    /// the server process.
    pub fn start_with_open_file_limit(limit: u64, extra: &[&str]) -> Result<Server> {
        Server::start_dev(extra, Some(limit))
    }

    fn start_dev(extra: &[&str], open_file_limit: Option<u64>) -> Result<Server> {
        let data_dir = tempfile::Builder::new()
            .prefix("ringcast-data-")
            .tempdir()?;
        let mut args: Vec<String> = vec!["serve".into(), "--dev".into()];
        for (flag, value) in DEFAULT_FLAGS {
            if !extra.contains(flag) {
                args.push((*flag).into());
                args.push((*value).into());
            }
        }
        args.push("--data-dir".into());
        args.push(data_dir.path().display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        Server::launch(args, data_dir, open_file_limit)
    }

    /// `ringcast serve --listen 127.0.0.1:0 --shards 2 --config FILE --data-dir DIR`
    /// (no `--dev`) plus `extra`, with `toml` written to FILE in a fresh directory. Returns
    /// the server and FILE (rewrite it and send SIGHUP to reload).
    pub fn start_with_config(toml: &str, extra: &[&str]) -> Result<(Server, PathBuf)> {
        let dir = tempfile::Builder::new()
            .prefix("ringcast-data-")
            .tempdir()?;
        let path = dir.path().join("ringcast.toml");
        std::fs::write(&path, toml)?;
        let mut args: Vec<String> = ["serve", "--listen", "127.0.0.1:0", "--shards", "2"]
            .map(String::from)
            .to_vec();
        args.extend(["--config".into(), path.display().to_string()]);
        args.extend([
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
        ]);
        args.extend(extra.iter().map(|s| s.to_string()));
        Ok((Server::start_raw(args, dir)?, path))
    }

    /// [`Server::start_with_config`] with `--dev`, the dev tenant on `presence_ttl_secs`.
    pub fn start_dev_with_presence_ttl(ttl_secs: u64) -> Result<Server> {
        let toml = format!(
            "[[tenants]]\nid = \"dev\"\nplan = \"enterprise\"\npresence_ttl_secs = {ttl_secs}\n"
        );
        Ok(Server::start_with_config(&toml, &["--dev"])?.0)
    }

    /// Runs `ringcast ARGS` exactly as given (no defaults added); `data_dir` is kept alive
    /// with the server and reused by restarts.
    pub fn start_raw(args: Vec<String>, data_dir: tempfile::TempDir) -> Result<Server> {
        Server::launch(args, data_dir, None)
    }

    fn launch(
        args: Vec<String>,
        data_dir: tempfile::TempDir,
        open_file_limit: Option<u64>,
    ) -> Result<Server> {
        let log_dir = tempfile::Builder::new().prefix("ringcast-log-").tempdir()?;
        let mut server = Server {
            child: None,
            addr: "127.0.0.1:0".parse().expect("literal"),
            shards: 0,
            args,
            data_dir,
            log_dir,
            starts: 0,
            open_file_limit,
        };
        server.spawn()?;
        Ok(server)
    }

    fn stderr_path(&self) -> PathBuf {
        self.log_dir
            .path()
            .join(format!("stderr-{}.log", self.starts))
    }

    fn spawn(&mut self) -> Result<()> {
        assert!(
            self.child.is_none(),
            "spawn while a server process is running"
        );
        self.starts += 1;
        let stderr = std::fs::File::create(self.stderr_path())?;
        let mut command = match self.open_file_limit {
            None => Command::new(ringcast_bin()),
            // The shell sets the limit and becomes the server (`exec`: same pid).
            Some(limit) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -S -n {limit} && exec \"$0\" \"$@\""))
                    .arg(ringcast_bin());
                sh
            }
        };
        let mut child = command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawning {} {:?}", ringcast_bin().display(), self.args))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel::<String>();
        // Reads stdout for the whole life of the process so the server never blocks on a
        // full pipe; only lines up to the startup line are of interest.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        self.child = Some(child);
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some((addr, shards)) = parse_startup_line(&line) {
                        self.addr = addr;
                        self.shards = shards;
                        return Ok(());
                    }
                    seen.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let tail = self.stderr_tail();
                    self.kill9();
                    bail!(
                        "no startup line within {STARTUP_TIMEOUT:?}; stdout: {seen:?}; stderr tail:\n{tail}"
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.wait_exit(Duration::from_secs(5));
                    bail!(
                        "server exited before its startup line ({status:?}); args {:?}; stdout: {seen:?}; stderr tail:\n{}",
                        self.args,
                        self.stderr_tail()
                    );
                }
            }
        }
    }

    /// The address every shard listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `shards=N` from the startup line.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The data directory (the same across restarts).
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// `ws://ADDR/_rt/ws`
    pub fn ws_url(&self) -> String {
        format!("ws://{}/_rt/ws", self.addr)
    }

    /// Process id of the running server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is running").id()
    }

    /// Everything the server wrote to stderr since it last started.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.stderr_path()).unwrap_or_default()).into_owned()
    }

    /// Waits up to [`TIMEOUT`] for a line of the server's log that contains every one of
    /// `parts`, and returns it.
    pub fn await_log_line(&self, parts: &[&str]) -> Result<String> {
        poll_until(TIMEOUT, Duration::from_millis(20), || {
            Ok(self
                .stderr_text()
                .lines()
                .find(|l| parts.iter().all(|p| l.contains(p)))
                .map(str::to_owned))
        })
        .with_context(|| format!("no log line with {parts:?} in:\n{}", self.stderr_tail()))
    }

    /// The last ~4 KB the server wrote to stderr (for failure messages).
    pub fn stderr_tail(&self) -> String {
        let text = std::fs::read(self.stderr_path()).unwrap_or_default();
        let start = text.len().saturating_sub(4096);
        String::from_utf8_lossy(&text[start..]).into_owned()
    }

    /// Waits up to `timeout` for the process to exit (after a signal).
    pub fn terminate_wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.wait_exit(timeout)
    }

    fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let child = self.child.as_mut().context("server is not running")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("server did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the process to exit.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        self.wait_exit(timeout)
    }

    /// Sends `signal` to the server process.
    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        let pid = libc::pid_t::try_from(self.pid())?;
        // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our own child,
        // which has not been reaped (we hold its `Child` and have not waited on it).
        let rc = unsafe { libc::kill(pid, signal) };
        if rc != 0 {
            bail!("kill({pid}, {signal}): {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// SIGKILL and wait; a no-op when the process is not running.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the process with SIGKILL and starts it again with the same arguments and data
    /// directory (the port changes).
    pub fn restart_after_kill9(&mut self) -> Result<()> {
        self.kill9();
        self.spawn()
    }

    /// SIGTERM, wait for a clean exit, start again on the same data directory.
    pub fn restart_after_terminate(&mut self) -> Result<()> {
        let status = self.terminate(Duration::from_secs(10))?;
        if !status.success() {
            bail!("server exited with {status} on SIGTERM");
        }
        self.spawn()
    }

    /// Resident set size of the server process in KiB (`VmRSS` of /proc/PID/status).
    pub fn rss_kib(&self) -> Result<u64> {
        self.status_kib("VmRSS:")
    }

    /// The server process's peak resident set size so far in KiB (`VmHWM`).
    pub fn peak_rss_kib(&self) -> Result<u64> {
        self.status_kib("VmHWM:")
    }

    fn status_kib(&self, field: &str) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .with_context(|| format!("no {field} line"))?;
        let kib = line.split_whitespace().nth(1).context("status value")?;
        Ok(kib.parse()?)
    }

    /// `GET /metrics` body.
    pub fn metrics(&self) -> Result<String> {
        let resp = http_get(self.addr, "/metrics")?;
        if resp.status != 200 {
            bail!("GET /metrics: status {}: {}", resp.status, resp.body_text());
        }
        Ok(resp.body_text())
    }

    /// The sum of every sample of metric `name` (all label sets), `None` when absent.
    pub fn metric(&self, name: &str) -> Result<Option<f64>> {
        Ok(metric_value(&self.metrics()?, name))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Parses `ringcast listening on ADDR shards=N`.
pub fn parse_startup_line(line: &str) -> Option<(SocketAddr, usize)> {
    let rest = line.trim_end().strip_prefix("ringcast listening on ")?;
    let (addr, shards) = rest.split_once(' ')?;
    let shards = shards.strip_prefix("shards=")?;
    Some((addr.parse().ok()?, shards.parse().ok()?))
}

/// Sum of the samples of `name` in Prometheus text (`name value` or `name{labels} value`).
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let rest = if rest.starts_with('{') {
            match rest.find('}') {
                Some(end) => &rest[end + 1..],
                None => continue,
            }
        } else {
            rest
        };
        if !rest.starts_with(' ') {
            continue; // a longer name with this prefix
        }
        if let Some(value) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *total.get_or_insert(0.0) += value;
        }
    }
    total
}

/// The value of one exact series (`name` or `name{labels}` as the server writes it, labels
/// in its order), `None` when absent.
pub fn series_value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Writes `text` as `ringcast.toml` in a new temporary directory (kept alive by the
/// returned guard).
pub fn config_file(text: &str) -> Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::Builder::new()
        .prefix("ringcast-config-")
        .tempdir()?;
    let path = dir.path().join("ringcast.toml");
    std::fs::write(&path, text)?;
    Ok((dir, path))
}

/// How a WebSocket connection ended, as seen by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// A close frame with this code.
    Code(u16),
    /// A close frame without a code.
    NoCode,
    /// The TCP connection ended (EOF or reset) without a close frame.
    Dropped(String),
}

/// A WebSocket client over a blocking std `TcpStream` with read timeouts.
#[derive(Debug)]
pub struct Client {
    ws: WebSocket<TcpStream>,
    /// `x-ringcast-shard` of the handshake response.
    pub shard: u32,
}

/// Why a WebSocket handshake did not complete.
#[derive(Debug)]
pub enum ConnectError {
    /// The server answered with HTTP instead of 101.
    Http(HttpResponse),
    /// Anything else.
    Other(anyhow::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Http(r) => write!(f, "HTTP {} {}", r.status, r.body_text()),
            ConnectError::Other(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for ConnectError {}

impl Client {
    /// Opens `ws://ADDR/_rt/ws?QUERY` (`query` without `?`, may be empty). Does not read
    /// anything after the handshake; returns the client and its `x-ringcast-shard`.
    pub fn connect(server: &Server, query: &str) -> Result<(Client, u32)> {
        let stream = TcpStream::connect(server.addr())?;
        Client::handshake(stream, server.addr(), query).map_err(|e| anyhow!("{e}"))
    }

    /// Like `connect`, but the socket's receive buffer is set to `rcvbuf` bytes before
    /// connecting (a slow reader whose kernel buffer fills quickly).
    pub fn connect_with_rcvbuf(
        server: &Server,
        query: &str,
        rcvbuf: usize,
    ) -> Result<(Client, u32)> {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.set_recv_buffer_size(rcvbuf)?;
        socket.connect(&server.addr().into())?;
        let stream: TcpStream = socket.into();
        Client::handshake(stream, server.addr(), query).map_err(|e| anyhow!("{e}"))
    }

    /// The handshake on an already connected stream, with the HTTP answer kept when the
    /// server refuses.
    pub fn handshake(
        stream: TcpStream,
        addr: SocketAddr,
        query: &str,
    ) -> std::result::Result<(Client, u32), ConnectError> {
        let url = if query.is_empty() {
            format!("ws://{addr}/_rt/ws")
        } else {
            format!("ws://{addr}/_rt/ws?{query}")
        };
        let deadline = Instant::now() + TIMEOUT;
        stream
            .set_read_timeout(Some(TIMEOUT))
            .map_err(|e| ConnectError::Other(e.into()))?;
        stream
            .set_nodelay(true)
            .map_err(|e| ConnectError::Other(e.into()))?;
        let config = WebSocketConfig::default()
            .max_message_size(Some(64 << 20))
            .max_frame_size(Some(64 << 20));
        let mut attempt =
            tungstenite::client::client_with_config(url.as_str(), stream, Some(config));
        let (ws, response) = loop {
            match attempt {
                Ok(done) => break done,
                Err(HandshakeError::Interrupted(mid)) => {
                    if Instant::now() >= deadline {
                        return Err(ConnectError::Other(anyhow!("handshake timed out")));
                    }
                    attempt = mid.handshake();
                }
                Err(HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                    let headers = resp
                        .headers()
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.as_str().to_owned(),
                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            )
                        })
                        .collect();
                    return Err(ConnectError::Http(HttpResponse {
                        status: resp.status().as_u16(),
                        headers,
                        body: resp.body().clone().unwrap_or_default(),
                    }));
                }
                Err(HandshakeError::Failure(e)) => return Err(ConnectError::Other(e.into())),
            }
        };
        let shard = response
            .headers()
            .get("x-ringcast-shard")
            .ok_or_else(|| {
                ConnectError::Other(anyhow!(
                    "101 response without x-ringcast-shard: {response:?}"
                ))
            })?
            .to_str()
            .map_err(|e| ConnectError::Other(e.into()))?
            .trim()
            .parse::<u32>()
            .map_err(|e| ConnectError::Other(anyhow!("x-ringcast-shard: {e}")))?;
        Ok((Client { ws, shard }, shard))
    }

    /// Connects and reads the `connected` event, checking its shape.
    pub fn open(server: &Server, query: &str) -> Result<Client> {
        let (mut client, _) = Client::connect(server, query)?;
        client.expect_connected()?;
        Ok(client)
    }

    /// Reads the next event and checks it is `connected`; returns its `clientId`.
    pub fn expect_connected(&mut self) -> Result<String> {
        let ev = self.recv_event(TIMEOUT)?;
        if ev["event"] != "connected" {
            bail!("first event is not `connected`: {ev}");
        }
        ev["data"]["clientId"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no data.clientId: {ev}"))
    }

    /// Connects until the server places the connection on shard `k` (bounded attempts);
    /// the `connected` event has been read.
    pub fn connect_on_shard(server: &Server, k: u32) -> Result<Client> {
        Client::connect_on_shard_with(server, k, "")
    }

    /// `connect_on_shard` with a query string.
    pub fn connect_on_shard_with(server: &Server, k: u32, query: &str) -> Result<Client> {
        const ATTEMPTS: usize = 64;
        let mut seen = Vec::new();
        for _ in 0..ATTEMPTS {
            let (mut client, shard) = Client::connect(server, query)?;
            if shard == k {
                client.expect_connected()?;
                return Ok(client);
            }
            seen.push(shard);
            client.close_quietly();
        }
        bail!("no connection landed on shard {k} in {ATTEMPTS} attempts (got shards {seen:?})")
    }

    /// Sends a close frame (best effort) and drops the connection.
    pub fn close_quietly(mut self) {
        let _ = self.ws.close(None);
        let _ = self.ws.flush();
    }

    /// Sends a close frame with no code.
    pub fn close(&mut self) -> Result<()> {
        self.ws.close(None)?;
        self.ws.flush()?;
        Ok(())
    }

    /// Sends a JSON value as one text frame.
    pub fn send_json(&mut self, value: &Value) -> Result<()> {
        self.send_raw_text(&value.to_string())
    }

    /// Sends `text` as one text frame, unchanged.
    pub fn send_raw_text(&mut self, text: &str) -> Result<()> {
        self.ws.send(Message::text(text))?;
        Ok(())
    }

    /// Sends one binary frame.
    pub fn send_binary(&mut self, bytes: &[u8]) -> Result<()> {
        self.ws.send(Message::binary(bytes.to_vec()))?;
        Ok(())
    }

    /// Writes `bytes` to the socket as they are (hand-made frames, see [`masked_frame`]).
    pub fn send_frame_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.ws.flush()?;
        let stream = self.ws.get_mut();
        stream.write_all(bytes)?;
        stream.flush()?;
        Ok(())
    }

    /// The underlying socket.
    pub fn stream(&self) -> &TcpStream {
        self.ws.get_ref()
    }

    fn set_timeout(&mut self, deadline: Instant) -> Result<bool> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        self.ws.get_mut().set_read_timeout(Some(left))?;
        Ok(true)
    }

    /// The next data or close message (pings and pongs are skipped; tungstenite answers
    /// pings by itself).
    pub fn recv_message(&mut self, timeout: Duration) -> Result<Message> {
        self.recv_message_inner(timeout, true)
    }

    /// The next message of any kind, pings and pongs included.
    pub fn recv_any(&mut self, timeout: Duration) -> Result<Message> {
        self.recv_message_inner(timeout, false)
    }

    /// Sends a WebSocket-level message (ping, pong, close, ...) through tungstenite.
    pub fn send_message(&mut self, msg: Message) -> Result<()> {
        self.ws.send(msg)?;
        Ok(())
    }

    fn recv_message_inner(&mut self, timeout: Duration, skip_control: bool) -> Result<Message> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.set_timeout(deadline)? {
                bail!("no message within {timeout:?}");
            }
            match self.ws.read() {
                Ok(Message::Ping(_) | Message::Pong(_)) if skip_control => continue,
                Ok(msg) => return Ok(msg),
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    continue
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The next text frame, as sent by the server.
    pub fn recv_text(&mut self, timeout: Duration) -> Result<String> {
        match self.recv_message(timeout)? {
            Message::Text(t) => Ok(t.as_str().to_owned()),
            other => bail!("expected a text frame, got {other:?}"),
        }
    }

    /// The next event (a text frame holding one JSON object); skips nothing.
    pub fn recv_event(&mut self, timeout: Duration) -> Result<Value> {
        let text = self.recv_text(timeout)?;
        let value: Value =
            serde_json::from_str(&text).with_context(|| format!("frame is not JSON: {text}"))?;
        if !value.is_object() {
            bail!("frame is not a JSON object: {text}");
        }
        Ok(value)
    }

    /// Reads events until `pred` holds (the others are dropped); bounded by `timeout`.
    pub fn recv_until(
        &mut self,
        mut pred: impl FnMut(&Value) -> bool,
        timeout: Duration,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = self.recv_event(left).with_context(|| {
                format!(
                    "waiting {timeout:?}; skipped {} events: {:?}",
                    skipped.len(),
                    last(&skipped)
                )
            })?;
            if pred(&ev) {
                return Ok(ev);
            }
            skipped.push(ev);
        }
    }

    /// Reads the next event and checks that it is `event` (`"pong"`, `"subscribed"`, ...).
    pub fn expect_event(&mut self, event: &str) -> Result<Value> {
        let ev = self
            .recv_event(TIMEOUT)
            .with_context(|| format!("waiting for `{event}`"))?;
        if ev["event"] != event {
            bail!("expected `{event}`, got {ev}");
        }
        Ok(ev)
    }

    /// `subscribe` and wait for its `subscribed`; returns the `subscribed` event.
    pub fn subscribe(&mut self, channel: &str) -> Result<Value> {
        self.send_json(&json!({"action": "subscribe", "channel": channel}))?;
        let ev = self.expect_event("subscribed")?;
        if ev["channel"] != channel {
            bail!("subscribed to the wrong channel: {ev}");
        }
        Ok(ev)
    }

    /// `ping` and wait for `pong` as the very next event.
    pub fn ping_pong(&mut self) -> Result<()> {
        self.send_json(&json!({"action": "ping"}))?;
        self.expect_event("pong").map(drop)
    }

    /// Reads until the connection ends; events before the close are dropped (at most
    /// `timeout`). Returns how it ended.
    pub fn wait_closed(&mut self, timeout: Duration) -> Result<Closed> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("connection still open after {timeout:?}");
            }
            match self.recv_message(left) {
                Ok(Message::Close(Some(frame))) => return Ok(Closed::Code(u16::from(frame.code))),
                Ok(Message::Close(None)) => return Ok(Closed::NoCode),
                Ok(_) => continue,
                Err(e) => match e.downcast_ref::<tungstenite::Error>() {
                    Some(
                        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
                    ) => return Ok(Closed::Dropped("closed".into())),
                    Some(tungstenite::Error::Io(io)) => return Ok(Closed::Dropped(io.to_string())),
                    Some(tungstenite::Error::Protocol(p)) => {
                        return Ok(Closed::Dropped(p.to_string()))
                    }
                    _ => return Err(e),
                },
            }
        }
    }

    /// Waits for a close frame and returns its code (fails on a bare TCP drop).
    pub fn expect_close(&mut self, timeout: Duration) -> Result<u16> {
        match self.wait_closed(timeout)? {
            Closed::Code(code) => Ok(code),
            other => bail!("expected a close frame with a code, got {other:?}"),
        }
    }
}

fn last(v: &[Value]) -> Option<&Value> {
    v.last()
}

/// A masked client frame (`fin`, `opcode`, payload), for protocol-violation tests.
pub fn masked_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = frame_header(fin, opcode, payload.len() as u64, true);
    let key = [0x37, 0xfa, 0x21, 0x3d];
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// An unmasked frame (clients must mask; the server closes with 1002).
pub fn unmasked_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = frame_header(fin, opcode, payload.len() as u64, false);
    out.extend_from_slice(payload);
    out
}

/// A frame header claiming `len` payload bytes (masked headers include no key; append 4).
pub fn frame_header(fin: bool, opcode: u8, len: u64, masked: bool) -> Vec<u8> {
    let mut out = vec![(if fin { 0x80 } else { 0 }) | (opcode & 0x0f)];
    let mask_bit = if masked { 0x80 } else { 0 };
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= u16::MAX as u64 {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    out
}

/// An HTTP response read off a raw socket.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header names (lower case) and values, in order.
    pub headers: Vec<(String, String)>,
    /// Body bytes (by Content-Length, or up to EOF).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) text.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("body is not JSON: {}", self.body_text()))
    }

    /// Checks the error shape of the wire contract: `status`, JSON content type and
    /// `{"error":{"code":CODE,"message":…}}`.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "status; body: {}", self.body_text());
        let ctype = self.header("content-type").unwrap_or("");
        assert!(
            ctype.starts_with("application/json"),
            "content-type {ctype:?} for {status}"
        );
        let body = self.json().expect("JSON error body");
        assert_eq!(body["error"]["code"], code, "error body {body}");
        assert!(
            body["error"]["message"].is_string(),
            "error.message is a string: {body}"
        );
    }
}

/// One client connection that reads responses one at a time, keeping whatever arrived
/// after a response for the next one (keep-alive, pipelining).
#[derive(Debug)]
pub struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl HttpConn {
    /// Connects to `server` (`TCP_NODELAY`).
    pub fn open(server: &Server) -> Result<HttpConn> {
        let stream = TcpStream::connect(server.addr())?;
        stream.set_nodelay(true)?;
        Ok(HttpConn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Writes `bytes`.
    pub fn send(&mut self, bytes: impl AsRef<[u8]>) -> Result<()> {
        self.stream.write_all(bytes.as_ref())?;
        self.stream.flush()?;
        Ok(())
    }

    /// Reads more bytes into `buf`; `Ok(0)` on EOF. Bounded by `deadline`.
    pub fn fill(&mut self, deadline: Instant) -> Result<usize> {
        let mut chunk = [0u8; 8192];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "read timed out; have {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(0),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The next response (head and Content-Length body), within `timeout`.
    pub fn response_within(&mut self, timeout: Duration) -> Result<HttpResponse> {
        let deadline = Instant::now() + timeout;
        let head_end = self.head_end(deadline)?;
        let (status, headers) = parse_response_head(&self.buf[..head_end])?;
        let length = match headers.iter().find(|(k, _)| k == "content-length") {
            Some((_, v)) => v.parse::<usize>()?,
            None if (100..200).contains(&status) => 0,
            None => bail!("response {status} without Content-Length: {headers:?}"),
        };
        while self.buf.len() < head_end + length {
            if self.fill(deadline)? == 0 {
                bail!("EOF inside the body of a {status} response");
            }
        }
        let body = self.buf[head_end..head_end + length].to_vec();
        self.buf.drain(..head_end + length);
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }

    /// Where the buffered response head ends, reading until it is complete or `deadline`.
    fn head_end(&mut self, deadline: Instant) -> Result<usize> {
        loop {
            if let Some(pos) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok(pos + 4);
            }
            if self.fill(deadline)? == 0 {
                bail!(
                    "EOF before a complete response head; got {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
            }
        }
    }

    /// The next response, within [`TIMEOUT`].
    pub fn response(&mut self) -> Result<HttpResponse> {
        self.response_within(TIMEOUT)
    }

    /// The next response to a HEAD request: its head only (its `Content-Length` is the
    /// GET body's, which is not sent), within [`TIMEOUT`]. The body is left empty; bytes
    /// after the head stay for the next response.
    pub fn head_response(&mut self) -> Result<HttpResponse> {
        let head_end = self.head_end(Instant::now() + TIMEOUT)?;
        let (status, headers) = parse_response_head(&self.buf[..head_end])?;
        self.buf.drain(..head_end);
        Ok(HttpResponse {
            status,
            headers,
            body: Vec::new(),
        })
    }

    /// Waits (bounded) for the server to close the connection, with nothing more sent.
    pub fn expect_eof(&mut self) -> Result<()> {
        let deadline = Instant::now() + TIMEOUT;
        let before = self.buf.len();
        if self.fill(deadline)? != 0 {
            bail!(
                "expected EOF, got {:?}",
                String::from_utf8_lossy(&self.buf[before..])
            );
        }
        Ok(())
    }
}

/// An HTTP/1.1 request with a JSON `body` (`headers`: whole lines, each ending in CRLF).
pub fn json_request(method: &str, path: &str, headers: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n{headers}\r\n{body}",
        body.len()
    )
}

/// What `encodeURIComponent` makes of `s` (the SDK encodes channel names so).
pub fn encode_component(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Writes `request` to a new connection to `addr` and reads one response (bounded by
/// [`TIMEOUT`]).
pub fn http_request(addr: SocketAddr, request: &[u8]) -> Result<HttpResponse> {
    let mut stream = TcpStream::connect(addr)?;
    stream.write_all(request)?;
    read_http_response(&mut stream, TIMEOUT)
}

/// `GET path` with `Connection: close`.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<HttpResponse> {
    http_request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// A valid WebSocket upgrade request for `target` (e.g. `/_rt/ws?tenant=x`).
pub fn upgrade_request(addr: SocketAddr, target: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// The status and headers (names lower-cased) of a response head.
pub fn parse_response_head(head: &[u8]) -> Result<(u16, Vec<(String, String)>)> {
    let head = String::from_utf8_lossy(head).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok((status, headers))
}

/// Reads one HTTP response: the head, then Content-Length bytes (or until EOF when absent).
pub fn read_http_response(stream: &mut TcpStream, timeout: Duration) -> Result<HttpResponse> {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos + 4;
        }
        let n = read_some(stream, &mut chunk, deadline)?;
        if n == 0 {
            bail!(
                "connection closed before a complete response head; got {:?}",
                String::from_utf8_lossy(&buf)
            );
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let (status, headers) = parse_response_head(&buf[..head_end])?;
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = buf[head_end..].to_vec();
    match length {
        Some(len) => {
            while body.len() < len {
                let n = read_some(stream, &mut chunk, deadline)?;
                if n == 0 {
                    bail!("EOF after {} of {len} body bytes", body.len());
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(len);
        }
        None if status == 101 || status == 204 || status == 304 => {}
        None => loop {
            let n = match read_some(stream, &mut chunk, deadline) {
                Ok(n) => n,
                Err(_) => break, // a reset after the body: keep what came
            };
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        },
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn read_some(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> Result<usize> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("read timed out");
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(buf) {
            Ok(n) => return Ok(n),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Waits (bounded) until `cond` returns `Some`, polling every `every`.
pub fn poll_until<T>(
    timeout: Duration,
    every: Duration,
    mut cond: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("condition not met within {timeout:?}");
        }
        std::thread::sleep(every);
    }
}

/// Removes JSON whitespace outside strings, for byte comparisons "beyond whitespace".
pub fn strip_json_whitespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            if c == '"' {
                in_string = true;
            }
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_line() {
        assert_eq!(
            parse_startup_line("ringcast listening on 127.0.0.1:4242 shards=2"),
            Some(("127.0.0.1:4242".parse().unwrap(), 2))
        );
        assert_eq!(
            parse_startup_line("ringcast listening on 127.0.0.1:4242"),
            None
        );
        assert_eq!(parse_startup_line("something else"), None);
    }

    #[test]
    fn metrics_parse() {
        let text = "# HELP x\nringcast_connections 3\nringcast_connections_accepted_total 9\n\
                    ringcast_errors_total{code=\"bad_request\"} 2\nringcast_errors_total{code=\"x\"} 1\n";
        assert_eq!(metric_value(text, "ringcast_connections"), Some(3.0));
        assert_eq!(metric_value(text, "ringcast_errors_total"), Some(3.0));
        assert_eq!(metric_value(text, "ringcast_nope"), None);
    }

    #[test]
    fn whitespace() {
        assert_eq!(
            strip_json_whitespace("{ \"a b\" : [1, 2] }"),
            "{\"a b\":[1,2]}"
        );
        assert_eq!(
            strip_json_whitespace(r#"{"q":"x\" y"}"#),
            r#"{"q":"x\" y"}"#
        );
    }

    #[test]
    fn frames() {
        assert_eq!(frame_header(true, 1, 5, false), vec![0x81, 5]);
        assert_eq!(
            frame_header(true, 2, 300, true),
            vec![0x82, 0x80 | 126, 1, 44]
        );
        assert_eq!(frame_header(true, 1, 1 << 40, false).len(), 10);
        let f = masked_frame(true, 1, b"hi");
        assert_eq!(f.len(), 2 + 4 + 2);
    }
}
