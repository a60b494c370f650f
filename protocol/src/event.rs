//! Server → client events, each encoded ONCE into a complete WebSocket text frame.
//!
//! The frame header is written in front of the JSON without copying: the JSON is built
//! after a reserved header area, and the finished frame is a `Bytes` view that starts
//! where the header starts. The same `Bytes` is then shared by every subscriber.

use std::ops::Range;

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
    message_with_span(channel, data, user_id, seq, ts).0
}

/// [`message`], with the span of `data` inside the returned frame (what history keeps
/// beside the frame, so a history page needs no re-parsing).
pub fn message_with_span(
    channel: &str,
    data: &[u8],
    user_id: Option<&str>,
    seq: u64,
    ts: u64,
) -> (Bytes, Range<u32>) {
    let mut frame = EventFrame::new("realtime.message", channel.len() + data.len() + 64)
        .str_field("channel", channel);
    frame.key("data");
    let data_at = frame.buf.len();
    frame.buf.extend_from_slice(data);
    if let Some(user_id) = user_id {
        frame = frame.str_field("userId", user_id);
    }
    let bytes = frame.u64_field("seq", seq).finish(ts);
    // `finish` drops the unused part of the header room in front.
    let start = (data_at + header_room_used(&bytes) - HEADER_ROOM) as u32;
    (bytes, start..start + data.len() as u32)
}

/// Bytes of frame header in front of a server frame's JSON.
fn header_room_used(frame: &[u8]) -> usize {
    match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    }
}

/// The span of `data` inside a `realtime.message` frame made by [`message`], found by
/// reading the JSON (for history written before spans were kept). `None` if the frame
/// is not such a message.
pub fn message_data_span(frame: &[u8]) -> Option<Range<u32>> {
    let header = header_room_used(frame);
    let json = frame.get(header..)?;
    if !json.starts_with(br#"{"event":"realtime.message","#) {
        return None;
    }
    let data = crate::json::raw_members(json)?.data?;
    // `data` borrows from `json`: its offset is the distance between the two.
    let start = header + (data.as_ptr() as usize - json.as_ptr() as usize);
    Some(start as u32..(start + data.len()) as u32)
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

/// What happened to a presence member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PresenceKind {
    /// A user new to the channel.
    Join,
    /// A member's metadata was replaced.
    Update,
    /// A member left (explicitly, with its last connection, or by TTL expiry).
    Leave,
}

/// How presence event names are spelled on a connection (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PresenceSpelling {
    /// `presence:join`: what the official SDK's presence handle listens for (default).
    #[default]
    Colon,
    /// `presence.join`: the seed's protocol reference (`?presence_events=dot`).
    Dot,
}

impl PresenceSpelling {
    /// Both spellings, in index order.
    pub const ALL: [PresenceSpelling; 2] = [PresenceSpelling::Colon, PresenceSpelling::Dot];

    /// `colon` or `dot` (the query parameter and tenant setting values).
    pub fn parse(value: &str) -> Option<PresenceSpelling> {
        match value {
            "colon" => Some(PresenceSpelling::Colon),
            "dot" => Some(PresenceSpelling::Dot),
            _ => None,
        }
    }

    /// 0 for colon, 1 for dot.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The event name of `kind` in this spelling.
    pub fn event_name(self, kind: PresenceKind) -> &'static str {
        match (self, kind) {
            (PresenceSpelling::Colon, PresenceKind::Join) => "presence:join",
            (PresenceSpelling::Colon, PresenceKind::Update) => "presence:update",
            (PresenceSpelling::Colon, PresenceKind::Leave) => "presence:leave",
            (PresenceSpelling::Dot, PresenceKind::Join) => "presence.join",
            (PresenceSpelling::Dot, PresenceKind::Update) => "presence.update",
            (PresenceSpelling::Dot, PresenceKind::Leave) => "presence.leave",
        }
    }
}

/// A presence event: `{"event":"presence:join","channel":…,"userId":…,"metadata":…,"ts":…}`.
/// `metadata` is the raw JSON the member gave (`null` when none); a leave carries none.
pub fn presence(
    spelling: PresenceSpelling,
    kind: PresenceKind,
    channel: &str,
    user_id: &str,
    metadata: Option<&[u8]>,
    ts: u64,
) -> Bytes {
    let size = channel.len() + user_id.len() + metadata.map_or(4, <[u8]>::len) + 64;
    let frame = EventFrame::new(spelling.event_name(kind), size)
        .str_field("channel", channel)
        .str_field("userId", user_id);
    let frame = match kind {
        PresenceKind::Leave => frame,
        PresenceKind::Join | PresenceKind::Update => {
            frame.raw_field("metadata", metadata.unwrap_or(b"null"))
        }
    };
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
    fn message_data_span_reads_back_the_raw_data() {
        let big = format!("\"{}\"", "x".repeat(70_000));
        let mid = format!("\"{}\"", "x".repeat(300));
        for data in [
            &b"1e400"[..],
            br#"{"a":[1,2]}"#,
            big.as_bytes(),
            mid.as_bytes(),
        ] {
            let (frame, span) = message_with_span("c", data, Some("u"), 1, 2);
            assert_eq!(message_data_span(&frame), Some(span.clone()));
            assert_eq!(&frame[span.start as usize..span.end as usize], data);
        }
        assert_eq!(message_data_span(b""), None);
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
    fn message_span_names_the_data_bytes_for_every_header_size() {
        for size in [3usize, 200, 70_000] {
            let data = format!(r#"{{"pad":"{}"}}"#, "x".repeat(size));
            for user in [None, Some("alice")] {
                let (frame, span) = message_with_span("c", data.as_bytes(), user, 7, 9);
                let range = span.start as usize..span.end as usize;
                assert_eq!(&frame[range], data.as_bytes());
                assert_eq!(message_data_span(&frame), Some(span), "size {size}");
            }
        }
        assert_eq!(message_data_span(&subscribed("c", 1, "e", true, 2)), None);
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
    fn presence_events_in_both_spellings() {
        let join = unframe(&presence(
            PresenceSpelling::Colon,
            PresenceKind::Join,
            "chat:lobby",
            "alice",
            Some(br#"{"name":"Alice"}"#),
            7,
        ));
        assert_eq!(join["event"], "presence:join");
        assert_eq!(join["userId"], "alice");
        assert_eq!(join["metadata"]["name"], "Alice");
        let update = unframe(&presence(
            PresenceSpelling::Dot,
            PresenceKind::Update,
            "c",
            "a\"b",
            None,
            7,
        ));
        assert_eq!(update["event"], "presence.update");
        assert_eq!(update["userId"], "a\"b");
        assert!(update["metadata"].is_null());
        let leave = unframe(&presence(
            PresenceSpelling::Dot,
            PresenceKind::Leave,
            "c",
            "a",
            Some(b"1"),
            7,
        ));
        assert_eq!(leave["event"], "presence.leave");
        assert!(leave.get("metadata").is_none());
        assert_eq!(PresenceSpelling::parse("dot"), Some(PresenceSpelling::Dot));
        assert_eq!(PresenceSpelling::parse("Dot"), None);
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
