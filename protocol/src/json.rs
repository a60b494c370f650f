//! Small JSON helpers that simd-json does not offer: writing escaped strings into an
//! output buffer, and finding the raw byte span of a top-level member so that `data`
//! travels exactly as the publisher wrote it.
//!
//! The scanner assumes its input was already validated as JSON (by simd-json); on
//! anything unexpected it answers `None` rather than panicking.

/// Appends `s` as a JSON string literal (with quotes) to `out`.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f | 0x7f => {
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escape);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Appends the decimal form of `n`.
pub(crate) fn write_u64(out: &mut Vec<u8>, n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Raw spans of the top-level members of a JSON object that we forward untouched.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawMembers<'a> {
    pub data: Option<&'a [u8]>,
    pub metadata: Option<&'a [u8]>,
    pub reference: Option<&'a [u8]>,
}

/// Scans a validated JSON object and returns the raw bytes of its `data`, `metadata`
/// and `ref` members (the first occurrence wins, as in simd-json's tape, whose values
/// the parser checks: found in review, the last one used to win here). A member whose
/// first key is written with escapes comes back `None` (the caller refuses it). Keys written with
/// escape sequences are not recognised; the caller treats that as a missing member.
pub(crate) fn raw_members(input: &[u8]) -> Option<RawMembers<'_>> {
    let mut members = RawMembers::default();
    // Which of the three keys were seen already (bit 0 `data`, 1 `metadata`, 2 `ref`).
    let mut taken = 0u8;
    let mut i = skip_ws(input, 0);
    if input.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(input, i + 1);
    if input.get(i) == Some(&b'}') {
        return Some(members);
    }
    loop {
        let key_end = skip_string(input, i)?;
        let key = &input[i + 1..key_end - 1];
        i = skip_ws(input, key_end);
        if input.get(i) != Some(&b':') {
            return None;
        }
        let value_start = skip_ws(input, i + 1);
        let value_end = skip_value(input, value_start)?;
        let value = &input[value_start..value_end];
        // The first occurrence of a key wins. One written with escapes is not
        // recognised, but still takes the key's place: a later plain duplicate must not
        // stand in for it (the parser checked the first one; found in review).
        let escaped = key.contains(&b'\\');
        let member = match key {
            b"data" => Some(0),
            b"metadata" => Some(1),
            b"ref" => Some(2),
            _ if escaped => [&b"data"[..], b"metadata", b"ref"]
                .iter()
                .position(|name| unescaped_is(key, name)),
            _ => None,
        };
        if let Some(m) = member.filter(|m| taken & (1 << m) == 0) {
            taken |= 1 << m;
            if !escaped {
                let slot = match m {
                    0 => &mut members.data,
                    1 => &mut members.metadata,
                    _ => &mut members.reference,
                };
                *slot = Some(value);
            }
        }
        i = skip_ws(input, value_end);
        match input.get(i) {
            Some(b',') => i = skip_ws(input, i + 1),
            Some(b'}') => return Some(members),
            _ => return None,
        }
    }
}

/// The raw bytes of each element of a validated top-level JSON array, in order; `None`
/// when `input` is not an array.
pub(crate) fn raw_elements(input: &[u8]) -> Option<Vec<&[u8]>> {
    let mut elements = Vec::new();
    let mut i = skip_ws(input, 0);
    if input.get(i) != Some(&b'[') {
        return None;
    }
    i = skip_ws(input, i + 1);
    if input.get(i) == Some(&b']') {
        return Some(elements);
    }
    loop {
        let end = skip_value(input, i)?;
        elements.push(&input[i..end]);
        i = skip_ws(input, end);
        match input.get(i) {
            Some(b',') => i = skip_ws(input, i + 1),
            Some(b']') => return Some(elements),
            _ => return None,
        }
    }
}

fn skip_ws(input: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = input.get(i) {
        i += 1;
    }
    i
}

/// `input[start]` is `"`; returns the index just past the closing quote.
/// Whether the raw JSON string content `key` (escapes not decoded) spells `name`, an
/// ASCII word.
fn unescaped_is(key: &[u8], name: &[u8]) -> bool {
    let mut i = 0;
    let mut n = 0;
    while i < key.len() {
        let c = if key[i] == b'\\' {
            let c = match key.get(i + 1) {
                Some(b'u') => key
                    .get(i + 2..i + 6)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u32::from_str_radix(hex, 16).ok()),
                Some(b'b') => Some(8),
                Some(b'f') => Some(12),
                Some(b'n') => Some(10),
                Some(b'r') => Some(13),
                Some(b't') => Some(9),
                Some(&e) => Some(u32::from(e)),
                None => None,
            };
            i += if key.get(i + 1) == Some(&b'u') { 6 } else { 2 };
            match c {
                Some(c) => c,
                None => return false,
            }
        } else {
            i += 1;
            u32::from(key[i - 1])
        };
        if name.get(n).map(|&b| u32::from(b)) != Some(c) {
            return false;
        }
        n += 1;
    }
    n == name.len()
}

fn skip_string(input: &[u8], start: usize) -> Option<usize> {
    if input.get(start) != Some(&b'"') {
        return None;
    }
    let mut i = start + 1;
    loop {
        match input.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
}

fn skip_value(input: &[u8], start: usize) -> Option<usize> {
    match input.get(start)? {
        b'"' => skip_string(input, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = start;
            loop {
                match input.get(i)? {
                    b'"' => {
                        i = skip_string(input, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            let mut i = start;
            while let Some(b) = input.get(i) {
                if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    break;
                }
                i += 1;
            }
            (i > start).then_some(i)
        }
    }
}

/// Why bytes are not JSON (RFC 8259), and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{what} at byte {at}")]
pub struct JsonError {
    /// Byte offset of the problem.
    pub at: usize,
    /// What is wrong.
    pub what: &'static str,
}

/// Deepest nesting of arrays and objects accepted (simd-json's limit is of the same order).
pub const MAX_DEPTH: usize = 1024;

fn fail<T>(at: usize, what: &'static str) -> Result<T, JsonError> {
    Err(JsonError { at, what })
}

/// Checks that `input` is exactly one JSON text (RFC 8259, UTF-8, surrounding whitespace
/// allowed) without converting anything, and calls `number` with the byte range of every
/// number in it. Iterative (an explicit stack), so deep nesting cannot overflow the
/// thread's stack.
pub fn validate(input: &[u8], mut number: impl FnMut(usize, usize)) -> Result<(), JsonError> {
    if let Err(e) = std::str::from_utf8(input) {
        return fail(e.valid_up_to(), "invalid UTF-8");
    }
    // true: inside an object, false: inside an array.
    let mut stack: Vec<bool> = Vec::new();
    let mut i = skip_ws(input, 0);
    'value: loop {
        // A value starts at `i`.
        match input.get(i) {
            None => return fail(i, "unexpected end of input"),
            Some(b'{') => {
                if stack.len() >= MAX_DEPTH {
                    return fail(i, "nesting too deep");
                }
                i = skip_ws(input, i + 1);
                if input.get(i) == Some(&b'}') {
                    i += 1;
                } else {
                    stack.push(true);
                    i = object_key(input, i)?;
                    continue 'value;
                }
            }
            Some(b'[') => {
                if stack.len() >= MAX_DEPTH {
                    return fail(i, "nesting too deep");
                }
                i = skip_ws(input, i + 1);
                if input.get(i) == Some(&b']') {
                    i += 1;
                } else {
                    stack.push(false);
                    continue 'value;
                }
            }
            Some(b'"') => i = string_end(input, i)?,
            Some(b't') => i = literal(input, i, b"true")?,
            Some(b'f') => i = literal(input, i, b"false")?,
            Some(b'n') => i = literal(input, i, b"null")?,
            Some(b'-' | b'0'..=b'9') => {
                let end = number_end(input, i)?;
                number(i, end);
                i = end;
            }
            Some(_) => return fail(i, "expected a value"),
        }
        // A value ended at `i`: close containers or move to the next member.
        loop {
            i = skip_ws(input, i);
            let Some(&in_object) = stack.last() else {
                if i != input.len() {
                    return fail(i, "trailing characters after the JSON value");
                }
                return Ok(());
            };
            match (input.get(i), in_object) {
                (Some(b','), true) => {
                    i = object_key(input, skip_ws(input, i + 1))?;
                    continue 'value;
                }
                (Some(b','), false) => {
                    i = skip_ws(input, i + 1);
                    continue 'value;
                }
                (Some(b'}'), true) | (Some(b']'), false) => {
                    stack.pop();
                    i += 1;
                }
                (None, _) => return fail(i, "unexpected end of input"),
                _ => return fail(i, "expected `,` or the end of the container"),
            }
        }
    }
}

/// Reads `"key" :` at `i`; returns where the member's value starts.
fn object_key(input: &[u8], i: usize) -> Result<usize, JsonError> {
    if input.get(i) != Some(&b'"') {
        return fail(i, "expected a string key");
    }
    let i = skip_ws(input, string_end(input, i)?);
    if input.get(i) != Some(&b':') {
        return fail(i, "expected `:`");
    }
    Ok(skip_ws(input, i + 1))
}

/// `input[start]` is `"`; checks the string strictly and returns the index past its end.
fn string_end(input: &[u8], start: usize) -> Result<usize, JsonError> {
    let mut i = start + 1;
    loop {
        match input.get(i) {
            None => return fail(start, "unterminated string"),
            Some(b'"') => return Ok(i + 1),
            Some(b'\\') => match input.get(i + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                Some(b'u') => {
                    let hex = input.get(i + 2..i + 6);
                    if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                        return fail(i, "invalid \\u escape");
                    }
                    i += 6;
                }
                _ => return fail(i, "invalid escape"),
            },
            Some(0x00..=0x1f) => return fail(i, "control character in a string"),
            Some(_) => i += 1,
        }
    }
}

fn literal(input: &[u8], i: usize, word: &[u8]) -> Result<usize, JsonError> {
    if input.get(i..i + word.len()) == Some(word) {
        Ok(i + word.len())
    } else {
        fail(i, "invalid literal")
    }
}

/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?` at `start`; returns its end.
fn number_end(input: &[u8], start: usize) -> Result<usize, JsonError> {
    let digits = |mut i: usize| {
        let from = i;
        while input.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i, i - from)
    };
    let mut i = start;
    if input.get(i) == Some(&b'-') {
        i += 1;
    }
    match input.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(i).0,
        _ => return fail(i, "invalid number"),
    }
    if input.get(i) == Some(&b'.') {
        let (end, n) = digits(i + 1);
        if n == 0 {
            return fail(i, "invalid number: no digit after `.`");
        }
        i = end;
    }
    if let Some(b'e' | b'E') = input.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = input.get(i) {
            i += 1;
        }
        let (end, n) = digits(i);
        if n == 0 {
            return fail(i, "invalid number: no digit in the exponent");
        }
        i = end;
    }
    Ok(i)
}

/// Copies `input` into `out` with every number that simd-json might refuse (any
/// fraction or exponent, any integer beyond 64 bits) replaced by `0.0` padded with
/// spaces to the same length, after checking `input` strictly ([`validate`]). Offsets
/// stay the same, so raw spans found in `input` match the tape parsed from `out`; the
/// replaced numbers are only ever read raw from `input`.
pub fn copy_with_tape_safe_numbers(input: &[u8], out: &mut Vec<u8>) -> Result<(), JsonError> {
    let mut risky: Vec<(usize, usize)> = Vec::new();
    validate(input, |start, end| {
        let text = &input[start..end];
        let integer = !text.iter().any(|b| matches!(b, b'.' | b'e' | b'E'));
        let fits = integer
            && std::str::from_utf8(text)
                .is_ok_and(|t| t.parse::<i64>().is_ok() || t.parse::<u64>().is_ok());
        if !fits {
            risky.push((start, end));
        }
    })?;
    out.clear();
    out.extend_from_slice(input);
    for (start, end) in risky {
        // Every risky number has at least 3 bytes (`1e5`, `1.5`, or 20+ digits).
        out[start..end].fill(b' ');
        out[start..start + 3].copy_from_slice(b"0.0");
    }
    replace_lone_surrogates(out);
    Ok(())
}

/// Replaces every `\uXXXX` escape of a lone surrogate (a high one not followed by a low
/// one, or a low one alone) in the strings of `json` (valid JSON) by `\ufffd`, the same
/// length. RFC 8259's grammar allows them and `JSON.stringify` writes them (a string cut
/// in the middle of an emoji), but simd-json refuses them (found in review: such a
/// `data` was a `bad_request`); the raw spans still carry the bytes as sent.
fn replace_lone_surrogates(json: &mut [u8]) {
    let unit = |json: &[u8], at: usize| -> Option<u16> {
        let hex = json.get(at..at + 6)?;
        if &hex[..2] != b"\\u" {
            return None;
        }
        u16::from_str_radix(std::str::from_utf8(&hex[2..]).ok()?, 16).ok()
    };
    let (mut at, mut in_string) = (0, false);
    while at < json.len() {
        match (in_string, json[at]) {
            (false, b'"') => in_string = true,
            (true, b'"') => in_string = false,
            (true, b'\\') => {
                match unit(json, at) {
                    Some(0xD800..=0xDBFF)
                        if matches!(unit(json, at + 6), Some(0xDC00..=0xDFFF)) =>
                    {
                        at += 12;
                        continue;
                    }
                    Some(0xD800..=0xDFFF) => {
                        json[at..at + 6].copy_from_slice(b"\\ufffd");
                        at += 6;
                        continue;
                    }
                    _ => {}
                }
                at += 2;
                continue;
            }
            _ => {}
        }
        at += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_strings() {
        let mut out = Vec::new();
        write_str(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(out, r#""a\"b\\c\nd\u0001é""#.as_bytes());
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1}é");
    }

    #[test]
    fn writes_numbers() {
        for n in [0u64, 7, 10, 12345, u64::MAX] {
            let mut out = Vec::new();
            write_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn finds_raw_members() {
        let input = br#" { "action":"publish", "data" : {"b":1,"a":[1.50,"x}"]} , "ref": 7 ,"metadata":null}"#;
        let m = raw_members(input).unwrap();
        assert_eq!(m.data.unwrap(), br#"{"b":1,"a":[1.50,"x}"]}"#);
        assert_eq!(m.reference.unwrap(), b"7");
        assert_eq!(m.metadata.unwrap(), b"null");
    }

    #[test]
    fn strings_with_escaped_quotes() {
        let input = br#"{"data":"he said \"}\"","ref":"a\\"}"#;
        let m = raw_members(input).unwrap();
        assert_eq!(m.data.unwrap(), br#""he said \"}\"""#);
        assert_eq!(m.reference.unwrap(), br#""a\\""#);
    }

    fn valid(text: &str) -> bool {
        validate(text.as_bytes(), |_, _| {}).is_ok()
    }

    #[test]
    fn strict_validation() {
        for ok in [
            "0",
            "-0",
            "1.5e+10",
            "123456789012345678901234567890",
            "1e400",
            " [ ] ",
            r#"{"a":[true,false,null,"\u00e9\n"],"b":{}}"#,
            "\"é\"",
        ] {
            assert!(valid(ok), "{ok}");
        }
        for bad in [
            "",
            " ",
            "01",
            "1.",
            ".5",
            "1e",
            "+1",
            "-",
            "[1,]",
            "{\"a\":1,}",
            "[1 2]",
            "{\"a\" 1}",
            "{1:2}",
            "\"\\x\"",
            "\"\\u12\"",
            "\"a\tb\"",
            "tru",
            "nul",
            "[1]]",
            "{}{}",
            "\"abc",
            "[",
            "NaN",
            "Infinity",
        ] {
            assert!(!valid(bad), "{bad:?}");
        }
        assert!(validate(b"\"\xff\"", |_, _| {}).is_err());
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(!valid(&deep));
        let fine = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(valid(&fine));
        let mut numbers = Vec::new();
        validate(br#"[1,{"x":-2.5e3},"3"]"#, |s, e| numbers.push((s, e))).unwrap();
        assert_eq!(numbers, vec![(1, 2), (8, 14)]);
    }

    #[test]
    fn risky_numbers_are_replaced_in_place() {
        let input = br#"{"a":1e400,"b":12,"c":123456789012345678901234567890}"#;
        let mut out = Vec::new();
        copy_with_tape_safe_numbers(input, &mut out).unwrap();
        assert_eq!(out.len(), input.len());
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"a":0.0  ,"b":12,"c":0.0                           }"#
        );
    }

    proptest::proptest! {
        /// Over an alphabet without digits, the scanner agrees with serde_json exactly;
        /// with digits, everything serde_json reads, the scanner accepts.
        #[test]
        fn agrees_with_serde_json(text in "[\\[\\]{}:, \"\\\\a-ux0-9.eE+-]{0,24}") {
            let serde_ok = serde_json::from_str::<serde_json::Value>(&text).is_ok();
            if serde_ok {
                proptest::prop_assert!(valid(&text), "{}", text);
            }
            if !text.bytes().any(|b| b.is_ascii_digit()) {
                proptest::prop_assert_eq!(valid(&text), serde_ok, "{}", text);
            }
        }
    }

    #[test]
    fn empty_object_and_garbage() {
        assert_eq!(
            raw_elements(br#" [ {"a":[1,"]"]} , 2,"x" ] "#).unwrap(),
            vec![&br#"{"a":[1,"]"]}"#[..], b"2", br#""x""#]
        );
        assert_eq!(raw_elements(b"[]").unwrap(), Vec::<&[u8]>::new());
        assert!(raw_elements(b"{}").is_none());
        assert_eq!(raw_members(b"{}").unwrap(), RawMembers::default());
        assert!(raw_members(b"[1]").is_none());
        assert!(raw_members(b"{\"data\":").is_none());
        assert!(raw_members(b"").is_none());
    }
}
