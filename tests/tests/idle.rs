//! Wire contract: a WebSocket peer that sends nothing (not even a pong to the server's
//! ping) for `idle_timeout_secs` is closed with 1001; a live one, answering pings as
//! browsers and tungstenite do by themselves, stays.

use std::time::Duration;

use anyhow::Result;
use ringcast_tests::{Client, Server};

#[test]
fn a_peer_that_answers_nothing_is_closed_and_one_that_answers_pings_stays() -> Result<()> {
    let (server, _config) = Server::start_with_config("dev = true\nidle_timeout_secs = 2\n", &[])?;
    let mut gone = Client::open(&server, "")?;
    let mut live = Client::open(&server, "")?;
    gone.subscribe("idle")?;
    live.subscribe("idle")?;
    // `live` only reads (its reads answer the server's pings); `gone` is not read at all,
    // so it answers nothing: the server pings it at 1 s and closes it at 2 s (ticks of
    // one second later at most).
    let quiet = live.recv_event(Duration::from_secs(4));
    assert!(quiet.is_err(), "nothing but pings expected: {quiet:?}");
    assert_eq!(gone.expect_close(Duration::from_secs(5))?, 1001);
    live.ping_pong()?;
    // Counted when its session ends (after the close's linger).
    drop(gone);
    ringcast_tests::poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
        let metrics = ringcast_tests::http_get(server.addr(), "/metrics")?;
        let text = String::from_utf8_lossy(&metrics.body).into_owned();
        let counted = text.lines().any(|l| {
            l.starts_with("ringcast_connections_closed_total{transport=\"ws\",reason=\"timeout\"}")
                && l.ends_with(" 1")
        });
        Ok(counted.then_some(()))
    })?;
    Ok(())
}
