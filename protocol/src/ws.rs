//! WebSocket framing (RFC 6455) for the server side, on tungstenite's frame codec.
//!
//! [`WsDecoder`] turns the bytes a client sent into messages, unmasking in place so that
//! an unfragmented text frame needs no copy. It enforces what the server needs: client
//! frames masked, no extensions (RSV bits clear), control frames short and final, text
//! valid UTF-8, and a maximum message size checked from the header before the payload
//! arrives. Each violation maps to its close code.

use std::io::Cursor;
use std::ops::Range;

use bytes::Bytes;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use crate::error::CloseCode;

/// The opcode of a text frame.
pub const OPCODE_TEXT: u8 = 0x1;

/// Why the connection must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WsError {
    /// A framing rule was broken (close 1002).
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// A text message was not UTF-8 (close 1007).
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    /// A message exceeded the maximum size (close 1009).
    #[error("message exceeds the maximum size")]
    TooBig,
}

impl WsError {
    /// The close code this error is answered with.
    pub fn close_code(self) -> CloseCode {
        match self {
            WsError::Protocol(_) => CloseCode::PROTOCOL_ERROR,
            WsError::InvalidUtf8 => CloseCode::INVALID_PAYLOAD,
            WsError::TooBig => CloseCode::MESSAGE_TOO_BIG,
        }
    }
}

/// Where a message's payload is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Unmasked in place inside the buffer given to [`WsDecoder::decode`].
    InPlace(Range<usize>),
    /// Reassembled from fragments.
    Assembled(Vec<u8>),
}

impl Payload {
    /// The payload bytes; `buf` is the buffer that was decoded.
    pub fn bytes<'a>(&'a self, buf: &'a [u8]) -> &'a [u8] {
        match self {
            Payload::InPlace(range) => &buf[range.clone()],
            Payload::Assembled(bytes) => bytes,
        }
    }
}

/// A complete message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message, valid UTF-8.
    Text(Payload),
    /// A binary message.
    Binary(Payload),
    /// A ping; answer with a pong carrying the same payload.
    Ping(Payload),
    /// A pong (ignored).
    Pong,
    /// The client closes, with its code if it gave one.
    Close(Option<CloseCode>),
    /// A fragment of a longer message was buffered; nothing to act on yet.
    Fragment,
}

/// One decoded message and how many bytes of the buffer it used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Bytes to drop from the front of the buffer.
    pub consumed: usize,
    /// The message.
    pub message: Message,
}

/// Incremental decoder for one connection.
#[derive(Debug)]
pub struct WsDecoder {
    max_message: usize,
    require_mask: bool,
    fragments: Option<(bool, Vec<u8>)>,
}

impl WsDecoder {
    /// A decoder refusing messages over `max_message` bytes.
    pub fn new(max_message: usize) -> WsDecoder {
        WsDecoder {
            max_message,
            require_mask: true,
            fragments: None,
        }
    }

    /// Accepts unmasked frames (for decoding our own output in tests and tools).
    pub fn accept_unmasked(mut self) -> WsDecoder {
        self.require_mask = false;
        self
    }

    /// Decodes the next frame at the front of `buf`. `Ok(None)` means more bytes are
    /// needed. A non-final fragment is buffered and reported as [`Message::Fragment`]
    /// (its bytes are consumed); the message is reported when its last fragment arrives.
    /// Callers loop until `Ok(None)`, dropping `consumed` bytes after each step.
    pub fn decode(&mut self, buf: &mut [u8]) -> Result<Option<Decoded>, WsError> {
        let Some((header, payload)) = self.next_frame(buf)? else {
            return Ok(None);
        };
        let (start, end) = (payload.start, payload.end);
        let message = match header.opcode {
            OpCode::Control(Control::Ping) => Message::Ping(Payload::InPlace(start..end)),
            OpCode::Control(Control::Pong) => Message::Pong,
            OpCode::Control(Control::Close) => Message::Close(close_code(&buf[start..end])?),
            OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                return Err(WsError::Protocol("reserved opcode"));
            }
            OpCode::Data(Data::Text | Data::Binary) if self.fragments.is_some() => {
                return Err(WsError::Protocol("new message inside a fragmented one"));
            }
            OpCode::Data(data) if !header.is_final => {
                match (data, self.fragments.as_mut()) {
                    (Data::Continue, Some((_, acc))) => acc.extend_from_slice(&buf[start..end]),
                    (Data::Continue, None) => {
                        return Err(WsError::Protocol("continuation without a start"))
                    }
                    (first, _) => {
                        self.fragments = Some((first == Data::Text, buf[start..end].to_vec()))
                    }
                }
                Message::Fragment
            }
            OpCode::Data(Data::Continue) => {
                let Some((is_text, mut acc)) = self.fragments.take() else {
                    return Err(WsError::Protocol("continuation without a start"));
                };
                acc.extend_from_slice(&buf[start..end]);
                data_message(is_text, Payload::Assembled(acc), buf)?
            }
            OpCode::Data(data) => {
                data_message(data == Data::Text, Payload::InPlace(start..end), buf)?
            }
        };
        Ok(Some(Decoded {
            consumed: end,
            message,
        }))
    }

    /// Parses one frame header, checks it, and unmasks the payload in place.
    fn next_frame(&self, buf: &mut [u8]) -> Result<Option<(FrameHeader, Range<usize>)>, WsError> {
        let mut cursor = Cursor::new(&*buf);
        let (header, len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Ok(None),
            Err(_) => return Err(WsError::Protocol("malformed frame header")),
        };
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(WsError::Protocol("reserved bits set"));
        }
        if self.require_mask && header.mask.is_none() {
            return Err(WsError::Protocol("client frame not masked"));
        }
        let is_control = matches!(header.opcode, OpCode::Control(_));
        if is_control && (len > 125 || !header.is_final) {
            return Err(WsError::Protocol("control frame too long or fragmented"));
        }
        if len >> 63 != 0 {
            // RFC 6455 §5.2: the most significant bit of a 64-bit length must be 0.
            return Err(WsError::Protocol("frame length with its top bit set"));
        }
        // A control frame between fragments is not part of the message.
        let so_far = match &self.fragments {
            Some((_, acc)) if !is_control => acc.len() as u64,
            _ => 0,
        };
        if len.saturating_add(so_far) > self.max_message as u64 {
            return Err(WsError::TooBig);
        }
        let start = cursor.position() as usize;
        let end = start + len as usize;
        if buf.len() < end {
            return Ok(None);
        }
        if let Some(mask) = header.mask {
            unmask(&mut buf[start..end], mask);
        }
        Ok(Some((header, start..end)))
    }
}

fn data_message(is_text: bool, payload: Payload, buf: &[u8]) -> Result<Message, WsError> {
    if !is_text {
        return Ok(Message::Binary(payload));
    }
    std::str::from_utf8(payload.bytes(buf)).map_err(|_| WsError::InvalidUtf8)?;
    Ok(Message::Text(payload))
}

fn close_code(payload: &[u8]) -> Result<Option<CloseCode>, WsError> {
    match payload {
        [] => Ok(None),
        [_] => Err(WsError::Protocol("close payload of one byte")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            // RFC 6455 §7.4: codes a close frame may carry (1004–1006 and 1015 are
            // reserved, 1016–2999 unassigned, 5000 and up undefined).
            if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                return Err(WsError::Protocol("invalid close code"));
            }
            std::str::from_utf8(reason).map_err(|_| WsError::InvalidUtf8)?;
            Ok(Some(CloseCode(code)))
        }
    }
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let mask64 = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ mask64).to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
}

fn opcode(code: u8) -> OpCode {
    OpCode::from(code)
}

/// Size of a server (unmasked) frame header for a payload of `payload_len` bytes.
pub fn header_len(payload_len: usize) -> usize {
    FrameHeader::default().len(payload_len as u64)
}

/// Writes a final, unmasked frame header into `out` (exactly `header_len` bytes).
pub fn write_header(out: &mut [u8], opcode_byte: u8, payload_len: usize) {
    let header = FrameHeader {
        opcode: opcode(opcode_byte),
        ..FrameHeader::default()
    };
    let mut cursor = Cursor::new(out);
    // Writing into a slice sized by `header_len` cannot fail.
    let _ = header.format(payload_len as u64, &mut cursor);
}

fn control_frame(opcode_byte: u8, payload: &[u8]) -> Bytes {
    let payload = &payload[..payload.len().min(125)];
    let mut frame = vec![0u8; header_len(payload.len())];
    write_header(&mut frame, opcode_byte, payload.len());
    frame.extend_from_slice(payload);
    Bytes::from(frame)
}

/// A close frame with `code` and a short reason.
pub fn close_frame(code: CloseCode, reason: &str) -> Bytes {
    let mut payload = code.0.to_be_bytes().to_vec();
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    control_frame(0x8, &payload)
}

/// A ping with no payload (the server's check that an idle peer is still there).
pub fn ping_frame() -> Bytes {
    Bytes::from_static(&[0x89, 0x00])
}

/// A pong answering a ping with `payload`.
pub fn pong_frame(payload: &[u8]) -> Bytes {
    control_frame(0xA, payload)
}

#[cfg(test)]
mod tests;
