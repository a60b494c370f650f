//! TLS terminators in front of the real server, with the configs in tuning/tls/: each test
//! makes a self-signed certificate (openssl), fills the template's placeholders (free
//! loopback ports, the certificate, a temp run directory), starts nginx, HAProxy or Caddy
//! as a process of its own (killed on drop), and runs tests/sdk/sdk_tls.mjs through it:
//! the official SDK over `wss://` and `https://` (RealtimeClient pub/sub,
//! createRemoteClient publish/history, RenClient over SSE), and the client address the
//! proxy forwards (X-Forwarded-For for nginx and Caddy, PROXY protocol v2 for HAProxy)
//! checked through `max_connections_per_ip = 1`. One more test keeps a WebSocket and an
//! SSE stream quiet through all three for longer than nginx's default read timeout.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ringcast_tests::node::NodeScript;
use ringcast_tests::{poll_until, workspace_root, Server};

/// A self-signed certificate for `localhost` and 127.0.0.1, made with openssl.
struct TestCert {
    cert: PathBuf,
    key: PathBuf,
    /// Certificate and key in one file (HAProxy's `crt`).
    combined: PathBuf,
}

impl TestCert {
    fn make(dir: &Path) -> Result<TestCert> {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let out = Command::new("openssl")
            .args(["req", "-x509", "-nodes", "-newkey", "ec", "-pkeyopt"])
            .arg("ec_paramgen_curve:prime256v1")
            .args(["-days", "2", "-subj", "/CN=localhost", "-addext"])
            .arg("subjectAltName=DNS:localhost,IP:127.0.0.1")
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdin(Stdio::null())
            .output()
            .context(
                "running openssl (apt-get install openssl; see scripts/install-test-deps.sh)",
            )?;
        if !out.status.success() {
            bail!(
                "openssl req failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let combined = dir.join("combined.pem");
        fs::write(&combined, [fs::read(&cert)?, fs::read(&key)?].concat())?;
        Ok(TestCert {
            cert,
            key,
            combined,
        })
    }
}

/// A port that was free a moment ago on 127.0.0.1 (the proxy binds it next).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `template` with every `{{NAME}}` replaced; a placeholder left over is an error.
fn render(template: &Path, values: &[(&str, String)]) -> Result<String> {
    let mut text =
        fs::read_to_string(template).with_context(|| format!("reading {}", template.display()))?;
    for (name, value) in values {
        text = text.replace(&format!("{{{{{name}}}}}"), value);
    }
    if let Some(name) = placeholders(&text).next() {
        bail!(
            "{}: placeholder {{{{{name}}}}} left unfilled",
            template.display()
        );
    }
    Ok(text)
}

/// The `NAME`s of the `{{NAME}}` placeholders in `text` (upper case, digits, `_`).
fn placeholders(text: &str) -> impl Iterator<Item = &str> {
    text.split("{{").skip(1).filter_map(|rest| {
        let name = rest.split_once("}}")?.0;
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        valid.then_some(name)
    })
}

/// A program found on PATH or in /usr/sbin (nginx and haproxy live there).
fn program(name: &str) -> PathBuf {
    let in_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    let path = in_path.unwrap_or_else(|| Path::new("/usr/sbin").join(name));
    assert!(
        path.is_file(),
        "{name} is not installed: run `scripts/install-test-deps.sh` (apt-get install {name})"
    );
    path
}

/// A running TLS terminator; dropping it kills the process and waits for it.
struct Terminator {
    name: &'static str,
    child: Option<Child>,
    run_dir: PathBuf,
    port: u16,
}

impl Terminator {
    fn start(
        name: &'static str,
        mut cmd: Command,
        run_dir: &Path,
        port: u16,
    ) -> Result<Terminator> {
        let log = fs::File::create(run_dir.join("process.log"))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let mut terminator = Terminator {
            name,
            child: Some(child),
            run_dir: run_dir.to_owned(),
            port,
        };
        terminator.wait_listening()?;
        Ok(terminator)
    }

    /// Waits (10 s at most) until the port accepts connections, or the process exits.
    fn wait_listening(&mut self) -> Result<()> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let child = self.child.as_mut().expect("running");
        let name = self.name;
        let run_dir = self.run_dir.clone();
        poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{name} exited ({status}) before listening:\n{}",
                    logs(&run_dir)
                );
            }
            Ok(
                TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                    .ok()
                    .map(|_| ()),
            )
        })
        .with_context(|| format!("{name} on port {}:\n{}", self.port, logs(&self.run_dir)))
    }

    fn logs(&self) -> String {
        logs(&self.run_dir)
    }
}

impl Drop for Terminator {
    /// nginx: SIGTERM, then SIGKILL if it is still there after 5 s (its master stops its
    /// worker processes on SIGTERM; killed outright it leaves them running, holding the
    /// port). HAProxy (`-db`) and Caddy are one process each: SIGKILL (Caddy's graceful
    /// stop would wait for proxied streams the clients already left).
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if self.name != "nginx" {
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our own child,
            // not yet reaped (we hold its `Child` and have not waited on it).
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let exited = poll_until(Duration::from_secs(5), Duration::from_millis(10), || {
            Ok(child.try_wait()?.map(|_| ()))
        });
        if exited.is_err() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The tail of every log file in the run directory (for failure messages).
fn logs(run_dir: &Path) -> String {
    let mut out = String::new();
    for name in ["process.log", "error.log"] {
        if let Ok(text) = fs::read_to_string(run_dir.join(name)) {
            let start = text.len().saturating_sub(3000);
            let start = (start..text.len())
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(0);
            out.push_str(&format!("--- {name}\n{}\n", &text[start..]));
        }
    }
    out
}

/// Ringcast as a proxy's upstream: `--dev`, the proxy (127.0.0.1) trusted, one
/// connection per client address, a PROXY header expected when `proxy_protocol`, and
/// no idle pings (`idle_timeout_secs = 0`): the quiet test proves the terminators' own
/// idle timeouts, which the server's pings at 45 s would otherwise hide.
fn ringcast_behind_proxy(dir: &Path, proxy_protocol: bool) -> Result<Server> {
    let config = dir.join("ringcast.toml");
    fs::write(
        &config,
        format!(
            "trusted_proxies = [\"127.0.0.1\"]\nproxy_protocol = {proxy_protocol}\nmax_connections_per_ip = 1\nidle_timeout_secs = 0\n"
        ),
    )?;
    Server::start(&["--config", &config.display().to_string()])
}

/// Runs tests/sdk/sdk_tls.mjs through the terminator on `port`.
fn run_sdk_through(terminator: &Terminator, cert: &TestCert, server: &Server) -> Result<()> {
    let sdk = workspace_root().join("tests/sdk");
    assert!(
        sdk.join("node_modules/@maravilla-labs/platform").is_dir(),
        "tests/sdk/node_modules is missing: run `scripts/install-test-deps.sh`"
    );
    let port = terminator.port;
    NodeScript::new(&sdk, "sdk_tls.mjs")
        .args([
            format!("https://127.0.0.1:{port}"),
            format!("wss://127.0.0.1:{port}/_rt/ws"),
        ])
        .env("NODE_EXTRA_CA_CERTS", cert.cert.as_os_str())
        .timeout(Duration::from_secs(40))
        .run_ok(|| {
            format!(
                "{} logs:\n{}\nringcast stderr tail:\n{}",
                terminator.name,
                terminator.logs(),
                server.stderr_tail()
            )
        })?;
    Ok(())
}

fn tuning(file: &str) -> PathBuf {
    workspace_root().join("tuning/tls").join(file)
}

/// Ringcast with a terminator in front, and what they need kept alive.
struct Fronted {
    terminator: Terminator,
    server: Server,
    cert: TestCert,
    _dir: tempfile::TempDir,
}

impl Fronted {
    /// The terminator's `https://` address.
    fn base(&self) -> String {
        format!("https://127.0.0.1:{}", self.terminator.port)
    }
}

/// A temp directory with a certificate, Ringcast behind a proxy, a free port and the
/// proxy's run directory: all a terminator needs before it starts.
struct Prepared {
    name: &'static str,
    dir: tempfile::TempDir,
    cert: TestCert,
    server: Server,
    port: u16,
    run_dir: PathBuf,
}

fn prepare(name: &'static str, proxy_protocol: bool) -> Result<Prepared> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("ringcast-{name}-"))
        .tempdir()?;
    let cert = TestCert::make(dir.path())?;
    let server = ringcast_behind_proxy(dir.path(), proxy_protocol)?;
    let port = free_port()?;
    let run_dir = dir.path().join("run");
    fs::create_dir(&run_dir)?;
    Ok(Prepared {
        name,
        dir,
        cert,
        server,
        port,
        run_dir,
    })
}

impl Prepared {
    /// Starts the terminator with `cmd` and waits until it listens.
    fn front(self, cmd: Command) -> Result<Fronted> {
        let terminator = Terminator::start(self.name, cmd, &self.run_dir, self.port)?;
        Ok(Fronted {
            terminator,
            server: self.server,
            cert: self.cert,
            _dir: self.dir,
        })
    }
}

fn nginx_in_front() -> Result<Fronted> {
    let p = prepare("nginx", false)?;
    let conf = p.run_dir.join("nginx.conf");
    fs::write(
        &conf,
        render(
            &tuning("nginx.conf"),
            &[
                ("LISTEN", format!("127.0.0.1:{}", p.port)),
                ("UPSTREAM", p.server.addr().to_string()),
                ("CERT", p.cert.cert.display().to_string()),
                ("KEY", p.cert.key.display().to_string()),
                ("RUN_DIR", p.run_dir.display().to_string()),
            ],
        )?,
    )?;
    let mut cmd = Command::new(program("nginx"));
    cmd.arg("-p")
        .arg(&p.run_dir)
        .arg("-e")
        .arg(p.run_dir.join("error.log"))
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"]);
    p.front(cmd)
}

fn haproxy_in_front() -> Result<Fronted> {
    let p = prepare("haproxy", true)?;
    let conf = p.run_dir.join("haproxy.cfg");
    fs::write(
        &conf,
        render(
            &tuning("haproxy.cfg"),
            &[
                ("LISTEN", format!("127.0.0.1:{}", p.port)),
                ("UPSTREAM", p.server.addr().to_string()),
                ("CERT_PEM", p.cert.combined.display().to_string()),
                ("RUN_DIR", p.run_dir.display().to_string()),
            ],
        )?,
    )?;
    let mut cmd = Command::new(program("haproxy"));
    cmd.arg("-db").arg("-f").arg(&conf);
    p.front(cmd)
}

fn caddy_in_front() -> Result<Fronted> {
    let p = prepare("caddy", false)?;
    let conf = p.run_dir.join("Caddyfile");
    fs::write(
        &conf,
        render(
            &tuning("Caddyfile"),
            &[
                ("HOST", "127.0.0.1".to_owned()),
                ("PORT", p.port.to_string()),
                ("UPSTREAM", p.server.addr().to_string()),
                ("CERT", p.cert.cert.display().to_string()),
                ("KEY", p.cert.key.display().to_string()),
                ("RUN_DIR", p.run_dir.display().to_string()),
            ],
        )?,
    )?;
    let mut cmd = Command::new(program("caddy"));
    cmd.args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&conf)
        // Caddy keeps its own files under HOME / XDG dirs: keep them in the run dir.
        .env("HOME", &p.run_dir)
        .env("XDG_DATA_HOME", &p.run_dir)
        .env("XDG_CONFIG_HOME", &p.run_dir);
    p.front(cmd)
}

#[test]
fn nginx_terminates_tls_for_the_sdk_and_forwards_the_client_address() -> Result<()> {
    let f = nginx_in_front()?;
    run_sdk_through(&f.terminator, &f.cert, &f.server)
}

#[test]
fn haproxy_terminates_tls_for_the_sdk_and_sends_proxy_v2() -> Result<()> {
    let f = haproxy_in_front()?;
    run_sdk_through(&f.terminator, &f.cert, &f.server)
}

#[test]
fn caddy_terminates_tls_for_the_sdk_and_forwards_the_client_address() -> Result<()> {
    let f = caddy_in_front()?;
    run_sdk_through(&f.terminator, &f.cert, &f.server)
}

/// How long the quiet connections say nothing: past nginx's 60 s default
/// `proxy_read_timeout`, inside the configs' 120 s.
const QUIET: Duration = Duration::from_secs(65);

/// The idle timeouts of the three configs keep a quiet WebSocket and an SSE stream open
/// (tests/sdk/quiet_tls.mjs), all three terminators at once so the test waits once.
#[test]
fn quiet_connections_stay_open_through_every_terminator() -> Result<()> {
    let fronted = [nginx_in_front()?, haproxy_in_front()?, caddy_in_front()?];
    let bundle = fronted[0]._dir.path().join("ca-bundle.pem");
    let mut certs = Vec::new();
    for f in &fronted {
        certs.extend(fs::read(&f.cert.cert)?);
    }
    fs::write(&bundle, certs)?;
    let sdk = workspace_root().join("tests/sdk");
    let mut args = vec![QUIET.as_millis().to_string()];
    args.extend(fronted.iter().map(Fronted::base));
    NodeScript::new(&sdk, "quiet_tls.mjs")
        .args(args)
        .env("NODE_EXTRA_CA_CERTS", bundle.as_os_str())
        .timeout(QUIET + Duration::from_secs(40))
        .run_ok(|| {
            fronted
                .iter()
                .map(|f| format!("{} logs:\n{}\n", f.terminator.name, f.terminator.logs()))
                .collect::<String>()
        })?;
    Ok(())
}
