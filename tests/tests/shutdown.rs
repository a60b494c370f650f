//! Wire contract: SIGTERM stops accepting, closes every WebSocket with 1001, exits 0.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::Result;
use ringcast_tests::{Client, Server};

#[test]
fn sigterm_closes_every_connection_with_1001_and_exits_0() -> Result<()> {
    let mut server = Server::start(&[])?;
    let addr = server.addr();
    let mut clients = [
        Client::connect_on_shard(&server, 0)?,
        Client::connect_on_shard(&server, 1)?,
        Client::open(&server, "")?,
    ];
    for (i, c) in clients.iter_mut().enumerate() {
        c.subscribe(&format!("bye:{i}"))?;
    }

    let start = Instant::now();
    server.signal(libc::SIGTERM)?;
    for (i, c) in clients.iter_mut().enumerate() {
        let code = c.expect_close(Duration::from_secs(5))?;
        assert_eq!(code, 1001, "client {i} close code on shutdown");
    }
    let status = server.terminate_wait(Duration::from_secs(8))?;
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "shutdown took {:?}",
        start.elapsed()
    );

    // Nothing listens any more.
    assert!(
        TcpStream::connect(addr).is_err(),
        "a connection was accepted after shutdown"
    );
    Ok(())
}

#[test]
fn sigint_with_no_clients_exits_0() -> Result<()> {
    let mut server = Server::start(&[])?;
    server.signal(libc::SIGINT)?;
    // Generous: a loaded box (parallel builds) once took over 5 s to start and stop.
    let status = server.terminate_wait(Duration::from_secs(20))?;
    assert!(status.success(), "exit status after SIGINT: {status}");
    Ok(())
}
