use super::*;
use crate::http::parse_request_head;
use proptest::prelude::*;

const MAX: usize = 64 * 1024;

/// Feeds `input` in one piece: (consumed, body, poll).
fn decode(framing: BodyFraming, input: &[u8]) -> (usize, Vec<u8>, BodyPoll) {
    decode_pieces(framing, MAX, input, &[])
}

/// Feeds `input` cut at `cuts` (sorted or not, any values): the caller's loop of the
/// engine, which drops consumed bytes and appends the next read.
fn decode_pieces(
    framing: BodyFraming,
    max: usize,
    input: &[u8],
    cuts: &[usize],
) -> (usize, Vec<u8>, BodyPoll) {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    cuts.push(input.len());
    cuts.sort_unstable();
    let mut decoder = BodyDecoder::new(framing, max);
    let mut body = Vec::new();
    // Unconsumed bytes stay in front of the next piece, as in the engine's buffer.
    let mut consumed = 0;
    for cut in cuts {
        consumed += decoder.handle_bytes(&input[consumed..cut], &mut body);
        if decoder.poll() == BodyPoll::NeedMore {
            assert_eq!(consumed, cut, "NeedMore must consume its whole input");
        }
    }
    (consumed, body, decoder.poll())
}

/// `body` as chunks of the given sizes (cycled), with an extension on every other size
/// line and optional trailers.
fn chunked(body: &[u8], sizes: &[usize], trailers: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes
            .get(i % sizes.len().max(1))
            .copied()
            .unwrap_or(7)
            .clamp(1, rest.len());
        let ext = if i % 2 == 1 { ";name=\"v\" ; x" } else { "" };
        out.extend_from_slice(format!("{n:X}{ext}\r\n").as_bytes());
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
        i += 1;
    }
    out.extend_from_slice(b"0\r\n");
    if trailers {
        out.extend_from_slice(b"X-Checksum: abc\r\nX-Other: 1\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn head(extra: &str) -> RequestHead {
    let text = format!("POST /api/realtime/publish HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
    parse_request_head(text.as_bytes()).unwrap().unwrap()
}

#[test]
fn framing_from_headers() {
    assert_eq!(head("").body_framing(), Ok(BodyFraming::Empty));
    assert_eq!(
        head("Content-Length: 12\r\n").body_framing(),
        Ok(BodyFraming::Length(12))
    );
    assert_eq!(
        head("Content-Length: 12\r\nContent-Length: 12\r\n").body_framing(),
        Ok(BodyFraming::Length(12))
    );
    assert_eq!(
        head("Transfer-Encoding: Chunked\r\n").body_framing(),
        Ok(BodyFraming::Chunked)
    );
    for (headers, error) in [
        (
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            BodyError::ConflictingFraming,
        ),
        (
            "Transfer-Encoding: chunked\r\nContent-Length: 0\r\n",
            BodyError::ConflictingFraming,
        ),
        (
            "Content-Length: 12\r\nContent-Length: 13\r\n",
            BodyError::InvalidContentLength,
        ),
        ("Content-Length: -1\r\n", BodyError::InvalidContentLength),
        ("Content-Length: +5\r\n", BodyError::InvalidContentLength),
        ("Content-Length: 5, 5\r\n", BodyError::InvalidContentLength),
        ("Content-Length: 0x10\r\n", BodyError::InvalidContentLength),
        ("Content-Length: \r\n", BodyError::InvalidContentLength),
        (
            "Content-Length: 99999999999999999999999\r\n",
            BodyError::InvalidContentLength,
        ),
        (
            "Transfer-Encoding: gzip\r\n",
            BodyError::InvalidTransferEncoding,
        ),
        (
            "Transfer-Encoding: chunked, gzip\r\n",
            BodyError::InvalidTransferEncoding,
        ),
        (
            "Transfer-Encoding: \r\n",
            BodyError::InvalidTransferEncoding,
        ),
        (
            "Transfer-Encoding: gzip, chunked\r\n",
            BodyError::UnsupportedTransferEncoding,
        ),
        (
            "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
            BodyError::UnsupportedTransferEncoding,
        ),
    ] {
        assert_eq!(head(headers).body_framing(), Err(error), "{headers:?}");
    }
}

#[test]
fn content_length_body_stops_at_its_length() {
    let (consumed, body, poll) = decode(BodyFraming::Length(5), b"helloGET / HTTP/1.1\r\n");
    assert_eq!(
        (consumed, body.as_slice(), poll),
        (5, &b"hello"[..], BodyPoll::Complete)
    );
    let (consumed, body, poll) = decode(BodyFraming::Length(5), b"hel");
    assert_eq!(
        (consumed, body.as_slice(), poll),
        (3, &b"hel"[..], BodyPoll::NeedMore)
    );
}

#[test]
fn empty_bodies_are_complete_at_once() {
    for framing in [BodyFraming::Empty, BodyFraming::Length(0)] {
        let decoder = BodyDecoder::new(framing, MAX);
        assert_eq!(decoder.poll(), BodyPoll::Complete);
        let mut body = Vec::new();
        let mut decoder = decoder;
        assert_eq!(decoder.handle_bytes(b"GET /", &mut body), 0);
        assert!(body.is_empty());
    }
}

#[test]
fn declared_length_over_max_is_refused_before_any_byte() {
    let decoder = BodyDecoder::new(BodyFraming::Length(MAX as u64 + 1), MAX);
    assert_eq!(decoder.poll(), BodyPoll::Error(BodyError::TooLarge));
    let decoder = BodyDecoder::new(BodyFraming::Length(u64::MAX), MAX);
    assert_eq!(decoder.poll(), BodyPoll::Error(BodyError::TooLarge));
    let decoder = BodyDecoder::new(BodyFraming::Length(MAX as u64), MAX);
    assert_eq!(decoder.poll(), BodyPoll::NeedMore);
}

#[test]
fn chunked_body_with_extensions_and_trailers() {
    let mut input =
        b"5;ext=1\r\nhello\r\n6 ; a=\"b\"\r\n world\r\n1 \r\n!\r\n0\r\nX-T: 1\r\n\r\n".to_vec();
    let body_end = input.len();
    input.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    let (consumed, body, poll) = decode(BodyFraming::Chunked, &input);
    assert_eq!(poll, BodyPoll::Complete);
    assert_eq!(body, b"hello world!");
    assert_eq!(consumed, body_end, "the next request is left alone");
}

#[test]
fn chunk_sizes_are_hex_in_either_case() {
    let input = b"a\r\n0123456789\r\nA\r\n0123456789\r\n0\r\n\r\n";
    let (_, body, poll) = decode(BodyFraming::Chunked, input);
    assert_eq!(poll, BodyPoll::Complete);
    assert_eq!(body.len(), 20);
}

#[test]
fn malformed_chunked_bodies() {
    for (input, error) in [
        (&b"\r\n"[..], BodyError::InvalidChunkSize),
        (b"g\r\n", BodyError::InvalidChunkSize),
        (b"-1\r\n", BodyError::InvalidChunkSize),
        (b"0x5\r\n", BodyError::InvalidChunkSize),
        (b";ext\r\n", BodyError::InvalidChunkSize),
        (b"10000000000000000\r\n", BodyError::InvalidChunkSize),
        (b"5\nhello\r\n", BodyError::InvalidChunkSize),
        (b"5;x\nhello\r\n", BodyError::MalformedChunk),
        (b"5\r\nhelloXX", BodyError::MalformedChunk),
        (b"5\r\nhello\rX", BodyError::MalformedChunk),
        (b"5;a\x00b\r\n", BodyError::MalformedChunk),
        (b"5\r\nhello\r\n0\r\nX: 1\n", BodyError::MalformedChunk),
        (b"5\r\nhello\r\n0\r\n\rX", BodyError::MalformedChunk),
        (b"5\r\nhello\r\n0\r\n\n", BodyError::MalformedChunk),
        // Only whitespace and then `;` may follow the digits (RFC 9112 §7.1.1): a proxy
        // could read `5 6` as 0x56, so it is refused, not read as 5.
        (b"5 6\r\nhello\r\n0\r\n\r\n", BodyError::InvalidChunkSize),
        (b"5\t x\r\nhello\r\n0\r\n\r\n", BodyError::InvalidChunkSize),
        (b"5 =\r\nhello\r\n0\r\n\r\n", BodyError::InvalidChunkSize),
    ] {
        let (_, _, poll) = decode(BodyFraming::Chunked, input);
        assert_eq!(
            poll,
            BodyPoll::Error(error),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
    let long_extension = format!("5;{}\r\n", "e".repeat(MAX_CHUNK_LINE_BYTES));
    let (_, _, poll) = decode(BodyFraming::Chunked, long_extension.as_bytes());
    assert_eq!(poll, BodyPoll::Error(BodyError::MalformedChunk));
    let long_trailers = format!("0\r\nX: {}\r\n\r\n", "t".repeat(MAX_TRAILER_BYTES));
    let (_, _, poll) = decode(BodyFraming::Chunked, long_trailers.as_bytes());
    assert_eq!(poll, BodyPoll::Error(BodyError::TrailersTooLarge));
}

#[test]
fn chunked_body_over_max_is_refused_at_the_size_line() {
    // Refused from the size line alone: the data never has to arrive.
    let (_, body, poll) = decode_pieces(BodyFraming::Chunked, 10, b"B\r\n", &[]);
    assert_eq!(poll, BodyPoll::Error(BodyError::TooLarge));
    assert!(body.is_empty());
    // The sum of chunks counts, not each chunk.
    let (_, body, poll) = decode_pieces(BodyFraming::Chunked, 10, b"6\r\nabcdef\r\n5\r\n", &[]);
    assert_eq!(poll, BodyPoll::Error(BodyError::TooLarge));
    assert_eq!(body, b"abcdef");
    // Exactly max is fine.
    let (_, body, poll) = decode_pieces(
        BodyFraming::Chunked,
        10,
        b"6\r\nabcdef\r\n4\r\nghij\r\n0\r\n\r\n",
        &[],
    );
    assert_eq!((poll, body.len()), (BodyPoll::Complete, 10));
}

#[test]
fn every_single_cut_of_a_chunked_body_decodes_the_same() {
    let input = chunked(b"the quick brown fox jumps", &[3, 1, 9], true);
    for cut in 0..=input.len() {
        let (consumed, body, poll) = decode_pieces(BodyFraming::Chunked, MAX, &input, &[cut]);
        assert_eq!(poll, BodyPoll::Complete, "cut at {cut}");
        assert_eq!(body, b"the quick brown fox jumps", "cut at {cut}");
        assert_eq!(consumed, input.len(), "cut at {cut}");
    }
}

proptest! {
    /// Any chunking of the body, any split of the bytes on the wire: the same body, and
    /// the bytes after it (the next request) are not consumed.
    #[test]
    fn any_split_of_a_chunked_body_decodes_to_the_body(
        body in proptest::collection::vec(any::<u8>(), 0..600),
        sizes in proptest::collection::vec(1usize..64, 1..8),
        trailers in any::<bool>(),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut input = chunked(&body, &sizes, trailers);
        let body_end = input.len();
        input.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
        let (consumed, decoded, poll) = decode_pieces(BodyFraming::Chunked, MAX, &input, &cuts);
        prop_assert_eq!(poll, BodyPoll::Complete);
        prop_assert_eq!(decoded, body);
        prop_assert_eq!(consumed, body_end);
    }

    /// The same for a `Content-Length` body.
    #[test]
    fn any_split_of_a_length_body_decodes_to_the_body(
        body in proptest::collection::vec(any::<u8>(), 0..600),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut input = body.clone();
        input.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
        let framing = BodyFraming::Length(body.len() as u64);
        let (consumed, decoded, poll) = decode_pieces(framing, MAX, &input, &cuts);
        prop_assert_eq!(poll, BodyPoll::Complete);
        prop_assert_eq!(consumed, body.len());
        prop_assert_eq!(decoded, body);
    }

    /// Arbitrary bytes: no panic, the body stays under max, consumption never exceeds the
    /// input, and the outcome does not depend on how the bytes were split.
    #[test]
    fn arbitrary_bytes_never_panic_and_do_not_depend_on_splits(
        input in proptest::collection::vec(any::<u8>(), 0..512),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
        max in 0usize..128,
    ) {
        let whole = decode_pieces(BodyFraming::Chunked, max, &input, &[]);
        let split = decode_pieces(BodyFraming::Chunked, max, &input, &cuts);
        prop_assert!(whole.0 <= input.len());
        prop_assert!(whole.1.len() <= max);
        prop_assert_eq!(whole, split);
    }

    /// Arbitrary bytes that look like chunk lines (hex digits, CR, LF, `;`) reach deeper
    /// states than uniform bytes do.
    #[test]
    fn chunk_like_bytes_never_panic_and_do_not_depend_on_splits(
        input in proptest::collection::vec(
            prop::sample::select(&b"0123456789abcdefX;= \t\r\n"[..]), 0..512),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
        max in 0usize..4096,
    ) {
        let whole = decode_pieces(BodyFraming::Chunked, max, &input, &[]);
        let split = decode_pieces(BodyFraming::Chunked, max, &input, &cuts);
        prop_assert!(whole.1.len() <= max);
        prop_assert_eq!(whole, split);
    }

    /// Headers from arbitrary values never panic the framing check.
    #[test]
    fn framing_never_panics(value in "[ -~]{0,24}", te in any::<bool>()) {
        let name = if te { "Transfer-Encoding" } else { "Content-Length" };
        if let Ok(Some(head)) =
            parse_request_head(format!("POST / HTTP/1.1\r\n{name}: {value}\r\n\r\n").as_bytes())
        {
            let _ = head.body_framing();
        }
    }
}

#[test]
fn transfer_encoding_in_an_http_1_0_request_is_faulty_framing() {
    let head = |extra: &str| {
        let text = format!("POST /api/realtime/publish HTTP/1.0\r\nHost: x\r\n{extra}\r\n");
        parse_request_head(text.as_bytes()).unwrap().unwrap()
    };
    assert_eq!(
        head("Transfer-Encoding: chunked\r\n").body_framing(),
        Err(BodyError::TransferEncodingInHttp10)
    );
    assert_eq!(
        head("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n").body_framing(),
        Err(BodyError::TransferEncodingInHttp10)
    );
    assert_eq!(
        head("Content-Length: 3\r\n").body_framing(),
        Ok(BodyFraming::Length(3))
    );
}
