use super::*;
use proptest::prelude::*;

/// A masked client frame, as browsers send.
fn client_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut out = vec![first_byte];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fn decode_all(
    decoder: &mut WsDecoder,
    mut buf: Vec<u8>,
) -> Result<Vec<(Message, Vec<u8>)>, WsError> {
    let mut out = Vec::new();
    while let Some(Decoded { consumed, message }) = decoder.decode(&mut buf)? {
        let bytes = match &message {
            Message::Text(p) | Message::Binary(p) | Message::Ping(p) => p.bytes(&buf).to_vec(),
            _ => Vec::new(),
        };
        out.push((message, bytes));
        buf.drain(..consumed);
    }
    Ok(out)
}

#[test]
fn text_frame_in_place() {
    let mut buf = client_frame(0x81, b"{\"action\":\"ping\"}");
    let decoded = WsDecoder::new(1024).decode(&mut buf).unwrap().unwrap();
    assert_eq!(decoded.consumed, buf.len());
    let Message::Text(payload) = decoded.message else {
        panic!("not text")
    };
    assert_eq!(payload.bytes(&buf), b"{\"action\":\"ping\"}");
}

#[test]
fn partial_frames_wait_for_more() {
    let full = client_frame(0x81, b"hello world");
    for cut in 0..full.len() {
        let mut part = full[..cut].to_vec();
        assert_eq!(
            WsDecoder::new(1024).decode(&mut part),
            Ok(None),
            "cut at {cut}"
        );
    }
}

#[test]
fn fragments_reassemble_with_control_frames_between() {
    let mut buf = client_frame(0x01, b"hel");
    buf.extend(client_frame(0x89, b"p"));
    buf.extend(client_frame(0x80, b"lo"));
    let messages = decode_all(&mut WsDecoder::new(1024), buf).unwrap();
    let messages: Vec<_> = messages
        .into_iter()
        .filter(|(m, _)| *m != Message::Fragment)
        .collect();
    assert_eq!(messages.len(), 2);
    assert!(matches!(messages[0].0, Message::Ping(_)));
    assert_eq!(messages[1].1, b"hello");
}

#[test]
fn fragments_arriving_in_pieces() {
    // Bytes arrive a few at a time, as from a socket; the caller keeps what is not
    // consumed and decodes again when more arrives.
    let mut wire = client_frame(0x01, b"frag");
    wire.extend(client_frame(0x89, b"hb"));
    wire.extend(client_frame(0x00, b"men"));
    wire.extend(client_frame(0x80, b"ted"));
    for chunk in 1..wire.len() {
        let mut decoder = WsDecoder::new(1024);
        let (mut buf, mut seen) = (Vec::new(), Vec::new());
        for piece in wire.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(Decoded { consumed, message }) = decoder.decode(&mut buf).unwrap() {
                match &message {
                    Message::Text(p) => seen.push(p.bytes(&buf).to_vec()),
                    Message::Ping(p) => seen.push(p.bytes(&buf).to_vec()),
                    _ => {}
                }
                buf.drain(..consumed);
            }
        }
        assert_eq!(
            seen,
            vec![b"hb".to_vec(), b"fragmented".to_vec()],
            "chunk size {chunk}"
        );
    }
}

#[test]
fn violations_map_to_close_codes() {
    let cases: Vec<(Vec<u8>, CloseCode)> = vec![
        (
            client_frame(0x81, &[0xff, 0xfe]),
            CloseCode::INVALID_PAYLOAD,
        ),
        (client_frame(0xC1, b"x"), CloseCode::PROTOCOL_ERROR),
        (client_frame(0x83, b"x"), CloseCode::PROTOCOL_ERROR),
        (client_frame(0x80, b"x"), CloseCode::PROTOCOL_ERROR),
        (client_frame(0x09, b"x"), CloseCode::PROTOCOL_ERROR),
        (client_frame(0x89, &[0u8; 126]), CloseCode::PROTOCOL_ERROR),
        (vec![0x81, 0x01, b'x'], CloseCode::PROTOCOL_ERROR),
        (client_frame(0x88, &[3]), CloseCode::PROTOCOL_ERROR),
    ];
    for (frame, code) in cases {
        let err = decode_all(&mut WsDecoder::new(1024), frame.clone()).unwrap_err();
        assert_eq!(err.close_code(), code, "{frame:02x?}");
    }
}

#[test]
fn too_big_is_known_from_the_header_alone() {
    let frame = client_frame(0x82, &vec![0u8; 70_000]);
    let mut head = frame[..14].to_vec();
    assert_eq!(
        WsDecoder::new(65_536).decode(&mut head),
        Err(WsError::TooBig)
    );
    let mut fragments = client_frame(0x01, &[b'a'; 40]);
    fragments.extend(client_frame(0x80, &[b'a'; 40]));
    assert_eq!(
        decode_all(&mut WsDecoder::new(64), fragments).unwrap_err(),
        WsError::TooBig
    );
}

#[test]
fn close_frames() {
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    let messages = decode_all(&mut WsDecoder::new(1024), client_frame(0x88, &payload)).unwrap();
    assert_eq!(messages[0].0, Message::Close(Some(CloseCode::NORMAL)));
    let out = close_frame(CloseCode::SLOW_CONSUMER, "slow consumer");
    assert_eq!(&out[..4], &[0x88, 15, 0x0f, 0xa8]);
}

/// Found in review: the close codes a frame may carry are checked (RFC 6455 §7.4), a
/// ping between fragments does not count toward the message's size, and a 64-bit
/// length with its top bit set is a protocol error.
#[test]
fn close_codes_fragment_sizes_and_huge_lengths() {
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
        let mut payload = code.to_be_bytes().to_vec();
        payload.push(b'x');
        let err = decode_all(&mut WsDecoder::new(1024), client_frame(0x88, &payload));
        let err = err.expect_err("refused");
        assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR, "code {code}");
    }
    for code in [1000u16, 1001, 1003, 1007, 1014, 3000, 4999] {
        let payload = code.to_be_bytes();
        let messages = decode_all(&mut WsDecoder::new(1024), client_frame(0x88, &payload));
        assert_eq!(
            messages.unwrap()[0].0,
            Message::Close(Some(CloseCode(code)))
        );
    }
    // 95 + 2 bytes of message with a 10-byte ping between, under a limit of 100.
    let mut buf = client_frame(0x01, &[b'a'; 95]);
    buf.extend(client_frame(0x89, &[b'p'; 10]));
    buf.extend(client_frame(0x80, b"bc"));
    let messages = decode_all(&mut WsDecoder::new(100), buf).unwrap();
    assert_eq!(messages.last().unwrap().1.len(), 97);
    // A 64-bit length with its top bit set.
    let mut huge = vec![0x82, 0x80 | 127];
    huge.extend_from_slice(&(1u64 << 63).to_be_bytes());
    huge.extend_from_slice(&[0x12, 0x34, 0x56, 0x78]);
    let err = decode_all(&mut WsDecoder::new(1024), huge).unwrap_err();
    assert_eq!(err.close_code(), CloseCode::PROTOCOL_ERROR);
}

proptest! {
    #[test]
    fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode_all(&mut WsDecoder::new(256), bytes);
    }

    #[test]
    fn masked_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..70_000)) {
        let messages = decode_all(&mut WsDecoder::new(1 << 20), client_frame(0x82, &payload)).unwrap();
        prop_assert_eq!(&messages[0].1, &payload);
    }
}
