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
/// and `ref` members (the last occurrence wins, as in simd-json). Keys written with
/// escape sequences are not recognised; the caller treats that as a missing member.
pub(crate) fn raw_members(input: &[u8]) -> Option<RawMembers<'_>> {
    let mut members = RawMembers::default();
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
        match key {
            b"data" => members.data = Some(value),
            b"metadata" => members.metadata = Some(value),
            b"ref" => members.reference = Some(value),
            _ => {}
        }
        i = skip_ws(input, value_end);
        match input.get(i) {
            Some(b',') => i = skip_ws(input, i + 1),
            Some(b'}') => return Some(members),
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

    #[test]
    fn empty_object_and_garbage() {
        assert_eq!(raw_members(b"{}").unwrap(), RawMembers::default());
        assert!(raw_members(b"[1]").is_none());
        assert!(raw_members(b"{\"data\":").is_none());
        assert!(raw_members(b"").is_none());
    }
}
