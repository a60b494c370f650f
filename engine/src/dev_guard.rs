//! What `--dev` asks of browser requests, since it asks for no API key: a page on another
//! site must not drive a developer's local server (found in review: any page the
//! developer visited could publish into it with a `text/plain` POST, which needs no
//! preflight, or open a WebSocket to its channels; and a DNS name rebound to the
//! server's address could read its history as a same-origin page).
//!
//! - The `Host` must be `localhost`, a `*.localhost` name, one of the names container
//!   runtimes give the host (`host.docker.internal`, `host.containers.internal`, …), an IP
//!   address, a name without a dot (a container's or the machine's own name), or one of
//!   `dev_allowed_hosts`: a public DNS name can be rebound to any address, so it is
//!   taken only when listed (a tunnel's, a LAN name).
//! - An `Origin`, when the tenant has no `allowed_origins`, must be a page of this
//!   machine (`localhost`, a `*.localhost` name, a loopback address, `0.0.0.0` or `::`),
//!   the request's own host (which passed the `Host` check), or one of
//!   `dev_allowed_hosts` (found in review: with a page behind one tunnel and the server
//!   behind another, both listed, the page was refused). A private or link-local
//!   address is taken only when the server was reached over the network (the `Host` is
//!   a non-loopback address, or a name listed in `dev_allowed_hosts`: those hosts can
//!   reach it directly anyway; an unlisted name may point at 127.0.0.1) or when
//!   it is one of this machine's own addresses (found in review: any private address was
//!   taken, so a page from another guest of a café's Wi-Fi could drive a server that
//!   listens on loopback only, which that guest cannot reach by itself). With
//!   `allowed_origins`, those instead. Requests without `Origin` (backends, the SDK in
//!   Node, curl) pass. Pages opened from disk (`null`, `file://`) are refused: sandboxed
//!   frames send `null` too, and a page from disk can be served locally instead.
//!
//! Applied to the HTTP API, the WebSocket upgrade and the REN stream, only with `--dev`
//! (outside it the API needs a key, and `allowed_origins` decides for browsers). The
//! probes, `/metrics` and the demo page are not behind it: a rebound name can read
//! `/metrics` unless `[metrics] bearer_token` is set (tenant ids with `tenant_labels`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ringcast_protocol::api::Refusal;
use ringcast_protocol::http::RequestHead;
use ringcast_protocol::ApiError;

use crate::config::Config;
use crate::tenant::Tenant;

/// Refuses (403 `forbidden`) a `--dev` request from a foreign page; `Ok` outside
/// `--dev`.
pub fn check(head: &RequestHead, config: &Config, tenant: &Tenant) -> Result<(), Refusal> {
    if !config.dev {
        return Ok(());
    }
    let listed = &config.dev_allowed_hosts;
    let host = head
        .header("host")
        .and_then(|h| std::str::from_utf8(h).ok())
        .map(|h| host_part(h.trim()));
    if let Some(host) = host.filter(|h| !host_allowed(h, listed)) {
        return Err(Refusal::new(
            ApiError::Forbidden,
            format!(
                "a --dev server answers Host `localhost`, a *.localhost name, a container \
                 runtime's name for the host (host.docker.internal, …), \
                 an IP address, a name without a dot or one listed in dev_allowed_hosts, not \
                 `{host}` (a DNS name pointed at this server is how a foreign page would \
                 reach it)"
            ),
        ));
    }
    let Some(origin) = head.header("origin") else {
        return Ok(());
    };
    let origin = std::str::from_utf8(origin).unwrap_or("").trim();
    if tenant.allowed_origins.is_some() {
        if tenant.allows_origin(origin) {
            return Ok(());
        }
        return Err(Refusal::new(
            ApiError::Forbidden,
            format!(
                "a --dev server whose tenant lists allowed_origins takes browser requests \
                 from those only, not from `{origin}`"
            ),
        ));
    }
    let origin_host = origin
        .split_once("://")
        .map(|(_, rest)| host_part(rest.split('/').next().unwrap_or("")));
    let verdict = origin_host.map_or(Err(Refused::Foreign), |origin_host| {
        origin_allowed(origin_host, host, listed, own_addresses)
    });
    let why = match verdict {
        Ok(()) => return Ok(()),
        Err(Refused::Foreign) => format!(
            "a --dev server takes browser requests from local pages only (localhost, a \
             loopback address, its own host or one listed in dev_allowed_hosts) or the \
             tenant's allowed_origins, not from `{origin}` (a page opened from disk needs a \
             local HTTP server)"
        ),
        Err(Refused::OtherMachine) => format!(
            "a --dev server reached on a loopback address takes pages from private \
             addresses of this machine only, not from `{origin}` (another host on this \
             network could not reach the server itself); list its host in \
             dev_allowed_hosts, or reach the server at its network address"
        ),
    };
    Err(Refusal::new(ApiError::Forbidden, why))
}

/// Checks one `dev_allowed_hosts` entry: it is compared with the host of `Host` and
/// `Origin`, without scheme, port or path, so an entry with any of those would never
/// match (found in review: `"mybox.lan:3001"` and `"https://x.ngrok.app"` were taken and
/// silently matched nothing). The error names the entry and what is wrong with it.
pub fn check_listed_host(entry: &str) -> Result<(), String> {
    let why = if entry.is_empty() {
        "is empty"
    } else if entry.contains("://") {
        "has a scheme"
    } else if entry.contains('/') {
        "has a path"
    } else if entry.parse::<IpAddr>().is_ok() {
        return Ok(());
    } else if entry.starts_with('[') {
        "is in brackets (write an IPv6 address without them, and without a port)"
    } else if entry.contains(':') {
        "has a port (ports are not compared)"
    } else if !is_host_name(entry) {
        "is not a host name (letters, digits, `-` and `_`, with dots between labels)"
    } else {
        return Ok(());
    };
    Err(format!(
        "dev_allowed_hosts entry `{entry}` {why}: list bare host names or IP addresses, \
         such as `mybox.lan`, `abc.ngrok.app` or `192.168.1.7`"
    ))
}

/// Dot-separated labels of ASCII letters, digits, `-` and `_`, none empty.
fn is_host_name(name: &str) -> bool {
    name.split('.').all(|label| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// The host of `authority` (`host`, `host:port`, `[v6]:port`), without its port.
fn host_part(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        // One colon: a port. More: a bare IPv6 address.
        Some((host, _)) if !host.contains(':') => host,
        _ => authority,
    }
}

/// Whether `host` is `suffix` (which starts with a dot) under at least one label,
/// compared without case.
fn ends_with_label(host: &str, suffix: &str) -> bool {
    host.len() > suffix.len()
        && host.is_char_boundary(host.len() - suffix.len())
        && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

/// `localhost` or a `*.localhost` name (RFC 6761: always loopback).
fn is_localhost(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || ends_with_label(host, ".localhost")
}

/// Whether two hosts are the same: as addresses when both are IP addresses (so
/// `::ffff:10.0.0.7` is `10.0.0.7`), otherwise as names without case.
fn same_host(a: &str, b: &str) -> bool {
    match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(a), Ok(b)) => a.to_canonical() == b.to_canonical(),
        _ => a.eq_ignore_ascii_case(b),
    }
}

/// Whether `host` is one of `dev_allowed_hosts`.
fn is_listed(host: &str, listed: &[String]) -> bool {
    listed.iter().any(|l| same_host(l, host))
}

/// The names container and VM runtimes give the host machine (under `.internal`, the
/// reserved private-use TLD). Only these: a company's own `.internal` zone is a DNS name
/// like any other, which a colleague's machine could rebind (found in review: every
/// `*.internal` name was taken).
const CONTAINER_HOSTS: [&str; 6] = [
    "host.docker.internal",
    "gateway.docker.internal",
    "kubernetes.docker.internal",
    "host.containers.internal",
    "host.lima.internal",
    "host.orb.internal",
];

/// Whether a request's `Host` can be taken: not a DNS name an attacker could point here.
fn host_allowed(host: &str, listed: &[String]) -> bool {
    is_localhost(host)
        || CONTAINER_HOSTS.iter().any(|h| h.eq_ignore_ascii_case(host))
        || host.parse::<IpAddr>().is_ok()
        || !host.contains('.')
        || is_listed(host, listed)
}

/// Where a host (of a page, or the server's as the request names it) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// This machine, whatever network it is on: `localhost` names, loopback addresses,
    /// and `0.0.0.0` or `::`, which only this machine can serve (Python's `http.server`
    /// prints `http://0.0.0.0:8000/`).
    ThisMachine,
    /// A private (RFC 1918, IPv6 unique-local) or link-local address: this machine or
    /// another on its network.
    Network(IpAddr),
    /// Any other name or address.
    Elsewhere,
}

fn place(host: &str) -> Place {
    if is_localhost(host) {
        return Place::ThisMachine;
    }
    let Ok(ip) = host.parse::<IpAddr>() else {
        return Place::Elsewhere;
    };
    let ip = ip.to_canonical();
    if ip.is_loopback() || ip.is_unspecified() {
        return Place::ThisMachine;
    }
    let network = match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    };
    if network {
        Place::Network(ip)
    } else {
        Place::Elsewhere
    }
}

/// Why a page's `Origin` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// Not this machine, not the request's host, not listed, not a private address.
    Foreign,
    /// A private or link-local address of another machine, on a server reached over
    /// loopback.
    OtherMachine,
}

/// Whether a page on `origin_host` may drive a server it reached as `host` (see the
/// module's rules). `own_addresses` is asked only for a private or link-local page on a
/// server reached over loopback.
fn origin_allowed(
    origin_host: &str,
    host: Option<&str>,
    listed: &[String],
    own_addresses: impl FnOnce() -> Vec<IpAddr>,
) -> Result<(), Refused> {
    if host.is_some_and(|host| same_host(host, origin_host)) || is_listed(origin_host, listed) {
        return Ok(());
    }
    match place(origin_host) {
        Place::ThisMachine => Ok(()),
        Place::Network(ip) => {
            // Reached over the network only when the Host says so beyond doubt: a
            // non-loopback address, or a name the operator listed. A name without a dot
            // or a container name may point at 127.0.0.1 in /etc/hosts (`localhost4`,
            // the machine's own name, `kubernetes.docker.internal`; found in review: such
            // a Host let any private page through), and a request without a Host proves
            // nothing.
            let over_network = host.is_some_and(|host| {
                let address = host.parse::<IpAddr>().is_ok();
                (address && place(host) != Place::ThisMachine) || is_listed(host, listed)
            });
            if over_network || own_addresses().iter().any(|a| a.to_canonical() == ip) {
                Ok(())
            } else {
                Err(Refused::OtherMachine)
            }
        }
        Place::Elsewhere => Err(Refused::Foreign),
    }
}

/// This machine's interface addresses, read anew at each call (`getifaddrs`): an
/// interface may come and go while the server runs (Wi-Fi, a VPN). Only `--dev` asks,
/// only for a private page on a server reached over loopback, so the cost does not
/// matter. Empty when the list cannot be read (then such a page is refused).
#[allow(unsafe_code)]
fn own_addresses() -> Vec<IpAddr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `getifaddrs` writes the head of a list it allocated into `list`, which
    // lives on this stack frame for the whole call; the list is freed below, once.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "cannot list this machine's addresses for the --dev origin check"
        );
        return Vec::new();
    }
    let mut addresses = Vec::new();
    let mut node = list;
    while !node.is_null() {
        // SAFETY: `node` is the list's head or an `ifa_next` of one of its nodes, all
        // valid until `freeifaddrs`. `ifa_addr`, when not null, points at a `sockaddr`
        // whose `sa_family` says which struct it is: `sockaddr_in` for AF_INET,
        // `sockaddr_in6` for AF_INET6, each read only after that check.
        let (address, next) = unsafe {
            let entry = &*node;
            let address = match entry.ifa_addr.as_ref().map(|a| i32::from(a.sa_family)) {
                Some(libc::AF_INET) => {
                    let sin = &*entry.ifa_addr.cast::<libc::sockaddr_in>();
                    Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        sin.sin_addr.s_addr,
                    ))))
                }
                Some(libc::AF_INET6) => {
                    let sin6 = &*entry.ifa_addr.cast::<libc::sockaddr_in6>();
                    Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
                }
                _ => None,
            };
            (address, entry.ifa_next)
        };
        addresses.extend(address);
        node = next;
    }
    // SAFETY: `list` came from the successful `getifaddrs` above, is freed only here,
    // and no reference into it outlives this point (the addresses were copied out).
    unsafe { libc::freeifaddrs(list) };
    addresses
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|ip| ip.parse().unwrap()).collect()
    }

    /// The verdict for a page on `origin_host` reaching the server as `host`, on a
    /// machine whose addresses are `own`.
    fn verdict(
        origin_host: &str,
        host: &str,
        listed: &[&str],
        own: &[&str],
    ) -> Result<(), Refused> {
        let listed: Vec<String> = listed.iter().map(|l| (*l).to_owned()).collect();
        origin_allowed(origin_host, Some(host), &listed, || ips(own))
    }

    #[test]
    fn hosts_are_read_without_their_port() {
        assert_eq!(host_part("127.0.0.1:3001"), "127.0.0.1");
        assert_eq!(host_part("[::1]:3001"), "::1");
        assert_eq!(host_part("::1"), "::1");
        assert_eq!(host_part("localhost"), "localhost");
        assert_eq!(host_part("app.example:443"), "app.example");
    }

    #[test]
    fn places_of_hosts() {
        for this in [
            "localhost",
            "LocalHost",
            "app.localhost",
            "127.0.0.1",
            "127.3.4.5",
            "::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
            "::",
        ] {
            assert_eq!(place(this), Place::ThisMachine, "{this}");
        }
        for network in [
            "10.0.0.7",
            "172.16.0.1",
            "192.168.1.5",
            "169.254.1.1",
            "fd00::1",
            "fe80::1",
            "::ffff:192.168.1.5",
        ] {
            assert!(matches!(place(network), Place::Network(_)), "{network}");
        }
        for elsewhere in [
            "evil.example",
            "localhost.evil.example",
            "mybox.local",
            "ringcast",
            "host.docker.internal",
            "203.0.113.5",
            "2001:db8::1",
            "",
        ] {
            assert_eq!(place(elsewhere), Place::Elsewhere, "{elsewhere}");
        }
    }

    /// Found in review: a page on another host of the café's Wi-Fi drove a server on
    /// 127.0.0.1 that the host could not reach itself.
    #[test]
    fn a_private_page_on_a_loopback_server_must_be_this_machine() {
        let own = ["127.0.0.1", "::1", "192.168.1.5", "fd00::2"];
        for host in [
            "127.0.0.1",
            "localhost",
            "::1",
            "app.localhost",
            "0.0.0.0",
            "::",
        ] {
            assert_eq!(
                verdict("192.168.1.77", host, &[], &own),
                Err(Refused::OtherMachine),
                "{host}"
            );
            assert_eq!(
                verdict("fe80::9", host, &[], &own),
                Err(Refused::OtherMachine)
            );
            // This machine's own LAN address: a dev server started with `--host`.
            assert_eq!(verdict("192.168.1.5", host, &[], &own), Ok(()), "{host}");
            assert_eq!(verdict("fd00::2", host, &[], &own), Ok(()), "{host}");
            assert_eq!(verdict("::ffff:192.168.1.5", host, &[], &own), Ok(()));
        }
        // Names that may point at 127.0.0.1 in /etc/hosts prove nothing either (found
        // in review: `localhost4` let any private page through).
        for host in [
            "localhost4",
            "ip6-localhost",
            "ringcast",
            "kubernetes.docker.internal",
            "host.docker.internal",
        ] {
            assert_eq!(
                verdict("192.168.1.77", host, &[], &own),
                Err(Refused::OtherMachine),
                "{host}"
            );
        }
        // No Host proves nothing: taken as loopback.
        assert_eq!(
            origin_allowed("192.168.1.77", None, &[], || ips(&own)),
            Err(Refused::OtherMachine)
        );
    }

    /// A server reached over the network can be reached by that network's hosts
    /// anyway, so their pages are taken.
    #[test]
    fn a_private_page_on_a_server_reached_over_the_network_is_taken() {
        let asked = std::cell::Cell::new(false);
        for host in ["192.168.1.5", "10.0.0.2", "fd00::2", "mybox.lan"] {
            let listed: Vec<String> = vec!["mybox.lan".to_owned()];
            let ok = origin_allowed("192.168.1.77", Some(host), &listed, || {
                asked.set(true);
                Vec::new()
            });
            assert_eq!(ok, Ok(()), "{host}");
        }
        assert!(
            !asked.get(),
            "the machine's addresses are not read when not needed"
        );
    }

    #[test]
    fn pages_of_this_machine_and_the_own_host_are_taken() {
        for origin in [
            "localhost",
            "app.localhost",
            "127.0.0.1",
            "::1",
            "0.0.0.0",
            "::",
        ] {
            assert_eq!(verdict(origin, "127.0.0.1", &[], &[]), Ok(()), "{origin}");
        }
        assert_eq!(verdict("MyBox", "mybox", &[], &[]), Ok(()));
        assert_eq!(verdict("203.0.113.5", "203.0.113.5", &[], &[]), Ok(()));
        for foreign in ["evil.example", "203.0.113.5", "2001:db8::1", "", "null"] {
            assert_eq!(
                verdict(foreign, "127.0.0.1", &[], &[]),
                Err(Refused::Foreign),
                "{foreign}"
            );
        }
    }

    /// Found in review: with the page behind one tunnel and the server behind another,
    /// both listed, the page was refused.
    #[test]
    fn listed_hosts_are_taken_as_origins_too() {
        let listed = ["a.tunnel.dev", "b.tunnel.dev", "192.168.1.77", "fd00:0::9"];
        assert_eq!(
            verdict("A.Tunnel.dev", "b.tunnel.dev", &listed, &[]),
            Ok(())
        );
        assert_eq!(verdict("a.tunnel.dev", "127.0.0.1", &listed, &[]), Ok(()));
        assert_eq!(verdict("192.168.1.77", "127.0.0.1", &listed, &[]), Ok(()));
        assert_eq!(verdict("fd00::9", "localhost", &listed, &[]), Ok(()));
        assert_eq!(
            verdict("c.tunnel.dev", "b.tunnel.dev", &listed, &[]),
            Err(Refused::Foreign)
        );
    }

    #[test]
    fn hosts_taken_are_names_no_one_else_can_point_here() {
        let listed = vec!["mybox.lan".to_owned()];
        for ok in [
            "localhost",
            "a.localhost",
            "ringcast",
            "host.docker.internal",
            "host.containers.internal",
            "host.lima.internal",
            "gateway.docker.internal",
            "HOST.ORB.INTERNAL",
            "203.0.113.5",
            "0.0.0.0",
            "::1",
            "MyBox.lan",
        ] {
            assert!(host_allowed(ok, &listed), "{ok}");
        }
        for refused in [
            "evil.example",
            "abc.ngrok.io",
            "localhost.evil.example",
            "internal.evil.example",
            "evil.internal.example",
            ".internal.",
            "dc1.corp.internal",
            "app.internal",
        ] {
            assert!(!host_allowed(refused, &listed), "{refused}");
        }
    }

    #[test]
    fn listed_hosts_must_be_bare_names_or_addresses() {
        for ok in [
            "mybox.lan",
            "abc.ngrok.app",
            "my_box",
            "192.168.1.7",
            "fd00::9",
        ] {
            assert_eq!(check_listed_host(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", "is empty"),
            ("https://x.ngrok.app", "has a scheme"),
            ("mybox.lan/app", "has a path"),
            ("mybox.lan:3001", "has a port"),
            ("192.168.1.7:3001", "has a port"),
            ("[fd00::9]", "in brackets"),
            ("[fd00::9]:3001", "in brackets"),
            ("mybox.lan.", "not a host name"),
            ("my box", "not a host name"),
            ("*.ngrok.app", "not a host name"),
        ] {
            let error = check_listed_host(bad).unwrap_err();
            assert!(error.contains(&format!("`{bad}`")), "{error}");
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn this_machines_addresses_include_loopback() {
        let own = own_addresses();
        assert!(own.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{own:?}");
    }
}
