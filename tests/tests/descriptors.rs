//! The descriptor table is sized at start-up for `max_connections` (capped by the soft
//! `RLIMIT_NOFILE`), so no `accept4` in a connect storm stops a shard while the kernel
//! grows the table (`engine/src/fd_table.rs`), and a small `max_connections` keeps the
//! table small.

use anyhow::{Context, Result};
use ringcast_tests::Server;

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
