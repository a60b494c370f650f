//! HTTP/1.1 request bodies, sans IO: `Content-Length` and `Transfer-Encoding: chunked`.
//!
//! ```text
//!  RequestHead::body_framing ──► BodyDecoder::new(framing, max_body)
//!  socket bytes ──► handle_bytes(input, &mut body) ──► consumed  (the rest is the next request)
//!                   poll() ──► NeedMore | Complete | Error(BodyError)
//! ```
//!
//! The decoder consumes every byte it is given until the body is complete or refused, so
//! a caller that sees `NeedMore` may drop its whole input and read more. After `Complete`
//! it consumes nothing: bytes after the body belong to the next (pipelined) request.
//! Chunk extensions are skipped, trailers are read and dropped, and the body never grows
//! past `max_body` (a chunk is refused from its size line, before its data arrives).

use crate::http::{RequestHead, MAX_HEAD_BYTES};

/// Longest chunk-size line accepted (size, extensions and CRLF).
pub const MAX_CHUNK_LINE_BYTES: usize = 4096;
/// Largest trailer section accepted (every trailer line together).
pub const MAX_TRAILER_BYTES: usize = MAX_HEAD_BYTES;

/// How the length of a request body is known (RFC 9112 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// Neither `Content-Length` nor `Transfer-Encoding`: no body.
    Empty,
    /// `Content-Length: N`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Why a request body was refused. [`crate::ApiError`]'s `From` gives the HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// Both `Content-Length` and `Transfer-Encoding` (a request-smuggling shape).
    #[error("both Content-Length and Transfer-Encoding")]
    ConflictingFraming,
    /// A `Content-Length` that is not one decimal number, or several that differ.
    #[error("invalid Content-Length")]
    InvalidContentLength,
    /// `Transfer-Encoding` whose last coding is not `chunked`.
    #[error("invalid Transfer-Encoding: chunked must be the last coding")]
    InvalidTransferEncoding,
    /// `Transfer-Encoding` in an HTTP/1.0 request: faulty framing (RFC 9112 §6.1).
    #[error("Transfer-Encoding in an HTTP/1.0 request")]
    TransferEncodingInHttp10,
    /// A coding before `chunked` (`gzip, chunked`): not supported.
    #[error("unsupported Transfer-Encoding")]
    UnsupportedTransferEncoding,
    /// A chunk size that is empty, not hexadecimal, or overflows.
    #[error("invalid chunk size")]
    InvalidChunkSize,
    /// A missing CRLF, a bare LF, a control byte in an extension, or an overlong size line.
    #[error("malformed chunked body")]
    MalformedChunk,
    /// Trailers over [`MAX_TRAILER_BYTES`].
    #[error("chunked body trailers too large")]
    TrailersTooLarge,
    /// The body is over the caller's `max_body`.
    #[error("request body too large")]
    TooLarge,
}

impl RequestHead {
    /// How this request's body is framed; an error when the headers are invalid or
    /// contradict each other.
    pub fn body_framing(&self) -> Result<BodyFraming, BodyError> {
        let mut lengths = self.headers_named("content-length").peekable();
        let mut codings = self.headers_named("transfer-encoding").peekable();
        match (lengths.peek().is_some(), codings.peek().is_some()) {
            (_, true) if self.minor_version == 0 => Err(BodyError::TransferEncodingInHttp10),
            (true, true) => Err(BodyError::ConflictingFraming),
            (false, false) => Ok(BodyFraming::Empty),
            (true, false) => {
                let mut length = None;
                for value in lengths {
                    let n = parse_content_length(value)?;
                    if length.is_some_and(|l| l != n) {
                        return Err(BodyError::InvalidContentLength);
                    }
                    length = Some(n);
                }
                Ok(BodyFraming::Length(length.unwrap_or(0)))
            }
            (false, true) => {
                let codings: Vec<&[u8]> = codings
                    .flat_map(|v| v.split(|&b| b == b','))
                    .map(<[u8]>::trim_ascii)
                    .filter(|c| !c.is_empty())
                    .collect();
                match codings.split_last() {
                    Some((last, [])) if last.eq_ignore_ascii_case(b"chunked") => {
                        Ok(BodyFraming::Chunked)
                    }
                    Some((last, _)) if last.eq_ignore_ascii_case(b"chunked") => {
                        Err(BodyError::UnsupportedTransferEncoding)
                    }
                    _ => Err(BodyError::InvalidTransferEncoding),
                }
            }
        }
    }

    fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers.all_named(name)
    }
}

/// `1*DIGIT`, nothing else (no sign, no list, no inner spaces); overflow is invalid.
fn parse_content_length(value: &[u8]) -> Result<u64, BodyError> {
    let digits = value.trim_ascii();
    if digits.is_empty() {
        return Err(BodyError::InvalidContentLength);
    }
    digits.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return Err(BodyError::InvalidContentLength);
        }
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(BodyError::InvalidContentLength)
    })
}

/// Where a [`BodyDecoder`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyPoll {
    /// The body is not complete; feed more bytes.
    NeedMore,
    /// The whole body was decoded; later bytes belong to the next request.
    Complete,
    /// The body is refused; the connection cannot be reused.
    Error(BodyError),
}

/// Decodes one request body from bytes fed in any pieces.
#[derive(Debug, Clone)]
pub struct BodyDecoder {
    state: State,
    max_body: u64,
    decoded: u64,
    /// Bytes of the current chunk-size line, or of the trailer section.
    line_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length {
        remaining: u64,
    },
    /// Reading the hex digits of a chunk size.
    Size {
        size: u64,
        digits: u32,
    },
    /// After the digits: whitespace, then `;` or CR.
    SizeSpace {
        size: u64,
    },
    /// After a `;`: extensions up to CR.
    SizeExtension {
        size: u64,
    },
    /// After the size line's CR.
    SizeLf {
        size: u64,
    },
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the blank line that ends the body).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    FinalLf,
    Done,
    Failed(BodyError),
}

impl BodyDecoder {
    /// A decoder for a body framed as `framing` that refuses bodies over `max_body` bytes.
    /// A `Content-Length` over `max_body` is refused at once, before any body byte.
    pub fn new(framing: BodyFraming, max_body: usize) -> BodyDecoder {
        let max_body = u64::try_from(max_body).unwrap_or(u64::MAX);
        let state = match framing {
            BodyFraming::Empty | BodyFraming::Length(0) => State::Done,
            BodyFraming::Length(n) if n > max_body => State::Failed(BodyError::TooLarge),
            BodyFraming::Length(n) => State::Length { remaining: n },
            BodyFraming::Chunked => State::Size { size: 0, digits: 0 },
        };
        BodyDecoder {
            state,
            max_body,
            decoded: 0,
            line_bytes: 0,
        }
    }

    /// Where the body stands.
    pub fn poll(&self) -> BodyPoll {
        match self.state {
            State::Done => BodyPoll::Complete,
            State::Failed(e) => BodyPoll::Error(e),
            _ => BodyPoll::NeedMore,
        }
    }

    /// Feeds `input`, appends the decoded body bytes to `body`, and returns how many bytes
    /// of `input` were consumed: all of them unless the body completed or was refused.
    pub fn handle_bytes(&mut self, input: &[u8], body: &mut Vec<u8>) -> usize {
        let mut at = 0;
        while at < input.len() {
            match self.state {
                State::Done | State::Failed(_) => break,
                State::Length { remaining } => {
                    let n = take(remaining, input.len() - at);
                    body.extend_from_slice(&input[at..at + n]);
                    at += n;
                    self.state = match remaining - n as u64 {
                        0 => State::Done,
                        remaining => State::Length { remaining },
                    };
                }
                State::Data { remaining } => {
                    let n = take(remaining, input.len() - at);
                    body.extend_from_slice(&input[at..at + n]);
                    at += n;
                    self.decoded += n as u64;
                    self.state = match remaining - n as u64 {
                        0 => State::DataCr,
                        remaining => State::Data { remaining },
                    };
                }
                _ => {
                    self.state = self.step(input[at]);
                    at += 1;
                }
            }
        }
        at
    }

    /// One byte of a chunk-size line, a chunk's CRLF or the trailers.
    fn step(&mut self, byte: u8) -> State {
        use BodyError::*;
        match self.state {
            State::Size { .. }
            | State::SizeSpace { .. }
            | State::SizeExtension { .. }
            | State::SizeLf { .. } => {
                self.line_bytes += 1;
                if self.line_bytes > MAX_CHUNK_LINE_BYTES {
                    return State::Failed(MalformedChunk);
                }
            }
            State::TrailerStart | State::TrailerLine | State::TrailerLf | State::FinalLf => {
                self.line_bytes += 1;
                if self.line_bytes > MAX_TRAILER_BYTES {
                    return State::Failed(TrailersTooLarge);
                }
            }
            _ => {}
        }
        match (self.state, byte) {
            (State::Size { size, digits }, _) if byte.is_ascii_hexdigit() => {
                let digit = u64::from(hex_value(byte));
                match size.checked_mul(16).and_then(|s| s.checked_add(digit)) {
                    Some(size) => State::Size {
                        size,
                        digits: digits + 1,
                    },
                    None => State::Failed(InvalidChunkSize),
                }
            }
            (State::Size { digits: 0, .. }, _) => State::Failed(InvalidChunkSize),
            (State::Size { size, .. } | State::SizeSpace { size }, b' ' | b'\t') => {
                State::SizeSpace { size }
            }
            (State::Size { size, .. } | State::SizeSpace { size }, b';') => {
                State::SizeExtension { size }
            }
            (
                State::Size { size, .. }
                | State::SizeSpace { size }
                | State::SizeExtension { size },
                b'\r',
            ) => State::SizeLf { size },
            // `5 6` is not a size of 5 with an extension "6": a proxy may read it as 0x56.
            (State::Size { .. } | State::SizeSpace { .. }, _) => State::Failed(InvalidChunkSize),
            (State::SizeExtension { .. }, b) if b != b'\t' && (b < 0x20 || b == 0x7f) => {
                State::Failed(MalformedChunk)
            }
            (State::SizeExtension { size }, _) => State::SizeExtension { size },
            (State::SizeLf { size }, b'\n') => {
                self.line_bytes = 0;
                if size == 0 {
                    State::TrailerStart
                } else if size > self.max_body - self.decoded {
                    State::Failed(TooLarge)
                } else {
                    State::Data { remaining: size }
                }
            }
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => State::Size { size: 0, digits: 0 },
            (State::TrailerStart, b'\r') => State::FinalLf,
            (State::TrailerStart | State::TrailerLine, b'\n') => State::Failed(MalformedChunk),
            (State::TrailerLine, b'\r') => State::TrailerLf,
            (State::TrailerStart | State::TrailerLine, _) => State::TrailerLine,
            (State::TrailerLf, b'\n') => State::TrailerStart,
            (State::FinalLf, b'\n') => State::Done,
            _ => State::Failed(MalformedChunk),
        }
    }
}

fn take(remaining: u64, available: usize) -> usize {
    usize::try_from(remaining).map_or(available, |r| r.min(available))
}

fn hex_value(byte: u8) -> u8 {
    match byte {
        b'0'..=b'9' => byte - b'0',
        b'a'..=b'f' => byte - b'a' + 10,
        b'A'..=b'F' => byte - b'A' + 10,
        _ => 0,
    }
}

#[cfg(test)]
mod tests;
