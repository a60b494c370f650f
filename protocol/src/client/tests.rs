use super::*;
use proptest::prelude::*;

fn parse(text: &str) -> Result<ClientFrame<'_>, ParseFailure<'_>> {
    FrameParser::new().parse(text.as_bytes())
}

#[test]
fn subscribe_with_catch_up() {
    let frame =
        parse(r#"{"action":"subscribe","channel":"chat:lobby","lastEventId":41,"epoch":"e1"}"#);
    let ClientFrame::Subscribe(sub) = frame.unwrap() else {
        panic!("not a subscribe")
    };
    assert_eq!(sub.channel.as_str(), "chat:lobby");
    assert_eq!(sub.last_event_id, Some(41));
    assert_eq!(sub.epoch.as_deref(), Some("e1"));
    assert_eq!(sub.token, None);
}

#[test]
fn publish_keeps_raw_data_and_ref() {
    let text = r#"{"action":"publish","channel":"c","data":{"b":1,"a":[1.50,"x"]},"userId":"alice","ref":"r-1"}"#;
    let ClientFrame::Publish(p) = parse(text).unwrap() else {
        panic!("not a publish")
    };
    assert_eq!(p.data, br#"{"b":1,"a":[1.50,"x"]}"#);
    assert_eq!(p.user_id.as_deref(), Some("alice"));
    assert_eq!(p.reference, Some(&br#""r-1""#[..]));
}

/// A key given twice: the first occurrence is the one checked and the one kept (found
/// in review: `ref` was checked on the first and echoed from the last, so any JSON
/// value could come back as `ref`).
#[test]
fn a_duplicated_key_keeps_its_first_value() {
    let text = r#"{"action":"publish","channel":"c","data":1,"ref":1,"ref":{"x":[1,2]},"data":2}"#;
    let ClientFrame::Publish(p) = parse(text).unwrap() else {
        panic!("not a publish")
    };
    assert_eq!(p.reference, Some(&b"1"[..]));
    assert_eq!(p.data, b"1");
    // An escaped first `ref` is refused, not replaced by a plain one after it.
    let text = r#"{"action":"publish","channel":"c","data":1,"r\u0065f":1,"ref":{"x":[1,2]}}"#;
    let err = parse(text).unwrap_err();
    assert_eq!(err.code, ErrorCode::BadRequest);
    assert_eq!(err.reference, None, "nothing echoed");
    // A key that only looks like one after a wrong decoding stays another key.
    let text = r#"{"action":"publish","channel":"c","data":1,"\ref":1,"ref":"r"}"#;
    let ClientFrame::Publish(p) = parse(text).unwrap() else {
        panic!("not a publish")
    };
    assert_eq!(p.reference, Some(&br#""r""#[..]));
}

#[test]
fn publish_with_null_user_id_as_the_sdk_sends_it() {
    // The SDK sends `userId: undefined`, which JSON.stringify drops; null is accepted too.
    let ClientFrame::Publish(p) =
        parse(r#"{"action":"publish","channel":"c","data":1,"userId":null}"#).unwrap()
    else {
        panic!("not a publish")
    };
    assert_eq!(p.user_id, None);
    assert_eq!(p.data, b"1");
}

#[test]
fn bad_requests() {
    for text in [
        "{",
        "[1,2]",
        "\"x\"",
        "42",
        r#"{"channel":"c"}"#,
        r#"{"action":"dance","channel":"c"}"#,
        r#"{"action":"publish","data":1}"#,
        r#"{"action":"publish","channel":"c"}"#,
        r#"{"action":"subscribe","channel":7}"#,
        r#"{"action":"subscribe","channel":"c","lastEventId":-1}"#,
        r#"{"action":"presence:join","channel":"c"}"#,
        r#"{"action":"publish","channel":"c","data":1,"ref":{"x":1}}"#,
    ] {
        let err = parse(text).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest, "{text}");
    }
}

#[test]
fn errors_echo_ref_and_channel() {
    let err = parse(r#"{"action":"publish","channel":"c","ref":9}"#).unwrap_err();
    assert_eq!(err.reference, Some(&b"9"[..]));
    assert_eq!(err.channel.as_deref(), Some("c"));
}

#[test]
fn invalid_channels() {
    for text in [
        r#"{"action":"subscribe","channel":""}"#,
        r#"{"action":"subscribe","channel":"a\u0001b"}"#,
    ] {
        assert_eq!(
            parse(text).unwrap_err().code,
            ErrorCode::InvalidChannel,
            "{text}"
        );
    }
    let long = format!(
        r#"{{"action":"subscribe","channel":"{}"}}"#,
        "x".repeat(256)
    );
    assert_eq!(parse(&long).unwrap_err().code, ErrorCode::InvalidChannel);
}

#[test]
fn presence_frames() {
    let f = parse(r#"{"action":"presence:join","channel":"c","userId":"u","metadata":{"n":1}}"#)
        .unwrap();
    let ClientFrame::PresenceJoin(j) = f else {
        panic!("not a join")
    };
    assert_eq!(j.metadata, Some(&br#"{"n":1}"#[..]));
    assert!(matches!(
        parse(r#"{"action":"presence:leave","channel":"c"}"#),
        Ok(ClientFrame::PresenceLeave { .. })
    ));
    assert!(matches!(
        parse(r#"{"action":"ping"}"#),
        Ok(ClientFrame::Ping)
    ));
}

/// A lone surrogate escape is valid JSON (RFC 8259) and what `JSON.stringify` writes for
/// a string cut in the middle of an emoji: it passes raw, as sent (found in review:
/// simd-json refused it and the publish was a `bad_request`). Pairs stay pairs, and an
/// escaped backslash before `u` is no escape.
#[test]
fn lone_surrogate_escapes_are_valid_json_and_pass_raw() {
    for data in [
        r#""a\ud83dz""#,
        r#""\udc00""#,
        r#""\ud83d\ude00 \ud83d""#,
        r#"{"t":"\ud800","n":1e400}"#,
        r#""\\ud83d""#,
    ] {
        let text =
            format!(r#"{{"action":"publish","channel":"c","data":{data},"userId":"\ud83d"}}"#);
        let frame = parse(&text).unwrap_or_else(|e| panic!("{data}: {e:?}"));
        let ClientFrame::Publish(p) = frame else {
            panic!("not a publish")
        };
        assert_eq!(p.data, data.as_bytes());
        assert_eq!(p.user_id.as_deref(), Some("\u{fffd}"));
    }
    assert!(parse(r#"{"action":"publish","channel":"c","data":"\ud83"}"#).is_err());
}

#[test]
fn numbers_beyond_64_bits_are_valid_json_and_pass_raw() {
    for data in [
        "123456789012345678901234567890",
        "1e400",
        "-1E-400",
        r#"{"big":[123456789012345678901234567890,1e400,-0.5e+999],"s":"1e400"}"#,
    ] {
        let text = format!(r#"{{"action":"publish","channel":"c","data":{data},"ref":1e400}}"#);
        let frame = parse(&text).unwrap_or_else(|e| panic!("{data}: {e:?}"));
        let ClientFrame::Publish(p) = frame else {
            panic!("not a publish")
        };
        assert_eq!(p.data, data.as_bytes());
        assert_eq!(p.reference, Some(&b"1e400"[..]));
    }
    // A huge lastEventId is still not a seq.
    let err = parse(
        r#"{"action":"subscribe","channel":"c","lastEventId":123456789012345678901234567890}"#,
    )
    .unwrap_err();
    assert!(err.message.contains("lastEventId"), "{err:?}");
    // Invalid JSON stays invalid, with or without big numbers.
    for bad in [
        r#"{"action":"publish","channel":"c","data":1e400,}"#,
        r#"{"action":"publish","channel":"c","data":01}"#,
        r#"{"action":"publish","channel":"c","data":1.e5}"#,
        r#"{"action":"publish","channel":"c","data":[1e400}"#,
    ] {
        let err = parse(bad).unwrap_err();
        assert!(err.message.starts_with("malformed JSON"), "{bad}: {err:?}");
    }
}

proptest! {
    /// The parser never panics, whatever the bytes.
    #[test]
    fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = FrameParser::new().parse(&bytes);
    }

    /// Any JSON value as `data` comes back byte-for-byte.
    #[test]
    fn data_round_trips(data in arb_json()) {
        let text = format!(r#"{{"action":"publish","channel":"c","data":{data}}}"#);
        let mut parser = FrameParser::new();
        let frame = parser.parse(text.as_bytes()).unwrap();
        let ClientFrame::Publish(p) = frame else { panic!("not a publish") };
        prop_assert_eq!(p.data, data.as_bytes());
    }
}

fn arb_json() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        // Valid JSON numbers that no 64-bit type holds.
        "-?[1-9][0-9]{20,40}",
        "-?[1-9](\\.[0-9]{1,6})?[eE][+-]?[3-9][0-9]{2,3}",
        "[a-z\"\\\\]{0,8}".prop_map(|s| serde_json::to_string(&s).unwrap()),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4)
                .prop_map(|v| format!("[{}]", v.join(","))),
            proptest::collection::vec(("[a-z]{1,4}", inner), 0..4).prop_map(|v| {
                let members: Vec<String> =
                    v.into_iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    })
}
