//! Hooks for the fuzz targets in `fuzz/` (and the property test below): every parser of
//! this crate over the same bytes, with the invariants that must hold whatever they are.

use crate::api::{ApiParser, PresenceAction};
use crate::body::{BodyDecoder, BodyFraming};
use crate::client::{ClientFrame, FrameParser};
use crate::ws::WsDecoder;

/// Runs `bytes` through every parser. Panics if one panics, or if a raw span it accepts
/// (`data`, `metadata`, `ref`) is not itself valid JSON: those reach subscribers as sent.
pub fn every_parser(bytes: &[u8]) {
    let valid = |span: &[u8], what: &str| {
        assert!(
            crate::json::validate(span, |_, _| {}).is_ok(),
            "accepted {what} is not JSON: {:?}",
            String::from_utf8_lossy(span)
        );
    };
    if let Ok(parsed) = FrameParser::new().parse_frame(bytes) {
        if let Some(reference) = parsed.reference {
            valid(reference, "ref");
        }
        match parsed.frame {
            ClientFrame::Publish(p) => valid(p.data, "data"),
            ClientFrame::PresenceJoin(j) | ClientFrame::PresenceUpdate(j) => {
                if let Some(metadata) = j.metadata {
                    valid(metadata, "metadata");
                }
            }
            _ => {}
        }
    }
    let mut api = ApiParser::new();
    if let Ok(p) = api.publish(bytes) {
        valid(p.data, "data");
    }
    for action in [
        PresenceAction::Join,
        PresenceAction::Update,
        PresenceAction::Leave,
    ] {
        if let Ok(Some(metadata)) = api.presence(action, bytes).map(|p| p.metadata) {
            valid(metadata, "metadata");
        }
    }
    let _ = api.token_request(bytes);
    let _ = api.ren_events(bytes, 0, Some("src"), 1 << 20);
    let _ = crate::http::parse_request_head(bytes);
    let _ = crate::proxy::parse(bytes);
    let mut decoder = WsDecoder::new(1 << 16);
    let mut buf = bytes.to_vec();
    let mut at = 0;
    // Each step consumes at least one byte or stops: bounded by the input's length.
    while at < buf.len() {
        match decoder.decode(&mut buf[at..]) {
            Ok(Some(decoded)) if decoded.consumed > 0 => at += decoded.consumed,
            _ => break,
        }
    }
    for framing in [
        BodyFraming::Chunked,
        BodyFraming::Length(bytes.len() as u64 / 2),
    ] {
        let mut body = Vec::new();
        let consumed = BodyDecoder::new(framing, 1 << 16).handle_bytes(bytes, &mut body);
        assert!(consumed <= bytes.len());
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            super::every_parser(&bytes);
        }

        /// Frames built from the protocol's own words, so parsing gets past the JSON.
        #[test]
        fn frame_like_text(
            action in prop::sample::select(vec!["publish", "subscribe", "presence:join", "presence:update", "unsubscribe", "ping"]),
            data in prop::sample::select(vec!["1", "\"x\"", "{\"a\":[1,2.5e400]}", "null", "\"\\ud83d\"", "[]", "tru", "{"]),
            reference in prop::sample::select(vec!["", ",\"ref\":1", ",\"ref\":\"r\"", ",\"ref\":{}", ",\"ref\":1e400"]),
            channel in "[a-z:-]{0,12}",
        ) {
            let text = format!(
                r#"{{"action":"{action}","channel":"{channel}","data":{data},"metadata":{data},"userId":"u"{reference}}}"#
            );
            super::every_parser(text.as_bytes());
        }
    }
}
