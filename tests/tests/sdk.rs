//! The official SDK (`@maravilla-labs/platform` RealtimeClient over `ws`) against the real
//! server: tests/sdk/sdk_pubsub.mjs subscribes with one client, publishes with another;
//! tests/sdk/sdk_presence.mjs watches another client join, update and leave presence.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ringcast_tests::{workspace_root, Server};

#[test]
fn official_sdk_pubsub() -> Result<()> {
    run_sdk_script("sdk_pubsub")
}

#[test]
fn official_sdk_presence_handle_sees_join_update_leave() -> Result<()> {
    run_sdk_script("sdk_presence")
}

/// Runs `tests/sdk/NAME.mjs` against a fresh server; it must exit 0 and print `NAME: ok`.
fn run_sdk_script(name: &str) -> Result<()> {
    let sdk_dir = workspace_root().join("tests/sdk");
    if !sdk_dir
        .join("node_modules/@maravilla-labs/platform")
        .is_dir()
        || !sdk_dir.join("node_modules/ws").is_dir()
    {
        panic!(
            "tests/sdk/node_modules is missing: run `scripts/install-test-deps.sh` (npm ci in tests/sdk) \
             before `cargo test -p ringcast-tests`"
        );
    }
    let server = Server::start(&[])?;
    let mut child = Command::new("node")
        .arg(sdk_dir.join(format!("{name}.mjs")))
        .arg(server.ws_url())
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
            bail!("node {name}.mjs did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{name}.mjs failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver stderr tail:\n{}",
        out.status,
        server.stderr_tail()
    );
    assert!(stdout.contains(&format!("{name}: ok")), "stdout: {stdout}");
    Ok(())
}
