//! The official SDK (`@maravilla-labs/platform`) against the real server:
//! tests/sdk/sdk_pubsub.mjs subscribes with one RealtimeClient and publishes with another;
//! tests/sdk/sdk_remote.mjs drives the HTTP API through `getPlatform()` /
//! `createRemoteClient` (publish, history, channels, presence join / members / leave)
//! with a RealtimeClient subscriber whose presence handle sees the changes;
//! tests/sdk/sdk_presence.mjs watches another client join, update and leave presence;
//! tests/sdk/sdk_ren.mjs runs two `RenClient`s (filters, self-filtering by `src`, events
//! pushed with the SDK's `renFetch`, mirrored publishes over HTTP, `renFetch` and a
//! `RealtimeClient` whose `cid` becomes their `src`).

use std::time::Duration;

use anyhow::Result;
use ringcast_tests::node::NodeScript;
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
    // The script has its own 15 s timeout; this one guards against a hung node.
    NodeScript::new(&sdk_dir, script)
        .args(args.iter().cloned())
        .timeout(Duration::from_secs(30))
        .run_ok(|| format!("server stderr tail:\n{}", server.stderr_tail()))?;
    Ok(())
}
