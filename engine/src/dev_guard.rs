//! What `--dev` asks of browser requests, since it asks for no API key: a page on another
//! site must not drive a developer's local server (found in review: any page the
//! developer visited could publish into it with a `text/plain` POST, which needs no
//! preflight, or open a WebSocket to its channels; and a DNS name rebound to 127.0.0.1
//! could read its history as a same-origin page).
//!
//! - An `Origin` must be local: `localhost` or a `*.localhost` name, an IP address, or
//!   the request's own host. Another passes only when the tenant lists it in
//!   `allowed_origins`. Requests without `Origin` (backends, the SDK in Node, curl)
//!   pass.
//! - On a loopback listener the `Host` must be `localhost`, a `*.localhost` name, an IP
//!   address or a name without a dot: a public DNS name reaching a loopback listener
//!   can only be a rebinding.
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
    if config.listen.ip().is_loopback() {
        if let Some(host) = host.filter(|h| !is_local(h) && h.contains('.')) {
            return Err(Refusal::new(
                ApiError::Forbidden,
                format!(
                    "a --dev server on a loopback address answers Host `localhost`, an IP \
                     address or a name without a dot, not `{host}` (a DNS name pointed at \
                     127.0.0.1 is how a foreign page would reach it)"
                ),
            ));
        }
    }
    let Some(origin) = head.header("origin") else {
        return Ok(());
    };
    let origin = std::str::from_utf8(origin).unwrap_or("").trim();
    if tenant.allowed_origins.is_some() {
        // The tenant's own list decides (checked where the request is served).
        return Ok(());
    }
    let origin_host = origin
        .split_once("://")
        .map(|(_, rest)| host_part(rest.split('/').next().unwrap_or("")));
    let own = |h: &str| host.is_some_and(|host| host.eq_ignore_ascii_case(h));
    match origin_host {
        Some(h) if is_local(h) || own(h) => Ok(()),
        _ => Err(Refusal::new(
            ApiError::Forbidden,
            format!(
                "a --dev server takes browser requests from local pages only (localhost, an \
                 IP address or its own host), not from `{origin}`; list it in the dev \
                 tenant's allowed_origins to allow it"
            ),
        )),
    }
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

/// `localhost`, a `*.localhost` name (RFC 6761: always loopback) or an IP address.
fn is_local(host: &str) -> bool {
    let lower = host.to_ascii_lowercase();
    lower == "localhost" || lower.ends_with(".localhost") || host.parse::<IpAddr>().is_ok()
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
    fn local_hosts_are_loopback_names_and_addresses() {
        for local in [
            "localhost",
            "LocalHost",
            "app.localhost",
            "127.0.0.1",
            "::1",
            "10.0.0.7",
        ] {
            assert!(is_local(local), "{local}");
        }
        for foreign in ["evil.example", "localhost.evil.example", "mybox.local", ""] {
            assert!(!is_local(foreign), "{foreign}");
        }
    }
}
