//! What `--dev` asks of browser requests, since it asks for no API key: a page on another
//! site must not drive a developer's local server (found in review: any page the
//! developer visited could publish into it with a `text/plain` POST, which needs no
//! preflight, or open a WebSocket to its channels; and a DNS name rebound to the
//! server's address could read its history as a same-origin page).
//!
//! - The `Host` must be `localhost`, a `*.localhost` name, `host.docker.internal`, an IP
//!   address, a name without a dot (a container's or the machine's own name), or one of
//!   `dev_allowed_hosts`: a public DNS name can be rebound to any address, so it is
//!   taken only when listed (a tunnel's, a LAN name).
//! - An `Origin`, when the tenant has no `allowed_origins`, must be local: `localhost`
//!   or a `*.localhost` name, a loopback, private or link-local address, or the
//!   request's own host (which passed the `Host` check). With `allowed_origins`, those.
//!   Requests without `Origin` (backends, the SDK in Node, curl) pass.
//!
//! Applied to the HTTP API, the WebSocket upgrade and the REN stream, only with `--dev`
//! (outside it the API needs a key, and `allowed_origins` decides for browsers).

use std::net::IpAddr;

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
    let host = head
        .header("host")
        .and_then(|h| std::str::from_utf8(h).ok())
        .map(|h| host_part(h.trim()));
    if let Some(host) = host.filter(|h| !host_allowed(h, &config.dev_allowed_hosts)) {
        return Err(Refusal::new(
            ApiError::Forbidden,
            format!(
                "a --dev server answers Host `localhost`, an IP address, a name without a \
                 dot or one listed in dev_allowed_hosts, not `{host}` (a DNS name pointed \
                 at this server is how a foreign page would reach it)"
            ),
        ));
    }
    let Some(origin) = head.header("origin") else {
        return Ok(());
    };
    let origin = std::str::from_utf8(origin).unwrap_or("").trim();
    let allowed = if tenant.allowed_origins.is_some() {
        tenant.allows_origin(origin)
    } else {
        let origin_host = origin
            .split_once("://")
            .map(|(_, rest)| host_part(rest.split('/').next().unwrap_or("")));
        let own = |h: &str| host.is_some_and(|host| host.eq_ignore_ascii_case(h));
        origin_host.is_some_and(|h| is_local_origin(h) || own(h))
    };
    if allowed {
        return Ok(());
    }
    Err(Refusal::new(
        ApiError::Forbidden,
        format!(
            "a --dev server takes browser requests from local pages only (localhost, a \
             loopback or private address, or its own host) or the tenant's allowed_origins, \
             not from `{origin}`"
        ),
    ))
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

/// `localhost` or a `*.localhost` name (RFC 6761: always loopback).
fn is_localhost(host: &str) -> bool {
    const SUFFIX: &str = ".localhost";
    host.eq_ignore_ascii_case("localhost")
        || (host.len() > SUFFIX.len()
            && host.is_char_boundary(host.len() - SUFFIX.len())
            && host[host.len() - SUFFIX.len()..].eq_ignore_ascii_case(SUFFIX))
}

/// Whether a request's `Host` can be taken: not a DNS name an attacker could point here.
fn host_allowed(host: &str, listed: &[String]) -> bool {
    is_localhost(host)
        || host.eq_ignore_ascii_case("host.docker.internal")
        || host.parse::<IpAddr>().is_ok()
        || !host.contains('.')
        || listed.iter().any(|l| l.eq_ignore_ascii_case(host))
}

/// Whether a page's host is on this machine or its network: `localhost` names and
/// loopback, private (RFC 1918, IPv6 unique-local) or link-local addresses (found in
/// review: any IP address was taken, so a page served from a public one passed).
fn is_local_origin(host: &str) -> bool {
    if is_localhost(host) {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_loopback() || ip.is_private() || ip.is_link_local(),
        Ok(IpAddr::V6(ip)) => {
            let first = ip.segments()[0];
            ip.is_loopback()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || ip
                    .to_ipv4_mapped()
                    .is_some_and(|v4| v4.is_loopback() || v4.is_private())
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_read_without_their_port() {
        assert_eq!(host_part("127.0.0.1:3001"), "127.0.0.1");
        assert_eq!(host_part("[::1]:3001"), "::1");
        assert_eq!(host_part("::1"), "::1");
        assert_eq!(host_part("localhost"), "localhost");
        assert_eq!(host_part("app.example:443"), "app.example");
    }

    #[test]
    fn local_origins_are_loopback_names_and_private_addresses() {
        for local in [
            "localhost",
            "LocalHost",
            "app.localhost",
            "127.0.0.1",
            "::1",
            "10.0.0.7",
            "192.168.1.5",
            "fd00::1",
            "fe80::1",
        ] {
            assert!(is_local_origin(local), "{local}");
        }
        for foreign in [
            "evil.example",
            "localhost.evil.example",
            "mybox.local",
            "203.0.113.5",
            "2001:db8::1",
            "",
        ] {
            assert!(!is_local_origin(foreign), "{foreign}");
        }
    }

    #[test]
    fn hosts_taken_are_names_no_one_else_can_point_here() {
        let listed = vec!["mybox.lan".to_owned()];
        for ok in [
            "localhost",
            "a.localhost",
            "ringcast",
            "host.docker.internal",
            "203.0.113.5",
            "::1",
            "MyBox.lan",
        ] {
            assert!(host_allowed(ok, &listed), "{ok}");
        }
        for refused in ["evil.example", "abc.ngrok.io", "localhost.evil.example"] {
            assert!(!host_allowed(refused, &listed), "{refused}");
        }
    }
}
