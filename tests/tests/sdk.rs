//! The official SDK (`@maravilla-labs/platform`) against the real server:
//! tests/sdk/sdk_pubsub.mjs subscribes with one RealtimeClient and publishes with another;
//! tests/sdk/sdk_remote.mjs drives the HTTP API through `getPlatform()` /
//! `createRemoteClient` (publish, history, channels, presence join / members / leave)
//! with a RealtimeClient subscriber whose presence handle sees the changes;
//! tests/sdk/sdk_presence.mjs watches another client join, update and leave presence;
//! tests/sdk/sdk_ren.mjs runs two `RenClient`s (filters, self-filtering by `src`, events
//! pushed with the SDK's `renFetch`, a mirrored publish).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ringcast_tests::{workspace_root, Server};

#[test]
fn official_sdk_pubsub() -> Result<()> {
    let server = Server::start(&[])?;
    run_script("sdk_pubsub.mjs", &[server.ws_url()], &server)
}

#[test]
fn official_sdk_presence_handle_sees_join_update_leave() -> Result<()> {
    let server = Server::start(&[])?;
    run_script("sdk_presence.mjs", &[server.ws_url()], &server)
}

#[test]
fn official_sdk_remote_client() -> Result<()> {
    let server = Server::start(&[])?;
    let base = format!("http://{}", server.addr());
    run_script("sdk_remote.mjs", &[base, server.ws_url()], &server)
}

#[test]
fn official_sdk_ren_client_filters_and_drops_its_own_writes() -> Result<()> {
    let server = Server::start(&[])?;
    let base = format!("http://{}", server.addr());
    run_script("sdk_ren.mjs", &[base], &server)
}

/// Runs `node tests/sdk/SCRIPT ARGS…` and checks it printed `<name>: ok`.
fn run_script(script: &str, args: &[String], server: &Server) -> Result<()> {
    let sdk_dir = workspace_root().join("tests/sdk");
    if !sdk_dir
        .join("node_modules/@maravilla-labs/platform")
        .is_dir()
        || !sdk_dir.join("node_modules/ws").is_dir()
        || !sdk_dir.join("node_modules/eventsource").is_dir()
    {
        panic!(
            "tests/sdk/node_modules is missing: run `scripts/install-test-deps.sh` (npm ci in tests/sdk) \
             before `cargo test -p ringcast-tests`"
        );
    }
    let mut child = Command::new("node")
        .arg(sdk_dir.join(script))
        .args(args)
        .current_dir(&sdk_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running node (Node 20 or newer is required)")?;
    // The script has its own 15 s timeout; this one guards against a hung node.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("node {script} did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver stderr tail:\n{}",
        out.status,
        server.stderr_tail()
    );
    let ok = format!("{}: ok", script.trim_end_matches(".mjs"));
    assert!(stdout.contains(&ok), "stdout: {stdout}");
    Ok(())
}
