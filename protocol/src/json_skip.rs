//! Finding where one JSON value ends in text already known to be valid JSON (frames
//! this server encoded), without parsing it.

/// The index just past the JSON value starting at `at` (leading whitespace allowed).
/// `None` when the text ends first. Assumes valid JSON: it counts brackets outside
/// strings and does not check anything else.
pub(crate) fn skip_value(json: &[u8], mut at: usize) -> Option<usize> {
    while json.get(at)?.is_ascii_whitespace() {
        at += 1;
    }
    match json[at] {
        b'"' => skip_string(json, at),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = at;
            loop {
                match *json.get(i)? {
                    b'"' => {
                        i = skip_string(json, i)?;
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
            let len = json[at..]
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']') || b.is_ascii_whitespace())
                .unwrap_or(json.len() - at);
            Some(at + len)
        }
    }
}

/// The index just past the string whose opening quote is at `at`.
fn skip_string(json: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    loop {
        match *json.get(i)? {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::skip_value;

    #[test]
    fn ends_of_values() {
        for (text, end) in [
            (r#""a\"b",1"#, 6),
            (r#"{"a":[1,{"b":"}"}]},2"#, 19),
            ("123456789012345678901234567890,", 30),
            ("1e400}", 5),
            ("true", 4),
            (" [ 1 , 2 ] ,", 10),
        ] {
            assert_eq!(skip_value(text.as_bytes(), 0), Some(end), "{text}");
        }
        assert_eq!(skip_value(br#"{"a":"#, 0), None);
    }
}
