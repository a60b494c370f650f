//! REN over HTTP (SPEC §7): `GET /api/maravilla/ren` opens a Server-Sent Events stream
//! of the tenant's resource events, `POST /api/ren/events` pushes the app's own events.
//!
//! ```text
//!  GET  /api/maravilla/ren?s=&cid=&token=   (http.rs takes it before api::serve: the
//!        tenant (X-Tenant-Id or ?tenant=)    connection becomes the stream)
//!        ren_user: anonymous or token  ──► 401
//!        cors_origin: tenant.allowed_origins ──► 403
//!        RenFilter::parse(s)           ──► 400
//!        Last-Event-ID (or ?lastEventId=) ──► Resume
//!        ──► RenOpen ──► ren::serve::start_stream
//!  POST /api/ren/events   one event or an array; auth::authorize (API key)
//!        ApiParser::ren_events (whole batch or 400 naming the entry) ──► REN owner
//!        ──► {"ok":true,"accepted":N}
//! ```

use std::sync::Arc;

use ringcast_protocol::api::Refusal;
use ringcast_protocol::http::RequestHead;
use ringcast_protocol::ren::{accepted, stream_head, RenFilter};
use ringcast_protocol::ApiError;

use crate::mesh::Answer;
use crate::ren::Resume;
use crate::shard::Shard;
use crate::tenant::Tenant;
use crate::token::Grant;

/// A checked `GET /api/maravilla/ren`: what the stream needs to start.
#[derive(Debug)]
pub struct RenOpen {
    /// The tenant whose events it gets.
    pub tenant: Arc<Tenant>,
    /// `?s=`.
    pub filter: RenFilter,
    /// `?cid=` (empty when absent).
    pub client_id: String,
    /// From `Last-Event-ID`.
    pub resume: Resume,
    /// What its token verified (`None`: anonymous): its user and the `private-`
    /// channels whose events it may see.
    pub grant: Option<Grant>,
    /// The response head (with the CORS header when an allowed Origin asked).
    pub head: Vec<u8>,
}

/// Whether `head` opens a stream (`http.rs` hands it to [`open`] instead of
/// `api::serve`); other methods on the path get 405 from `api::serve`.
pub fn is_stream_request(head: &RequestHead) -> bool {
    head.method == "GET" && head.path == "/api/maravilla/ren"
}

/// Checks a stream request.
pub fn open(shard: &Shard, head: &RequestHead) -> Result<RenOpen, Refusal> {
    if shard.is_shutting_down() {
        return Err(Refusal::new(ApiError::Overloaded, "server shutting down"));
    }
    let tenant = stream_tenant(shard, head)?;
    crate::dev_guard::check(head, &shard.shared.config.load(), &tenant)?;
    let grant = ren_user(shard, &tenant, head)?;
    let origin = cors_origin(&tenant, head)?;
    let filter = RenFilter::parse(head.query_param("s").as_deref())?;
    let last_event_id = match head.header("last-event-id") {
        Some(v) => Some(
            std::str::from_utf8(v)
                .map_err(|_| Refusal::new(ApiError::BadRequest, "Last-Event-ID is not UTF-8"))?
                .to_owned(),
        ),
        None => head.query_param("lastEventId"),
    };
    let mut headers = Vec::new();
    if let Some(origin) = &origin {
        headers.push(("Access-Control-Allow-Origin", origin.as_str()));
        headers.push(("Vary", "Origin"));
    }
    let shard_id = shard.id.to_string();
    headers.push(("x-ringcast-shard", &shard_id));
    Ok(RenOpen {
        tenant,
        filter,
        client_id: head.query_param("cid").unwrap_or_default(),
        resume: Resume::parse(last_event_id.as_deref()),
        grant,
        head: stream_head(&headers),
    })
}

/// The tenant of a stream: `X-Tenant-Id`, else `?tenant=` (an `EventSource` cannot set
/// headers), else the server's default tenant.
fn stream_tenant(shard: &Shard, head: &RequestHead) -> Result<Arc<Tenant>, Refusal> {
    let named = match head.header("x-tenant-id") {
        Some(v) => Some(
            std::str::from_utf8(v)
                .map_err(|_| Refusal::new(ApiError::BadRequest, "X-Tenant-Id is not UTF-8"))?
                .trim()
                .to_owned(),
        ),
        None => head.query_param("tenant"),
    }
    .filter(|id| !id.is_empty());
    let tenants = shard.shared.tenants.load();
    let dev = shard.shared.config.load().dev;
    tenants
        .resolve(super::auth::dev_alias(dev, &tenants, named.as_deref()))
        .ok_or_else(|| match named {
            Some(_) => Refusal::new(ApiError::UnknownTenant, "no such tenant"),
            None => Refusal::new(
                ApiError::UnknownTenant,
                "no tenant named (X-Tenant-Id or ?tenant=) and no default tenant",
            ),
        })
}

/// Who may open a stream: anyone when the tenant has `allow_anonymous_ren` (and in
/// `--dev`); otherwise a `token=` of the tenant, whose `sub` is the stream's user and
/// whose channels are the `private-` channels it sees. `Ok(None)`: anonymous.
pub fn ren_user(
    shard: &Shard,
    tenant: &Tenant,
    head: &RequestHead,
) -> Result<Option<Grant>, Refusal> {
    let anonymous = tenant.allow_anonymous_ren || shard.shared.config.load().dev;
    let token = head.query_param("token").filter(|t| !t.is_empty());
    match (token, anonymous) {
        (None, true) => Ok(None),
        // A token given is checked even where anonymous streams are allowed.
        (Some(token), _) => {
            let verified = crate::token::verify(&token, tenant, shard.token_time());
            let counters = shard.shared.metrics.shard(shard.id);
            counters.token_verification(verified.is_ok());
            match verified {
                Ok(grant) => Ok(Some(grant)),
                Err(refused) => Err(Refusal::new(
                    ApiError::Unauthorized,
                    format!("REN token refused: {}", refused.message),
                )),
            }
        }
        (None, false) => Err(Refusal::new(
            ApiError::Unauthorized,
            "this tenant's REN stream needs `token=` (or `allow_anonymous_ren = true`)",
        )),
    }
}

/// The CORS answer for a browser's `Origin`: echoed when the tenant allows it (no
/// `allowed_origins`: any), refused (403) when it does not; `None` without `Origin`.
pub fn cors_origin(tenant: &Tenant, head: &RequestHead) -> Result<Option<String>, Refusal> {
    let Some(origin) = head.header("origin") else {
        return Ok(None);
    };
    let origin = std::str::from_utf8(origin)
        .map_err(|_| Refusal::new(ApiError::BadRequest, "Origin is not UTF-8"))?
        .trim();
    if !tenant.allows_origin(origin) {
        return Err(Refusal::new(
            ApiError::Forbidden,
            "this Origin is not in the tenant's allowed_origins",
        ));
    }
    Ok(Some(origin.to_owned()))
}

/// The request's `X-Ren-Client` (the browser session a mutation comes from, as the SDK's
/// `renFetch` sends it), trimmed; `None` when absent or empty.
pub fn ren_client(head: &RequestHead) -> Result<Option<String>, Refusal> {
    let Some(value) = head.header("x-ren-client") else {
        return Ok(None);
    };
    let value = std::str::from_utf8(value)
        .map_err(|_| Refusal::new(ApiError::BadRequest, "X-Ren-Client is not UTF-8"))?
        .trim();
    let max = ringcast_protocol::ren::MAX_SRC_BYTES;
    if value.len() > max {
        let message = format!("X-Ren-Client is {} bytes; at most {max}", value.len());
        return Err(Refusal::new(ApiError::BadRequest, message));
    }
    Ok((!value.is_empty()).then(|| value.to_owned()))
}

/// `POST /api/ren/events`: one event or an array, for `tenant` (already authorized).
pub async fn ingest(
    shard: &Shard,
    head: &RequestHead,
    body: &[u8],
    tenant: &Tenant,
) -> Result<Vec<u8>, Refusal> {
    let header_src = ren_client(head)?;
    let now = shard.now().0;
    let limit = tenant.limits.max_message_bytes;
    let events = shard.parse_ren_events(body, now, header_src.as_deref(), limit)?;
    if events.is_empty() {
        return Ok(accepted(0));
    }
    let outcome = shard
        .ren_ingest(tenant.id.clone(), events, super::request_timeout_ms(shard))
        .await;
    match outcome {
        Ok(Answer::RenAccepted { accepted: n }) => Ok(accepted(n)),
        other => Err(super::failed(other)),
    }
}

#[cfg(test)]
mod tests {
    use ringcast_protocol::http::parse_request_head;

    use super::*;

    fn head(extra: &[u8]) -> RequestHead {
        let mut raw = b"POST /api/realtime/publish HTTP/1.1\r\nHost: x\r\n".to_vec();
        raw.extend_from_slice(extra);
        raw.extend_from_slice(b"\r\n");
        parse_request_head(&raw).unwrap().expect("a whole head")
    }

    #[test]
    fn the_ren_client_header_is_trimmed_and_checked() {
        let client = ren_client(&head(b"X-Ren-Client:  tab-1 \r\n")).unwrap();
        assert_eq!(client.as_deref(), Some("tab-1"));
        assert_eq!(ren_client(&head(b"")).unwrap(), None);
        assert_eq!(ren_client(&head(b"X-Ren-Client:   \r\n")).unwrap(), None);
        let refused = ren_client(&head(b"X-Ren-Client: \xff\xfe\r\n")).unwrap_err();
        assert_eq!(refused.error, ApiError::BadRequest);
        // Every event of a batch takes it: at most 256 bytes (found in review).
        let long = format!("X-Ren-Client: {}\r\n", "a".repeat(257));
        let refused = ren_client(&head(long.as_bytes())).unwrap_err();
        assert_eq!(refused.error, ApiError::BadRequest);
        let fits = format!("X-Ren-Client: {}\r\n", "a".repeat(256));
        assert!(ren_client(&head(fits.as_bytes())).unwrap().is_some());
    }
}
