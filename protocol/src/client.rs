//! Client → server frames (SPEC §3), parsed with simd-json.
//!
//! Scalar fields (channel, userId, token, lastEventId, epoch) are extracted from the
//! simd-json tape; opaque JSON members (`data`, `metadata`, `ref`) are carried as the raw
//! bytes the client sent, so they reach subscribers byte-for-byte.

use simd_json::prelude::*;
use simd_json::{Buffers, ValueType};

use crate::channel::ChannelName;
use crate::error::ErrorCode;
use crate::json::{raw_members, RawMembers};

/// One parsed client frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame<'a> {
    /// `subscribe`
    Subscribe(Subscribe),
    /// `unsubscribe`
    Unsubscribe {
        /// The channel to leave.
        channel: ChannelName,
    },
    /// `publish`
    Publish(Publish<'a>),
    /// `presence:join`
    PresenceJoin(PresenceJoin<'a>),
    /// `presence:update`
    PresenceUpdate(PresenceJoin<'a>),
    /// `presence:leave`
    PresenceLeave {
        /// The channel whose presence to leave.
        channel: ChannelName,
    },
    /// `ping`
    Ping,
}

/// The fields of a `subscribe` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Channel to follow.
    pub channel: ChannelName,
    /// Channel token for `private-` channels.
    pub token: Option<String>,
    /// Replay every kept message with a greater seq before `subscribed`.
    pub last_event_id: Option<u64>,
    /// The epoch the client saw `last_event_id` in.
    pub epoch: Option<String>,
}

/// The fields of a `publish` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish<'a> {
    /// Target channel.
    pub channel: ChannelName,
    /// The raw JSON of `data`, exactly as sent.
    pub data: &'a [u8],
    /// The publisher-supplied user id.
    pub user_id: Option<String>,
    /// Channel token for `private-` channels.
    pub token: Option<String>,
    /// The raw JSON of `ref` (a string or a number), echoed in `ack` and `error`.
    pub reference: Option<&'a [u8]>,
}

/// The fields of `presence:join` and `presence:update`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceJoin<'a> {
    /// Channel.
    pub channel: ChannelName,
    /// Member key.
    pub user_id: String,
    /// Raw JSON of `metadata`, if present.
    pub metadata: Option<&'a [u8]>,
    /// Channel token for `private-` channels.
    pub token: Option<String>,
}

/// A parsed frame and its raw `ref`, if it carried one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// The frame.
    pub frame: ClientFrame<'a>,
    /// The raw JSON of `ref` (a string or a number), for any error answering the frame.
    pub reference: Option<&'a [u8]>,
}

/// Why a frame was refused, with what the error event should echo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseFailure<'a> {
    /// `bad_request` or `invalid_channel`.
    pub code: ErrorCode,
    /// Human-readable reason.
    pub message: String,
    /// The channel named by the frame, when it could be read.
    pub channel: Option<String>,
    /// The raw `ref` of the frame, when it could be read.
    pub reference: Option<&'a [u8]>,
}

/// Parses client frames, reusing its buffers across calls (one per shard).
pub struct FrameParser {
    tape: TapeBuffers,
}

/// Buffers for parsing JSON into a simd-json tape, reused across calls.
///
/// simd-json refuses numbers it cannot convert (an integer beyond 64 bits, `1e400`),
/// though they are valid JSON (RFC 8259) and a browser's `JSON.parse` reads them. When
/// simd-json refuses a text, it is checked again with the strict scanner in `json.rs`;
/// if that finds it valid, it is parsed from a copy whose risky numbers are replaced by
/// `0.0` of the same length. Opaque members (`data`, `metadata`, `ref`) are always taken
/// raw from the original bytes, so numbers reach subscribers exactly as sent.
pub(crate) struct TapeBuffers {
    scratch: Vec<u8>,
    fallback: Vec<u8>,
    buffers: Buffers,
}

impl TapeBuffers {
    pub(crate) fn new() -> TapeBuffers {
        TapeBuffers {
            scratch: Vec::new(),
            fallback: Vec::new(),
            buffers: Buffers::new(512),
        }
    }

    /// The tape of `text`, or why `text` is not JSON.
    pub(crate) fn parse(&mut self, text: &[u8]) -> Result<simd_json::Tape<'_>, String> {
        // simd-json rewrites its input in place (string unescaping), so it works on a
        // copy and the original stays intact for raw spans.
        self.scratch.clear();
        self.scratch.extend_from_slice(text);
        let first = match simd_json::to_tape_with_buffers(&mut self.scratch, &mut self.buffers) {
            Ok(tape) => return Ok(tape),
            Err(e) => e,
        };
        crate::json::copy_with_tape_safe_numbers(text, &mut self.fallback)
            .map_err(|e| format!("malformed JSON: {e}"))?;
        simd_json::to_tape_with_buffers(&mut self.fallback, &mut self.buffers)
            .map_err(|_| format!("malformed JSON: {first}"))
    }
}

impl std::fmt::Debug for FrameParser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameParser").finish_non_exhaustive()
    }
}

impl Default for FrameParser {
    fn default() -> Self {
        FrameParser::new()
    }
}

impl FrameParser {
    /// A parser with empty buffers.
    pub fn new() -> FrameParser {
        FrameParser {
            tape: TapeBuffers::new(),
        }
    }

    /// Parses one text message (already known to be valid UTF-8).
    pub fn parse<'a>(&mut self, text: &'a [u8]) -> Result<ClientFrame<'a>, ParseFailure<'a>> {
        self.parse_frame(text).map(|parsed| parsed.frame)
    }

    /// Like [`FrameParser::parse`], with the frame's raw `ref` (a string or a number):
    /// SPEC §3 has every `error` answering a frame that carried one echo it, whatever
    /// the action (found in review: a refused subscribe or presence action dropped it).
    pub fn parse_frame<'a>(&mut self, text: &'a [u8]) -> Result<Parsed<'a>, ParseFailure<'a>> {
        let tape = self
            .tape
            .parse(text)
            .map_err(|message| bad_request(message, None, None))?;
        let root = tape.as_value();
        if root.value_type() != ValueType::Object {
            return Err(bad_request(
                "a frame must be a JSON object".into(),
                None,
                None,
            ));
        }
        let raw = raw_members(text).unwrap_or_default();
        let reference = checked_reference(root, &raw)?;
        let fields = Fields { root, reference };
        let action = fields.required_str("action")?;
        let frame = match action {
            "subscribe" => Ok(ClientFrame::Subscribe(Subscribe {
                channel: fields.channel()?,
                token: fields.optional_str("token")?,
                last_event_id: fields.last_event_id()?,
                epoch: fields.epoch()?,
            })),
            "unsubscribe" => Ok(ClientFrame::Unsubscribe {
                channel: fields.channel()?,
            }),
            "publish" => {
                let channel = fields.channel()?;
                let data = match (root.get("data"), raw.data) {
                    (Some(_), Some(data)) => data,
                    (None, _) => return Err(fields.fail("publish needs `data`", Some(&channel))),
                    (Some(_), None) => {
                        return Err(fields.fail("`data` key must not be escaped", Some(&channel)))
                    }
                };
                Ok(ClientFrame::Publish(Publish {
                    data,
                    user_id: fields.optional_str("userId")?,
                    token: fields.optional_str("token")?,
                    reference,
                    channel,
                }))
            }
            "presence:join" | "presence:update" => {
                let channel = fields.channel()?;
                let Some(user_id) = fields.optional_str("userId")? else {
                    return Err(fields.fail(&format!("{action} needs `userId`"), Some(&channel)));
                };
                let join = PresenceJoin {
                    user_id,
                    metadata: raw.metadata.filter(|m| *m != b"null"),
                    token: fields.optional_str("token")?,
                    channel,
                };
                Ok(if action == "presence:join" {
                    ClientFrame::PresenceJoin(join)
                } else {
                    ClientFrame::PresenceUpdate(join)
                })
            }
            "presence:leave" => Ok(ClientFrame::PresenceLeave {
                channel: fields.channel()?,
            }),
            "ping" => Ok(ClientFrame::Ping),
            other => Err(fields.fail(&format!("unknown action `{}`", truncate(other)), None)),
        };
        Ok(Parsed {
            frame: frame?,
            reference,
        })
    }
}

struct Fields<'t, 'i, 'a> {
    root: simd_json::tape::Value<'t, 'i>,
    reference: Option<&'a [u8]>,
}

impl<'i, 'a> Fields<'_, 'i, 'a> {
    fn fail(&self, message: &str, channel: Option<&ChannelName>) -> ParseFailure<'a> {
        bad_request(
            message.to_owned(),
            channel.map(|c| c.as_str().to_owned()),
            self.reference,
        )
    }

    /// The string field `key`, borrowed from the parsed frame (no copy: the action and
    /// the channel name of every frame are read this way).
    fn required_str(&self, key: &str) -> Result<&'i str, ParseFailure<'a>> {
        match self.root.get(key) {
            Some(v) => v
                .into_string()
                .ok_or_else(|| self.fail(&format!("`{key}` must be a string"), None)),
            None => Err(self.fail(&format!("missing `{key}`"), None)),
        }
    }

    fn optional_str(&self, key: &str) -> Result<Option<String>, ParseFailure<'a>> {
        match self.root.get(key) {
            None => Ok(None),
            Some(v) if v.is_null() => Ok(None),
            Some(v) => match v.as_str() {
                Some(s) => Ok(Some(s.to_owned())),
                None => Err(self.fail(&format!("`{key}` must be a string"), None)),
            },
        }
    }

    fn channel(&self) -> Result<ChannelName, ParseFailure<'a>> {
        let name = self.required_str("channel")?;
        ChannelName::new(name).map_err(|e| ParseFailure {
            code: ErrorCode::InvalidChannel,
            message: e.to_string(),
            channel: Some(truncate(name).to_owned()),
            reference: self.reference,
        })
    }

    fn last_event_id(&self) -> Result<Option<u64>, ParseFailure<'a>> {
        let Some(v) = self.root.get("lastEventId") else {
            return Ok(None);
        };
        if v.is_null() {
            return Ok(None);
        }
        if let Some(n) = v.as_u64() {
            return Ok(Some(n));
        }
        match v.as_str().map(str::parse::<u64>) {
            Some(Ok(n)) => Ok(Some(n)),
            _ => Err(self.fail("`lastEventId` must be a non-negative integer", None)),
        }
    }

    fn epoch(&self) -> Result<Option<String>, ParseFailure<'a>> {
        let Some(v) = self.root.get("epoch") else {
            return Ok(None);
        };
        if v.is_null() {
            return Ok(None);
        }
        if let Some(s) = v.as_str() {
            return Ok(Some(s.to_owned()));
        }
        match v.as_u64() {
            Some(n) => Ok(Some(n.to_string())),
            None => Err(self.fail("`epoch` must be a string", None)),
        }
    }
}

/// `ref` must be a string or a number; anything else is refused (without echo).
fn checked_reference<'a>(
    root: simd_json::tape::Value<'_, '_>,
    raw: &RawMembers<'a>,
) -> Result<Option<&'a [u8]>, ParseFailure<'a>> {
    match root.get("ref") {
        None => Ok(None),
        Some(v) if v.is_null() => Ok(None),
        Some(v) if v.is_str() || v.is_number() => match raw.reference {
            Some(r) => Ok(Some(r)),
            None => Err(bad_request(
                "`ref` key must not be escaped".into(),
                None,
                None,
            )),
        },
        Some(_) => Err(bad_request(
            "`ref` must be a string or a number".into(),
            None,
            None,
        )),
    }
}

fn bad_request<'a>(
    message: String,
    channel: Option<String>,
    reference: Option<&'a [u8]>,
) -> ParseFailure<'a> {
    ParseFailure {
        code: ErrorCode::BadRequest,
        message,
        channel,
        reference,
    }
}

/// Keeps echoed client text short in error messages.
fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests;
