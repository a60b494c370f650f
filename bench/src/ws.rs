//! A minimal WebSocket codec (RFC 6455) shared by the load generator and the floor server.
//!
//! Only what a benchmark needs: the client handshake request, parsing the `101` answer,
//! masked client frames, unmasked server frames, and an incremental frame parser that
//! copes with frames split across reads. No extensions, no compression.

use std::fmt;

/// Continuation frame opcode.
pub const OP_CONT: u8 = 0x0;
/// Text frame opcode.
pub const OP_TEXT: u8 = 0x1;
/// Binary frame opcode.
pub const OP_BINARY: u8 = 0x2;
/// Close frame opcode.
pub const OP_CLOSE: u8 = 0x8;
/// Ping frame opcode.
pub const OP_PING: u8 = 0x9;
/// Pong frame opcode.
pub const OP_PONG: u8 = 0xA;

/// Why a frame or a handshake answer could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsError {
    /// Reserved bits set (no extension was negotiated).
    ReservedBits,
    /// A 64-bit length with the top bit set, or longer than the caller allows.
    TooLong,
    /// The HTTP answer could not be parsed.
    BadHttp,
    /// The server answered something other than `101 Switching Protocols`.
    Status(u16),
    /// `Sec-WebSocket-Accept` missing or wrong.
    BadAccept,
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WsError::ReservedBits => write!(f, "reserved bits set"),
            WsError::TooLong => write!(f, "frame too long"),
            WsError::BadHttp => write!(f, "malformed HTTP answer"),
            WsError::Status(s) => write!(f, "HTTP status {s} instead of 101"),
            WsError::BadAccept => write!(f, "bad Sec-WebSocket-Accept"),
        }
    }
}

impl std::error::Error for WsError {}

/// The largest frame either side accepts (16 MiB): far above any benchmark payload.
pub const MAX_FRAME: u64 = 16 << 20;

/// The client's opening request. `key` is the base64 `Sec-WebSocket-Key`.
pub fn handshake_request(host: &str, path: &str, key: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// A `Sec-WebSocket-Key` made from a counter: the server only has to echo its hash.
pub fn key_for(n: u64) -> String {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&n.to_le_bytes());
    raw[8..].copy_from_slice(&(n ^ 0x5bd1_e995_9e37_79b9).to_le_bytes());
    base64(&raw)
}

/// Parses the server's answer to the handshake. `Ok(None)`: not complete yet.
/// `Ok(Some(n))`: the head took `n` bytes; frames may follow in the same buffer.
pub fn parse_handshake_response(buf: &[u8], key: &str) -> Result<Option<usize>, WsError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(WsError::BadHttp),
    };
    let code = resp.code.unwrap_or(0);
    if code != 101 {
        return Err(WsError::Status(code));
    }
    let want = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let ok = resp
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept") && h.value == want.as_bytes());
    if ok {
        Ok(Some(n))
    } else {
        Err(WsError::BadAccept)
    }
}

/// Appends one masked client frame (FIN set) to `out`.
pub fn encode_client_frame(opcode: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    write_header(opcode, payload.len(), Some(mask), out);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
}

/// Appends one unmasked server frame (FIN set) to `out`.
pub fn encode_server_frame(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    write_header(opcode, payload.len(), None, out);
    out.extend_from_slice(payload);
}

fn write_header(opcode: u8, len: usize, mask: Option<[u8; 4]>, out: &mut Vec<u8>) {
    out.push(0x80 | (opcode & 0x0f));
    let mbit = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(mbit | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(mbit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mbit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if let Some(m) = mask {
        out.extend_from_slice(&m);
    }
}

/// XORs `data` with the 4-byte mask, in place (masking and unmasking are the same).
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let wide = u64::from(word) | (u64::from(word) << 32);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) ^ wide;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// One frame's header, as found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    /// FIN bit.
    pub fin: bool,
    /// Opcode (low 4 bits of the first byte).
    pub opcode: u8,
    /// Mask key, for client frames.
    pub mask: Option<[u8; 4]>,
    /// Bytes of header before the payload.
    pub header_len: usize,
    /// Payload bytes.
    pub payload_len: usize,
}

impl FrameHead {
    /// Header plus payload.
    pub fn total_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// Parses the frame at the start of `buf`. `Ok(None)`: the whole frame (header and
/// payload) is not there yet; call again with more bytes.
pub fn parse_frame(buf: &[u8]) -> Result<Option<FrameHead>, WsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[0] & 0x70 != 0 {
        return Err(WsError::ReservedBits);
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut pos) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (u64::from(n), 2),
    };
    if len > MAX_FRAME {
        return Err(WsError::TooLong);
    }
    let mask = if masked {
        if buf.len() < pos + 4 {
            return Ok(None);
        }
        let m = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
        pos += 4;
        Some(m)
    } else {
        None
    };
    let head = FrameHead {
        fin,
        opcode,
        mask,
        header_len: pos,
        payload_len: len as usize,
    };
    if buf.len() < head.total_len() {
        return Ok(None);
    }
    Ok(Some(head))
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                s.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// Test support: accepts one connection on `listener` and answers its WebSocket
/// handshake with a 101, as a server would; the stream is then past the handshake.
#[cfg(test)]
pub(crate) fn accept_handshake(listener: &std::net::TcpListener) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let (mut s, _) = listener.accept().expect("accept");
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "client went before its request ended");
        req.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&req).into_owned();
    let key = text
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
        .expect("key")
        .trim()
        .to_owned();
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    s.write_all(out.as_bytes()).expect("write");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(key_for(7).len(), 24);
    }

    #[test]
    fn client_frame_round_trips_through_parser_at_every_length_class() {
        for len in [0usize, 5, 125, 126, 1000, 65535, 65536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut out = Vec::new();
            encode_client_frame(OP_TEXT, &payload, [1, 2, 3, 4], &mut out);
            let head = parse_frame(&out).unwrap().unwrap();
            assert!(head.fin);
            assert_eq!(head.opcode, OP_TEXT);
            assert_eq!(head.mask, Some([1, 2, 3, 4]));
            assert_eq!(head.payload_len, len);
            assert_eq!(head.total_len(), out.len());
            let mut body = out[head.header_len..].to_vec();
            apply_mask(&mut body, [1, 2, 3, 4]);
            assert_eq!(body, payload);
        }
    }

    #[test]
    fn server_frame_is_unmasked_and_parses_after_every_split_point() {
        let mut out = Vec::new();
        encode_server_frame(OP_TEXT, b"{\"event\":\"pong\"}", &mut out);
        encode_server_frame(OP_BINARY, &[9u8; 300], &mut out);
        let first = parse_frame(&out).unwrap().unwrap();
        assert_eq!(first.mask, None);
        assert_eq!(
            &out[first.header_len..first.total_len()],
            b"{\"event\":\"pong\"}"
        );
        // Every prefix shorter than the first frame is "not yet", never an error.
        for cut in 0..first.total_len() {
            assert_eq!(parse_frame(&out[..cut]).unwrap(), None, "cut at {cut}");
        }
        let second = parse_frame(&out[first.total_len()..]).unwrap().unwrap();
        assert_eq!(second.opcode, OP_BINARY);
        assert_eq!(second.payload_len, 300);
        assert_eq!(first.total_len() + second.total_len(), out.len());
    }

    #[test]
    fn mask_is_its_own_inverse_for_odd_lengths() {
        let orig: Vec<u8> = (0..37u8).collect();
        let mut data = orig.clone();
        apply_mask(&mut data, [0xde, 0xad, 0xbe, 0xef]);
        assert_ne!(data, orig);
        assert_eq!(data[0], 0xde);
        assert_eq!(data[9], 9 ^ 0xad);
        apply_mask(&mut data, [0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(data, orig);
    }

    #[test]
    fn reserved_bits_and_huge_lengths_are_errors() {
        assert_eq!(parse_frame(&[0xC1, 0x00]), Err(WsError::ReservedBits));
        let mut f = vec![0x81, 127];
        f.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(parse_frame(&f), Err(WsError::TooLong));
    }

    #[test]
    fn handshake_answer_is_checked() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok =
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x00";
        assert_eq!(parse_handshake_response(ok, key), Ok(Some(ok.len() - 2)));
        assert_eq!(parse_handshake_response(&ok[..20], key), Ok(None));
        let bad = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            parse_handshake_response(bad, key),
            Err(WsError::Status(404))
        );
        let wrong = b"HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: nope\r\n\r\n";
        assert_eq!(
            parse_handshake_response(wrong, key),
            Err(WsError::BadAccept)
        );
        let req = String::from_utf8(handshake_request("h:1", "/x?y=1", key)).unwrap();
        assert!(req.starts_with("GET /x?y=1 HTTP/1.1\r\n"));
        assert!(req.ends_with("Sec-WebSocket-Version: 13\r\n\r\n"));
    }
}
