//! Error codes on the wire, all in one place: the `data.code` of `error` events
//! ([`ErrorCode`]), the HTTP status and `error.code` of every HTTP error ([`ApiError`])
//! and the WebSocket close codes ([`CloseCode`]).
//!
//! [`ApiError::wire`] is the one table from a reason to its HTTP status and wire code;
//! everything else (`ErrorCode::http_status`, the `From` impls for the parse errors of
//! [`crate::http`] and [`crate::body`]) goes through it, the way rustls maps every
//! `Error` to one `AlertDescription`.

use std::fmt;

use crate::body::BodyError;
use crate::http::{HttpError, PathError};

/// The `data.code` of an `error` event (SPEC §3). Each is also a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// Malformed JSON, missing or mistyped field, unknown action, binary frame.
    BadRequest,
    /// Channel name empty, too long, or with control characters.
    InvalidChannel,
    /// Missing, invalid or expired token on a `private-` channel.
    Unauthorized,
    /// The token lacks the permission for this action.
    Forbidden,
    /// The tenant's channel limit is reached.
    ChannelLimit,
    /// `data` is larger than the tenant's max message size.
    MessageTooLarge,
    /// The tenant's publish rate is exceeded.
    RateLimited,
    /// The tenant's presence limit is reached.
    PresenceLimit,
    /// The action needs a subscription the connection does not have.
    NotSubscribed,
    /// The server sheds load.
    Overloaded,
    /// The action is part of the protocol but not built in this release.
    NotImplemented,
}

impl ErrorCode {
    /// Every code, for metric registration.
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::BadRequest,
        ErrorCode::InvalidChannel,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::ChannelLimit,
        ErrorCode::MessageTooLarge,
        ErrorCode::RateLimited,
        ErrorCode::PresenceLimit,
        ErrorCode::NotSubscribed,
        ErrorCode::Overloaded,
        ErrorCode::NotImplemented,
    ];

    /// The wire spelling (the same as the matching [`ApiError`]'s code).
    pub fn as_str(self) -> &'static str {
        ApiError::from(self).code()
    }

    /// The HTTP status an HTTP API answer with this code carries.
    pub fn http_status(self) -> u16 {
        ApiError::from(self).status()
    }
}

impl From<ErrorCode> for ApiError {
    fn from(code: ErrorCode) -> ApiError {
        match code {
            ErrorCode::BadRequest => ApiError::BadRequest,
            ErrorCode::InvalidChannel => ApiError::InvalidChannel,
            ErrorCode::Unauthorized => ApiError::Unauthorized,
            ErrorCode::Forbidden => ApiError::Forbidden,
            ErrorCode::ChannelLimit => ApiError::ChannelLimit,
            ErrorCode::MessageTooLarge => ApiError::MessageTooLarge,
            ErrorCode::RateLimited => ApiError::RateLimited,
            ErrorCode::PresenceLimit => ApiError::PresenceLimit,
            ErrorCode::NotSubscribed => ApiError::NotSubscribed,
            ErrorCode::Overloaded => ApiError::Overloaded,
            ErrorCode::NotImplemented => ApiError::NotImplemented,
        }
    }
}

/// Why an HTTP request was refused: the reasons of SPEC §5 and the wire contract's HTTP
/// error table. Each maps to exactly one HTTP status and one `error.code` through
/// [`ApiError::wire`]; the body is `{"error":{"code":…,"message":…}}`
/// ([`crate::http::api_error_response`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ApiError {
    /// 400 `bad_request`: malformed request, head, body, path or JSON.
    BadRequest,
    /// 400 `invalid_channel`: channel name empty, too long, or with control characters.
    InvalidChannel,
    /// 400 `not_subscribed`: the action needs a subscription that does not exist.
    NotSubscribed,
    /// 401 `unauthorized`: missing, invalid or expired API key or token.
    Unauthorized,
    /// 403 `forbidden`: the key or token lacks the permission.
    Forbidden,
    /// 403 `channel_limit`: the tenant's channel limit is reached.
    ChannelLimit,
    /// 403 `presence_limit`: the tenant's presence limit is reached.
    PresenceLimit,
    /// 404 `not_found`: no such route.
    NotFound,
    /// 404 `unknown_tenant`: no such tenant.
    UnknownTenant,
    /// 405 `method_not_allowed`: a known path with the wrong method.
    MethodNotAllowed,
    /// 408 `timeout`: the request (head and body) did not arrive within
    /// `handshake_timeout_ms`.
    Timeout,
    /// 413 `payload_too_large`: the request body is over the server's limit.
    PayloadTooLarge,
    /// 413 `message_too_large`: a published `data` is over the tenant's max message size.
    MessageTooLarge,
    /// 426 `upgrade_required`: `/_rt/ws` without `Upgrade: websocket`.
    UpgradeRequired,
    /// 429 `rate_limited`: the tenant's publish rate is exceeded.
    RateLimited,
    /// 431 `headers_too_large`: the request head (or a chunked body's trailers) is over
    /// 16 KiB.
    HeadersTooLarge,
    /// 500 `internal_error`: a bug or a failure of the server itself.
    Internal,
    /// 501 `not_implemented`: a route or transfer coding not built in this release.
    NotImplemented,
    /// 503 `overloaded`: `max_connections` reached, or the server is shutting down.
    Overloaded,
    /// 503 `not_ready`: `/readyz` while starting or shutting down.
    NotReady,
}

impl ApiError {
    /// Every reason, for tests and metric registration.
    pub const ALL: [ApiError; 20] = [
        ApiError::BadRequest,
        ApiError::InvalidChannel,
        ApiError::NotSubscribed,
        ApiError::Unauthorized,
        ApiError::Forbidden,
        ApiError::ChannelLimit,
        ApiError::PresenceLimit,
        ApiError::NotFound,
        ApiError::UnknownTenant,
        ApiError::MethodNotAllowed,
        ApiError::Timeout,
        ApiError::PayloadTooLarge,
        ApiError::MessageTooLarge,
        ApiError::UpgradeRequired,
        ApiError::RateLimited,
        ApiError::HeadersTooLarge,
        ApiError::Internal,
        ApiError::NotImplemented,
        ApiError::Overloaded,
        ApiError::NotReady,
    ];

    /// The one table: HTTP status and wire code (`error.code`, also the metric label).
    pub const fn wire(self) -> (u16, &'static str) {
        match self {
            ApiError::BadRequest => (400, "bad_request"),
            ApiError::InvalidChannel => (400, "invalid_channel"),
            ApiError::NotSubscribed => (400, "not_subscribed"),
            ApiError::Unauthorized => (401, "unauthorized"),
            ApiError::Forbidden => (403, "forbidden"),
            ApiError::ChannelLimit => (403, "channel_limit"),
            ApiError::PresenceLimit => (403, "presence_limit"),
            ApiError::NotFound => (404, "not_found"),
            ApiError::UnknownTenant => (404, "unknown_tenant"),
            ApiError::MethodNotAllowed => (405, "method_not_allowed"),
            ApiError::Timeout => (408, "timeout"),
            ApiError::PayloadTooLarge => (413, "payload_too_large"),
            ApiError::MessageTooLarge => (413, "message_too_large"),
            ApiError::UpgradeRequired => (426, "upgrade_required"),
            ApiError::RateLimited => (429, "rate_limited"),
            ApiError::HeadersTooLarge => (431, "headers_too_large"),
            ApiError::Internal => (500, "internal_error"),
            ApiError::NotImplemented => (501, "not_implemented"),
            ApiError::Overloaded => (503, "overloaded"),
            ApiError::NotReady => (503, "not_ready"),
        }
    }

    /// The HTTP status.
    pub const fn status(self) -> u16 {
        self.wire().0
    }

    /// The wire code (`error.code`).
    pub const fn code(self) -> &'static str {
        self.wire().1
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl From<HttpError> for ApiError {
    fn from(e: HttpError) -> ApiError {
        match e {
            HttpError::Malformed => ApiError::BadRequest,
            HttpError::TooLarge => ApiError::HeadersTooLarge,
        }
    }
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> ApiError {
        match e {
            BodyError::ConflictingFraming
            | BodyError::TransferEncodingInHttp10
            | BodyError::InvalidContentLength
            | BodyError::InvalidTransferEncoding
            | BodyError::InvalidChunkSize
            | BodyError::MalformedChunk => ApiError::BadRequest,
            BodyError::UnsupportedTransferEncoding => ApiError::NotImplemented,
            BodyError::TrailersTooLarge => ApiError::HeadersTooLarge,
            BodyError::TooLarge => ApiError::PayloadTooLarge,
        }
    }
}

impl From<PathError> for ApiError {
    fn from(_: PathError) -> ApiError {
        ApiError::BadRequest
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A WebSocket close code.
///
/// | range | owner | the client… |
/// |---|---|---|
/// | 1000–2999 | RFC 6455 / IANA | per RFC 6455 (see [`CloseCode::advice`]) |
/// | 3000–3999 | registered libraries and frameworks; Ringcast sends none | — |
/// | 4000–4499 | Ringcast: a passing condition | reconnects with backoff, resuming with `lastEventId` |
/// | 4500–4999 | Ringcast: a condition that a retry cannot fix | does not reconnect until something changes (token, key, config) |
///
/// Within each Ringcast range the last two digits echo the HTTP status of the same reason
/// where there is one (4001 ↔ 401, 4029 ↔ 429, 4503 ↔ 403), so that a code reads like the
/// HTTP answer the same request would get. The split between reconnect and do-not-reconnect
/// follows centrifuge's `disconnect.go` (there 4000–4499 reconnect, 4500–4999 do not).
/// The same table is in `docs/wire-contract.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

/// What a client should do after a close, by [`CloseCode`] range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReconnectAdvice {
    /// Reconnect (with backoff), resuming with `lastEventId`.
    Reconnect,
    /// Do not reconnect without changing something first (a client bug, a token, a key).
    DoNotReconnect,
}

impl CloseCode {
    /// Normal closure: the answer to a client's close.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// The server is shutting down.
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// WebSocket protocol violation.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// Invalid UTF-8 in a text message.
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// Message over the server's max message size.
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    /// Internal server error.
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);

    /// First code of the "reconnect" Ringcast range (4000–4499).
    pub const RECONNECT_RANGE_START: u16 = 4000;
    /// First code of the "do not reconnect" Ringcast range (4500–4999).
    pub const NO_RECONNECT_RANGE_START: u16 = 4500;
    /// One past the last Ringcast code.
    pub const RINGCAST_RANGE_END: u16 = 5000;

    /// The connection token expired (↔ 401). Reconnect with a fresh token.
    pub const AUTH_EXPIRED: CloseCode = CloseCode(4001);
    /// The connection's outbound buffer (`outbound_buffer_bytes`) was full: a slow
    /// consumer (↔ 408). Reconnect with `lastEventId` to catch up from history.
    pub const SLOW_CONSUMER: CloseCode = CloseCode(4008);
    /// The connection kept sending over its tenant's limits (↔ 429). Reconnect after
    /// backoff. A single frame over a limit gets an error event instead (SPEC §8).
    pub const OVER_LIMIT: CloseCode = CloseCode(4029);
    /// The connection token is invalid or was revoked, not merely expired (↔ 401).
    pub const UNAUTHORIZED: CloseCode = CloseCode(4501);
    /// The connection's user or origin is no longer allowed (↔ 403).
    pub const FORBIDDEN: CloseCode = CloseCode(4503);
    /// The connection's tenant was removed from the configuration (↔ 410 Gone).
    pub const TENANT_REMOVED: CloseCode = CloseCode(4510);

    /// Every close code Ringcast sends, for docs and tests.
    pub const ALL: [CloseCode; 12] = [
        CloseCode::NORMAL,
        CloseCode::GOING_AWAY,
        CloseCode::PROTOCOL_ERROR,
        CloseCode::INVALID_PAYLOAD,
        CloseCode::MESSAGE_TOO_BIG,
        CloseCode::INTERNAL_ERROR,
        CloseCode::AUTH_EXPIRED,
        CloseCode::SLOW_CONSUMER,
        CloseCode::OVER_LIMIT,
        CloseCode::UNAUTHORIZED,
        CloseCode::FORBIDDEN,
        CloseCode::TENANT_REMOVED,
    ];

    /// What a client should do after this close.
    pub const fn advice(self) -> ReconnectAdvice {
        match self.0 {
            // Shutdown, restart, a server fault, or a passing Ringcast condition.
            1001 | 1011..=1014 => ReconnectAdvice::Reconnect,
            CloseCode::RECONNECT_RANGE_START..CloseCode::NO_RECONNECT_RANGE_START => {
                ReconnectAdvice::Reconnect
            }
            // A normal close, a client bug (1002, 1007, 1009, …), or a condition a retry
            // cannot fix.
            _ => ReconnectAdvice::DoNotReconnect,
        }
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_maps_to_the_api_error_of_the_same_spelling() {
        for code in ErrorCode::ALL {
            let api = ApiError::from(code);
            assert_eq!(code.as_str(), api.code());
            assert_eq!(code.http_status(), api.status());
        }
        assert_eq!(ErrorCode::Unauthorized.http_status(), 401);
        assert_eq!(ErrorCode::ChannelLimit.http_status(), 403);
        assert_eq!(ErrorCode::MessageTooLarge.http_status(), 413);
        assert_eq!(ErrorCode::RateLimited.http_status(), 429);
        assert_eq!(ErrorCode::InvalidChannel.http_status(), 400);
    }

    #[test]
    fn api_error_codes_are_unique_and_statuses_are_errors() {
        let mut codes: Vec<&str> = ApiError::ALL.iter().map(|e| e.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ApiError::ALL.len());
        for e in ApiError::ALL {
            assert!((400..600).contains(&e.status()), "{e:?}");
            assert_ne!(crate::http::reason_phrase(e.status()), "Unknown", "{e:?}");
        }
    }

    /// The statuses the wire contract (and the e2e tests) already rely on.
    #[test]
    fn documented_statuses_are_stable() {
        for (e, status, code) in [
            (ApiError::NotFound, 404, "not_found"),
            (ApiError::MethodNotAllowed, 405, "method_not_allowed"),
            (ApiError::UpgradeRequired, 426, "upgrade_required"),
            (ApiError::BadRequest, 400, "bad_request"),
            (ApiError::UnknownTenant, 404, "unknown_tenant"),
            (ApiError::Overloaded, 503, "overloaded"),
            (ApiError::Timeout, 408, "timeout"),
            (ApiError::HeadersTooLarge, 431, "headers_too_large"),
            (ApiError::PayloadTooLarge, 413, "payload_too_large"),
            (ApiError::NotImplemented, 501, "not_implemented"),
            (ApiError::NotReady, 503, "not_ready"),
        ] {
            assert_eq!(e.wire(), (status, code));
        }
    }

    #[test]
    fn close_codes_sit_in_their_documented_ranges() {
        use ReconnectAdvice::*;
        assert_eq!(CloseCode::SLOW_CONSUMER.0, 4008);
        for (code, advice) in [
            (CloseCode::NORMAL, DoNotReconnect),
            (CloseCode::GOING_AWAY, Reconnect),
            (CloseCode::PROTOCOL_ERROR, DoNotReconnect),
            (CloseCode::INVALID_PAYLOAD, DoNotReconnect),
            (CloseCode::MESSAGE_TOO_BIG, DoNotReconnect),
            (CloseCode::INTERNAL_ERROR, Reconnect),
            (CloseCode::AUTH_EXPIRED, Reconnect),
            (CloseCode::SLOW_CONSUMER, Reconnect),
            (CloseCode::OVER_LIMIT, Reconnect),
            (CloseCode::UNAUTHORIZED, DoNotReconnect),
            (CloseCode::FORBIDDEN, DoNotReconnect),
            (CloseCode::TENANT_REMOVED, DoNotReconnect),
        ] {
            assert_eq!(code.advice(), advice, "{code}");
        }
        for code in CloseCode::ALL {
            let ringcast =
                (CloseCode::RECONNECT_RANGE_START..CloseCode::RINGCAST_RANGE_END).contains(&code.0);
            assert!(
                ringcast || code.0 < 3000,
                "{code} outside the documented ranges"
            );
        }
    }
}
