//! A second randomized soak, of what `soak.rs` leaves out: the HTTP API (SPEC §5)
//! interleaved with the WebSocket protocol, presence events against a model, private
//! channels (SPEC §6) with tokens from the API, from `ringcast token` and from a JWT
//! library (one expiring mid-walk), and presence members leaving at the TTL after an
//! abrupt disconnect.
//!
//! Several walkers at once, each a seeded random walk over public and `private-`
//! channels on both shards: WebSocket and HTTP publishes (with and without idempotency
//! keys, retried, sent twice at once, pipelined), subscribes, resumes, unsubscribes,
//! presence joins, updates and leaves over WebSocket (as two userIds, and from a second
//! connection of the same user) and HTTP, members
//! and channels listings, history pages, refused private actions, reconnects (with a
//! close frame or by dropping the socket) and bad frames and requests.
//!
//! What every walker checks as it goes:
//! - each channel it follows is delivered in seq order with no gap and no duplicate, HTTP
//!   publishes among the WebSocket ones; no message or presence event arrives for a
//!   channel it does not follow; no `error` arrives but those its frames ask for (or a
//!   token's expiry: `unauthorized`, then `unsubscribed`, then nothing from the channel);
//! - each publish's seq (WebSocket ack or HTTP answer) is new; a retried idempotency key
//!   answers the first publish's seq and ts and publishes nothing;
//! - a history page is the slice of the channel's history its `after`/`before`/`limit`
//!   name, given every seq acknowledged before it was asked for;
//! - presence events of each subscription make sense per member (a join only for a
//!   member not present, an update or leave only for one present), and its own members'
//!   events are exactly those its actions cause, in order, as a model of the member
//!   (held by the connection, by the HTTP API, or only until the TTL) says;
//! - HTTP presence answers (`isNew`, `updated`, `wasPresent`) and the members listing
//!   match that model once its WebSocket actions are known to be applied: presence
//!   actions are not answered, and a `pong` is answered by the connection's shard
//!   without waiting for the channel's owner, so a walker knows its frames are applied
//!   when the owner acknowledged a publish it sent on the channel after them;
//! - the channels listing names every channel it subscribes to or is present in.
//!
//! At the end: every subscription that saw two consecutive live messages saw the same
//! presence events between them as every other; a fresh replay from 0 of every channel is
//! every acknowledged publish, with its data, userId and ts, and so is every message and
//! history entry any walker saw. Beside the walkers, a second tenant with a 2 s presence
//! TTL: members of connections dropped without a leave (and HTTP joins not renewed), and
//! a private member whose token expires, leave, seen by two watchers alike; a member
//! whose connection only answers the server's pings stays.
//!
//! `RINGCAST_SOAK_SEED` (decimal or 0x-hex) walks another seed.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use ringcast_tests::walk::{soak_seed, time_left, Delivery, Observe, Rng, Trail};
use ringcast_tests::{
    encode_component, json, json_request, ringcast_bin, Client, HttpConn, HttpResponse, Server,
    TIMEOUT,
};
use serde_json::Value;

#[path = "soak_http/blink.rs"]
mod blink;
#[path = "soak_http/presence.rs"]
mod walker_presence;

use blink::blink;
use walker_presence::Member;

const WALKERS: usize = 6;
const OPS_PER_WALKER: usize = 600;
const PUBLIC: usize = 3;
const PRIVATE: usize = 2;
/// The whole soak stops failing-fast after this long (every loop is bounded by it).
const SOAK_LIMIT: Duration = Duration::from_secs(150);
/// The walkers' tenant: a TTL longer than the soak, so no member expires by itself.
const MAIN_TTL_SECS: u64 = 600;
/// The blink tenant's TTL: its members expire while the soak runs.
const BLINK_TTL_SECS: u64 = 2;
const SECRET: &str = "soak-http-secret-0123456789abcdef-0123";
const BLINK_SECRET: &str = "soak-blink-secret-0123456789abcdef-012";
const DEFAULT_SEED: u64 = 0x5eed_0000_0000_0002;
/// Which of a walker's connections holds a member.
const MAIN: usize = 0;
const TWIN: usize = 1;

/// A published message as acknowledged (or as seen: the same fields).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Msg {
    data: String,
    user: Option<String>,
    ts: u64,
}

/// Every acknowledged publish, by channel and seq.
type Acked = Mutex<BTreeMap<String, BTreeMap<u64, Msg>>>;

fn channels() -> Vec<String> {
    let mut all: Vec<String> = (0..PUBLIC).map(|k| format!("soak:{k}")).collect();
    all.extend((0..PRIVATE).map(|k| format!("private-soak:{k}")));
    all
}

fn is_private(channel: &str) -> bool {
    channel.starts_with("private-")
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// A channel token signed with `secret` (kid `kid`) that the server takes for
/// `lifetime_secs` more: `exp` is in the past, inside the 30 s clock skew.
fn short_token(kid: &str, secret: &str, channel: &str, user: &str, lifetime_secs: u64) -> String {
    let claims = json!({
        "sub": user, "channel": channel, "permissions": ["subscribe"],
        "exp": now_secs() + lifetime_secs - 30,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid.into());
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).expect("an HMAC key");
    jsonwebtoken::encode(&header, &claims, &key).expect("HS256 encodes")
}

/// `presence:join` → (`join`, true), `presence.leave` → (`leave`, false).
fn presence_kind(event: &str) -> Option<(&'static str, bool)> {
    let (colon, kind) = match event {
        "presence:join" => (true, "join"),
        "presence:update" => (true, "update"),
        "presence:leave" => (true, "leave"),
        "presence.join" => (false, "join"),
        "presence.update" => (false, "update"),
        "presence.leave" => (false, "leave"),
        _ => return None,
    };
    Some((kind, colon))
}

/// A presence event as the model compares them.
fn describe(kind: &str, user: &str, metadata: &Value) -> String {
    if kind == "leave" {
        format!("leave {user}")
    } else {
        format!("{kind} {user} {metadata}")
    }
}

/// Where one followed channel stands for this walker.
#[derive(Debug)]
struct Following {
    /// What it must be delivered next.
    delivery: Delivery,
    /// `unsubscribe` sent, `unsubscribed` not yet seen.
    leaving: bool,
    /// Admitted by this token, which expires within seconds.
    expiring: Option<String>,
    /// Each member's presence as this subscription's events tell it (absent: not told).
    users: HashMap<String, bool>,
    /// Once settled: the last live message and the presence events seen since it.
    interval: Option<(u64, Vec<String>)>,
    /// Events of the walker's own members its actions since settling must cause, in
    /// order.
    expect_own: VecDeque<String>,
}

impl Following {
    fn new(delivery: Delivery) -> Following {
        Following {
            delivery,
            leaving: false,
            expiring: None,
            users: HashMap::new(),
            interval: None,
            expect_own: VecDeque::new(),
        }
    }

    /// Answered and not leaving: what comes now comes live.
    fn settled(&self) -> bool {
        self.delivery.answered() && !self.leaving
    }
}

/// Tokens a walker holds for each private channel.
#[derive(Debug, Clone)]
struct Tokens {
    /// `subscribe` and `publish`, sub = the walker's user.
    full: String,
    /// `subscribe` only.
    subscribe_only: String,
    /// `publish` only.
    publish_only: String,
}

/// What a walker hands back for the checks at the end.
#[derive(Debug, Default)]
struct Report {
    seen: BTreeMap<(String, u64), Msg>,
    history: Vec<(String, u64, Msg)>,
    /// Presence events between live messages k and k + 1, by (channel, k).
    intervals: Vec<((String, u64), Vec<String>)>,
    http_publishes: usize,
    retries: usize,
    presence_events: usize,
    own_events: usize,
    expiries: usize,
    short_subscribes: usize,
    members_checked: usize,
    walked: Duration,
}

struct Walker<'s> {
    id: usize,
    server: &'s Server,
    acked: &'s Acked,
    rng: Rng,
    client: Client,
    /// `?presence_events=dot`: presence events come dotted.
    dotted: bool,
    api: HttpConn,
    /// A second connection, present as the main user (never subscribed).
    twin: Client,
    /// The userId the twin is present as, by channel.
    twin_user: HashMap<String, String>,
    /// Channels where the twin sent a presence action since its last barrier.
    twin_dirty: HashSet<String>,
    /// The last frames sent and events read, for a failure's message.
    trail: Trail,
    deadline: Instant,
    tokens: HashMap<String, Tokens>,
    epoch: HashMap<String, Value>,
    following: HashMap<String, Following>,
    last_seen: HashMap<String, u64>,
    /// The walker's own members, by (channel, userId).
    members: HashMap<(String, String), Member>,
    /// The userId the current connection is present as, by channel.
    conn_user: HashMap<String, String>,
    /// Channels where a presence action was sent since the last barrier.
    dirty: HashSet<String>,
    /// Channels where a presence action was sent, since the last barrier, whose outcome
    /// the model could not tell: events of own members there are not checked until then.
    lax: HashSet<String>,
    /// Errors asked for by a frame with this `ref`, and their code.
    expected_errors: HashMap<String, &'static str>,
    /// A bad frame was sent: its `bad_request` error (no ref) is expected next.
    bad_frame_error_due: bool,
    /// A token expired: the channel's `unsubscribed` comes next (`true`), or may (`false`:
    /// the subscribe was pending, and the error may have been its refusal instead).
    after_expiry: Option<(String, bool)>,
    /// Idempotency keys used, by (channel, key): the first publish's answer.
    keys: BTreeMap<(String, String), (u64, u64)>,
    refs: u64,
    published: u64,
    report: Report,
}

impl Walker<'_> {
    fn main_user(&self) -> String {
        format!("u{}", self.id)
    }

    fn alt_user(&self) -> String {
        format!("u{}-alt", self.id)
    }

    fn is_own(&self, user: &str) -> bool {
        user == self.main_user() || user == self.alt_user()
    }

    fn left(&self) -> Result<Duration> {
        time_left(self.deadline, &format!("walker {}", self.id))
    }

    fn note(&mut self, line: String) {
        self.trail.note(line);
    }

    fn send(&mut self, frame: &Value) -> Result<()> {
        self.note(format!("-> {frame}"));
        self.client.send_json(frame)
    }

    fn next_ref(&mut self) -> String {
        self.refs += 1;
        format!("w{}-r{}", self.id, self.refs)
    }

    fn member(&mut self, channel: &str, user: &str) -> &mut Member {
        self.members
            .entry((channel.to_owned(), user.to_owned()))
            .or_default()
    }

    /// Queues an event of an own member that a subscription settled now must see.
    fn expect_own(&mut self, channel: &str, event: String) {
        if self.lax.contains(channel) {
            return;
        }
        if let Some(f) = self.following.get_mut(channel).filter(|f| f.settled()) {
            f.expect_own.push_back(event);
        }
    }

    // ----- reading -----

    fn observe_message(&mut self, ev: &Value, channel: String) -> Result<()> {
        let seq = ev["seq"].as_u64().context("message seq")?;
        let id = self.id;
        let f = self
            .following
            .get_mut(&channel)
            .with_context(|| format!("a message for an unfollowed channel: {ev}"))?;
        let live = f.settled();
        f.delivery
            .message(seq)
            .map_err(|e| anyhow::anyhow!("walker {id}: {channel} {e}: {ev}"))?;
        if live {
            if let Some((k, events)) = f.interval.take() {
                if k + 1 == seq {
                    self.report.intervals.push(((channel.clone(), k), events));
                }
            }
            f.interval = Some((seq, Vec::new()));
        } else {
            f.interval = None;
        }
        let last = self.last_seen.entry(channel.clone()).or_default();
        *last = (*last).max(seq);
        let msg = Msg {
            data: ev["data"].to_string(),
            user: ev["userId"].as_str().map(str::to_owned),
            ts: ev["ts"].as_u64().context("message ts")?,
        };
        self.report.seen.insert((channel, seq), msg);
        Ok(())
    }

    fn observe_presence(
        &mut self,
        ev: &Value,
        channel: &str,
        kind: &str,
        colon: bool,
    ) -> Result<()> {
        ensure!(
            colon != self.dotted,
            "walker {}: presence spelled {} on a connection that asked for the other: {ev}",
            self.id,
            if colon { "with a colon" } else { "dotted" }
        );
        let user = ev["userId"].as_str().context("presence userId")?.to_owned();
        let meta = if kind == "leave" {
            ensure!(ev.get("metadata").is_none(), "a leave with metadata: {ev}");
            Value::Null
        } else {
            ev.get("metadata").cloned().context("no metadata")?
        };
        let desc = describe(kind, &user, &meta);
        let own = self.is_own(&user);
        let lax = self.lax.contains(channel);
        let id = self.id;
        let f = self
            .following
            .get_mut(channel)
            .with_context(|| format!("a presence event for an unfollowed channel: {ev}"))?;
        let was = f.users.get(&user).copied();
        let ok = match kind {
            "join" => was != Some(true),
            _ => was != Some(false),
        };
        ensure!(
            ok,
            "walker {id}: {desc} in {channel}, but its events before had it {}",
            if was == Some(true) { "present" } else { "gone" }
        );
        f.users.insert(user, kind != "leave");
        if let Some((_, events)) = &mut f.interval {
            events.push(desc.clone());
        }
        self.report.presence_events += 1;
        if own && f.settled() {
            match f.expect_own.pop_front() {
                Some(want) => ensure!(
                    want == desc,
                    "walker {id}: in {channel} its own member's event is `{desc}`, its actions make it `{want}`"
                ),
                None => ensure!(
                    lax,
                    "walker {id}: in {channel} its own member's event `{desc}`, which none of its actions causes"
                ),
            }
            self.report.own_events += 1;
        }
        Ok(())
    }

    fn observe_error(&mut self, ev: &Value, channel: String) -> Result<()> {
        let code = ev["data"]["code"].as_str().unwrap_or("");
        if let Some(reference) = ev["ref"].as_str() {
            let want = self
                .expected_errors
                .remove(reference)
                .with_context(|| format!("walker {}: unexpected error {ev}", self.id))?;
            ensure!(code == want, "walker {}: wanted {want}, got {ev}", self.id);
            return Ok(());
        }
        if self.bad_frame_error_due && code == "bad_request" && channel.is_empty() {
            self.bad_frame_error_due = false;
            return Ok(());
        }
        if code == "unauthorized" {
            if let Some(f) = self
                .following
                .get(&channel)
                .filter(|f| f.expiring.is_some())
            {
                let answered = f.delivery.answers_due == 0;
                if !answered {
                    // Refused at the subscribe (the token was already past), or ended
                    // while pending: in that case `unsubscribed` comes next.
                    self.following.remove(&channel);
                }
                self.after_expiry = Some((channel, answered));
                return Ok(());
            }
        }
        bail!("walker {}: unexpected error {ev}", self.id)
    }

    /// Observes events until `done` holds for one.
    fn settle(&mut self, channel: &str) -> Result<()> {
        while self
            .following
            .get(channel)
            .is_some_and(|f| !f.delivery.answered() || f.leaving)
        {
            self.observe()
                .with_context(|| format!("settling {channel}"))?;
        }
        Ok(())
    }

    fn ping(&mut self) -> Result<()> {
        self.send(&json!({"action": "ping"}))?;
        self.until("pong", |ev| ev["event"] == "pong").map(drop)
    }

    /// Sends `frame` with a new `ref` and waits for the error `code` it must get.
    fn refused(&mut self, mut frame: Value, code: &'static str) -> Result<()> {
        let reference = self.next_ref();
        frame["ref"] = json!(reference);
        self.expected_errors.insert(reference.clone(), code);
        self.send(&frame)?;
        self.until(&format!("{code} for {reference}"), |ev| {
            ev["ref"] == reference.as_str()
        })?;
        Ok(())
    }

    // ----- subscriptions -----

    fn token_field(&self, channel: &str, frame: &mut Value) {
        if let Some(tokens) = self.tokens.get(channel) {
            frame["token"] = json!(tokens.full);
        }
    }

    fn subscribe_plain(&mut self, channel: &str) -> Result<()> {
        self.twin_applied(channel)?;
        self.following
            .insert(channel.to_owned(), Following::new(Delivery::plain()));
        let mut frame = json!({"action": "subscribe", "channel": channel});
        self.token_field(channel, &mut frame);
        self.send(&frame)?;
        self.settle(channel)
    }

    /// A plain subscribe with a token that lives 2 to 3 s more.
    fn subscribe_expiring(&mut self, channel: &str) -> Result<()> {
        let token = short_token("soak", SECRET, channel, &self.main_user(), 3);
        self.report.short_subscribes += 1;
        self.send_expiring(channel, token)?;
        self.settle(channel)
    }

    fn send_expiring(&mut self, channel: &str, token: String) -> Result<()> {
        self.twin_applied(channel)?;
        let mut f = Following::new(Delivery::plain());
        f.expiring = Some(token.clone());
        self.following.insert(channel.to_owned(), f);
        self.send(&json!({"action": "subscribe", "channel": channel, "token": token}))
    }

    /// A resume from the last seq seen (0 when none); with `plain_first`, the SDK's
    /// order on open: a plain subscribe, then the resume before the first answer.
    fn send_resume(&mut self, channel: &str, plain_first: bool) -> Result<()> {
        self.twin_applied(channel)?;
        let last = self.last_seen.get(channel).copied().unwrap_or(0);
        let f = Following::new(Delivery::resume(last, plain_first));
        self.following.insert(channel.to_owned(), f);
        if plain_first {
            let mut frame = json!({"action": "subscribe", "channel": channel});
            self.token_field(channel, &mut frame);
            self.send(&frame)?;
        }
        let mut frame = json!({"action": "subscribe", "channel": channel, "lastEventId": last});
        if let Some(epoch) = self.epoch.get(channel) {
            frame["epoch"] = epoch.clone();
        }
        self.token_field(channel, &mut frame);
        self.send(&frame)
    }

    fn unsubscribe(&mut self, channel: &str) -> Result<()> {
        if self.rng.chance(2) {
            self.sync(channel)?;
        }
        self.following.get_mut(channel).expect("followed").leaving = true;
        self.send(&json!({"action": "unsubscribe", "channel": channel}))?;
        self.settle(channel)
    }

    fn reconnect(&mut self) -> Result<()> {
        // Frames of the old connection still on their way to an owner could be applied
        // after the new one's: each is known applied first.
        let dirty: Vec<String> = self.dirty.iter().cloned().collect();
        for channel in dirty {
            self.sync(&channel)?;
        }
        let channels: Vec<(String, Option<String>)> = self
            .following
            .iter()
            .filter(|(_, f)| !f.leaving)
            .map(|(c, f)| (c.clone(), f.expiring.clone()))
            .collect();
        self.following.clear();
        self.after_expiry = None;
        self.conn_user.clear();
        for member in self.members.values_mut() {
            if member.conns[MAIN] {
                member.conns[MAIN] = false;
                member.stale = true;
            }
        }
        let query = if self.dotted {
            "presence_events=dot"
        } else {
            ""
        };
        let mut client = Client::open(self.server, query)?;
        std::mem::swap(&mut self.client, &mut client);
        if self.rng.chance(2) {
            client.close_quietly();
        } else {
            // Gone without a close frame.
            drop(client);
        }
        self.note("== reconnected".into());
        // Every channel at once, as the SDK resubscribes on open; one admitted by a short
        // token with that token again.
        for (channel, expiring) in &channels {
            match expiring {
                Some(token) => self.send_expiring(channel, token.clone())?,
                None => {
                    let plain_first = self.rng.chance(2);
                    self.send_resume(channel, plain_first)?;
                }
            }
        }
        for (channel, _) in &channels {
            self.settle(channel)?;
        }
        Ok(())
    }

    // ----- publishing -----

    fn record(&mut self, channel: &str, seq: u64, msg: Msg) -> Result<()> {
        let previous = self
            .acked
            .lock()
            .unwrap()
            .entry(channel.to_owned())
            .or_default()
            .insert(seq, msg);
        ensure!(
            previous.is_none(),
            "walker {}: seq {seq} of {channel} acknowledged twice",
            self.id
        );
        Ok(())
    }

    fn next_data(&mut self) -> Value {
        self.published += 1;
        json!({"w": self.id, "n": self.published, "pad": "x".repeat(self.rng.below(200))})
    }

    /// A WebSocket publish with `ref`, waited for; returns its seq.
    fn publish_ws(&mut self, channel: &str) -> Result<u64> {
        let reference = self.next_ref();
        let data = self.next_data();
        let mut frame = json!({
            "action": "publish", "channel": channel, "data": data, "ref": reference,
        });
        let claimed = self.rng.chance(2).then(|| format!("claim-{}", self.id));
        if let Some(claimed) = &claimed {
            frame["userId"] = json!(claimed);
        }
        self.token_field(channel, &mut frame);
        self.send(&frame)?;
        let ack = self.until("ack", |ev| ev["ref"] == reference.as_str())?;
        ensure!(ack["event"] == "ack", "publish refused: {ack}");
        ensure!(ack["channel"] == channel, "ack for another channel: {ack}");
        let seq = ack["seq"].as_u64().context("ack seq")?;
        let ts = ack["ts"].as_u64().context("ack ts")?;
        // On a private channel the token's sub is the message's userId.
        let user = if is_private(channel) {
            Some(self.main_user())
        } else {
            claimed
        };
        let msg = Msg {
            data: data.to_string(),
            user,
            ts,
        };
        self.record(channel, seq, msg)?;
        Ok(seq)
    }

    /// The walker's presence frames on `channel` are applied at its owner once the owner
    /// acknowledges a publish sent after them; a subscription settled by then has seen
    /// every event they caused once it sees that message.
    fn sync(&mut self, channel: &str) -> Result<()> {
        if !self.dirty.remove(channel) {
            return Ok(());
        }
        self.twin_applied(channel)?;
        let seq = self.publish_ws(channel)?;
        if self.following.get(channel).is_some_and(Following::settled) {
            while self
                .following
                .get(channel)
                .is_some_and(|f| f.settled() && f.delivery.next <= seq)
            {
                self.observe()
                    .with_context(|| format!("waiting for the barrier {channel} seq {seq}"))?;
            }
            if let Some(f) = self.following.get(channel) {
                ensure!(
                    f.expect_own.is_empty(),
                    "walker {}: {channel}: own presence events still missing at the barrier (seq {seq}): {:?}",
                    self.id,
                    f.expect_own
                );
            }
        }
        self.lax.remove(channel);
        Ok(())
    }

    fn api_call(
        &mut self,
        method: &str,
        path: &str,
        headers: &str,
        body: &str,
    ) -> Result<HttpResponse> {
        self.note(format!("=> {method} {path} {headers:?} {body}"));
        self.api.send(json_request(method, path, headers, body))?;
        let resp = self.api.response()?;
        self.note(format!("<= {} {}", resp.status, resp.body_text()));
        Ok(resp)
    }

    fn api_ok(&mut self, method: &str, path: &str, headers: &str, body: &str) -> Result<Value> {
        let resp = self.api_call(method, path, headers, body)?;
        ensure!(
            resp.status == 200,
            "walker {}: {method} {path}: {} {}",
            self.id,
            resp.status,
            resp.body_text()
        );
        resp.json()
    }

    /// The body and headers of an HTTP publish on `channel`, with `key` in the header or
    /// the body.
    fn publish_request(
        &mut self,
        channel: &str,
        data: &Value,
        key: Option<&str>,
    ) -> (String, String, Option<String>) {
        let mut body = json!({"channel": channel, "data": data});
        let user = self.rng.chance(2).then(|| format!("backend-{}", self.id));
        if let Some(user) = &user {
            body["userId"] = json!(user);
        }
        let mut headers = String::new();
        if let Some(key) = key {
            match self.rng.below(3) {
                0 => headers = format!("Idempotency-Key: {key}\r\n"),
                1 => body["idempotencyKey"] = json!(key),
                _ => {
                    headers = format!("Idempotency-Key: {key}\r\n");
                    body["idempotencyKey"] = json!(key);
                }
            }
        }
        (headers, body.to_string(), user)
    }

    fn publish_answer(&self, answer: &Value) -> Result<(u64, u64)> {
        ensure!(
            answer["ok"] == true,
            "walker {}: publish answer {answer}",
            self.id
        );
        let seq = answer["seq"].as_u64().context("publish seq")?;
        let ts = answer["ts"].as_u64().context("publish ts")?;
        Ok((seq, ts))
    }

    fn publish_http(&mut self, channel: &str) -> Result<()> {
        let retry = (!self.keys.is_empty() && self.rng.chance(3))
            .then(|| self.rng.below(self.keys.len()))
            .and_then(|at| self.keys.keys().nth(at).cloned());
        match (retry, self.rng.below(8)) {
            (Some((kept, key)), 0)
                if kept != channel
                    && !self.keys.contains_key(&(channel.to_owned(), key.clone())) =>
            {
                // The same key on another channel is another key.
                self.publish_http_new(channel, Some(key))
            }
            (Some((kept, key)), _) => {
                let (seq, ts) = self.keys[&(kept.clone(), key.clone())];
                let data = self.next_data();
                let (headers, body, _) = self.publish_request(&kept, &data, Some(&key));
                let answer = self.api_ok("POST", "/api/realtime/publish", &headers, &body)?;
                ensure!(
                    self.publish_answer(&answer)? == (seq, ts),
                    "walker {}: a retry of key {key} on {kept} answered {answer}, the first publish seq {seq} ts {ts}",
                    self.id
                );
                self.report.retries += 1;
                Ok(())
            }
            (None, 0..=1) => self.publish_http_twice(channel),
            (None, 2) => self.publish_http_pipelined(channel),
            (None, 3..=5) => {
                let key = format!("w{}-k{}", self.id, self.published);
                self.publish_http_new(channel, Some(key))
            }
            (None, _) => self.publish_http_new(channel, None),
        }
    }

    fn publish_http_new(&mut self, channel: &str, key: Option<String>) -> Result<()> {
        let data = self.next_data();
        let (headers, body, user) = self.publish_request(channel, &data, key.as_deref());
        let answer = self.api_ok("POST", "/api/realtime/publish", &headers, &body)?;
        let (seq, ts) = self.publish_answer(&answer)?;
        self.record(
            channel,
            seq,
            Msg {
                data: data.to_string(),
                user,
                ts,
            },
        )?;
        if let Some(key) = key {
            self.keys.insert((channel.to_owned(), key), (seq, ts));
        }
        self.report.http_publishes += 1;
        Ok(())
    }

    /// One keyed publish sent on two connections before either is answered: one publish,
    /// the same answer twice.
    fn publish_http_twice(&mut self, channel: &str) -> Result<()> {
        let key = format!("w{}-twice{}", self.id, self.published);
        let data = self.next_data();
        let (headers, body, user) = self.publish_request(channel, &data, Some(&key));
        let mut other = HttpConn::open(self.server)?;
        self.note(format!("=> twice POST publish {headers:?} {body}"));
        let req = json_request("POST", "/api/realtime/publish", &headers, &body);
        other.send(&req)?;
        self.api.send(&req)?;
        let (a, b) = (self.api.response()?, other.response()?);
        self.note(format!(
            "<= {} {} / {} {}",
            a.status,
            a.body_text(),
            b.status,
            b.body_text()
        ));
        ensure!(
            a.status == 200 && b.status == 200,
            "walker {}: {} / {}",
            self.id,
            a.body_text(),
            b.body_text()
        );
        let (first, second) = (
            self.publish_answer(&a.json()?)?,
            self.publish_answer(&b.json()?)?,
        );
        ensure!(
            first == second,
            "walker {}: one key sent twice at once answered {first:?} and {second:?}",
            self.id
        );
        let (seq, ts) = first;
        self.record(
            channel,
            seq,
            Msg {
                data: data.to_string(),
                user,
                ts,
            },
        )?;
        self.keys.insert((channel.to_owned(), key), (seq, ts));
        self.report.http_publishes += 1;
        self.report.retries += 1;
        Ok(())
    }

    /// A publish and a history page of the same channel, sent back to back on one
    /// connection: answered in order.
    fn publish_http_pipelined(&mut self, channel: &str) -> Result<()> {
        let data = self.next_data();
        let (headers, body, user) = self.publish_request(channel, &data, None);
        let known = self.max_acked(channel);
        let path = format!(
            "/api/realtime/history/{}?limit=5",
            encode_component(channel)
        );
        self.note(format!("=> pipelined POST publish {body} + GET {path}"));
        let mut both = json_request("POST", "/api/realtime/publish", &headers, &body);
        both.push_str(&json_request("GET", &path, "", ""));
        self.api.send(both)?;
        let published = self.api.response()?;
        let page = self.api.response()?;
        self.note(format!("<= {} {}", published.status, published.body_text()));
        ensure!(
            published.status == 200,
            "pipelined publish: {}",
            published.body_text()
        );
        let (seq, ts) = self.publish_answer(&published.json()?)?;
        self.record(
            channel,
            seq,
            Msg {
                data: data.to_string(),
                user,
                ts,
            },
        )?;
        self.report.http_publishes += 1;
        ensure!(
            page.status == 200,
            "pipelined history: {}",
            page.body_text()
        );
        self.check_page(channel, &page.json()?, None, None, Some(5), known)
    }

    // ----- history -----

    fn max_acked(&self, channel: &str) -> u64 {
        self.acked
            .lock()
            .unwrap()
            .get(channel)
            .and_then(|m| m.keys().next_back().copied())
            .unwrap_or(0)
    }

    fn history_page(&mut self, channel: &str) -> Result<()> {
        let known = self.max_acked(channel);
        let around = |rng: &mut Rng| rng.below(known as usize + 4) as u64;
        let (mut after, mut before, mut limit) = (None, None, None);
        match self.rng.below(5) {
            0 => {}
            1 => limit = Some(1 + self.rng.below(12) as u64),
            2 => after = Some(around(&mut self.rng)),
            3 => before = Some(around(&mut self.rng)),
            _ => {
                after = Some(around(&mut self.rng));
                before = Some(around(&mut self.rng));
            }
        }
        if limit.is_none() && self.rng.chance(2) {
            limit = Some(if self.rng.chance(8) {
                5_000
            } else {
                1 + self.rng.below(12) as u64
            });
        }
        let mut query = Vec::new();
        for (name, value) in [("after", after), ("before", before), ("limit", limit)] {
            if let Some(v) = value {
                query.push(format!("{name}={v}"));
            }
        }
        let path = format!(
            "/api/realtime/history/{}?{}",
            encode_component(channel),
            query.join("&")
        );
        let page = self.api_ok("GET", &path, "", "")?;
        self.check_page(channel, &page, after, before, limit, known)
    }

    /// Checks a page of `channel` against what was acknowledged before it was asked for
    /// (`known`, the highest seq then: the channel's history held at least that).
    fn check_page(
        &mut self,
        channel: &str,
        page: &Value,
        after: Option<u64>,
        before: Option<u64>,
        limit: Option<u64>,
        known: u64,
    ) -> Result<()> {
        let limit = limit.unwrap_or(100).min(1_000);
        let messages = page["messages"].as_array().context("messages")?;
        let mut seqs = Vec::new();
        for m in messages {
            ensure!(m["channel"] == channel, "a page of {channel} holds {m}");
            let seq = m["seq"].as_u64().context("seq")?;
            let msg = Msg {
                data: m["data"].to_string(),
                user: m["uid"].as_str().map(str::to_owned),
                ts: m["ts"].as_u64().context("ts")?,
            };
            self.report.history.push((channel.to_owned(), seq, msg));
            seqs.push(seq);
        }
        let what = format!(
            "walker {}: {channel} page after={after:?} before={before:?} limit={limit}, {known} acked before: seqs {seqs:?}",
            self.id
        );
        ensure!(seqs.len() as u64 <= limit, "{what}: more than the limit");
        ensure!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "{what}: not consecutive, oldest first"
        );
        // Whatever the page asks for lies in (low, high), highest first when neither
        // bound is given or only `before` is.
        let low = after.unwrap_or(0);
        let high = before.unwrap_or(u64::MAX);
        let top = (known + 1).min(high); // every seq below this (and above `low`) exists
        match (seqs.first(), seqs.last()) {
            (Some(&first), Some(&last)) => {
                ensure!(first > low && last < high, "{what}: outside the bounds");
                if after.is_some() {
                    ensure!(
                        first == low + 1,
                        "{what}: does not start right after `after`"
                    );
                    let full = seqs.len() as u64 == limit;
                    ensure!(full || last + 1 >= top, "{what}: short, yet more were kept");
                } else {
                    // The latest `limit` below `before`.
                    ensure!(last + 1 >= top, "{what}: not the latest");
                    let full = seqs.len() as u64 == limit;
                    ensure!(
                        full || first == 1,
                        "{what}: short, yet older ones were kept"
                    );
                }
            }
            _ => ensure!(low + 1 >= top, "{what}: empty, yet some were kept"),
        }
        Ok(())
    }

    // ----- private channels -----

    fn private_refusal(&mut self, channel: &str) -> Result<()> {
        let tokens = self.tokens[channel].clone();
        let data = json!({"refused": true});
        match self.rng.below(4) {
            0 if !self.following.contains_key(channel) => {
                self.refused(json!({"action": "subscribe", "channel": channel}), "unauthorized")
            }
            1 if !self.following.contains_key(channel) => self.refused(
                json!({"action": "subscribe", "channel": channel, "token": tokens.publish_only}),
                "forbidden",
            ),
            1 => self.refused(
                json!({"action": "presence:join", "channel": channel, "userId": "x", "token": tokens.publish_only}),
                "forbidden",
            ),
            2 => self.refused(
                json!({"action": "publish", "channel": channel, "data": data, "token": tokens.subscribe_only}),
                "forbidden",
            ),
            _ => self.refused(
                json!({"action": "publish", "channel": channel, "data": data}),
                "unauthorized",
            ),
        }
    }

    // ----- the walk -----

    fn bad_input(&mut self) -> Result<()> {
        if self.rng.chance(2) {
            self.bad_frame_error_due = true;
            self.note("-> (a broken frame)".into());
            self.client
                .send_raw_text("{\"action\": \"publish\", \"chan")?;
            self.until("the bad frame's error", |ev| ev["event"] == "error")?;
            ensure!(
                !self.bad_frame_error_due,
                "the bad frame's error was not bad_request"
            );
            return Ok(());
        }
        // A refused API request keeps the connection open.
        let (path, body, code) = match self.rng.below(3) {
            0 => ("/api/realtime/publish", "{\"channel\":", "bad_request"),
            1 => ("/api/realtime/history/soak%3A0?limit=0", "", "bad_request"),
            _ => (
                "/api/realtime/presence/soak%3A0/join",
                "{\"userId\":\"\"}",
                "bad_request",
            ),
        };
        let method = if body.is_empty() { "GET" } else { "POST" };
        let resp = self.api_call(method, path, "", body)?;
        let error = resp.json()?;
        ensure!(
            resp.status == 400
                && error["error"]["code"] == code
                && error["error"]["message"].is_string(),
            "walker {}: {method} {path} {body:?}: {} {error}",
            self.id,
            resp.status
        );
        Ok(())
    }

    fn step(&mut self) -> Result<()> {
        let all = channels();
        let channel = all[self.rng.below(all.len())].clone();
        let followed = self.following.contains_key(&channel);
        let private = is_private(&channel);
        match self.rng.below(100) {
            0..=15 => self.publish_ws(&channel).map(drop),
            16..=28 => self.publish_http(&channel),
            29..=37 if !followed => self.subscribe_plain(&channel),
            38..=42 if !followed => {
                let plain_first = self.rng.chance(2);
                self.send_resume(&channel, plain_first)?;
                self.settle(&channel)
            }
            43..=48 if followed && self.following[&channel].expiring.is_none() => {
                self.unsubscribe(&channel)
            }
            49..=57 => self.presence_ws(&channel),
            58..=61 => self.presence_twin(&channel),
            62..=71 => self.presence_http(&channel),
            72..=77 => self.history_page(&channel),
            78..=79 => self.channels_listing(),
            80..=83 if private => self.private_refusal(&channel),
            84..=85 if private && !followed => self.subscribe_expiring(&channel),
            86..=88 => self.ping(),
            89..=90 => self.bad_input(),
            91..=92 => self.reconnect(),
            93 if self.rng.chance(2) => self.twin_reconnect(),
            93 => {
                self.api = HttpConn::open(self.server)?;
                Ok(())
            }
            94..=96 => self.sync(&channel),
            _ => Ok(()),
        }
    }

    /// After the walk: expiring subscriptions expire, every barrier is passed, and the
    /// listing of every channel agrees with the model.
    fn finish(&mut self) -> Result<()> {
        let expiring: Vec<String> = self
            .following
            .iter()
            .filter(|(_, f)| f.expiring.is_some())
            .map(|(c, _)| c.clone())
            .collect();
        for channel in expiring {
            while self
                .following
                .get(&channel)
                .is_some_and(|f| f.expiring.is_some())
            {
                self.observe()
                    .with_context(|| format!("waiting for the token of {channel} to expire"))?;
            }
        }
        for channel in channels() {
            self.members_listing(&channel)?;
        }
        self.ping()
    }
}

impl Observe for Walker<'_> {
    fn observe(&mut self) -> Result<Value> {
        let left = self.left()?;
        let ev = self.client.recv_event(left)?;
        self.note(format!("<- {ev}"));
        let channel = ev["channel"].as_str().unwrap_or("").to_owned();
        let name = ev["event"].as_str().unwrap_or("").to_owned();
        if let Some((expired, strict)) = self.after_expiry.take() {
            if name == "unsubscribed" && channel == expired {
                self.following.remove(&channel);
                self.report.expiries += 1;
                return Ok(ev);
            }
            ensure!(
                !strict,
                "walker {}: the expired token's unauthorized for {expired} was not followed by its unsubscribed: {ev}",
                self.id
            );
        }
        if let Some((kind, colon)) = presence_kind(&name) {
            self.observe_presence(&ev, &channel, kind, colon)?;
            return Ok(ev);
        }
        match name.as_str() {
            "realtime.message" => self.observe_message(&ev, channel)?,
            "subscribed" => {
                let seq = ev["seq"].as_u64().context("subscribed seq")?;
                let f = self
                    .following
                    .get_mut(&channel)
                    .with_context(|| format!("an unasked subscribed: {ev}"))?;
                let done = f
                    .delivery
                    .subscribed(seq, ev["recovered"] == true)
                    .map_err(|e| anyhow::anyhow!("walker {}: {channel}: {e}: {ev}", self.id))?;
                if done {
                    f.interval = None;
                }
                self.epoch.insert(channel, ev["epoch"].clone());
            }
            "unsubscribed" => {
                let f = self
                    .following
                    .remove(&channel)
                    .with_context(|| format!("an unasked unsubscribed: {ev}"))?;
                ensure!(f.leaving, "unsubscribed without unsubscribe: {ev}");
            }
            "error" => self.observe_error(&ev, channel)?,
            "ack" | "pong" | "connected" => {}
            other => bail!("walker {}: unknown event {other}: {ev}", self.id),
        }
        Ok(ev)
    }
}

fn config() -> String {
    format!(
        "[[tenants]]\nid = \"dev\"\nplan = \"enterprise\"\npresence_ttl_secs = {MAIN_TTL_SECS}\n\
         [[tenants.token_keys]]\nkid = \"soak\"\nsecret = \"{SECRET}\"\n\
         [[tenants]]\nid = \"blink\"\nplan = \"enterprise\"\npresence_ttl_secs = {BLINK_TTL_SECS}\n\
         [[tenants.token_keys]]\nkid = \"blink\"\nsecret = \"{BLINK_SECRET}\"\n"
    )
}

fn seed() -> Result<u64> {
    soak_seed(DEFAULT_SEED)
}

/// Mints a walker's tokens: the full one of the first private channel over the API, of
/// the second by `ringcast token`; the narrow ones over the API.
fn mint_tokens(
    server: &Server,
    config: &std::path::Path,
    user: &str,
) -> Result<HashMap<String, Tokens>> {
    let api = |channel: &str, permissions: Value| -> Result<String> {
        let body = json!({"channel": channel, "userId": user, "permissions": permissions, "expiresIn": 3600});
        let mut conn = HttpConn::open(server)?;
        conn.send(json_request(
            "POST",
            "/api/realtime/tokens",
            "",
            &body.to_string(),
        ))?;
        let resp = conn.response()?;
        ensure!(resp.status == 200, "tokens: {}", resp.body_text());
        Ok(resp.json()?["token"].as_str().context("token")?.to_owned())
    };
    let mut tokens = HashMap::new();
    for (k, channel) in channels().into_iter().filter(|c| is_private(c)).enumerate() {
        let full = if k == 0 {
            api(&channel, json!(["subscribe", "publish"]))?
        } else {
            let out = std::process::Command::new(ringcast_bin())
                .arg("token")
                .arg("--config")
                .arg(config)
                .args(["--tenant", "dev", "--channel", &channel, "--user", user])
                .args(["--permissions", "subscribe,publish", "--expires-in", "3600"])
                .output()?;
            ensure!(
                out.status.success(),
                "ringcast token: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout)?.trim().to_owned()
        };
        let t = Tokens {
            full,
            subscribe_only: api(&channel, json!(["subscribe"]))?,
            publish_only: api(&channel, json!(["publish"]))?,
        };
        tokens.insert(channel, t);
    }
    Ok(tokens)
}

#[test]
fn http_api_presence_and_private_channels_agree_with_the_websocket_walk() -> Result<()> {
    let (server, config_path) = Server::start_with_config(&config(), &["--dev"])?;
    let acked = Acked::default();
    let started = Instant::now();
    let deadline = started + SOAK_LIMIT;
    let seed = seed()?;
    let mut walkers = Vec::new();
    for id in 0..WALKERS {
        let dotted = id % 3 == 2;
        let query = if dotted { "presence_events=dot" } else { "" };
        let walker = Walker {
            id,
            server: &server,
            acked: &acked,
            rng: Rng::new(seed, id as u64),
            client: Client::open(&server, query)?,
            dotted,
            api: HttpConn::open(&server)?,
            twin: Client::open(&server, "")?,
            twin_user: HashMap::new(),
            twin_dirty: HashSet::new(),
            trail: Trail::new(60, 220),
            deadline,
            tokens: mint_tokens(&server, &config_path, &format!("u{id}"))?,
            epoch: HashMap::new(),
            following: HashMap::new(),
            last_seen: HashMap::new(),
            members: HashMap::new(),
            conn_user: HashMap::new(),
            dirty: HashSet::new(),
            lax: HashSet::new(),
            expected_errors: HashMap::new(),
            bad_frame_error_due: false,
            after_expiry: None,
            keys: BTreeMap::new(),
            refs: 0,
            published: 0,
            report: Report::default(),
        };
        walkers.push(walker);
    }
    let (reports, blink_leaves) = std::thread::scope(|scope| -> Result<_> {
        let server = &server;
        let blinker = scope.spawn(move || blink(server, deadline));
        let threads: Vec<_> = walkers
            .into_iter()
            .map(|mut walker| {
                scope.spawn(move || -> Result<Report> {
                    let id = walker.id;
                    let mut outcome = Ok(());
                    for op in 0..OPS_PER_WALKER {
                        if let Err(e) = walker.step() {
                            outcome = Err(e.context(format!("op {op}")));
                            break;
                        }
                    }
                    let outcome = outcome.and_then(|()| walker.finish().context("finishing"));
                    if let Err(e) = outcome {
                        return Err(e.context(format!(
                            "walker {id}, seed {seed:#x}; last frames:\n{}",
                            walker.trail.text()
                        )));
                    }
                    walker.report.walked = started.elapsed();
                    Ok(walker.report)
                })
            })
            .collect();
        let mut reports = Vec::new();
        for t in threads {
            reports.push(t.join().expect("walker thread")?);
        }
        let leaves = blinker
            .join()
            .expect("blink thread")
            .with_context(|| format!("the blink tenant, seed {seed:#x}"))?;
        Ok((reports, leaves))
    })?;

    // Every subscription saw the same presence events between two live messages.
    let mut between: HashMap<(String, u64), (usize, Vec<String>)> = HashMap::new();
    for (walker, report) in reports.iter().enumerate() {
        for (at, events) in &report.intervals {
            match between.get(at) {
                Some((other, seen)) => ensure!(
                    seen == events,
                    "{} between seq {} and {}: walker {other} saw {seen:?}, walker {walker} {events:?} (seed {seed:#x})",
                    at.0,
                    at.1,
                    at.1 + 1
                ),
                None => {
                    between.insert(at.clone(), (walker, events.clone()));
                }
            }
        }
    }

    // A replay from 0 of every channel is what was acknowledged.
    let acked = acked.into_inner().unwrap();
    let mut reader = Client::open(&server, "")?;
    for (channel, messages) in &acked {
        let mut frame = json!({"action": "subscribe", "channel": channel, "lastEventId": 0});
        if is_private(channel) {
            frame["token"] = json!(short_token("soak", SECRET, channel, "reader", 3_600));
        }
        reader.send_json(&frame)?;
        let mut replayed = BTreeMap::new();
        loop {
            let ev = reader.recv_event(TIMEOUT)?;
            match ev["event"].as_str() {
                Some("realtime.message") => {
                    let msg = Msg {
                        data: ev["data"].to_string(),
                        user: ev["userId"].as_str().map(str::to_owned),
                        ts: ev["ts"].as_u64().context("ts")?,
                    };
                    replayed.insert(ev["seq"].as_u64().context("seq")?, msg);
                }
                Some("subscribed") => {
                    ensure!(ev["recovered"] == true, "{ev}");
                    break;
                }
                Some(e) if e.starts_with("presence") => {}
                _ => bail!("replaying {channel}: {ev}"),
            }
        }
        if &replayed != messages {
            let differ: Vec<_> = messages
                .iter()
                .filter(|(seq, m)| replayed.get(seq) != Some(m))
                .map(|(seq, m)| (seq, m, replayed.get(seq)))
                .take(5)
                .collect();
            bail!(
                "{channel}: the replay from 0 is not what was acknowledged ({} replayed, {} acked); first differences: {differ:?}",
                replayed.len(),
                messages.len()
            );
        }
    }
    for report in &reports {
        for ((channel, seq), msg) in &report.seen {
            let want = acked.get(channel).and_then(|m| m.get(seq));
            ensure!(
                want == Some(msg),
                "{channel} seq {seq}: a walker saw {msg:?}, acked was {want:?}"
            );
        }
        for (channel, seq, msg) in &report.history {
            let want = acked.get(channel).and_then(|m| m.get(seq));
            ensure!(
                want == Some(msg),
                "{channel} seq {seq}: history gave {msg:?}, acked was {want:?}"
            );
        }
    }

    // The walk did what it is for.
    let sum = |f: fn(&Report) -> usize| reports.iter().map(f).sum::<usize>();
    let total: usize = acked.values().map(BTreeMap::len).sum();
    let counts = format!(
        "{total} acked, {} over HTTP, {} retries, {} presence events ({} of own members), {} compared intervals, {} of {} short tokens expired, {} listings, {} history entries, {blink_leaves} TTL leaves; walked in {:?}, all in {:?}",
        sum(|r| r.http_publishes),
        sum(|r| r.retries),
        sum(|r| r.presence_events),
        sum(|r| r.own_events),
        between.len(),
        sum(|r| r.expiries),
        sum(|r| r.short_subscribes),
        sum(|r| r.members_checked),
        sum(|r| r.history.len()),
        reports.iter().map(|r| r.walked).max().unwrap_or_default(),
        started.elapsed()
    );
    println!("soak_http: {counts}");
    ensure!(
        total > 300 && sum(|r| r.http_publishes) > 50 && sum(|r| r.retries) > 10,
        "too little published: {counts}"
    );
    ensure!(
        sum(|r| r.own_events) > 50 && sum(|r| r.members_checked) > 50,
        "too little presence: {counts}"
    );
    Ok(())
}
