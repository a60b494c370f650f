//! The PROXY protocol (HAProxy's `send-proxy` / `send-proxy-v2`), sans IO: the header a
//! TCP proxy puts in front of the connection's first bytes to say whom it is relaying.
//! Parsing is `ppp`'s; this module only says what the bytes at the start of a connection
//! are and where the client is.
//!
//! ```text
//!  first bytes ──► parse ──► NotProxy (serve as is)
//!                        ├─► Incomplete (read more; a v1 header is ≤ 107 bytes, v2 ≤ 16 + 65,535)
//!                        ├─► Header { len, client: Some(addr) | None (LOCAL / UNKNOWN) }
//!                        └─► Invalid (refuse)
//! ```

use std::net::{IpAddr, SocketAddr};

use ppp::{v1, v2, HeaderResult, PartialResult};

/// The v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The v1 prefix.
const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// Longest v1 header, CRLF included.
const V1_MAX: usize = 107;
/// Longest header accepted: v2's 16 fixed bytes plus addresses and TLVs (a v1 header is
/// at most 107 bytes).
pub const MAX_PROXY_HEADER: usize = 16 + 1024;

/// What the start of a connection holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyParse {
    /// No PROXY header (the bytes cannot start one).
    NotProxy,
    /// Possibly a header; more bytes are needed to tell.
    Incomplete,
    /// A complete header of `len` bytes. `client`: the address it relays for (`None` for
    /// a v2 `LOCAL` command, such as a health check, or a v1 `UNKNOWN`).
    Header {
        /// Bytes the header takes.
        len: usize,
        /// The client's address.
        client: Option<SocketAddr>,
    },
    /// A malformed header.
    Invalid(String),
}

/// Looks at the first bytes of a connection.
pub fn parse(bytes: &[u8]) -> ProxyParse {
    let prefix_of = |whole: &[u8]| bytes.len() < whole.len() && whole.starts_with(bytes);
    if bytes.is_empty() || prefix_of(V2_SIGNATURE) || prefix_of(V1_PREFIX) {
        return ProxyParse::Incomplete;
    }
    if !bytes.starts_with(V2_SIGNATURE) && !bytes.starts_with(V1_PREFIX) {
        return ProxyParse::NotProxy;
    }
    if bytes.starts_with(V1_PREFIX) {
        // A v1 header is one line of at most 107 bytes: with its CRLF in sight it is
        // complete, whatever the parser would still wait for.
        match bytes.windows(2).position(|w| w == b"\r\n") {
            Some(end) if end + 2 <= V1_MAX => {
                let line = &bytes[..end + 2];
                return match HeaderResult::parse(line) {
                    HeaderResult::V1(Ok(header)) => v1_header(&header),
                    HeaderResult::V1(Err(e)) => ProxyParse::Invalid(format!("PROXY v1: {e}")),
                    HeaderResult::V2(_) => ProxyParse::Invalid("PROXY v1: malformed".into()),
                };
            }
            None if bytes.len() < V1_MAX => return ProxyParse::Incomplete,
            _ => return ProxyParse::Invalid("PROXY v1 header longer than 107 bytes".into()),
        }
    }
    let parsed = HeaderResult::parse(bytes);
    if parsed.is_incomplete() {
        if bytes.len() >= MAX_PROXY_HEADER {
            return ProxyParse::Invalid("PROXY header too long".into());
        }
        return ProxyParse::Incomplete;
    }
    match parsed {
        HeaderResult::V1(Ok(header)) => v1_header(&header),
        HeaderResult::V2(Ok(header)) => {
            let client = match (header.command, header.addresses) {
                (v2::Command::Local, _) => None,
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                (v2::Command::Proxy, _) => None,
            };
            ProxyParse::Header {
                len: header.len(),
                client,
            }
        }
        HeaderResult::V1(Err(e)) => ProxyParse::Invalid(format!("PROXY v1: {e}")),
        HeaderResult::V2(Err(e)) => ProxyParse::Invalid(format!("PROXY v2: {e}")),
    }
}

fn v1_header(header: &v1::Header<'_>) -> ProxyParse {
    ProxyParse::Header {
        len: header.header.len(),
        client: match header.addresses {
            v1::Addresses::Tcp4(a) => {
                Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
            }
            v1::Addresses::Tcp6(a) => {
                Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
            }
            v1::Addresses::Unknown => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_headers_give_the_client_and_their_length() {
        let header = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 3001\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(header),
            ProxyParse::Header {
                len: 44,
                client: Some("203.0.113.7:51234".parse().unwrap())
            }
        );
        let v6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 443\r\n";
        assert!(matches!(parse(v6), ProxyParse::Header { client: Some(a), .. } if a.is_ipv6()));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            ProxyParse::Header {
                len: 15,
                client: None
            }
        );
    }

    #[test]
    fn partial_and_foreign_bytes() {
        assert_eq!(parse(b""), ProxyParse::Incomplete);
        assert_eq!(parse(b"PRO"), ProxyParse::Incomplete);
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), ProxyParse::Incomplete);
        assert_eq!(parse(b"\r\n\r\n\0"), ProxyParse::Incomplete);
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), ProxyParse::NotProxy);
        assert_eq!(parse(b"POST"), ProxyParse::NotProxy);
        assert!(matches!(
            parse(b"PROXY BOGUS 1 2 3 4\r\n"),
            ProxyParse::Invalid(_)
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 nonsense\r\n"),
            ProxyParse::Invalid(_)
        ));
        assert!(matches!(parse(&[b'P'; 200]), ProxyParse::NotProxy));
        let long = [&b"PROXY "[..], &[b'1'; 120]].concat();
        assert!(matches!(parse(&long), ProxyParse::Invalid(_)));
    }

    #[test]
    fn v2_headers_proxy_and_local() {
        let addresses: v2::Addresses = (
            "198.51.100.9:40000".parse::<SocketAddr>().unwrap(),
            "10.0.0.1:3001".parse::<SocketAddr>().unwrap(),
        )
            .into();
        let proxied = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            addresses,
        )
        .build()
        .unwrap();
        let mut bytes = proxied.clone();
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            parse(&bytes),
            ProxyParse::Header {
                len: proxied.len(),
                client: Some("198.51.100.9:40000".parse().unwrap())
            }
        );
        assert_eq!(parse(&proxied[..20]), ProxyParse::Incomplete);
        let local = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Local,
            v2::Protocol::Unspecified,
            v2::Addresses::Unspecified,
        )
        .build()
        .unwrap();
        assert_eq!(
            parse(&local),
            ProxyParse::Header {
                len: local.len(),
                client: None
            }
        );
    }
}
