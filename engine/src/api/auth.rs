//! Who is asking: the tenant of an HTTP API request and its API key. Every API route
//! goes through [`authorize`].
//!
//! - Tenant: `X-Tenant-Id`, else the server's default tenant; unknown → 404
//!   `unknown_tenant`.
//! - Key: `Authorization: Bearer <key>`, one of the tenant's `api_keys`. Not needed in
//!   `--dev`. Missing or wrong (or a tenant with no `api_keys`) → 401 `unauthorized`; a
//!   key of another tenant → 403 `forbidden`.
//!
//! A request that passes may publish to `private-` channels without a channel token: the
//! server API is trusted (SPEC §5).

use std::sync::Arc;

use ringcast_protocol::api::Refusal;
use ringcast_protocol::http::RequestHead;
use ringcast_protocol::ApiError;
use subtle::ConstantTimeEq;

use crate::config::{DEV_TENANT, SDK_DEFAULT_TENANT};
use crate::shared::Shared;
use crate::tenant::{Tenant, TenantTable};

/// With `--dev`, the SDK's default tenant id is the dev tenant unless configured (found
/// in review: with the SDK's defaults every HTTP call of a `--dev` app got 404, which the
/// SDK ignores, so nothing it published arrived anywhere).
pub(crate) fn dev_alias<'a>(
    dev: bool,
    tenants: &TenantTable,
    named: Option<&'a str>,
) -> Option<&'a str> {
    match named {
        Some(SDK_DEFAULT_TENANT) if dev && tenants.get(SDK_DEFAULT_TENANT).is_none() => {
            Some(DEV_TENANT)
        }
        named => named,
    }
}

/// The tenant `head` acts for, once its key is checked.
pub fn authorize(shared: &Shared, head: &RequestHead) -> Result<Arc<Tenant>, Refusal> {
    let tenants = shared.tenants.load();
    let named = match head.header("x-tenant-id") {
        None => None,
        Some(v) => Some(
            std::str::from_utf8(v)
                .map_err(|_| Refusal::new(ApiError::BadRequest, "X-Tenant-Id is not UTF-8"))?
                .trim(),
        ),
    };
    let dev = shared.config.load().dev;
    let named = dev_alias(dev, &tenants, named);
    let Some(tenant) = tenants.resolve(named.filter(|id| !id.is_empty())) else {
        let message = match named {
            Some(_) => "no such tenant",
            None => "no X-Tenant-Id and no default tenant",
        };
        return Err(Refusal::new(ApiError::UnknownTenant, message));
    };
    if dev {
        crate::dev_guard::check(head, &shared.config.load(), &tenant)?;
        return Ok(tenant);
    }
    if tenant.api_keys.is_empty() {
        return Err(Refusal::new(
            ApiError::Unauthorized,
            "this tenant has no api_keys configured: its HTTP API is closed",
        ));
    }
    let Some(key) = bearer(head) else {
        return Err(Refusal::new(
            ApiError::Unauthorized,
            "this tenant needs `Authorization: Bearer <api key>`",
        ));
    };
    if holds_key(&tenant.api_keys, key) {
        return Ok(tenant);
    }
    let other_tenants = tenants
        .iter()
        .filter(|t| t.id != tenant.id)
        .fold(false, |found, t| found | holds_key(&t.api_keys, key));
    if other_tenants {
        return Err(Refusal::new(
            ApiError::Forbidden,
            "this API key belongs to another tenant",
        ));
    }
    Err(Refusal::new(ApiError::Unauthorized, "invalid API key"))
}

/// Whether `head` may read `/metrics`: always without `[metrics] bearer_token`, else
/// with `Authorization: Bearer <that token>`.
pub fn may_scrape(head: &RequestHead, config: &crate::config::Config) -> bool {
    match &config.metrics.bearer_token {
        None => true,
        Some(token) => bearer(head).is_some_and(|presented| same_key(token.as_bytes(), presented)),
    }
}

/// The key of `Authorization: Bearer <key>`.
fn bearer(head: &RequestHead) -> Option<&[u8]> {
    let value = head.header("authorization")?.trim_ascii();
    let (scheme, key) = value.split_at_checked(7)?;
    (scheme.eq_ignore_ascii_case(b"bearer ") && !key.trim_ascii().is_empty())
        .then(|| key.trim_ascii())
}

/// Compares keys in time that does not depend on where they differ (`subtle`).
fn same_key(expected: &[u8], presented: &[u8]) -> bool {
    bool::from(expected.ct_eq(presented))
}

/// Whether `presented` is one of `keys`, comparing against every one of them.
fn holds_key(keys: &[String], presented: &[u8]) -> bool {
    keys.iter()
        .fold(false, |found, k| found | same_key(k.as_bytes(), presented))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_whole() {
        assert!(same_key(b"abc", b"abc"));
        assert!(!same_key(b"abc", b"abd"));
        assert!(!same_key(b"abc", b"ab"));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let head = |auth: &str| {
            ringcast_protocol::http::parse_request_head(
                format!("GET / HTTP/1.1\r\nAuthorization: {auth}\r\n\r\n").as_bytes(),
            )
            .unwrap()
            .unwrap()
        };
        assert_eq!(bearer(&head("Bearer k1")), Some(&b"k1"[..]));
        assert_eq!(bearer(&head("bearer  k1 ")), Some(&b"k1"[..]));
        assert_eq!(bearer(&head("Basic k1")), None);
        assert_eq!(bearer(&head("Bearer ")), None);
    }
}
