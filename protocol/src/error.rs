//! Error codes on the wire: the `data.code` of `error` events and the close codes.

use std::fmt;

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

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidChannel => "invalid_channel",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::ChannelLimit => "channel_limit",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::PresenceLimit => "presence_limit",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::NotImplemented => "not_implemented",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A WebSocket close code. The ranges are documented in `docs/wire-contract.md`:
/// RFC 6455 codes for protocol violations, 4000–4099 for Ringcast's own reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

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
    /// The connection's outbound buffer was full (slow consumer).
    pub const SLOW_CONSUMER: CloseCode = CloseCode(4008);
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
