//! The fixed label values of the metrics: every label comes from one of these closed
//! sets, never from client input (no raw paths, no channel names), so the number of
//! series is known in advance. Tenant labels are the one exception, bounded by the
//! configuration (see `crate::metrics::tenant`).

use ringcast_protocol::CloseCode;

/// Every code an error event or HTTP error can carry: the `code` label of
/// `ringcast_errors_total`. Error events use the SPEC's codes; the HTTP front door adds
/// its own. A code not listed is counted as `other`.
pub const ERROR_LABELS: &[&str] = &[
    "bad_request",
    "invalid_channel",
    "unauthorized",
    "forbidden",
    "channel_limit",
    "message_too_large",
    "rate_limited",
    "presence_limit",
    "not_subscribed",
    "overloaded",
    "not_implemented",
    "not_found",
    "method_not_allowed",
    "upgrade_required",
    "unknown_tenant",
    "timeout",
    "headers_too_large",
    "payload_too_large",
    "not_ready",
    "internal_error",
    "other",
];

/// What a TCP connection is doing: the `transport` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Plain HTTP (requests and answers, before any upgrade).
    Http,
    /// A WebSocket session.
    Ws,
    /// A server-sent-events stream.
    Sse,
}

impl Transport {
    /// Every transport, in label order.
    pub const ALL: [Transport; 3] = [Transport::Http, Transport::Ws, Transport::Sse];
    /// Number of transports.
    pub const COUNT: usize = Transport::ALL.len();

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::Ws => "ws",
            Transport::Sse => "sse",
        }
    }

    /// Index into per-transport tables.
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a connection ended: the `reason` label of `ringcast_connections_closed_total` and
/// the `reason` field of the close log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The client closed it (close frame, EOF, reset, `Connection: close`).
    Client,
    /// The server is shutting down (1001).
    Shutdown,
    /// Its outbound buffer was full (4008).
    SlowConsumer,
    /// It hit a configured limit: `max_connections` (503), `max_message_bytes` (1009,
    /// 413), the tenant's limits (4029).
    Limit,
    /// Its token expired or was refused (4001, 4501, 4503).
    Auth,
    /// It broke the protocol: bad WebSocket framing (1002), invalid UTF-8 (1007), a
    /// malformed HTTP request (400, 431, 501).
    ProtocolError,
    /// Its tenant was removed from the configuration (4510).
    TenantRemoved,
    /// A request did not arrive within `handshake_timeout_ms` (408), or a write did not
    /// finish in time.
    Timeout,
    /// A fault of the server (1011).
    Internal,
}

impl CloseReason {
    /// Every reason, in label order.
    pub const ALL: [CloseReason; 9] = [
        CloseReason::Client,
        CloseReason::Shutdown,
        CloseReason::SlowConsumer,
        CloseReason::Limit,
        CloseReason::Auth,
        CloseReason::ProtocolError,
        CloseReason::TenantRemoved,
        CloseReason::Timeout,
        CloseReason::Internal,
    ];
    /// Number of reasons.
    pub const COUNT: usize = CloseReason::ALL.len();

    /// The reason the server closes with `code` (a close the client started is
    /// [`CloseReason::Client`] whatever code it carried, so callers say so themselves).
    pub const fn of(code: CloseCode) -> CloseReason {
        match code.0 {
            1000 => CloseReason::Client,
            1001 => CloseReason::Shutdown,
            1002 | 1007 => CloseReason::ProtocolError,
            1009 | 4029 => CloseReason::Limit,
            4001 | 4501 | 4503 => CloseReason::Auth,
            4008 => CloseReason::SlowConsumer,
            4510 => CloseReason::TenantRemoved,
            _ => CloseReason::Internal,
        }
    }

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            CloseReason::Client => "client",
            CloseReason::Shutdown => "shutdown",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Limit => "limit",
            CloseReason::Auth => "auth",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::TenantRemoved => "tenant_removed",
            CloseReason::Timeout => "timeout",
            CloseReason::Internal => "internal",
        }
    }

    /// Whether the close is worth a log line: anything but the client leaving or the
    /// server shutting down.
    pub const fn is_abnormal(self) -> bool {
        !matches!(self, CloseReason::Client | CloseReason::Shutdown)
    }

    /// Index into per-reason tables.
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The route of an HTTP request: the `route` label of `ringcast_http_requests_total`,
/// chosen from a fixed set (never the raw path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpRoute {
    /// `GET /_rt/ws` (the WebSocket upgrade).
    Ws,
    /// `GET /healthz`.
    Healthz,
    /// `GET /readyz`.
    Readyz,
    /// `GET /metrics`.
    Metrics,
    /// `POST /api/realtime/publish`.
    ApiPublish,
    /// `GET /api/realtime/history/{channel}`.
    ApiHistory,
    /// `GET /api/realtime/channels`.
    ApiChannels,
    /// `/api/realtime/presence/{channel}[/{action}]`.
    ApiPresence,
    /// `POST /api/realtime/tokens`.
    ApiTokens,
    /// The REN routes (`/api/maravilla/ren`, `/api/ren/events`).
    ApiRen,
    /// Another path under `/api/realtime/`.
    ApiUnknown,
    /// The demo page (`/`, `/favicon.ico`, `/demo/…`).
    Demo,
    /// Any other path (404).
    NotFound,
    /// A request whose head could not be read (malformed, too large, timed out).
    Unparsed,
}

impl HttpRoute {
    /// Every route, in label order.
    pub const ALL: [HttpRoute; 14] = [
        HttpRoute::Ws,
        HttpRoute::Healthz,
        HttpRoute::Readyz,
        HttpRoute::Metrics,
        HttpRoute::ApiPublish,
        HttpRoute::ApiHistory,
        HttpRoute::ApiChannels,
        HttpRoute::ApiPresence,
        HttpRoute::ApiTokens,
        HttpRoute::ApiRen,
        HttpRoute::ApiUnknown,
        HttpRoute::Demo,
        HttpRoute::NotFound,
        HttpRoute::Unparsed,
    ];
    /// Number of routes.
    pub const COUNT: usize = HttpRoute::ALL.len();

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            HttpRoute::Ws => "ws",
            HttpRoute::Healthz => "healthz",
            HttpRoute::Readyz => "readyz",
            HttpRoute::Metrics => "metrics",
            HttpRoute::ApiPublish => "api_publish",
            HttpRoute::ApiHistory => "api_history",
            HttpRoute::ApiChannels => "api_channels",
            HttpRoute::ApiPresence => "api_presence",
            HttpRoute::ApiTokens => "api_tokens",
            HttpRoute::ApiRen => "api_ren",
            HttpRoute::ApiUnknown => "api_unknown",
            HttpRoute::Demo => "demo",
            HttpRoute::NotFound => "not_found",
            HttpRoute::Unparsed => "unparsed",
        }
    }

    /// The route of a request for `path` (the path without its query).
    pub fn of(path: &str) -> HttpRoute {
        let path = path.split('?').next().unwrap_or(path);
        match path {
            "/_rt/ws" => HttpRoute::Ws,
            "/healthz" => HttpRoute::Healthz,
            "/readyz" => HttpRoute::Readyz,
            "/metrics" => HttpRoute::Metrics,
            "/api/realtime/publish" => HttpRoute::ApiPublish,
            "/api/realtime/channels" => HttpRoute::ApiChannels,
            "/api/realtime/tokens" => HttpRoute::ApiTokens,
            "/api/maravilla/ren" | "/api/ren/events" => HttpRoute::ApiRen,
            p if p.starts_with("/api/realtime/history/") => HttpRoute::ApiHistory,
            p if p.starts_with("/api/realtime/presence/") => HttpRoute::ApiPresence,
            p if p.starts_with("/api/realtime/") => HttpRoute::ApiUnknown,
            "/" | "/favicon.ico" => HttpRoute::Demo,
            p if p.starts_with("/demo/") => HttpRoute::Demo,
            _ => HttpRoute::NotFound,
        }
    }

    /// Index into per-route tables.
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// The statuses the server answers with (every row of the `ApiError` table, 101 and
/// 200): the `status` label. Anything else is counted as `other`.
pub const HTTP_STATUSES: &[(u16, &str)] = &[
    (101, "101"),
    (200, "200"),
    (400, "400"),
    (401, "401"),
    (403, "403"),
    (404, "404"),
    (405, "405"),
    (408, "408"),
    (413, "413"),
    (426, "426"),
    (429, "429"),
    (431, "431"),
    (500, "500"),
    (501, "501"),
    (503, "503"),
    (0, "other"),
];

/// Index of `status` in [`HTTP_STATUSES`] (the last, `other`, when not listed).
pub fn status_index(status: u16) -> usize {
    HTTP_STATUSES
        .iter()
        .position(|(s, _)| *s == status)
        .unwrap_or(HTTP_STATUSES.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_close_code_has_a_reason_and_only_client_and_shutdown_are_normal() {
        for code in CloseCode::ALL {
            let reason = CloseReason::of(code);
            let normal = matches!(code.0, 1000 | 1001);
            assert_eq!(reason.is_abnormal(), !normal, "{code:?} → {reason}");
        }
        assert_eq!(
            CloseReason::of(CloseCode::SLOW_CONSUMER),
            CloseReason::SlowConsumer
        );
        assert_eq!(
            CloseReason::of(CloseCode::TENANT_REMOVED),
            CloseReason::TenantRemoved
        );
        assert_eq!(CloseReason::of(CloseCode::AUTH_EXPIRED), CloseReason::Auth);
    }

    #[test]
    fn every_api_status_has_its_own_label() {
        for error in ringcast_protocol::ApiError::ALL {
            let at = status_index(error.status());
            assert_eq!(HTTP_STATUSES[at].0, error.status(), "{}", error.code());
        }
        assert_eq!(HTTP_STATUSES[status_index(299)].1, "other");
    }

    #[test]
    fn routes_come_from_a_fixed_set_whatever_the_path() {
        assert_eq!(HttpRoute::of("/_rt/ws?cid=1"), HttpRoute::Ws);
        assert_eq!(
            HttpRoute::of("/api/realtime/history/chat%3Alobby"),
            HttpRoute::ApiHistory
        );
        assert_eq!(
            HttpRoute::of("/api/realtime/presence/c/join"),
            HttpRoute::ApiPresence
        );
        assert_eq!(HttpRoute::of("/api/realtime/nope"), HttpRoute::ApiUnknown);
        assert_eq!(HttpRoute::of("/wp-admin/x"), HttpRoute::NotFound);
        for (i, route) in HttpRoute::ALL.iter().enumerate() {
            assert_eq!(route.index(), i);
        }
    }
}
