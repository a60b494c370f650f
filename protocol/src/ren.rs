//! REN (SPEC §7), sans IO: the `s=` resource filter, `POST /api/ren/events` bodies, and
//! the `text/event-stream` chunks that every stream of a tenant shares.
//!
//! ```text
//!  ?s=kv,db             ──► RenFilter::parse ──► All | Domains([db, kv])   (else a 400 Refusal)
//!  POST /api/ren/events ──► ApiParser::ren_events ──► [IngestEvent { r, chunk, private }]
//!                           (the whole batch, or one Refusal naming the bad entry)
//!  channel message      ──► PendingChunk::realtime / ::presence
//!  PendingChunk + id    ──► finish(id) ──► "id: N\nevent: T\ndata: {…}\n\n" as `Bytes`
//! ```
//!
//! A chunk is built once with room in front for its `id:` line, so the tenant's REN
//! owner, which assigns ids, only writes that line in place: no copy of the event at the
//! owner. `data` is raw JSON as the publisher sent it; the only change is that a CR or
//! LF (which valid JSON can only hold as whitespace between tokens, never inside a
//! string) becomes a space, because SSE would read it as the end of the `data:` line.

use bytes::Bytes;
use simd_json::prelude::*;
use simd_json::ValueType;

use crate::api::{ApiParser, Refusal};
use crate::channel::ChannelName;
use crate::error::ApiError;
use crate::event::PresenceKind;
use crate::json::{raw_elements, raw_members, write_str, write_u64};

/// Longest resource domain (`r`, a token of `s=`), in bytes.
pub const MAX_DOMAIN_BYTES: usize = 32;
/// Longest event type (`t`), in bytes.
pub const MAX_TYPE_BYTES: usize = 128;
/// Most domains one `s=` filter may name.
pub const MAX_FILTER_DOMAINS: usize = 64;
/// Most events one `POST /api/ren/events` may carry.
pub const MAX_BATCH_EVENTS: usize = 1000;
/// Longest `src` (the body's, or the `X-Ren-Client` header that every event of a batch
/// without one takes): a long header copied into each of a thousand events made about
/// 16 MB of stream chunks from one small request (found in review).
pub const MAX_SRC_BYTES: usize = 256;
/// The heartbeat comment every stream gets (every 15 s).
pub const PING: &[u8] = b":ping\n\n";
/// What a stream gets right after its head: a comment, so the client sees bytes at once.
pub const OPENED: &[u8] = b":ok\n\n";
/// The type of the server's own events about the stream (truncation).
pub const META_TYPE: &str = "ren.meta";
/// The domain of [`META_TYPE`] events, reserved for the server.
pub const META_DOMAIN: &str = "ren";
/// The domain of mirrored channel messages.
pub const REALTIME_DOMAIN: &str = "realtime";
/// The domain of mirrored presence changes.
pub const PRESENCE_DOMAIN: &str = "presence";

/// The fields an event may have (SPEC §7, the seed's `RenEvent`).
const FIELDS: [&str; 10] = ["t", "r", "k", "ns", "v", "ts", "src", "ch", "data", "uid"];

/// Which resource domains a stream wants (`?s=`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RenFilter {
    /// Every domain (`s` absent or empty, or `*` among the tokens).
    All,
    /// These domains, sorted, without duplicates.
    Domains(Box<[Box<str>]>),
}

impl RenFilter {
    /// Parses `s`: comma-separated tokens, each `[a-z0-9_-]{1,32}` or `*`.
    pub fn parse(s: Option<&str>) -> Result<RenFilter, Refusal> {
        let Some(s) = s.filter(|s| !s.is_empty()) else {
            return Ok(RenFilter::All);
        };
        let mut all = false;
        let mut domains: Vec<Box<str>> = Vec::new();
        for token in s.split(',') {
            if token == "*" {
                all = true;
            } else if is_domain(token) {
                domains.push(token.into());
            } else {
                return Err(Refusal::new(
                    ApiError::BadRequest,
                    format!(
                        "`s`: {} is not a resource domain ([a-z0-9_-]{{1,{MAX_DOMAIN_BYTES}}}, or `*`)",
                        quoted(token)
                    ),
                ));
            }
        }
        if all {
            return Ok(RenFilter::All);
        }
        domains.sort_unstable();
        domains.dedup();
        if domains.len() > MAX_FILTER_DOMAINS {
            return Err(Refusal::new(
                ApiError::BadRequest,
                format!("`s` names more than {MAX_FILTER_DOMAINS} domains"),
            ));
        }
        Ok(RenFilter::Domains(domains.into()))
    }

    /// Whether an event of `domain` passes.
    pub fn matches(&self, domain: &str) -> bool {
        match self {
            RenFilter::All => true,
            RenFilter::Domains(domains) => domains.iter().any(|d| &**d == domain),
        }
    }
}

/// Whether `s` is a resource domain: `[a-z0-9_-]{1,32}`.
pub fn is_domain(s: &str) -> bool {
    (1..=MAX_DOMAIN_BYTES).contains(&s.len())
        && s.bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
}

/// Whether `s` is an event type: `[A-Za-z0-9._:-]{1,128}` (it goes on the `event:` line).
pub fn is_event_type(s: &str) -> bool {
    (1..=MAX_TYPE_BYTES).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// `s` for an error message: quoted, and cut short if long.
pub(crate) fn quoted(s: &str) -> String {
    let mut end = s.len().min(40);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let more = if end < s.len() { "…" } else { "" };
    format!("`{}{more}`", &s[..end])
}

/// Room in front of a chunk for `id: <u64>\n`.
const ID_ROOM: usize = 4 + 20 + 1;

/// An event's SSE chunk (`event:` and `data:` lines) with room in front for the `id:`
/// line its tenant's REN owner writes when it assigns the id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingChunk {
    buf: Vec<u8>,
}

impl PendingChunk {
    /// Starts `event: T\ndata: {"t":T,"r":R` behind the id room.
    fn start(t: &str, r: &str, capacity: usize) -> PendingChunk {
        let mut buf = Vec::with_capacity(ID_ROOM + 2 * t.len() + r.len() + capacity + 48);
        buf.resize(ID_ROOM, 0);
        buf.extend_from_slice(b"event: ");
        buf.extend_from_slice(t.as_bytes());
        buf.extend_from_slice(b"\ndata: {\"t\":");
        write_str(&mut buf, t);
        let mut chunk = PendingChunk { buf };
        chunk.str_field("r", r);
        chunk
    }

    fn key(&mut self, key: &str) {
        self.buf.extend_from_slice(b",\"");
        self.buf.extend_from_slice(key.as_bytes());
        self.buf.extend_from_slice(b"\":");
    }

    fn str_field(&mut self, key: &str, value: &str) {
        self.key(key);
        write_str(&mut self.buf, value);
    }

    fn opt_str_field(&mut self, key: &str, value: Option<&str>) {
        if let Some(value) = value {
            self.str_field(key, value);
        }
    }

    /// `data`: raw JSON, with CR and LF (whitespace there) turned into spaces.
    fn raw_field(&mut self, key: &str, raw_json: &[u8]) {
        self.key(key);
        let at = self.buf.len();
        self.buf.extend_from_slice(raw_json);
        for b in &mut self.buf[at..] {
            if matches!(*b, b'\r' | b'\n') {
                *b = b' ';
            }
        }
    }

    /// Closes the JSON with `ts` and ends the event.
    fn end(mut self, ts: u64) -> PendingChunk {
        self.key("ts");
        write_u64(&mut self.buf, ts);
        self.buf.extend_from_slice(b"}\n\n");
        self
    }

    /// The event for a message published on a channel:
    /// `{"t":"realtime.message","r":"realtime","v":"<seq>","ch":…,"data":…,"uid"?,"ts"}`.
    pub fn realtime(
        channel: &str,
        data: &[u8],
        uid: Option<&str>,
        src: Option<&str>,
        seq: u64,
        ts: u64,
    ) -> Self {
        let extra = uid.map_or(0, str::len) + src.map_or(0, str::len);
        let mut chunk = PendingChunk::start(
            "realtime.message",
            REALTIME_DOMAIN,
            channel.len() + data.len() + extra + 40,
        );
        let mut v = Vec::with_capacity(20);
        write_u64(&mut v, seq);
        chunk.str_field("v", std::str::from_utf8(&v).unwrap_or("0"));
        chunk.opt_str_field("src", src);
        chunk.str_field("ch", channel);
        chunk.raw_field("data", data);
        chunk.opt_str_field("uid", uid);
        chunk.end(ts)
    }

    /// The event for a presence change: `presence.join|update|leave` with `ch`, `uid`,
    /// and the member's metadata as `data` (joins and updates; `null` when none).
    pub fn presence(
        kind: PresenceKind,
        channel: &str,
        uid: &str,
        metadata: Option<&[u8]>,
        ts: u64,
    ) -> Self {
        let t = match kind {
            PresenceKind::Join => "presence.join",
            PresenceKind::Update => "presence.update",
            PresenceKind::Leave => "presence.leave",
        };
        let size = channel.len() + uid.len() + metadata.map_or(4, <[u8]>::len);
        let mut chunk = PendingChunk::start(t, PRESENCE_DOMAIN, size);
        chunk.str_field("ch", channel);
        if kind != PresenceKind::Leave {
            chunk.raw_field("data", metadata.unwrap_or(b"null"));
        }
        chunk.str_field("uid", uid);
        chunk.end(ts)
    }

    /// `ren.meta` saying the stream missed events the buffer no longer holds:
    /// `{"t":"ren.meta","r":"ren","data":{"truncated":true,"lastEventId":…},"ts"}`.
    pub fn truncated(last_event_id: &str, ts: u64) -> Self {
        let mut chunk = PendingChunk::start(META_TYPE, META_DOMAIN, last_event_id.len() + 48);
        chunk.key("data");
        chunk
            .buf
            .extend_from_slice(b"{\"truncated\":true,\"lastEventId\":");
        write_str(&mut chunk.buf, last_event_id);
        chunk.buf.push(b'}');
        chunk.end(ts)
    }

    /// Writes `id: <id>` in front and hands out the complete chunk.
    pub fn finish(self, id: u64) -> Bytes {
        let mut line = Vec::with_capacity(ID_ROOM);
        line.extend_from_slice(b"id: ");
        write_u64(&mut line, id);
        line.push(b'\n');
        let start = ID_ROOM - line.len();
        let mut buf = self.buf;
        buf[start..ID_ROOM].copy_from_slice(&line);
        Bytes::from(buf).slice(start..)
    }

    /// Bytes of the chunk (without its id line).
    pub fn len(&self) -> usize {
        self.buf.len() - ID_ROOM
    }

    /// Never true: a chunk has at least its `event:` and `data:` lines.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// One event of a `POST /api/ren/events` body, checked and encoded but for its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestEvent {
    /// Its resource domain (what `s=` filters on).
    pub r: String,
    /// Its chunk, waiting for the id.
    pub chunk: PendingChunk,
    /// Its `ch` when that is a `private-` channel: only streams whose token grants the
    /// channel get it, as for the channel's mirrored messages.
    pub private: Option<ChannelName>,
}

/// Where an entry sits in the body, for error messages: `event` or `events[2]`.
#[derive(Clone, Copy)]
enum Entry {
    Single,
    Index(usize),
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entry::Single => f.write_str("event"),
            Entry::Index(i) => write!(f, "events[{i}]"),
        }
    }
}

impl ApiParser {
    /// Parses a `POST /api/ren/events` body: one event object or an array of them. Every
    /// entry is checked before any is accepted; the first bad one is named in the
    /// refusal (`events[2].t: …`). `t` is required (`[A-Za-z0-9._:-]{1,128}`); `r`
    /// defaults to the part of `t` before its first `.` and must be a domain
    /// (`[a-z0-9_-]{1,32}`, not `ren`); `k`, `ns`, `v`, `src`, `ch`, `uid` are strings
    /// (or null); `ts` a non-negative integer (default `now`); `data` any JSON of at most
    /// `max_data_bytes`; no other field. `src` defaults to `header_src` (`X-Ren-Client`).
    pub fn ren_events(
        &mut self,
        body: &[u8],
        now: u64,
        header_src: Option<&str>,
        max_data_bytes: usize,
    ) -> Result<Vec<IngestEvent>, Refusal> {
        let bad = |message: String| Refusal::new(ApiError::BadRequest, message);
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(bad(
                "the body must be an event object or an array of them".into()
            ));
        }
        let tape = self.tape.parse(body).map_err(bad)?;
        let root = tape.as_value();
        let check = |entry: Entry, value, raw: &[u8]| {
            ren_event(entry, value, raw, now, header_src, max_data_bytes)
        };
        match root.value_type() {
            ValueType::Object => Ok(vec![check(Entry::Single, root, body)?]),
            ValueType::Array => {
                let (Some(array), Some(raw)) = (root.as_array(), raw_elements(body)) else {
                    return Err(bad("malformed array of events".into()));
                };
                if array.len() > MAX_BATCH_EVENTS {
                    return Err(bad(format!(
                        "{} events; at most {MAX_BATCH_EVENTS} per request",
                        array.len()
                    )));
                }
                array
                    .iter()
                    .zip(raw)
                    .enumerate()
                    .map(|(i, (value, raw))| check(Entry::Index(i), value, raw))
                    .collect()
            }
            _ => Err(bad(
                "the body must be an event object or an array of them".into()
            )),
        }
    }
}

fn ren_event(
    entry: Entry,
    value: simd_json::tape::Value<'_, '_>,
    raw: &[u8],
    now: u64,
    header_src: Option<&str>,
    max_data_bytes: usize,
) -> Result<IngestEvent, Refusal> {
    let bad = |field: &str, what: &str| {
        let at = if field.is_empty() {
            entry.to_string()
        } else {
            format!("{entry}.{field}")
        };
        Refusal::new(ApiError::BadRequest, format!("{at}: {what}"))
    };
    let Some(object) = value.as_object() else {
        return Err(bad("", "an event must be a JSON object"));
    };
    if let Some((key, _)) = object.iter().find(|(key, _)| !FIELDS.contains(key)) {
        let known = FIELDS.join(", ");
        return Err(Refusal::new(
            ApiError::BadRequest,
            format!("{entry}: unknown field {} (known: {known})", quoted(key)),
        ));
    }
    let string = |key: &str| -> Result<Option<&str>, Refusal> {
        match object.get(key) {
            None => Ok(None),
            Some(v) if v.is_null() => Ok(None),
            Some(v) => v
                .into_string()
                .map(Some)
                .ok_or_else(|| bad(key, "must be a string")),
        }
    };
    let Some(t) = string("t")? else {
        return Err(bad("t", "missing (the event type, e.g. \"kv.put\")"));
    };
    if !is_event_type(t) {
        return Err(bad(
            "t",
            &format!(
                "{} is not an event type ([A-Za-z0-9._:-]{{1,{MAX_TYPE_BYTES}}})",
                quoted(t)
            ),
        ));
    }
    let r = match string("r")? {
        Some(r) => r,
        None => t.split('.').next().unwrap_or(t),
    };
    if !is_domain(r) {
        return Err(bad(
            "r",
            &format!(
                "{} is not a resource domain ([a-z0-9_-]{{1,{MAX_DOMAIN_BYTES}}})",
                quoted(r)
            ),
        ));
    }
    if r == META_DOMAIN || t == META_TYPE {
        return Err(bad("r", "the `ren` domain is reserved for the server"));
    }
    let ts = match object.get("ts") {
        None => now,
        Some(v) if v.is_null() => now,
        Some(v) => v
            .as_u64()
            .ok_or_else(|| bad("ts", "must be a non-negative integer (epoch milliseconds)"))?,
    };
    let data = match (object.get("data"), raw_members(raw).and_then(|m| m.data)) {
        (None, _) => None,
        (Some(_), Some(data)) => Some(data),
        (Some(_), None) => return Err(bad("data", "the `data` key must not be escaped")),
    };
    if let Some(data) = data.filter(|d| d.len() > max_data_bytes) {
        return Err(bad(
            "data",
            &format!(
                "{} bytes; the tenant's limit is {max_data_bytes}",
                data.len()
            ),
        ));
    }
    let (k, ns, v, ch, uid) = (
        string("k")?,
        string("ns")?,
        string("v")?,
        string("ch")?,
        string("uid")?,
    );
    let private = match ch.filter(|c| c.starts_with("private-")) {
        None => None,
        Some(name) => Some(ChannelName::new(name).map_err(|e| bad("ch", &e.to_string()))?),
    };
    let src = string("src")?;
    if let Some(len) = src.map(str::len).filter(|n| *n > MAX_SRC_BYTES) {
        return Err(bad(
            "src",
            &format!("is {len} bytes; at most {MAX_SRC_BYTES}"),
        ));
    }
    let src = src.or(header_src);
    let size = [k, ns, v, ch, uid, src]
        .iter()
        .map(|s| s.map_or(0, str::len) + 8)
        .sum::<usize>()
        + data.map_or(0, <[u8]>::len);
    let mut chunk = PendingChunk::start(t, r, size);
    chunk.opt_str_field("k", k);
    chunk.opt_str_field("ns", ns);
    chunk.opt_str_field("v", v);
    chunk.opt_str_field("src", src);
    chunk.opt_str_field("ch", ch);
    if let Some(data) = data {
        chunk.raw_field("data", data);
    }
    chunk.opt_str_field("uid", uid);
    Ok(IngestEvent {
        r: r.to_owned(),
        chunk: chunk.end(ts),
        private,
    })
}

/// `{"ok":true,"accepted":N}`: the answer to `POST /api/ren/events`.
pub fn accepted(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(b"{\"ok\":true,\"accepted\":");
    write_u64(&mut out, n as u64);
    out.push(b'}');
    out
}

/// The head of a stream's response: `200`, `text/event-stream`, no caching, no length
/// (the body is the stream, ended by closing the connection), plus `extra` headers.
pub fn stream_head(extra: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(192);
    out.extend_from_slice(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
          Connection: close\r\nX-Accel-Buffering: no\r\n",
    );
    for (name, value) in extra {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests;
