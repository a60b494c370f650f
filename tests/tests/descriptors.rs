//! The descriptor table is sized at start-up for `max_connections` (capped by the soft
//! `RLIMIT_NOFILE`), so no `accept4` in a connect storm stops a shard while the kernel
//! grows the table (`engine/src/fd_table.rs`), and a small `max_connections` keeps the
//! table small. A soft limit too low for `max_connections` is warned about at start-up,
//! and accepts that fail once descriptors run out are logged at most once a second per
//! shard, with the count of the failures left out.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ringcast_tests::{http_get, poll_until, Server, TIMEOUT};

/// `FDSize` and the soft open-files limit of process `pid`.
fn table_and_limit(pid: u32) -> Result<(usize, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let size = status
        .lines()
        .find_map(|l| l.strip_prefix("FDSize:"))
        .context("no FDSize")?
        .trim()
        .parse()?;
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .context("no open-files limit")?;
    let soft = soft.parse().unwrap_or(usize::MAX);
    Ok((size, soft))
}

#[test]
fn the_table_holds_max_connections_from_the_start() -> Result<()> {
    let server = Server::start(&["--max-connections", "3000"])?;
    let (size, soft) = table_and_limit(server.pid())?;
    let want = (3000 + 1024).min(soft);
    assert!(size >= want, "FDSize {size} < {want} (soft limit {soft})");
    Ok(())
}

#[test]
fn a_small_max_connections_keeps_the_table_small() -> Result<()> {
    let server = Server::start(&["--max-connections", "10"])?;
    let (size, _) = table_and_limit(server.pid())?;
    assert!(size <= 4096, "FDSize {size} for 10 connections");
    Ok(())
}

#[test]
fn a_soft_limit_below_max_connections_is_warned_about_at_start_up() -> Result<()> {
    let server = Server::start_with_open_file_limit(256, &["--max-connections", "1000"])?;
    let (_, soft) = table_and_limit(server.pid())?;
    assert_eq!(soft, 256, "the server runs under the lowered limit");
    // Logged before the listening line, so it is there already.
    let line = server.await_log_line(&["open-file limit", "max_connections"])?;
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("soft_limit=256") && line.contains("max_connections=1000"),
        "names the limit and max_connections: {line}"
    );
    for advice in ["ulimit -n", "LimitNOFILE", "ringcast doctor"] {
        assert!(line.contains(advice), "suggests {advice}: {line}");
    }
    Ok(())
}

/// The `suppressed=N` field of a log line, if it has one.
fn suppressed(line: &str) -> Option<u64> {
    let rest = &line[line.find("suppressed=")? + "suppressed=".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[test]
fn accept_failures_are_logged_at_most_once_a_second_per_shard() -> Result<()> {
    const LIMIT: u64 = 256;
    let server = Server::start_with_open_file_limit(LIMIT, &["--handshake-timeout-ms", "60000"])?;
    // Each connection that never finishes its request head holds a descriptor; past the
    // limit the rest wait in the backlog and every accept fails (EMFILE), retried every
    // 10 ms by each shard.
    let mut held = Vec::new();
    for _ in 0..LIMIT + 64 {
        let mut stream = TcpStream::connect(server.addr())?;
        stream.write_all(b"GET /healthz HTTP/1.1\r\n")?;
        held.push(stream);
    }
    let failures = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.contains("accept failed"))
            .map(str::to_owned)
            .collect()
    };
    server.await_log_line(&["accept failed"])?;
    let first_seen = Instant::now();
    // A later line carries the count of the failures left out since the one before.
    let line = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        let text = server.stderr_text();
        Ok(failures(&text)
            .into_iter()
            .find(|l| suppressed(l).is_some_and(|n| n > 0)))
    })
    .with_context(|| {
        format!(
            "no line with suppressed failures:\n{}",
            server.stderr_tail()
        )
    })?;
    let secs = first_seen.elapsed().as_secs_f64();
    assert!(line.contains("WARN"), "{line}");
    // Unlimited, each shard would log a line per retry: about 100 a second.
    let lines = failures(&server.stderr_text()).len();
    let bound = server.shards() * (secs.ceil() as usize + 2);
    assert!(
        lines <= bound,
        "{lines} accept-failure lines in {secs:.2} s (at most {bound})"
    );

    // Descriptors back: accepts work again, and the shard says so.
    drop(held);
    poll_until(TIMEOUT, Duration::from_millis(20), || {
        Ok(http_get(server.addr(), "/healthz")
            .is_ok_and(|r| r.status == 200)
            .then_some(()))
    })
    .context("/healthz once the held connections closed")?;
    // Said on an accept once the log's interval has passed since its last line: keep
    // connecting until it is.
    poll_until(TIMEOUT, Duration::from_millis(100), || {
        let _ = http_get(server.addr(), "/healthz");
        Ok(server
            .stderr_text()
            .contains("accepting again")
            .then_some(()))
    })
    .context("an 'accepting again' line")?;
    Ok(())
}
