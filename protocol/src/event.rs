//! Server → client events, each encoded ONCE into a complete WebSocket text frame.
//!
//! The frame header is written in front of the JSON without copying: the JSON is built
//! after a reserved header area, and the finished frame is a `Bytes` view that starts
//! where the header starts. The same `Bytes` is then shared by every subscriber.

use bytes::Bytes;

use crate::error::ErrorCode;
use crate::json::{write_str, write_u64};
use crate::ws::{header_len, write_header, OPCODE_TEXT};

/// Room reserved in front of the JSON for the largest server frame header.
const HEADER_ROOM: usize = 10;

/// Builds one event's JSON behind a reserved header, then frames it.
struct EventFrame {
    buf: Vec<u8>,
}

impl EventFrame {
    fn new(event: &str, json_capacity: usize) -> EventFrame {
        let mut buf = Vec::with_capacity(HEADER_ROOM + json_capacity + 64);
        buf.resize(HEADER_ROOM, 0);
        buf.extend_from_slice(b"{\"event\":\"");
        buf.extend_from_slice(event.as_bytes());
        buf.push(b'"');
        EventFrame { buf }
    }

    fn str_field(mut self, key: &str, value: &str) -> Self {
        self.key(key);
        write_str(&mut self.buf, value);
        self
    }

    fn raw_field(mut self, key: &str, raw_json: &[u8]) -> Self {
        self.key(key);
        self.buf.extend_from_slice(raw_json);
        self
    }

    fn u64_field(mut self, key: &str, value: u64) -> Self {
        self.key(key);
        write_u64(&mut self.buf, value);
        self
    }

    fn bool_field(mut self, key: &str, value: bool) -> Self {
        self.key(key);
        self.buf
            .extend_from_slice(if value { b"true" } else { b"false" });
        self
    }

    fn key(&mut self, key: &str) {
        self.buf.extend_from_slice(b",\"");
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.extend_from_slice(b"\":");
    }

    /// Closes the JSON object with `ts` and writes the frame header in front.
    fn finish(self, ts: u64) -> Bytes {
        let mut buf = self.u64_field("ts", ts).buf;
        buf.push(b'}');
        let payload_len = buf.len() - HEADER_ROOM;
        let start = HEADER_ROOM - header_len(payload_len);
        write_header(&mut buf[start..HEADER_ROOM], OPCODE_TEXT, payload_len);
        Bytes::from(buf).slice(start..)
    }
}

/// `connected`, the first event of every connection.
pub fn connected(client_id: &str, ts: u64) -> Bytes {
    let mut frame = EventFrame::new("connected", 32 + client_id.len());
    frame.key("data");
    frame.buf.extend_from_slice(b"{\"clientId\":");
    write_str(&mut frame.buf, client_id);
    frame.buf.push(b'}');
    frame.finish(ts)
}

/// `subscribed`: the channel's latest seq and epoch, and whether catch-up was complete.
pub fn subscribed(channel: &str, seq: u64, epoch: &str, recovered: bool, ts: u64) -> Bytes {
    EventFrame::new("subscribed", channel.len() + epoch.len() + 64)
        .str_field("channel", channel)
        .u64_field("seq", seq)
        .str_field("epoch", epoch)
        .bool_field("recovered", recovered)
        .finish(ts)
}

/// `unsubscribed`.
pub fn unsubscribed(channel: &str, ts: u64) -> Bytes {
    EventFrame::new("unsubscribed", channel.len() + 16)
        .str_field("channel", channel)
        .finish(ts)
}

/// `realtime.message`: `data` is the publisher's raw JSON, written as is.
pub fn message(channel: &str, data: &[u8], user_id: Option<&str>, seq: u64, ts: u64) -> Bytes {
    let mut frame = EventFrame::new("realtime.message", channel.len() + data.len() + 64)
        .str_field("channel", channel)
        .raw_field("data", data);
    if let Some(user_id) = user_id {
        frame = frame.str_field("userId", user_id);
    }
    frame.u64_field("seq", seq).finish(ts)
}

/// The raw `data` of a frame built by [`message`] (a history record's payload);
/// `None` for anything else.
pub fn message_data(frame: &[u8]) -> Option<&[u8]> {
    let header = match frame.get(1)? & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    crate::json::raw_members(frame.get(header..)?)?.data
}

/// `ack` for a publish that carried `ref`.
pub fn ack(reference: &[u8], channel: &str, seq: u64, ts: u64) -> Bytes {
    EventFrame::new("ack", channel.len() + reference.len() + 48)
        .raw_field("ref", reference)
        .str_field("channel", channel)
        .u64_field("seq", seq)
        .finish(ts)
}

/// `error`, echoing the frame's channel and `ref` when known.
pub fn error(
    channel: Option<&str>,
    reference: Option<&[u8]>,
    code: ErrorCode,
    message: &str,
    ts: u64,
) -> Bytes {
    let mut frame = EventFrame::new("error", message.len() + 96);
    if let Some(channel) = channel {
        frame = frame.str_field("channel", channel);
    }
    if let Some(reference) = reference {
        frame = frame.raw_field("ref", reference);
    }
    frame.key("data");
    frame.buf.extend_from_slice(b"{\"code\":");
    write_str(&mut frame.buf, code.as_str());
    frame.buf.extend_from_slice(b",\"message\":");
    write_str(&mut frame.buf, message);
    frame.buf.push(b'}');
    frame.finish(ts)
}

/// `pong`.
pub fn pong(ts: u64) -> Bytes {
    EventFrame::new("pong", 16).finish(ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_data_reads_back_the_raw_data() {
        for data in [&b"1e400"[..], br#"{"a":[1,2]}"#] {
            let frame = message("c", data, Some("u"), 1, 2);
            assert_eq!(message_data(&frame), Some(data));
        }
        let big = format!("\"{}\"", "x".repeat(70_000));
        let frame = message("c", big.as_bytes(), None, 1, 2);
        assert_eq!(message_data(&frame), Some(big.as_bytes()));
        let mid = format!("\"{}\"", "x".repeat(300));
        let frame = message("c", mid.as_bytes(), None, 1, 2);
        assert_eq!(message_data(&frame), Some(mid.as_bytes()));
        assert_eq!(message_data(b""), None);
    }
    use crate::ws::{Decoded, Message, WsDecoder};

    /// Unframes a server frame (unmasked) and parses its JSON.
    fn unframe(frame: &[u8]) -> serde_json::Value {
        let (opcode, len) = (frame[0], frame[1] as usize);
        assert_eq!(opcode, 0x81, "final text frame");
        let payload = match len {
            126 => &frame[4..],
            127 => &frame[10..],
            _ => &frame[2..],
        };
        if len < 126 {
            assert_eq!(payload.len(), len);
        }
        serde_json::from_slice(payload).unwrap()
    }

    #[test]
    fn message_keeps_data_bytes() {
        let frame = message(
            "chat:lobby",
            br#"{"b":1,"a":[1.50]}"#,
            Some("alice"),
            43,
            1_710_000_000_000,
        );
        assert!(frame.windows(18).any(|w| w == br#"{"b":1,"a":[1.50]}"#));
        let v = unframe(&frame);
        assert_eq!(v["event"], "realtime.message");
        assert_eq!(v["channel"], "chat:lobby");
        assert_eq!(v["userId"], "alice");
        assert_eq!(v["seq"], 43);
        assert_eq!(v["ts"], 1_710_000_000_000u64);
    }

    #[test]
    fn every_header_size() {
        for size in [0usize, 100, 125, 126, 1000, 65_535, 65_536, 200_000] {
            let data = format!("\"{}\"", "x".repeat(size));
            let frame = message("c", data.as_bytes(), None, 1, 2);
            assert_eq!(unframe(&frame)["data"].as_str().unwrap().len(), size);
            let mut decoder = WsDecoder::new(1 << 20).accept_unmasked();
            let mut copy = frame.to_vec();
            let Ok(Some(Decoded {
                consumed,
                message: Message::Text(range),
            })) = decoder.decode(&mut copy)
            else {
                panic!("frame did not decode")
            };
            assert_eq!(consumed, frame.len());
            let text = range.bytes(&copy);
            assert!(serde_json::from_slice::<serde_json::Value>(text).is_ok());
        }
    }

    #[test]
    fn error_echoes_ref() {
        let v = unframe(&error(
            Some("c"),
            Some(b"\"r\""),
            ErrorCode::BadRequest,
            "no \"quote\"",
            5,
        ));
        assert_eq!(v["event"], "error");
        assert_eq!(v["ref"], "r");
        assert_eq!(v["channel"], "c");
        assert_eq!(v["data"]["code"], "bad_request");
        assert_eq!(v["data"]["message"], "no \"quote\"");
    }

    #[test]
    fn other_events() {
        assert_eq!(unframe(&connected("abc", 1))["data"]["clientId"], "abc");
        let s = unframe(&subscribed("c", 42, "7", true, 1));
        assert_eq!(
            (
                s["seq"].as_u64(),
                s["epoch"].as_str(),
                s["recovered"].as_bool()
            ),
            (Some(42), Some("7"), Some(true))
        );
        assert_eq!(unframe(&unsubscribed("c", 1))["event"], "unsubscribed");
        assert_eq!(unframe(&ack(b"7", "c", 3, 1))["ref"], 7);
        assert_eq!(unframe(&pong(9))["ts"], 9);
    }
}
