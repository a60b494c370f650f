//! Who the client is, when proxies stand in front: the trusted proxies of the config
//! (`trusted_proxies`: addresses or CIDR blocks) and the two ways they name the client,
//! a PROXY protocol header (`proxy_protocol = true`, see `ringcast_protocol::proxy`) and
//! `X-Forwarded-For`.
//!
//! Only a trusted peer is believed. `X-Forwarded-For` is read from the right: each proxy
//! appends the address it received from, so the rightmost entry that is not a trusted
//! proxy is the client (entries to its left were written by the client itself and are
//! ignored). The address found is used in logs and for per-IP limits.

use std::net::IpAddr;

use ipnet::IpNet;

/// The proxies whose word on the client address is taken.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses `trusted_proxies` entries: `10.0.0.1`, `10.0.0.0/8`, `::1`, `fd00::/8`.
    pub fn parse(entries: &[String]) -> Result<TrustedProxies, String> {
        entries
            .iter()
            .map(|e| {
                let e = e.trim();
                e.parse::<IpNet>()
                    .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        format!("trusted_proxies entry `{e}` is not an address or CIDR block")
                    })
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    /// Whether `addr` is a trusted proxy.
    pub fn trusts(&self, addr: IpAddr) -> bool {
        let addr = canonical(addr);
        self.0.iter().any(|net| net.contains(&addr))
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The client behind `peer`, given the request's `X-Forwarded-For` (all of its
    /// values, comma-joined or as separate headers): `peer` itself unless `peer` is
    /// trusted; then the rightmost forwarded address that is not a trusted proxy (or the
    /// leftmost, when every one is). An unparsable entry ends the walk: what is left of
    /// it cannot be trusted, so the last good address is taken.
    pub fn client(&self, peer: IpAddr, forwarded_for: &[&[u8]]) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        let entries = forwarded_for
            .iter()
            .rev()
            .flat_map(|value| value.split(|&b| b == b',').rev());
        for entry in entries {
            let Some(addr) = parse_entry(entry) else {
                break;
            };
            client = addr;
            if !self.trusts(addr) {
                break;
            }
        }
        client
    }
}

/// An `X-Forwarded-For` entry: an address, possibly `[v6]` or with a port.
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?.trim();
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Some(canonical(addr));
    }
    text.parse::<std::net::SocketAddr>()
        .ok()
        .map(|s| canonical(s.ip()))
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) as the IPv4 address they are.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusted() -> TrustedProxies {
        TrustedProxies::parse(&["127.0.0.1".into(), "10.0.0.0/8".into()]).unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let forwarded: &[&[u8]] = &[b"1.2.3.4"];
        assert_eq!(
            trusted().client(ip("203.0.113.9"), forwarded),
            ip("203.0.113.9")
        );
        assert_eq!(
            TrustedProxies::default().client(ip("127.0.0.1"), forwarded),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn the_rightmost_untrusted_forwarded_address_is_the_client() {
        let t = trusted();
        let one: &[&[u8]] = &[b"203.0.113.7"];
        assert_eq!(t.client(ip("127.0.0.1"), one), ip("203.0.113.7"));
        // The client wrote a fake entry on the left; two trusted hops on the right.
        let chain: &[&[u8]] = &[b"6.6.6.6, 203.0.113.7", b"10.1.2.3"];
        assert_eq!(t.client(ip("127.0.0.1"), chain), ip("203.0.113.7"));
        let ports: &[&[u8]] = &[b"[2001:db8::5]:443, 198.51.100.1:5000"];
        assert_eq!(t.client(ip("10.0.0.2"), ports), ip("198.51.100.1"));
        let garbage: &[&[u8]] = &[b"203.0.113.7, not-an-ip"];
        assert_eq!(t.client(ip("127.0.0.1"), garbage), ip("127.0.0.1"));
        let all_trusted: &[&[u8]] = &[b"10.0.0.9"];
        assert_eq!(t.client(ip("127.0.0.1"), all_trusted), ip("10.0.0.9"));
        assert_eq!(t.client(ip("127.0.0.1"), &[]), ip("127.0.0.1"));
    }

    #[test]
    fn mapped_addresses_and_bad_entries() {
        assert!(trusted().trusts(ip("::ffff:127.0.0.1")));
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(TrustedProxies::parse(&["proxy.local".into()]).is_err());
        assert!(TrustedProxies::parse(&["::1".into(), "fd00::/8".into()]).is_ok());
    }
}
