//! RFC 6455 behaviour the server must get right beyond single text frames: fragmented
//! messages, control frames between fragments, WebSocket ping, the close handshake.

use anyhow::Result;
use ringcast_tests::{json, masked_frame, Client, Server, TIMEOUT};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

#[test]
fn fragmented_message_with_interleaved_ping_is_reassembled() -> Result<()> {
    let server = Server::start(&[])?;
    let mut sub = Client::open(&server, "")?;
    sub.subscribe("frag")?;
    let mut c = Client::open(&server, "")?;
    let text =
        json!({"action": "publish", "channel": "frag", "data": {"parts": [1, 2, 3]}, "ref": "f"})
            .to_string();
    let (a, rest) = text.as_bytes().split_at(10);
    let (b, d) = rest.split_at(15);
    c.send_frame_raw(&masked_frame(false, 0x1, a))?;
    c.send_frame_raw(&masked_frame(false, 0x0, b))?;
    // A control frame may come between fragments (RFC 6455 §5.4).
    c.send_frame_raw(&masked_frame(true, 0x9, b"hb"))?;
    c.send_frame_raw(&masked_frame(true, 0x0, d))?;
    match c.recv_any(TIMEOUT)? {
        Message::Pong(p) => assert_eq!(&p[..], b"hb", "pong echoes the ping payload"),
        other => panic!("expected the pong first, got {other:?}"),
    }
    let ack = c.expect_event("ack")?;
    assert_eq!(ack["ref"], "f", "{ack}");
    let ev = sub.expect_event("realtime.message")?;
    assert_eq!(ev["data"], json!({"parts": [1, 2, 3]}), "{ev}");
    Ok(())
}

#[test]
fn websocket_ping_gets_pong_with_payload() -> Result<()> {
    let server = Server::start(&[])?;
    let mut c = Client::open(&server, "")?;
    c.send_message(Message::Ping(b"are you there".to_vec().into()))?;
    match c.recv_any(TIMEOUT)? {
        Message::Pong(p) => assert_eq!(&p[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
    c.ping_pong()?;
    Ok(())
}

#[test]
fn client_close_is_answered_with_1000() -> Result<()> {
    let server = Server::start(&[])?;
    let mut c = Client::open(&server, "")?;
    c.send_message(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))?;
    assert_eq!(c.expect_close(TIMEOUT)?, 1000);
    // Whatever valid code the client closes with (it used to be echoed).
    let mut c = Client::open(&server, "")?;
    c.send_message(Message::Close(Some(CloseFrame {
        code: CloseCode::Library(3000),
        reason: "app".into(),
    })))?;
    assert_eq!(c.expect_close(TIMEOUT)?, 1000);
    Ok(())
}

#[test]
fn connections_gauge_follows_opens_and_closes() -> Result<()> {
    let server = Server::start(&[])?;
    let base = server.metric("ringcast_connections")?.unwrap_or(0.0);
    let clients: Vec<Client> = (0..3)
        .map(|_| Client::open(&server, ""))
        .collect::<Result<_>>()?;
    let open = server
        .metric("ringcast_connections")?
        .expect("ringcast_connections");
    assert!(
        open >= base + 3.0,
        "gauge {open} with 3 more clients than {base}"
    );
    for c in clients {
        c.close_quietly();
    }
    // The server notices closes asynchronously; bounded wait.
    ringcast_tests::poll_until(TIMEOUT, std::time::Duration::from_millis(20), || {
        Ok((server.metric("ringcast_connections")?.unwrap_or(0.0) <= base).then_some(()))
    })?;
    let accepted = server
        .metric("ringcast_connections_accepted_total")?
        .expect("accepted_total");
    assert!(
        accepted >= 3.0,
        "ringcast_connections_accepted_total {accepted}"
    );
    Ok(())
}
