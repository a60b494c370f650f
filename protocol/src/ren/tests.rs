use super::*;

/// Splits one SSE chunk into (id, event, data JSON).
fn fields(chunk: &[u8]) -> (u64, String, serde_json::Value) {
    let text = std::str::from_utf8(chunk).unwrap();
    assert!(text.ends_with("\n\n"), "{text:?}");
    let mut id = None;
    let mut event = None;
    let mut data = None;
    for line in text.trim_end_matches('\n').split('\n') {
        let (name, value) = line.split_once(": ").unwrap();
        match name {
            "id" => id = Some(value.parse().unwrap()),
            "event" => event = Some(value.to_owned()),
            "data" => data = Some(serde_json::from_str(value).unwrap()),
            other => panic!("unexpected field {other}"),
        }
    }
    (id.unwrap(), event.unwrap(), data.unwrap())
}

#[test]
fn filters() {
    assert_eq!(RenFilter::parse(None).unwrap(), RenFilter::All);
    assert_eq!(RenFilter::parse(Some("")).unwrap(), RenFilter::All);
    assert_eq!(RenFilter::parse(Some("*")).unwrap(), RenFilter::All);
    assert_eq!(RenFilter::parse(Some("kv,*")).unwrap(), RenFilter::All);
    let f = RenFilter::parse(Some("kv,db,kv,my_jobs-2")).unwrap();
    assert_eq!(
        f,
        RenFilter::Domains(vec!["db".into(), "kv".into(), "my_jobs-2".into()].into())
    );
    assert!(f.matches("kv") && f.matches("my_jobs-2"));
    assert!(!f.matches("storage") && !f.matches("k"));
    let long = "a".repeat(33);
    for bad in [
        "KV",
        "kv,",
        ",kv",
        "kv db",
        "kv;db",
        "ü",
        "**",
        long.as_str(),
    ] {
        let refusal = RenFilter::parse(Some(bad)).unwrap_err();
        assert_eq!(refusal.error, ApiError::BadRequest, "{bad}");
        assert!(refusal.message.starts_with("`s`"), "{}", refusal.message);
    }
    assert!(RenFilter::parse(Some(&"a".repeat(32))).is_ok());
    let many: Vec<String> = (0..65).map(|i| format!("d{i}")).collect();
    assert!(RenFilter::parse(Some(&many.join(","))).is_err());
}

#[test]
fn realtime_and_presence_chunks() {
    let data = b"{\"a\":\n[1,\r\n2]}";
    let chunk = PendingChunk::realtime("chat:lobby", data, Some("alice"), None, 43, 7).finish(1287);
    let (id, event, data) = fields(&chunk);
    assert_eq!((id, event.as_str()), (1287, "realtime.message"));
    assert_eq!(
        data,
        serde_json::json!({"t":"realtime.message","r":"realtime","v":"43","ch":"chat:lobby",
            "data":{"a":[1,2]},"uid":"alice","ts":7})
    );
    assert!(chunk.starts_with(b"id: 1287\nevent: realtime.message\ndata: {"));
    let from_tab = PendingChunk::realtime("c", b"1", None, Some("tab-\"9\""), 1, 2).finish(3);
    let (_, _, data) = fields(&from_tab);
    assert_eq!(data["src"], "tab-\"9\"", "src escaped as a JSON string");
    assert!(data.get("uid").is_none());

    let join = PendingChunk::presence(PresenceKind::Join, "c", "bob", None, 9).finish(u64::MAX);
    let (id, event, data) = fields(&join);
    assert_eq!((id, event.as_str()), (u64::MAX, "presence.join"));
    assert_eq!(
        data,
        serde_json::json!({"t":"presence.join","r":"presence","ch":"c","data":null,"uid":"bob","ts":9})
    );
    let leave = PendingChunk::presence(PresenceKind::Leave, "c", "b\"o", Some(b"1"), 9).finish(0);
    let (_, event, data) = fields(&leave);
    assert_eq!(event, "presence.leave");
    assert!(data.get("data").is_none());
    assert_eq!(data["uid"], "b\"o");

    let meta = PendingChunk::truncated("12", 5).finish(99);
    let (id, event, data) = fields(&meta);
    assert_eq!((id, event.as_str()), (99, "ren.meta"));
    assert_eq!(
        data["data"],
        serde_json::json!({"truncated":true,"lastEventId":"12"})
    );
    assert_eq!(data["r"], "ren");
}

#[test]
fn one_event_or_a_batch() {
    let mut p = ApiParser::new();
    let one = p
        .ren_events(
            br#"{"t":"kv.put","k":"todo:abc","ns":"demo","data":{"n":123456789012345678901234567890}}"#,
            100,
            Some("tab-1"),
            1000,
        )
        .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].r, "kv", "r defaults to the prefix of t");
    let chunk = one[0].chunk.clone().finish(5);
    let text = std::str::from_utf8(&chunk).unwrap();
    assert!(
        text.contains(r#""data":{"n":123456789012345678901234567890}"#),
        "data byte for byte: {text}"
    );
    let (_, event, data) = fields(&chunk);
    assert_eq!(event, "kv.put");
    assert_eq!(data["src"], "tab-1", "src from the header");
    assert_eq!(data["ts"], 100);
    assert_eq!(data["k"], "todo:abc");

    let batch = p
        .ren_events(
            br#"[{"t":"db.document.created","r":"db","src":"own","ts":5},{"t":"jobs.done","uid":null}]"#,
            100,
            Some("header"),
            1000,
        )
        .unwrap();
    assert_eq!(batch.len(), 2);
    let (_, _, first) = fields(&batch[0].chunk.clone().finish(1));
    assert_eq!(
        (first["src"].as_str(), first["ts"].as_u64()),
        (Some("own"), Some(5))
    );
    let (_, _, second) = fields(&batch[1].chunk.clone().finish(2));
    assert_eq!(batch[1].r, "jobs");
    assert!(second.get("uid").is_none());
    assert!(p.ren_events(b"[]", 0, None, 10).unwrap().is_empty());
    // A `src` in the body is at most 256 bytes, as the header is.
    let long = format!(r#"{{"t":"kv.put","src":"{}"}}"#, "s".repeat(257));
    assert!(p.ren_events(long.as_bytes(), 0, None, 1000).is_err());
}

#[test]
fn a_bad_entry_refuses_the_batch_and_is_named() {
    let mut p = ApiParser::new();
    let mut refused = |body: &str| {
        let refusal = p.ren_events(body.as_bytes(), 0, None, 8).unwrap_err();
        assert_eq!(refusal.error, ApiError::BadRequest, "{body}");
        refusal.message
    };
    let m = refused(r#"[{"t":"kv.put"},{"t":"kv.put"},{"t":7}]"#);
    assert!(m.starts_with("events[2].t: "), "{m}");
    assert!(refused(r#"[{"t":"kv.put"},{"r":"kv"}]"#).starts_with("events[1].t: missing"));
    assert!(refused(r#"{"t":"kv put"}"#).starts_with("event.t: "));
    assert!(refused(r#"{"t":"kv.put","r":"KV"}"#).starts_with("event.r: "));
    assert!(
        refused(r#"{"t":"Kv.put"}"#).starts_with("event.r: "),
        "derived r checked"
    );
    assert!(refused(r#"{"t":"ren.meta"}"#).starts_with("event.r: "));
    assert!(refused(r#"{"t":"x.y","r":"ren"}"#).contains("reserved"));
    assert!(refused(r#"{"t":"kv.put","ts":-1}"#).starts_with("event.ts: "));
    assert!(refused(r#"{"t":"kv.put","ts":1.5}"#).starts_with("event.ts: "));
    assert!(refused(r#"{"t":"kv.put","k":1}"#).starts_with("event.k: must be a string"));
    assert!(refused(r#"{"t":"kv.put","data":"123456789"}"#).starts_with("event.data: 11 bytes"));
    assert!(refused(r#"[{"t":"kv.put"},{"t":"kv.put","key":1}]"#)
        .starts_with("events[1]: unknown field `key`"));
    assert!(refused(r#"[{"t":"kv.put"},3]"#).starts_with("events[1]: an event must be"));
    assert!(refused("7").starts_with("the body must be"));
    assert!(refused("  ").starts_with("the body must be"));
    assert!(refused("[{").starts_with("malformed JSON"));
    let many = format!("[{}]", vec![r#"{"t":"a"}"#; 1001].join(","));
    assert!(refused(&many).contains("at most 1000"));
}

#[test]
fn answers_and_head() {
    assert_eq!(accepted(3), br#"{"ok":true,"accepted":3}"#);
    let head =
        String::from_utf8(stream_head(&[("Access-Control-Allow-Origin", "https://a")])).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(head.contains("Content-Type: text/event-stream\r\n"));
    assert!(head.contains("Access-Control-Allow-Origin: https://a\r\n"));
    assert!(head.ends_with("\r\n\r\n") && !head.contains("Content-Length"));
}

proptest::proptest! {
    /// Whatever the strings and whitespace of an accepted event, its chunk is exactly one
    /// SSE event (three lines, one blank line), `event:` is `t`, and the `data:` line is
    /// JSON that gives every field back.
    #[test]
    fn any_accepted_event_is_one_well_formed_sse_event(
        k in "\\PC{0,12}|[\\r\\n\\t\"\\\\]{1,4}",
        uid in "\\PC{0,12}",
        gap in "[ \\t\\r\\n]{0,3}",
        id in proptest::prelude::any::<u64>(),
    ) {
        let body = serde_json::json!({"t": "kv.put", "k": k, "uid": uid}).to_string();
        // Raw whitespace (CR/LF included) inside `data`, where JSON allows it.
        let body = format!(
            "{}{gap},{gap}\"data\"{gap}:{gap}[{gap}1{gap},{gap}{{\"a\":{gap}\"x\\ny\"}}{gap}]{gap}}}",
            &body[..body.len() - 1]
        );
        let mut p = ApiParser::new();
        let events = p.ren_events(body.as_bytes(), 1, None, 1 << 20).unwrap();
        let chunk = events[0].chunk.clone().finish(id);
        let text = std::str::from_utf8(&chunk).unwrap();
        proptest::prop_assert!(text.ends_with("\n\n"));
        proptest::prop_assert_eq!(text.matches('\n').count(), 4, "{:?}", text);
        proptest::prop_assert!(!text.contains('\r'));
        let (got_id, event, data) = fields(&chunk);
        proptest::prop_assert_eq!(got_id, id);
        proptest::prop_assert_eq!(event, "kv.put");
        proptest::prop_assert_eq!(data["k"].as_str(), Some(k.as_str()));
        proptest::prop_assert_eq!(data["uid"].as_str(), Some(uid.as_str()));
        proptest::prop_assert_eq!(&data["data"], &serde_json::json!([1, {"a": "x\ny"}]));
    }
}
