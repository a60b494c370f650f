//! The benchmark payload: `{"lg":<ns>,"i":<id>,"p":"xxxx…"}` padded to a fixed size.
//!
//! `lg` is the INTENDED send time in nanoseconds since the load generator started, `i`
//! the message id. Receivers find both by scanning the frame for `"lg":`, so the same
//! code works whatever envelope a server wraps around the data (Ringcast's
//! `realtime.message`, Socket.IO's `42["message",…]`, the floor's echo of the publish).

/// Writes the data object into `out` (cleared first), padded with `x` to `size` bytes
/// when `size` is larger than the object without padding.
pub fn write_data(out: &mut Vec<u8>, lg_ns: u64, id: u64, size: usize) {
    use std::io::Write;
    out.clear();
    // `write!` into a Vec cannot fail.
    let _ = write!(out, "{{\"lg\":{lg_ns},\"i\":{id},\"p\":\"");
    let fixed = out.len() + 2;
    let pad = size.saturating_sub(fixed);
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(b"\"}");
}

/// A delivery stamp found in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Intended send time, ns since the load generator started.
    pub lg_ns: u64,
    /// Message id.
    pub id: u64,
}

/// Finds `"lg":N` and the `"i":M` after it. `None` if the frame carries no stamp
/// (acks, pongs, `connected`).
pub fn find_stamp(frame: &[u8]) -> Option<Stamp> {
    let at = find(frame, b"\"lg\":")? + 5;
    let (lg_ns, used) = parse_u64(&frame[at..])?;
    let rest = &frame[at + used..];
    let at_i = find(rest, b"\"i\":")? + 4;
    let (id, _) = parse_u64(&rest[at_i..])?;
    Some(Stamp { lg_ns, id })
}

fn parse_u64(b: &[u8]) -> Option<(u64, usize)> {
    let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return None;
    }
    let mut v = 0u64;
    for c in &b[..n] {
        v = v * 10 + u64::from(c - b'0');
    }
    Some((v, n))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    // Payload envelopes are short and the needle's first byte (`"`) is frequent, so a
    // plain window scan is as fast as anything fancier here.
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_padded_to_size_and_stamp_round_trips() {
        let mut out = Vec::new();
        for size in [0usize, 64, 512, 4096] {
            write_data(&mut out, 123_456_789, 42, size);
            if size > 40 {
                assert_eq!(out.len(), size);
            }
            assert!(out.starts_with(b"{\"lg\":123456789,\"i\":42,\"p\":\""));
            assert!(out.ends_with(b"\"}"));
            assert_eq!(
                find_stamp(&out),
                Some(Stamp {
                    lg_ns: 123_456_789,
                    id: 42
                })
            );
        }
    }

    #[test]
    fn stamp_is_found_inside_every_servers_envelope() {
        let mut data = Vec::new();
        write_data(&mut data, 5, 9, 64);
        let d = String::from_utf8(data).unwrap();
        let ringcast = format!(
            "{{\"event\":\"realtime.message\",\"channel\":\"bench\",\"data\":{d},\"seq\":3,\"ts\":1}}"
        );
        let socketio = format!("42[\"message\",{d}]");
        let floor = format!("{{\"action\":\"publish\",\"channel\":\"bench\",\"data\":{d}}}");
        for f in [ringcast, socketio, floor] {
            assert_eq!(
                find_stamp(f.as_bytes()),
                Some(Stamp { lg_ns: 5, id: 9 }),
                "{f}"
            );
        }
        assert_eq!(
            find_stamp(b"{\"event\":\"subscribed\",\"channel\":\"bench\"}"),
            None
        );
        assert_eq!(find_stamp(b"{\"lg\":,\"i\":1}"), None);
    }
}
