//! The HTTP API of SPEC §5, sans IO: request bodies in, JSON answers out.
//!
//! ```text
//!  body bytes ──► ApiParser::publish  ──► PublishBody { channel, data (raw), userId?, idempotencyKey? }
//!  body bytes ──► ApiParser::presence ──► PresenceBody { userId, metadata (raw)? }
//!  query      ──► history_query       ──► HistoryParams { limit, after?, before? }
//!  owner's answer ──► published / channels / history_page / presence_* ──► JSON body bytes
//! ```
//!
//! `data` and presence `metadata` are any JSON value (RFC 8259) and travel as the raw
//! bytes of the request body: the same bytes reach WebSocket subscribers and readers.

use simd_json::prelude::*;
use simd_json::ValueType;

use crate::channel::ChannelName;
use crate::client::TapeBuffers;
use crate::error::ApiError;
use crate::http::RequestHead;
use crate::json::{raw_members, write_str, write_u64};
use crate::ren::quoted;

/// Longest idempotency key accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;
/// Messages in a history page when the request names no `limit`.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;
/// Largest `limit` of a history page (every plan keeps at most 1,000 messages).
pub const MAX_HISTORY_LIMIT: usize = 1000;

/// Why a request was refused: the [`ApiError`] (status and code) and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Status and code.
    pub error: ApiError,
    /// For the caller.
    pub message: String,
    /// Seconds after which the caller may retry (`Retry-After`), for `rate_limited`.
    pub retry_after_secs: Option<u64>,
    /// The method the route takes (`Allow`), for `method_not_allowed`.
    pub allow: Option<&'static str>,
}

impl Refusal {
    /// A refusal with `error` and `message`.
    pub fn new(error: ApiError, message: impl Into<String>) -> Refusal {
        Refusal {
            error,
            message: message.into(),
            retry_after_secs: None,
            allow: None,
        }
    }

    /// The same refusal, naming the method the route takes.
    pub fn allowing(mut self, method: &'static str) -> Refusal {
        self.allow = Some(method);
        self
    }

    /// The same refusal, telling the caller to retry after `secs`.
    pub fn retry_after(mut self, secs: u64) -> Refusal {
        self.retry_after_secs = Some(secs);
        self
    }

    fn bad_request(message: impl Into<String>) -> Refusal {
        Refusal::new(ApiError::BadRequest, message)
    }
}

/// The body of `POST /api/realtime/publish`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishBody<'a> {
    /// The channel.
    pub channel: ChannelName,
    /// The raw JSON of `data`, exactly as sent.
    pub data: &'a [u8],
    /// `userId`, shown on the message.
    pub user_id: Option<String>,
    /// `idempotencyKey` from the body.
    pub idempotency_key: Option<String>,
}

/// Which presence route a body was sent to (`POST /api/realtime/presence/{channel}/…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceAction {
    /// `…/join` `{userId, metadata?}`.
    Join,
    /// `…/update` `{userId, metadata}`.
    Update,
    /// `…/leave` `{userId}`.
    Leave,
}

impl PresenceAction {
    /// The last path segment of the route.
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceAction::Join => "join",
            PresenceAction::Update => "update",
            PresenceAction::Leave => "leave",
        }
    }
}

/// The body of a presence join, update or leave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceBody<'a> {
    /// `userId`: a non-empty string.
    pub user_id: String,
    /// The raw JSON of `metadata`, exactly as sent; `None` when absent or `null` (and
    /// always on a leave, which ignores it).
    pub metadata: Option<&'a [u8]>,
}

/// Parses API request bodies, reusing its buffers.
pub struct ApiParser {
    pub(crate) tape: TapeBuffers,
}

impl std::fmt::Debug for ApiParser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiParser").finish_non_exhaustive()
    }
}

impl Default for ApiParser {
    fn default() -> Self {
        ApiParser::new()
    }
}

impl ApiParser {
    /// A parser with empty buffers.
    pub fn new() -> ApiParser {
        ApiParser {
            tape: TapeBuffers::new(),
        }
    }

    /// Parses a publish body: a JSON object with `channel` (string), `data` (any JSON),
    /// and optional `userId` and `idempotencyKey` (strings or null).
    pub fn publish<'a>(&mut self, body: &'a [u8]) -> Result<PublishBody<'a>, Refusal> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(Refusal::bad_request(
                "the body must be a JSON object with `channel` and `data`",
            ));
        }
        let tape = self.tape.parse(body).map_err(Refusal::bad_request)?;
        let root = tape.as_value();
        if root.value_type() != ValueType::Object {
            return Err(Refusal::bad_request("the body must be a JSON object"));
        }
        let string = |key: &str| optional_string(&root, key);
        let Some(name) = string("channel")? else {
            return Err(Refusal::bad_request("missing `channel`"));
        };
        let channel = ChannelName::new(&name)
            .map_err(|e| Refusal::new(ApiError::InvalidChannel, e.to_string()))?;
        let raw = raw_members(body).unwrap_or_default();
        let data = match (root.get("data"), raw.data) {
            (Some(_), Some(data)) => data,
            (None, _) => return Err(Refusal::bad_request("publish needs `data`")),
            (Some(_), None) => {
                return Err(Refusal::bad_request("`data` key must not be escaped"));
            }
        };
        let idempotency_key = string("idempotencyKey")?;
        if let Some(key) = &idempotency_key {
            check_idempotency_key(key)?;
        }
        Ok(PublishBody {
            channel,
            data,
            user_id: string("userId")?,
            idempotency_key,
        })
    }

    /// Parses the body of a presence `action`: a JSON object with `userId` (a non-empty
    /// string); a join may carry `metadata` (any JSON; `null` or absent: keep what the
    /// member has, `null` for a new one), an update must (`null` clears it); a leave's
    /// other members are ignored.
    pub fn presence<'a>(
        &mut self,
        action: PresenceAction,
        body: &'a [u8],
    ) -> Result<PresenceBody<'a>, Refusal> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(Refusal::bad_request(
                "the body must be a JSON object with `userId`",
            ));
        }
        let tape = self.tape.parse(body).map_err(Refusal::bad_request)?;
        let root = tape.as_value();
        if root.value_type() != ValueType::Object {
            return Err(Refusal::bad_request("the body must be a JSON object"));
        }
        let user_id = match optional_string(&root, "userId")? {
            None => return Err(Refusal::bad_request("missing `userId`")),
            Some(id) if id.is_empty() => {
                return Err(Refusal::bad_request("`userId` must not be empty"))
            }
            Some(id) => id,
        };
        let metadata = match (action, root.get("metadata")) {
            (PresenceAction::Leave, _) => None,
            (PresenceAction::Update, None) => {
                return Err(Refusal::bad_request("an update needs `metadata`"))
            }
            (_, None) => None,
            (_, Some(_)) => match raw_members(body).unwrap_or_default().metadata {
                Some(raw) => Some(raw).filter(|m| *m != b"null"),
                None => return Err(Refusal::bad_request("`metadata` key must not be escaped")),
            },
        };
        Ok(PresenceBody { user_id, metadata })
    }
}

/// `key` of `root` as a string; absent or `null` is `None`, any other type a refusal.
fn optional_string(
    root: &simd_json::tape::Value<'_, '_>,
    key: &str,
) -> Result<Option<String>, Refusal> {
    match root.get(key) {
        None => Ok(None),
        Some(v) if v.is_null() => Ok(None),
        Some(v) => v
            .as_str()
            .map(|s| Some(s.to_owned()))
            .ok_or_else(|| Refusal::bad_request(format!("`{key}` must be a string"))),
    }
}

/// Longest lifetime of a token minted by `POST /api/realtime/tokens` (one year).
pub const MAX_TOKEN_LIFETIME_SECS: u64 = 365 * 24 * 3600;
/// Lifetime of a minted token whose request names none (one hour).
pub const DEFAULT_TOKEN_LIFETIME_SECS: u64 = 3600;

/// The body of `POST /api/realtime/tokens`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBody {
    /// The channel the token is for.
    pub channel: ChannelName,
    /// `userId`: the token's `sub`.
    pub user_id: Option<String>,
    /// `permissions`: `subscribe`, `publish` (default: `["subscribe"]`).
    pub permissions: Vec<String>,
    /// `expiresIn`, seconds (default [`DEFAULT_TOKEN_LIFETIME_SECS`]).
    pub expires_in_secs: u64,
}

/// The fields of a token request; any other is refused, so that a typo (`userid`,
/// `expires_in`) is not minted silently into a token without a `sub` or with the default
/// lifetime (found in review), as `POST /api/ren/events` refuses one.
const TOKEN_FIELDS: [&str; 4] = ["channel", "userId", "permissions", "expiresIn"];
/// The permissions a token can carry.
const TOKEN_PERMISSIONS: [&str; 2] = ["subscribe", "publish"];

impl ApiParser {
    /// Parses a token request: `{channel, userId?, permissions?, expiresIn?}`, no other
    /// field. `permissions`, when given, names at least one of `subscribe` and `publish`
    /// and nothing else: a token that allows nothing is a mistake, not a token.
    pub fn token_request(&mut self, body: &[u8]) -> Result<TokenBody, Refusal> {
        let tape = self.tape.parse(body).map_err(Refusal::bad_request)?;
        let root = tape.as_value();
        let Some(object) = root.as_object() else {
            return Err(Refusal::bad_request("the body must be a JSON object"));
        };
        if let Some((key, _)) = object.iter().find(|(key, _)| !TOKEN_FIELDS.contains(key)) {
            return Err(Refusal::bad_request(format!(
                "unknown field {} (known: {})",
                quoted(key),
                TOKEN_FIELDS.join(", ")
            )));
        }
        let channel = match root.get("channel").as_ref().and_then(|v| v.as_str()) {
            Some(name) => ChannelName::new(name)
                .map_err(|e| Refusal::new(ApiError::InvalidChannel, e.to_string()))?,
            None => return Err(Refusal::bad_request("missing `channel` (a string)")),
        };
        let user_id = match root.get("userId") {
            None => None,
            Some(v) if v.is_null() => None,
            Some(v) => match v.as_str() {
                Some(user) if !user.is_empty() => Some(user.to_owned()),
                _ => return Err(Refusal::bad_request("`userId` must be a non-empty string")),
            },
        };
        let permissions = match root.get("permissions") {
            None => vec!["subscribe".to_owned()],
            Some(v) if v.is_null() => vec!["subscribe".to_owned()],
            Some(v) => {
                let list = v.as_array().ok_or_else(|| {
                    Refusal::bad_request("`permissions` must be an array of strings")
                })?;
                let mut names = Vec::new();
                for item in list.iter() {
                    match item.as_str() {
                        Some(name) if TOKEN_PERMISSIONS.contains(&name) => {
                            names.push(name.to_owned())
                        }
                        Some(name) => {
                            return Err(Refusal::bad_request(format!(
                                "unknown permission {} in `permissions` (known: {})",
                                quoted(name),
                                TOKEN_PERMISSIONS.join(", ")
                            )))
                        }
                        None => {
                            return Err(Refusal::bad_request(
                                "`permissions` must be an array of strings",
                            ))
                        }
                    }
                }
                if names.is_empty() {
                    return Err(Refusal::bad_request(format!(
                        "`permissions` must name at least one of {} (leave it out for [\"subscribe\"])",
                        TOKEN_PERMISSIONS.join(", ")
                    )));
                }
                names
            }
        };
        let expires_in_secs = match root.get("expiresIn") {
            None => DEFAULT_TOKEN_LIFETIME_SECS,
            Some(v) if v.is_null() => DEFAULT_TOKEN_LIFETIME_SECS,
            Some(v) => match v.as_u64() {
                Some(secs) if (1..=MAX_TOKEN_LIFETIME_SECS).contains(&secs) => secs,
                _ => {
                    return Err(Refusal::bad_request(format!(
                        "`expiresIn` must be 1 to {MAX_TOKEN_LIFETIME_SECS} seconds"
                    )))
                }
            },
        };
        Ok(TokenBody {
            channel,
            user_id,
            permissions,
            expires_in_secs,
        })
    }
}

/// `{"token":"…"}`: the answer to a token request.
pub fn minted(token: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(token.len() + 16);
    out.extend_from_slice(b"{\"token\":");
    write_str(&mut out, token);
    out.push(b'}');
    out
}

/// Checks an idempotency key (body `idempotencyKey` or header `Idempotency-Key`).
pub fn check_idempotency_key(key: &str) -> Result<(), Refusal> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
        return Err(Refusal::bad_request(format!(
            "an idempotency key is 1 to {MAX_IDEMPOTENCY_KEY_BYTES} bytes"
        )));
    }
    Ok(())
}

/// `?limit=&after=&before=` of a history read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryParams {
    /// Messages wanted, 1 to [`MAX_HISTORY_LIMIT`] (a larger `limit` asked is that).
    pub limit: usize,
    /// Only messages with a greater seq (the first `limit` of them).
    pub after: Option<u64>,
    /// Only messages with a smaller seq (without `after`: the last `limit` of them).
    pub before: Option<u64>,
}

/// Reads `limit`, `after` and `before` from the query. An empty value counts as absent.
pub fn history_query(head: &RequestHead) -> Result<HistoryParams, Refusal> {
    let number = |name: &str| -> Result<Option<u64>, Refusal> {
        match head.query_param(name).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
                Refusal::bad_request(format!("`{name}` must be a non-negative integer"))
            }),
        }
    };
    // Past the largest page, a page as large as there is: no plan keeps more, and the
    // SDK shows a refusal as an empty history (found in review).
    let limit = match number("limit")? {
        None => DEFAULT_HISTORY_LIMIT,
        Some(0) => return Err(Refusal::bad_request("`limit` must be at least 1")),
        Some(n) => usize::try_from(n).map_or(MAX_HISTORY_LIMIT, |n| n.min(MAX_HISTORY_LIMIT)),
    };
    Ok(HistoryParams {
        limit,
        after: number("after")?,
        before: number("before")?,
    })
}

/// `{"ok":true,"seq":…,"ts":…}`: the answer to a publish.
pub fn published(seq: u64, ts: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(48);
    out.extend_from_slice(b"{\"ok\":true,\"seq\":");
    write_u64(&mut out, seq);
    out.extend_from_slice(b",\"ts\":");
    write_u64(&mut out, ts);
    out.push(b'}');
    out
}

/// `{"channels":[…]}`.
pub fn channels<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"{\"channels\":[");
    for (i, name) in names.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(&mut out, name);
    }
    out.extend_from_slice(b"]}");
    out
}

/// One message of a history page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryEntry<'a> {
    /// Its seq.
    pub seq: u64,
    /// Its `ts` (epoch milliseconds).
    pub ts: u64,
    /// The publisher's user id.
    pub user_id: Option<&'a str>,
    /// The raw JSON of `data`, as published.
    pub data: &'a [u8],
}

/// `{"messages":[{"seq","channel","data","uid"?,"ts"}…]}`, in the order given.
pub fn history_page<'a>(
    channel: &str,
    messages: impl IntoIterator<Item = HistoryEntry<'a>>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"messages\":[");
    for (i, m) in messages.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"seq\":");
        write_u64(&mut out, m.seq);
        out.extend_from_slice(b",\"channel\":");
        write_str(&mut out, channel);
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(m.data);
        if let Some(uid) = m.user_id {
            out.extend_from_slice(b",\"uid\":");
            write_str(&mut out, uid);
        }
        out.extend_from_slice(b",\"ts\":");
        write_u64(&mut out, m.ts);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    out
}

/// One member of a presence listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceEntry<'a> {
    /// Its key.
    pub user_id: &'a str,
    /// Its raw JSON metadata; `None` is `null`.
    pub metadata: Option<&'a [u8]>,
    /// When it was last seen, epoch seconds.
    pub last_seen_secs: u64,
}

/// `{"members":[{"userId","metadata","lastSeen"}…]}`, in the order given.
pub fn presence_members<'a>(members: impl IntoIterator<Item = PresenceEntry<'a>>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"{\"members\":[");
    for (i, m) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"userId\":");
        write_str(&mut out, m.user_id);
        out.extend_from_slice(b",\"metadata\":");
        out.extend_from_slice(m.metadata.unwrap_or(b"null"));
        out.extend_from_slice(b",\"lastSeen\":");
        write_u64(&mut out, m.last_seen_secs);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    out
}

/// `{"isNew":…}`: the answer to a presence join.
pub fn presence_joined(is_new: bool) -> Vec<u8> {
    flag("isNew", is_new)
}

/// `{"updated":…}`: the answer to a presence update.
pub fn presence_updated(updated: bool) -> Vec<u8> {
    flag("updated", updated)
}

/// `{"wasPresent":…}`: the answer to a presence leave.
pub fn presence_left(was_present: bool) -> Vec<u8> {
    flag("wasPresent", was_present)
}

fn flag(key: &str, value: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 10);
    out.push(b'{');
    write_str(&mut out, key);
    out.push(b':');
    out.extend_from_slice(if value { b"true" } else { b"false" });
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse_request_head;

    #[test]
    fn publish_bodies() {
        let mut p = ApiParser::new();
        let body = br#"{"channel":"private-room:vip","data":{"n":123456789012345678901234567890,"x":1e400},"userId":"alice","idempotencyKey":"k1"}"#;
        let b = p.publish(body).unwrap();
        assert_eq!(b.channel.as_str(), "private-room:vip");
        assert_eq!(b.data, br#"{"n":123456789012345678901234567890,"x":1e400}"#);
        assert_eq!(b.user_id.as_deref(), Some("alice"));
        assert_eq!(b.idempotency_key.as_deref(), Some("k1"));
        // What the SDK sends when userId is undefined: the key is left out.
        let b = p.publish(br#"{"channel":"c","data":null}"#).unwrap();
        assert_eq!((b.data, b.user_id), (&b"null"[..], None));

        let mut refused_with = |body: &[u8]| p.publish(body).map(|_| ()).unwrap_err().error;
        assert_eq!(refused_with(b""), ApiError::BadRequest);
        assert_eq!(refused_with(b"{\"channel\":\"c\""), ApiError::BadRequest);
        assert_eq!(refused_with(b"[1]"), ApiError::BadRequest);
        assert_eq!(refused_with(br#"{"channel":"c"}"#), ApiError::BadRequest);
        assert_eq!(refused_with(br#"{"data":1}"#), ApiError::BadRequest);
        assert_eq!(
            refused_with(br#"{"channel":7,"data":1}"#),
            ApiError::BadRequest
        );
        assert_eq!(
            refused_with(br#"{"channel":"","data":1}"#),
            ApiError::InvalidChannel
        );
        assert_eq!(
            refused_with(br#"{"channel":"c","data":1,"idempotencyKey":""}"#),
            ApiError::BadRequest
        );
        assert_eq!(
            refused_with(br#"{"channel":"c","data":01}"#),
            ApiError::BadRequest
        );
    }

    #[test]
    fn presence_bodies() {
        let mut p = ApiParser::new();
        let body =
            br#"{"userId":"alice","metadata":{"n":123456789012345678901234567890, "s":"x"}}"#;
        let b = p.presence(PresenceAction::Join, body).unwrap();
        assert_eq!(b.user_id, "alice");
        assert_eq!(
            b.metadata,
            Some(&br#"{"n":123456789012345678901234567890, "s":"x"}"#[..])
        );
        // What the SDK sends when metadata is undefined: the key is left out.
        let b = p
            .presence(PresenceAction::Join, br#"{"userId":"a"}"#)
            .unwrap();
        assert_eq!(b.metadata, None);
        let b = p
            .presence(PresenceAction::Update, br#"{"userId":"a","metadata":null}"#)
            .unwrap();
        assert_eq!(b.metadata, None);
        // A leave ignores what else the body holds.
        let b = p
            .presence(PresenceAction::Leave, br#"{"userId":"a","metadata":[1]}"#)
            .unwrap();
        assert_eq!((b.user_id.as_str(), b.metadata), ("a", None));

        let mut refused = |action, body: &[u8]| p.presence(action, body).unwrap_err();
        for (action, body) in [
            (PresenceAction::Join, &b""[..]),
            (PresenceAction::Join, b"  "),
            (PresenceAction::Join, b"{\"userId\":\"a\""),
            (PresenceAction::Join, b"[\"a\"]"),
            (PresenceAction::Join, b"{}"),
            (PresenceAction::Join, br#"{"userId":null}"#),
            (PresenceAction::Join, br#"{"userId":""}"#),
            (PresenceAction::Join, br#"{"userId":7}"#),
            (PresenceAction::Leave, br#"{"userId":["a"]}"#),
            (PresenceAction::Update, br#"{"userId":"a"}"#),
            (PresenceAction::Join, br#"{"userId":"a","metad\u0061ta":1}"#),
        ] {
            let r = refused(action, body);
            assert_eq!(r.error, ApiError::BadRequest, "{action:?} {body:?}");
            assert!(!r.message.is_empty());
        }
    }

    fn query(q: &str) -> Result<HistoryParams, Refusal> {
        let head = parse_request_head(format!("GET /x?{q} HTTP/1.1\r\n\r\n").as_bytes())
            .unwrap()
            .unwrap();
        history_query(&head)
    }

    #[test]
    fn history_queries() {
        assert_eq!(
            query("").unwrap(),
            HistoryParams {
                limit: DEFAULT_HISTORY_LIMIT,
                after: None,
                before: None
            }
        );
        let q = query("limit=5&after=7&before=").unwrap();
        assert_eq!((q.limit, q.after, q.before), (5, Some(7), None));
        for bad in ["limit=0", "limit=x", "after=-1", "before=1.5"] {
            assert_eq!(query(bad).unwrap_err().error, ApiError::BadRequest, "{bad}");
        }
        for big in ["limit=1001", "limit=5000", "limit=18446744073709551615"] {
            assert_eq!(query(big).unwrap().limit, MAX_HISTORY_LIMIT, "{big}");
        }
    }

    #[test]
    fn token_requests() {
        let mut p = ApiParser::new();
        let body = br#"{"channel":"private-a","userId":"alice","permissions":["publish","subscribe"],"expiresIn":60}"#;
        let b = p.token_request(body).unwrap();
        assert_eq!(b.channel.as_str(), "private-a");
        assert_eq!(b.user_id.as_deref(), Some("alice"));
        assert_eq!(b.permissions, ["publish", "subscribe"]);
        assert_eq!(b.expires_in_secs, 60);
        let b = p
            .token_request(br#"{"channel":"c","permissions":null}"#)
            .unwrap();
        assert_eq!(b.permissions, ["subscribe"]);
        assert_eq!(b.expires_in_secs, DEFAULT_TOKEN_LIFETIME_SECS);

        let mut refused = |body: &[u8]| p.token_request(body).unwrap_err();
        // A misspelt field is refused by name, not minted into a token without a `sub`
        // and with the default lifetime (found in review).
        let r = refused(br#"{"channel":"private-a","expires_in":60,"userid":"alice"}"#);
        assert_eq!(r.error, ApiError::BadRequest);
        assert!(
            r.message.contains("unknown field `expires_in`"),
            "{}",
            r.message
        );
        assert!(
            r.message.contains("userId"),
            "names the known fields: {}",
            r.message
        );
        let r = refused(br#"{"channel":"c","userid":"alice"}"#);
        assert!(r.message.contains("`userid`"), "{}", r.message);
        // A token that allows nothing, and a permission that is not one.
        let r = refused(br#"{"channel":"c","permissions":[]}"#);
        assert_eq!(r.error, ApiError::BadRequest);
        assert!(
            r.message.contains("at least one of subscribe, publish"),
            "{}",
            r.message
        );
        let r = refused(br#"{"channel":"c","permissions":["subscribe","admin"]}"#);
        assert_eq!(r.error, ApiError::BadRequest);
        assert!(
            r.message.contains("unknown permission `admin`"),
            "{}",
            r.message
        );
        let r = refused(br#"{"channel":"c","permissions":[1]}"#);
        assert!(r.message.contains("array of strings"), "{}", r.message);
        assert_eq!(
            refused(br#"{"channel":""}"#).error,
            ApiError::InvalidChannel
        );
        assert_eq!(refused(br#"[1]"#).error, ApiError::BadRequest);
        assert_eq!(
            refused(br#"{"channel":"c","userId":""}"#).error,
            ApiError::BadRequest
        );
        assert_eq!(
            refused(br#"{"channel":"c","expiresIn":0}"#).error,
            ApiError::BadRequest
        );
    }

    #[test]
    fn answers_are_json() {
        let v: serde_json::Value = serde_json::from_slice(&published(3, 99)).unwrap();
        assert_eq!(v, serde_json::json!({"ok": true, "seq": 3, "ts": 99}));
        let v: serde_json::Value = serde_json::from_slice(&channels(["a", "b\"c"])).unwrap();
        assert_eq!(v, serde_json::json!({"channels": ["a", "b\"c"]}));
        let page = history_page(
            "ch",
            [
                HistoryEntry {
                    seq: 1,
                    ts: 5,
                    user_id: Some("u"),
                    data: b"{\"a\":1}",
                },
                HistoryEntry {
                    seq: 2,
                    ts: 6,
                    user_id: None,
                    data: b"1e400",
                },
            ],
        );
        assert_eq!(
            std::str::from_utf8(&page).unwrap(),
            r#"{"messages":[{"seq":1,"channel":"ch","data":{"a":1},"uid":"u","ts":5},{"seq":2,"channel":"ch","data":1e400,"ts":6}]}"#
        );
        let members = presence_members([
            PresenceEntry {
                user_id: "a\"b",
                metadata: Some(b"{\"n\":1e400}"),
                last_seen_secs: 1_710_000_000,
            },
            PresenceEntry {
                user_id: "c",
                metadata: None,
                last_seen_secs: 7,
            },
        ]);
        assert_eq!(
            std::str::from_utf8(&members).unwrap(),
            r#"{"members":[{"userId":"a\"b","metadata":{"n":1e400},"lastSeen":1710000000},{"userId":"c","metadata":null,"lastSeen":7}]}"#
        );
        assert_eq!(presence_members([]), b"{\"members\":[]}");
        assert_eq!(presence_joined(true), b"{\"isNew\":true}");
        assert_eq!(presence_updated(false), b"{\"updated\":false}");
        assert_eq!(presence_left(true), b"{\"wasPresent\":true}");
    }
}
