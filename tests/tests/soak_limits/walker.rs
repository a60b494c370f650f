//! One walker: a client of one tenant (a WebSocket connection and a keep-alive HTTP
//! connection) taking seeded random steps, each answered before the next, and checking
//! every answer against the limits in force (see the module doc of `soak_limits.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ringcast_tests::walk::{time_left, Delivery, Observe, Rng, Trail};
use ringcast_tests::{
    encode_component, json, json_request, Client, ConnectError, HttpConn, Server,
};
use serde_json::Value;
use tungstenite::Message;

use super::tenants::{token, Limits, TenantSpec, TENANTS};
use super::world::{Book, Snapshot, World};
use super::{http_error, PRIVATE, PUBLIC};

/// Where one followed channel stands.
#[derive(Debug)]
struct Following {
    delivery: Delivery,
    /// `unsubscribe` sent, `unsubscribed` not yet seen.
    leaving: bool,
    /// The `ref` of the subscribe that asked for it: its error ends the follow.
    reference: String,
    /// Messages replayed before the answer (a resume's).
    replayed: u64,
}

impl Following {
    fn settled(&self) -> bool {
        self.delivery.answered() && !self.leaving
    }
}

/// What an action must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// This error, decided before the channel's owner is asked (the connection's shard
    /// or the HTTP handler checks it against the limits in force).
    Refused(&'static str),
    /// Whatever the owner decides: it is judged against the tenant's book.
    Owner,
}

/// The tenant's book as an action went out: what its owner's answer is judged by
/// (another walker's ack recorded meanwhile may have reached the owner after it).
#[derive(Debug, Clone, Copy, Default)]
struct Before {
    /// A publish was refused for the rate in this round already.
    rate_refused: bool,
    /// The channel had an acknowledged publish (it counts for a minute).
    published: bool,
    /// This walker held the channel: a subscription answered, or a member it knows is
    /// there (WebSocket or HTTP), either of which keeps it counting.
    holds: bool,
}

/// What the owner answered a publish.
#[derive(Debug)]
enum Published {
    Acked(u64),
    Refused(String),
}

/// Counts of what a walker did, for the summary.
pub type Stats = BTreeMap<&'static str, u64>;

/// What a walker hands back.
#[derive(Debug, Default)]
pub struct Report {
    /// Data of every message it was delivered, by channel and seq.
    pub seen: BTreeMap<(String, u64), String>,
    pub stats: Stats,
}

pub struct Walker<'s> {
    pub id: usize,
    pub tenant: &'static str,
    server: &'s Server,
    world: &'s World,
    rng: Rng,
    /// Whether it connects with a connection token (its private actions then carry none).
    conn_token: bool,
    client: Option<Client>,
    /// The tenant's coming its connection was admitted under.
    coming: u32,
    /// The connection token (kid, token) it connected with.
    connected_with: Option<(String, String)>,
    api: HttpConn,
    /// Channel tokens (kid, token) by private channel.
    tokens: HashMap<String, (String, String)>,
    following: BTreeMap<String, Following>,
    /// Channels to resume once connected again.
    to_resume: BTreeSet<String>,
    last_seen: HashMap<String, u64>,
    epoch: HashMap<String, Value>,
    /// Channels this connection holds presence in.
    present: BTreeSet<String>,
    /// The channel of a join sent and not yet known applied (it is in `present`: the
    /// connection's bound counts it already).
    joining: Option<String>,
    /// Channels its HTTP user was joined to, with the tenant's coming then.
    http_present: BTreeMap<String, u32>,
    /// Refs whose answer (ack or error) is awaited, and the answer once it came.
    answers: HashMap<String, Option<Value>>,
    snap: Arc<Snapshot>,
    trail: Trail,
    deadline: Instant,
    refs: u64,
    published: u64,
    report: Report,
}

/// The channels every tenant's walkers use: more than the free plan's 10.
pub fn channels() -> Vec<String> {
    let mut all: Vec<String> = (0..PUBLIC).map(|k| format!("room:{k}")).collect();
    all.extend((0..PRIVATE).map(|k| format!("private-room:{k}")));
    all
}

fn is_private(channel: &str) -> bool {
    channel.starts_with("private-")
}

impl<'s> Walker<'s> {
    pub fn new(
        id: usize,
        tenant: &'static str,
        server: &'s Server,
        world: &'s World,
        seed: u64,
        deadline: Instant,
    ) -> Result<Walker<'s>> {
        Ok(Walker {
            id,
            tenant,
            server,
            world,
            rng: Rng::new(seed, id as u64),
            conn_token: id % 2 == 1,
            client: None,
            coming: 0,
            connected_with: None,
            api: HttpConn::open(server)?,
            tokens: HashMap::new(),
            following: BTreeMap::new(),
            to_resume: BTreeSet::new(),
            last_seen: HashMap::new(),
            epoch: HashMap::new(),
            present: BTreeSet::new(),
            joining: None,
            http_present: BTreeMap::new(),
            answers: HashMap::new(),
            snap: Arc::default(),
            trail: Trail::new(40, 200),
            deadline,
            refs: 0,
            published: 0,
            report: Report::default(),
        })
    }

    pub fn trail(&self) -> String {
        self.trail.text()
    }

    pub fn into_report(self) -> Report {
        self.report
    }

    fn user(&self) -> String {
        format!("{}-u{}", self.tenant, self.id)
    }

    fn http_user(&self) -> String {
        format!("{}-h{}", self.tenant, self.id)
    }

    fn spec(&self) -> &TenantSpec {
        self.snap
            .tenant(self.tenant)
            .expect("walkers act only while their tenant is configured")
    }

    fn limits(&self) -> Limits {
        self.spec().limits()
    }

    fn stat(&mut self, what: &'static str) {
        *self.report.stats.entry(what).or_default() += 1;
    }

    fn note(&mut self, line: String) {
        self.trail.note(line);
    }

    fn next_ref(&mut self) -> String {
        self.refs += 1;
        format!("{}-w{}-r{}", self.tenant, self.id, self.refs)
    }

    fn client(&mut self) -> Result<&mut Client> {
        self.client.as_mut().context("not connected")
    }

    fn send(&mut self, frame: &Value) -> Result<()> {
        self.note(format!("-> {frame}"));
        self.client()?.send_json(frame)
    }

    // ----- rounds -----

    /// At a round's start: a connection of a tenant removed (or removed and added back)
    /// since is closed with 4510; a tenant that is not configured refuses the
    /// walker's handshake and requests (then it sits the round out: `false`); one that
    /// is gets the walker connected again, resuming what it followed.
    pub fn begin_round(&mut self, snap: Arc<Snapshot>) -> Result<bool> {
        self.snap = snap;
        self.note(format!("-- round {}", self.snap.round));
        let coming = self.snap.coming(self.tenant);
        if self.client.is_some() && coming != Some(self.coming) {
            self.expect_tenant_removed()?;
        }
        if coming.is_none() {
            self.check_unknown_tenant()?;
            return Ok(false);
        }
        if self.client.is_some() {
            self.count_kept_after_retirement();
        }
        if self.client.is_none() {
            self.connect()?;
            self.resume_all()?;
        }
        Ok(true)
    }

    /// Counts what stays open though the key that admitted it was retired since (the
    /// docs leave it unsaid; the engine checks a token when it is presented): a
    /// connection opened with a connection token, subscriptions admitted by a channel
    /// token. The drain at the round's end checks they are still delivered.
    fn count_kept_after_retirement(&mut self) {
        let spec = self.spec().clone();
        if self
            .connected_with
            .as_ref()
            .is_some_and(|(kid, _)| !spec.has_kid(kid))
        {
            self.stat("kept: connection of a retired kid's token");
        }
        let kept = self
            .following
            .keys()
            .filter(|c| {
                self.tokens
                    .get(*c)
                    .is_some_and(|(kid, _)| !spec.has_kid(kid))
            })
            .count();
        for _ in 0..kept {
            self.stat("kept: subscription of a retired kid's token");
        }
    }

    /// Reads the connection until its close: 4510, after nothing but what the model
    /// allows.
    fn expect_tenant_removed(&mut self) -> Result<()> {
        let code = loop {
            let left = self.left()?;
            let message = self.client()?.recv_message(left)?;
            match message {
                Message::Text(text) => {
                    let ev: Value = serde_json::from_str(text.as_str())?;
                    self.note(format!("<- {ev}"));
                    self.handle(&ev)?;
                }
                Message::Close(Some(frame)) => break u16::from(frame.code),
                other => bail!("walker {}: {other:?} where 4510 was due", self.id),
            }
        };
        self.note(format!("<- close {code}"));
        ensure!(
            code == 4510,
            "walker {}: its tenant was removed, closed with {code}",
            self.id
        );
        self.stat("closed 4510");
        self.dropped();
        Ok(())
    }

    /// The connection is gone: what it followed is resumed on the next one.
    fn dropped(&mut self) {
        self.client = None;
        let followed = std::mem::take(&mut self.following);
        self.to_resume.extend(
            followed
                .into_iter()
                .filter(|(_, f)| !f.leaving)
                .map(|(c, _)| c),
        );
        self.present.clear();
    }

    /// A tenant that is not configured: the upgrade and the API answer 404
    /// `unknown_tenant`.
    fn check_unknown_tenant(&mut self) -> Result<()> {
        let addr = self.server.addr();
        let query = format!("tenant={}", self.tenant);
        match Client::handshake(TcpStream::connect(addr)?, addr, &query) {
            Err(ConnectError::Http(resp)) => http_error(&resp, 404, "unknown_tenant")?,
            Err(e) => bail!("walker {}: upgrade to an unknown tenant: {e}", self.id),
            Ok(_) => bail!(
                "walker {}: {} is not configured, yet upgraded",
                self.id,
                self.tenant
            ),
        }
        let key = super::tenants::api_key(self.tenant, 1);
        let resp = self.http("GET", "/api/realtime/channels", Some(&key), "")?;
        http_error(&resp, 404, "unknown_tenant")?;
        self.stat("unknown tenant refused");
        Ok(())
    }

    fn connect(&mut self) -> Result<()> {
        let addr = self.server.addr();
        let mut query = format!("tenant={}&cid={}-w{}", self.tenant, self.tenant, self.id);
        if self.conn_token {
            // A connection token of a key the tenant no longer has is refused at the
            // handshake (the connection it opened before stays: see the module doc).
            if let Some((kid, stale)) = self.connected_with.clone() {
                if !self.spec().has_kid(&kid) {
                    let q = format!("{query}&token={stale}");
                    match Client::handshake(TcpStream::connect(addr)?, addr, &q) {
                        Err(ConnectError::Http(resp)) => http_error(&resp, 401, "unauthorized")?,
                        Err(e) => bail!("walker {}: stale connection token: {e}", self.id),
                        Ok(_) => bail!(
                            "walker {}: a connection token signed with retired kid {kid} was taken",
                            self.id
                        ),
                    }
                    self.stat("retired connection token refused");
                }
            }
            let (kid, secret) = self.spec().newest_kid();
            let (kid, secret) = (kid.to_owned(), secret.to_owned());
            let private: Vec<String> = channels().into_iter().filter(|c| is_private(c)).collect();
            let private: Vec<&str> = private.iter().map(String::as_str).collect();
            let token = token(&kid, &secret, self.tenant, &self.user(), &private);
            query.push_str(&format!("&token={token}"));
            self.connected_with = Some((kid, token));
        }
        let (mut client, _) = Client::handshake(TcpStream::connect(addr)?, addr, &query)
            .map_err(|e| anyhow::anyhow!("walker {}: connect: {e}", self.id))?;
        let ev = client.recv_event(self.left()?)?;
        ensure!(ev["event"] == "connected", "first event {ev}");
        self.note(format!("<- {ev}"));
        self.client = Some(client);
        self.coming = self.snap.coming(self.tenant).expect("configured");
        self.stat("connections");
        Ok(())
    }

    /// Resumes every channel to resume at once, as the SDK does on open, as many as
    /// the connection may hold; the rest one by one once those are answered (an owner's
    /// refusal of one sent before frees its place, so which of several sent at once the
    /// connection's bound refuses depends on when that refusal comes back).
    fn resume_all(&mut self) -> Result<()> {
        let limit = self.limits().subscriptions_per_connection as usize;
        let mut channels = std::mem::take(&mut self.to_resume).into_iter().peekable();
        let mut sent = Vec::new();
        while let Some(channel) = channels.next_if(|_| self.following.len() < limit) {
            sent.push(self.send_subscribe(&channel, true)?);
        }
        for sent in sent {
            self.settle_subscribe(sent)?;
        }
        for channel in channels {
            let sent = self.send_subscribe(&channel, true)?;
            self.settle_subscribe(sent)?;
        }
        Ok(())
    }

    /// At a round's end: every channel it follows is delivered up to the latest
    /// acknowledged seq (every acknowledged publish reaches every subscriber).
    pub fn drain(&mut self) -> Result<()> {
        let followed: Vec<String> = self.following.keys().cloned().collect();
        for channel in followed {
            let world = self.world;
            let target = world.book(self.tenant).last_seq(&channel);
            while self
                .following
                .get(&channel)
                .is_some_and(|f| f.delivery.next <= target)
            {
                self.observe()
                    .with_context(|| format!("draining {channel} to seq {target}"))?;
            }
            ensure!(
                self.following.contains_key(&channel),
                "walker {}: {channel} ended while draining",
                self.id
            );
        }
        Ok(())
    }

    // ----- steps -----

    pub fn step(&mut self) -> Result<()> {
        let all = channels();
        let channel = all[self.rng.below(all.len())].clone();
        let followed = self.following.contains_key(&channel);
        match self.rng.below(100) {
            0..=27 => {
                let len = self.pick_len();
                self.ws_publish(&channel, len)
            }
            28..=35 => {
                let len = self.pick_len();
                self.http_publish(&channel, len)
            }
            36..=49 if !followed => {
                let sent = self.send_subscribe(&channel, false)?;
                self.settle_subscribe(sent)
            }
            50..=57 if !followed => {
                let sent = self.send_subscribe(&channel, true)?;
                self.settle_subscribe(sent)
            }
            58..=65 if followed => self.unsubscribe(&channel),
            66..=72 => self.presence_join(&channel),
            73..=75 if self.present.contains(&channel) => self.presence_leave(&channel),
            76..=80 => self.http_presence(&channel),
            81..=83 => self.members(&channel),
            84..=88 => self.foreign_credentials(),
            89..=92 => self.reconnect(),
            _ => self.ping(),
        }
    }

    /// A `data` size: mostly small; one in five at the tenant's limit give or take two
    /// bytes (only while the limit is small: a history of 64 KiB messages is bounded by
    /// bytes, not by count); now and then just over a large one.
    fn pick_len(&mut self) -> usize {
        let limit = self.limits().max_message_bytes;
        if limit <= 4_096 && self.rng.chance(5) {
            limit - 2 + self.rng.below(5)
        } else if limit > 4_096 && self.rng.chance(40) {
            limit + 1 + self.rng.below(2)
        } else {
            60 + self.rng.below(200)
        }
    }

    /// A message's `data` of exactly `len` bytes (at least ~50), naming its tenant.
    fn data(&mut self, len: usize) -> Value {
        self.published += 1;
        let mut data = json!({"t": self.tenant, "w": self.id, "n": self.published, "p": ""});
        let pad = len.saturating_sub(data.to_string().len());
        data["p"] = json!("x".repeat(pad));
        data
    }

    /// Whether this walker's token for private `channel` is signed with a key its tenant
    /// no longer has (a connection token's channels need no token per action).
    fn stale_token(&self, channel: &str) -> bool {
        is_private(channel)
            && !self.conn_token
            && self
                .tokens
                .get(channel)
                .is_some_and(|(kid, _)| !self.spec().has_kid(kid))
    }

    /// The `token` a private action carries, minted with the newest key when it has
    /// none (a stale one is kept until it was refused once).
    fn token_field(&mut self, channel: &str, frame: &mut Value) {
        if !is_private(channel) || self.conn_token {
            return;
        }
        if !self.tokens.contains_key(channel) {
            let (kid, secret) = self.spec().newest_kid();
            let (kid, secret) = (kid.to_owned(), secret.to_owned());
            let t = token(&kid, &secret, self.tenant, &self.user(), &[channel]);
            self.tokens.insert(channel.to_owned(), (kid, t));
        }
        frame["token"] = json!(self.tokens[channel].1);
    }

    /// After a stale token's refusal the walker mints a new one, as an app would.
    fn refused_token(&mut self, channel: &str) {
        self.tokens.remove(channel);
        self.stat("retired kid refused");
    }

    fn ws_publish(&mut self, channel: &str, len: usize) -> Result<()> {
        let limit = self.limits().max_message_bytes;
        let expect = if len > limit {
            Expect::Refused("message_too_large")
        } else if self.stale_token(channel) {
            Expect::Refused("unauthorized")
        } else {
            Expect::Owner
        };
        let data = self.data(len);
        let reference = self.next_ref();
        let mut frame = json!({
            "action": "publish", "channel": channel, "data": data, "ref": reference,
        });
        self.token_field(channel, &mut frame);
        let before = self.before_owner(channel, expect);
        self.answers.insert(reference.clone(), None);
        self.send(&frame)?;
        let answer = self.answer(&reference)?;
        let published = match answer["event"].as_str() {
            Some("ack") => Published::Acked(answer["seq"].as_u64().context("ack seq")?),
            _ => Published::Refused(error_code(&answer)?),
        };
        self.stat("ws publishes");
        self.judge_publish(channel, expect, data, published, before)
    }

    fn http_publish(&mut self, channel: &str, len: usize) -> Result<()> {
        let limit = self.limits().max_message_bytes;
        let expect = if len > limit {
            Expect::Refused("message_too_large")
        } else {
            // The API is trusted: private channels need no token.
            Expect::Owner
        };
        let data = self.data(len);
        let body = json!({"channel": channel, "data": data}).to_string();
        let before = self.before_owner(channel, expect);
        let key = self.spec().api_keys.last().cloned();
        let resp = self.http("POST", "/api/realtime/publish", key.as_deref(), &body)?;
        let published = match resp.status {
            200 => Published::Acked(resp.json()?["seq"].as_u64().context("seq")?),
            413 => {
                http_error(&resp, 413, "message_too_large")?;
                Published::Refused("message_too_large".into())
            }
            429 => {
                http_error(&resp, 429, "rate_limited")?;
                let retry: u64 = resp
                    .header("retry-after")
                    .context("a 429 without Retry-After")?
                    .parse()?;
                ensure!((1..=60).contains(&retry), "Retry-After: {retry}");
                Published::Refused("rate_limited".into())
            }
            403 => {
                http_error(&resp, 403, "channel_limit")?;
                Published::Refused("channel_limit".into())
            }
            _ => bail!(
                "walker {}: publish answered {} {}",
                self.id,
                resp.status,
                resp.body_text()
            ),
        };
        self.stat("http publishes");
        self.judge_publish(channel, expect, data, published, before)
    }

    /// Before a publish that reaches the owner: it may count against the rate and make
    /// its channel active.
    fn before_owner(&mut self, channel: &str, expect: Expect) -> Before {
        if expect != Expect::Owner {
            return Before::default();
        }
        let before = self.before(channel);
        let world = self.world;
        let mut book = world.book(self.tenant);
        book.sent += 1;
        book.touched.insert(channel.to_owned());
        before
    }

    /// The book records a presence join of `user` on `channel` going out.
    fn book_join(&self, channel: &str, user: &str) {
        let mut book = self.world.book(self.tenant);
        book.touched.insert(channel.to_owned());
        book.joined
            .entry(channel.to_owned())
            .or_default()
            .insert(user.to_owned());
    }

    /// The book as an action on `channel` goes out.
    fn before(&self, channel: &str) -> Before {
        let coming = self.snap.coming(self.tenant);
        let holds = self.following.get(channel).is_some_and(Following::settled)
            || self.present.contains(channel) && self.joining.as_deref() != Some(channel)
            || self.http_present.get(channel).copied() == coming;
        let book = self.world.book(self.tenant);
        Before {
            rate_refused: book.rate_refused,
            published: book.published(channel),
            holds,
        }
    }

    /// Judges a publish's outcome: an exact refusal must be that one; the owner's answer
    /// must agree with what the tenant's book allows.
    fn judge_publish(
        &mut self,
        channel: &str,
        expect: Expect,
        data: Value,
        published: Published,
        before: Before,
    ) -> Result<()> {
        let id = self.id;
        let code = match (&published, expect) {
            (Published::Refused(code), Expect::Refused(want)) => {
                ensure!(
                    code == want,
                    "walker {id}: publish to {channel}: {code}, not {want}"
                );
                if want == "unauthorized" {
                    self.refused_token(channel);
                }
                self.world.book(self.tenant).count(want);
                return Ok(());
            }
            (Published::Acked(seq), Expect::Refused(want)) => {
                bail!("walker {id}: publish to {channel} acked at {seq}, where {want} was due")
            }
            (Published::Acked(seq), Expect::Owner) => {
                let limits = self.limits();
                let window = self.world.window_holds();
                let world = self.world;
                let mut book = world.book(self.tenant);
                book.ack(
                    channel,
                    *seq,
                    data.to_string(),
                    limits.publishes_per_minute.is_some(),
                )?;
                if window {
                    ensure!(
                        !before.rate_refused,
                        "walker {id}: publish acked after the tenant's rate was refused in this round"
                    );
                    if let Some(rate) = limits.publishes_per_minute {
                        let bound = u64::from(rate).max(book.rated_at_round_start);
                        ensure!(
                            book.rated <= bound,
                            "walker {id}: {} publishes accepted that count, the rate being {rate} (and {} at the round's start)",
                            book.rated,
                            book.rated_at_round_start
                        );
                    }
                }
                return Ok(());
            }
            (Published::Refused(code), Expect::Owner) => code.clone(),
        };
        let limits = self.limits();
        let window = self.world.window_holds();
        let world = self.world;
        let mut book = world.book(self.tenant);
        match code.as_str() {
            "rate_limited" => {
                let rate = limits
                    .publishes_per_minute
                    .context("rate_limited from a tenant without a rate limit")?;
                let could_count = book.sent - book.refused - 1;
                ensure!(
                    !window || could_count >= u64::from(rate),
                    "walker {id}: rate_limited with at most {could_count} publishes accepted, the rate being {rate}"
                );
                book.rate_refused = true;
                book.count("rate_limited");
            }
            "channel_limit" => {
                judge_channel_limit(&book, limits, channel, window, before)
                    .with_context(|| format!("walker {id}: publish to {channel}"))?;
                book.count("channel_limit");
            }
            other => bail!("walker {id}: publish to {channel} refused with {other}"),
        }
        book.refused += 1;
        Ok(())
    }

    /// Sends a subscribe (a resume from the last seq seen with `resume`); returns what
    /// settling it needs.
    fn send_subscribe(
        &mut self,
        channel: &str,
        resume: bool,
    ) -> Result<(String, String, Expect, Before)> {
        let limits = self.limits();
        // The token is checked first, then the connection's bound, then the owner.
        let expect = if self.stale_token(channel) {
            Expect::Refused("unauthorized")
        } else if self.following.len() >= limits.subscriptions_per_connection as usize {
            Expect::Refused("channel_limit")
        } else {
            Expect::Owner
        };
        let before = self.before(channel);
        if expect == Expect::Owner {
            self.world
                .book(self.tenant)
                .touched
                .insert(channel.to_owned());
        }
        let reference = self.next_ref();
        let last = self.last_seen.get(channel).copied().unwrap_or(0);
        let mut frame = json!({"action": "subscribe", "channel": channel, "ref": reference});
        let delivery = if resume {
            frame["lastEventId"] = json!(last);
            if let Some(epoch) = self.epoch.get(channel) {
                frame["epoch"] = epoch.clone();
            }
            Delivery::resume_kept(last)
        } else {
            Delivery::plain()
        };
        self.token_field(channel, &mut frame);
        if expect == Expect::Owner {
            let following = Following {
                delivery,
                leaving: false,
                reference: reference.clone(),
                replayed: 0,
            };
            self.following.insert(channel.to_owned(), following);
        }
        self.answers.insert(reference.clone(), None);
        self.send(&frame)?;
        self.stat(if resume { "resumes" } else { "subscribes" });
        Ok((channel.to_owned(), reference, expect, before))
    }

    fn settle_subscribe(
        &mut self,
        (channel, reference, expect, before): (String, String, Expect, Before),
    ) -> Result<()> {
        let (channel, reference) = (channel.as_str(), reference.as_str());
        let id = self.id;
        if let Expect::Refused(want) = expect {
            let answer = self.answer(reference)?;
            let code = error_code(&answer)?;
            ensure!(
                code == want,
                "walker {id}: subscribe to {channel}: {code}, not {want}"
            );
            if want == "unauthorized" {
                self.refused_token(channel);
            } else {
                self.stat("subscriptions per connection refused");
            }
            self.world.book(self.tenant).count(want);
            return Ok(());
        }
        while self
            .following
            .get(channel)
            .is_some_and(|f| f.reference == reference && !f.delivery.answered())
        {
            self.observe()
                .with_context(|| format!("settling {channel}"))?;
        }
        match self.answers.remove(reference).flatten() {
            None => Ok(()),
            Some(error) => {
                let code = error_code(&error)?;
                ensure!(
                    code == "channel_limit",
                    "walker {id}: subscribe to {channel} refused with {code}: {error}"
                );
                let limits = self.limits();
                let window = self.world.window_holds();
                let world = self.world;
                let mut book = world.book(self.tenant);
                judge_channel_limit(&book, limits, channel, window, before)
                    .with_context(|| format!("walker {id}: subscribe to {channel}"))?;
                book.count("channel_limit");
                Ok(())
            }
        }
    }

    fn unsubscribe(&mut self, channel: &str) -> Result<()> {
        self.following.get_mut(channel).expect("followed").leaving = true;
        self.send(&json!({"action": "unsubscribe", "channel": channel}))?;
        while self.following.contains_key(channel) {
            self.observe()
                .with_context(|| format!("unsubscribing {channel}"))?;
        }
        Ok(())
    }

    /// A `presence:join`; a publish on the channel right after it is answered after
    /// the join is applied (docs/wire-contract.md, "Presence"), so its answer says
    /// whether the owner refused the join.
    fn presence_join(&mut self, channel: &str) -> Result<()> {
        let limits = self.limits();
        let user = self.user();
        let len = if self.rng.chance(5) {
            limits.metadata_bytes - 1 + self.rng.below(3)
        } else {
            20 + self.rng.below(30)
        };
        let mut metadata = json!({"w": self.id, "p": ""});
        let pad = len.saturating_sub(metadata.to_string().len());
        metadata["p"] = json!("x".repeat(pad));
        // A re-join refreshes the member: the connection holds no more channels.
        let one_too_many = !self.present.contains(channel)
            && self.present.len() >= limits.presence_channels_per_connection as usize;
        let expect = if self.stale_token(channel) {
            Expect::Refused("unauthorized")
        } else if len > limits.metadata_bytes || one_too_many {
            Expect::Refused("presence_limit")
        } else {
            Expect::Owner
        };
        let reference = self.next_ref();
        let mut frame = json!({
            "action": "presence:join", "channel": channel, "userId": user,
            "metadata": metadata, "ref": reference,
        });
        self.token_field(channel, &mut frame);
        self.answers.insert(reference.clone(), None);
        self.stat("presence joins");
        if let Expect::Refused(want) = expect {
            self.send(&frame)?;
            let code = error_code(&self.answer(&reference)?)?;
            ensure!(
                code == want,
                "walker {}: join {channel}: {code}, not {want}",
                self.id
            );
            if want == "unauthorized" {
                self.refused_token(channel);
            }
            self.world.book(self.tenant).count(want);
            return Ok(());
        }
        self.book_join(channel, &user);
        let before = self.before(channel);
        let member_already = !self.present.insert(channel.to_owned());
        self.joining = Some(channel.to_owned());
        self.send(&frame)?;
        self.ws_publish(channel, 60)?;
        self.joining = None;
        let Some(error) = self.answers.remove(&reference).flatten() else {
            return Ok(());
        };
        // A member joining again only refreshes: no limit can refuse it.
        ensure!(
            !member_already,
            "walker {}: a member's join again in {channel} refused: {error}",
            self.id
        );
        self.present.remove(channel);
        let code = error_code(&error)?;
        self.judge_join_refusal(channel, &user, &code, before)
    }

    /// A join the owner refused: the channel or member limit, as the book allows.
    fn judge_join_refusal(
        &mut self,
        channel: &str,
        user: &str,
        code: &str,
        before: Before,
    ) -> Result<()> {
        let limits = self.limits();
        let window = self.world.window_holds();
        let id = self.id;
        let world = self.world;
        let mut book = world.book(self.tenant);
        match code {
            "channel_limit" => {
                judge_channel_limit(&book, limits, channel, window, before)
                    .with_context(|| format!("walker {id}: join {channel}"))?;
                book.count("channel_limit");
            }
            "presence_limit" => {
                let others = book
                    .joined
                    .get(channel)
                    .map_or(0, |users| users.iter().filter(|u| *u != user).count());
                ensure!(
                    others >= limits.presence_members as usize,
                    "walker {id}: join {channel} refused presence_limit with at most {others} other members, the limit being {}",
                    limits.presence_members
                );
                book.count("presence_limit (members)");
            }
            other => bail!("walker {id}: join {channel} refused with {other}"),
        }
        Ok(())
    }

    fn presence_leave(&mut self, channel: &str) -> Result<()> {
        self.present.remove(channel);
        self.send(&json!({"action": "presence:leave", "channel": channel}))?;
        self.ping()
    }

    /// An HTTP join or leave of the walker's HTTP user.
    fn http_presence(&mut self, channel: &str) -> Result<()> {
        let limits = self.limits();
        let user = self.http_user();
        let key = self.spec().api_keys.last().cloned();
        let coming = self.snap.coming(self.tenant).expect("configured");
        let path = format!("/api/realtime/presence/{}", encode_component(channel));
        if self.http_present.contains_key(channel) && self.rng.chance(2) {
            let body = json!({"userId": user}).to_string();
            let resp = self.http("POST", &format!("{path}/leave"), key.as_deref(), &body)?;
            ensure!(resp.status == 200, "leave: {}", resp.body_text());
            let joined_then = self.http_present.remove(channel);
            if joined_then == Some(coming) {
                ensure!(
                    resp.json()?["wasPresent"] == true,
                    "walker {}: HTTP member of {channel} gone before its leave: {}",
                    self.id,
                    resp.body_text()
                );
            }
            return Ok(());
        }
        let len = if self.rng.chance(6) {
            limits.metadata_bytes + 1
        } else {
            30
        };
        let mut metadata = json!({"h": self.id, "p": ""});
        let pad = len.saturating_sub(metadata.to_string().len());
        metadata["p"] = json!("x".repeat(pad));
        let body = json!({"userId": user, "metadata": metadata}).to_string();
        if len > limits.metadata_bytes {
            let resp = self.http("POST", &format!("{path}/join"), key.as_deref(), &body)?;
            http_error(&resp, 403, "presence_limit")?;
            self.world
                .book(self.tenant)
                .count("presence_limit (metadata)");
            return Ok(());
        }
        self.book_join(channel, &user);
        let before = self.before(channel);
        let resp = self.http("POST", &format!("{path}/join"), key.as_deref(), &body)?;
        self.stat("http joins");
        match resp.status {
            200 => {
                self.http_present.insert(channel.to_owned(), coming);
                Ok(())
            }
            403 => {
                let code = resp.json()?["error"]["code"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                http_error(&resp, 403, &code)?;
                self.judge_join_refusal(channel, &user, &code, before)
            }
            _ => bail!(
                "walker {}: HTTP join: {} {}",
                self.id,
                resp.status,
                resp.body_text()
            ),
        }
    }

    /// The members listing: nobody of another tenant, and every member this walker
    /// knows it holds.
    fn members(&mut self, channel: &str) -> Result<()> {
        let key = self.spec().api_keys.last().cloned();
        let path = format!("/api/realtime/presence/{}", encode_component(channel));
        let resp = self.http("GET", &path, key.as_deref(), "")?;
        ensure!(resp.status == 200, "members: {}", resp.body_text());
        let body = resp.json()?;
        let users: BTreeSet<&str> = body["members"]
            .as_array()
            .context("members")?
            .iter()
            .map(|m| m["userId"].as_str().unwrap_or(""))
            .collect();
        let prefix = format!("{}-", self.tenant);
        for user in &users {
            ensure!(
                user.starts_with(&prefix),
                "walker {}: {channel} of {} lists member {user}",
                self.id,
                self.tenant
            );
        }
        let coming = self.snap.coming(self.tenant);
        if self.present.contains(channel) {
            ensure!(
                users.contains(self.user().as_str()),
                "its own member missing: {body}"
            );
        }
        if self.http_present.get(channel).copied() == coming {
            ensure!(
                users.contains(self.http_user().as_str()),
                "its HTTP member missing: {body}"
            );
        }
        self.stat("members listings");
        Ok(())
    }

    /// Credentials that are not the tenant's: refused with the documented error.
    fn foreign_credentials(&mut self) -> Result<()> {
        let others: Vec<&'static str> = TENANTS
            .iter()
            .copied()
            .filter(|t| *t != self.tenant && self.snap.tenant(t).is_some())
            .collect();
        let body = json!({"channel": "room:0", "data": {"t": self.tenant}}).to_string();
        match self.rng.below(4) {
            0 if !others.is_empty() => {
                // Another tenant's key: 403 forbidden.
                let other = others[self.rng.below(others.len())];
                let key = self.snap.tenant(other).expect("configured").api_keys[0].clone();
                let resp = self.http("POST", "/api/realtime/publish", Some(&key), &body)?;
                http_error(&resp, 403, "forbidden")?;
                self.stat("another tenant's key refused");
            }
            1 => {
                // A key it no longer has (or never had): 401.
                let retired = self
                    .snap
                    .retired_keys
                    .get(self.tenant)
                    .and_then(|k| k.first())
                    .cloned();
                let key = retired
                    .clone()
                    .unwrap_or_else(|| "not-a-key-0123456789".into());
                let resp = self.http("POST", "/api/realtime/publish", Some(&key), &body)?;
                http_error(&resp, 401, "unauthorized")?;
                self.stat(if retired.is_some() {
                    "retired key refused"
                } else {
                    "wrong key refused"
                });
            }
            2 if !others.is_empty() => {
                // A channel token of another tenant's key: unauthorized, whatever the
                // connection's own token allows.
                let channel = channels()
                    .into_iter()
                    .find(|c| is_private(c) && !self.following.contains_key(c));
                let Some(channel) = channel else {
                    return Ok(());
                };
                let other = others[self.rng.below(others.len())];
                let (kid, secret) = self.snap.tenant(other).expect("configured").newest_kid();
                let foreign = token(kid, secret, self.tenant, &self.user(), &[&channel]);
                let reference = self.next_ref();
                self.answers.insert(reference.clone(), None);
                self.send(&json!({
                    "action": "subscribe", "channel": channel, "token": foreign, "ref": reference,
                }))?;
                let code = error_code(&self.answer(&reference)?)?;
                ensure!(code == "unauthorized", "another tenant's token: {code}");
                self.stat("another tenant's token refused");
            }
            _ => {
                // A tenant that is not configured: 404 on the upgrade.
                let Some(absent) = TENANTS.iter().find(|t| self.snap.tenant(t).is_none()) else {
                    return Ok(());
                };
                let addr = self.server.addr();
                let query = format!("tenant={absent}");
                match Client::handshake(TcpStream::connect(addr)?, addr, &query) {
                    Err(ConnectError::Http(resp)) => http_error(&resp, 404, "unknown_tenant")?,
                    Err(e) => bail!("upgrade to {absent}: {e}"),
                    Ok(_) => bail!("{absent} is not configured, yet upgraded"),
                }
                self.stat("unknown tenant refused");
            }
        }
        Ok(())
    }

    /// Drops the connection (a close frame or not) and resumes on a new one.
    fn reconnect(&mut self) -> Result<()> {
        if let Some(client) = self.client.take() {
            if self.rng.chance(2) {
                client.close_quietly();
            }
        }
        self.note("-- reconnect".into());
        self.dropped();
        self.stat("reconnects");
        self.connect()?;
        self.resume_all()
    }

    fn ping(&mut self) -> Result<()> {
        self.send(&json!({"action": "ping"}))?;
        self.until("pong", |ev| ev["event"] == "pong").map(drop)
    }

    // ----- reading -----

    fn left(&self) -> Result<Duration> {
        time_left(self.deadline, &format!("walker {}", self.id))
    }

    /// Reads until the answer to `reference` came; returns it.
    fn answer(&mut self, reference: &str) -> Result<Value> {
        while self.answers.get(reference).is_some_and(Option::is_none) {
            self.observe()
                .with_context(|| format!("waiting for the answer to {reference}"))?;
        }
        self.answers
            .remove(reference)
            .flatten()
            .with_context(|| format!("{reference} was not asked"))
    }

    fn http(
        &mut self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: &str,
    ) -> Result<ringcast_tests::HttpResponse> {
        let headers = match key {
            Some(key) => format!(
                "X-Tenant-Id: {}\r\nAuthorization: Bearer {key}\r\n",
                self.tenant
            ),
            None => format!("X-Tenant-Id: {}\r\n", self.tenant),
        };
        self.note(format!("=> {method} {path} {body}"));
        self.api.send(json_request(method, path, &headers, body))?;
        let resp = self.api.response()?;
        self.note(format!("<= {} {}", resp.status, resp.body_text()));
        Ok(resp)
    }

    /// Checks one event against the model.
    fn handle(&mut self, ev: &Value) -> Result<()> {
        let id = self.id;
        let channel = ev["channel"].as_str().unwrap_or("").to_owned();
        let reference = ev["ref"].as_str().map(str::to_owned);
        match ev["event"].as_str().unwrap_or("") {
            "realtime.message" => {
                let seq = ev["seq"].as_u64().context("message seq")?;
                ensure!(
                    ev["data"]["t"] == self.tenant,
                    "walker {id} of {}: a message of another tenant: {}",
                    self.tenant,
                    short(ev)
                );
                let f = self.following.get_mut(&channel).with_context(|| {
                    format!(
                        "walker {id}: a message for an unfollowed channel: {}",
                        short(ev)
                    )
                })?;
                let replaying = !f.delivery.answered();
                f.delivery
                    .message(seq)
                    .map_err(|e| anyhow::anyhow!("walker {id}: {channel} {e}: {}", short(ev)))?;
                if replaying {
                    f.replayed += 1;
                }
                let last = self.last_seen.entry(channel.clone()).or_default();
                *last = (*last).max(seq);
                self.report
                    .seen
                    .insert((channel, seq), ev["data"].to_string());
            }
            "subscribed" => {
                let seq = ev["seq"].as_u64().context("subscribed seq")?;
                let recovered = ev["recovered"] == true;
                let kept = self.limits().history_messages;
                let f = self
                    .following
                    .get_mut(&channel)
                    .with_context(|| format!("walker {id}: an unasked subscribed: {ev}"))?;
                f.delivery
                    .subscribed(seq, recovered)
                    .map_err(|e| anyhow::anyhow!("walker {id}: {channel}: {e}: {ev}"))?;
                ensure!(
                    u64::from(kept) >= f.replayed,
                    "walker {id}: {channel} replayed {} messages, the history keeping {kept}",
                    f.replayed
                );
                if f.delivery.first_replayed().is_some() && !recovered {
                    self.report
                        .stats
                        .entry("resumes not recovered")
                        .and_modify(|n| *n += 1)
                        .or_insert(1);
                }
                self.epoch.insert(channel, ev["epoch"].clone());
            }
            "unsubscribed" => {
                let f = self
                    .following
                    .remove(&channel)
                    .with_context(|| format!("walker {id}: an unasked unsubscribed: {ev}"))?;
                ensure!(
                    f.leaving,
                    "walker {id}: unsubscribed without unsubscribe: {ev}"
                );
            }
            "ack" | "error" => {
                let reference = reference
                    .with_context(|| format!("walker {id}: an {ev} that answers no frame"))?;
                let slot = self
                    .answers
                    .get_mut(&reference)
                    .with_context(|| format!("walker {id}: an answer to nothing asked: {ev}"))?;
                ensure!(
                    slot.is_none(),
                    "walker {id}: {reference} answered twice: {ev}"
                );
                *slot = Some(ev.clone());
                if ev["event"] == "error"
                    && self
                        .following
                        .get(&channel)
                        .is_some_and(|f| f.reference == reference)
                {
                    // A refused subscribe follows nothing.
                    self.following.remove(&channel);
                }
            }
            "presence:join" | "presence:update" | "presence:leave" => {
                let user = ev["userId"].as_str().unwrap_or("");
                ensure!(
                    user.starts_with(&format!("{}-", self.tenant)),
                    "walker {id} of {}: presence of another tenant's user: {ev}",
                    self.tenant
                );
                ensure!(
                    self.following.contains_key(&channel),
                    "walker {id}: presence of an unfollowed channel: {ev}"
                );
            }
            "pong" | "connected" => {}
            other => bail!("walker {id}: unknown event {other}: {ev}"),
        }
        Ok(())
    }
}

impl Observe for Walker<'_> {
    fn observe(&mut self) -> Result<Value> {
        let left = self.left()?;
        let ev = self.client()?.recv_event(left)?;
        self.note(format!("<- {ev}"));
        self.handle(&ev)?;
        Ok(ev)
    }
}

/// An event cut to a readable length for a failure's message (`data` may be kilobytes).
fn short(ev: &Value) -> String {
    ev.to_string().chars().take(300).collect()
}

/// `data.code` of an `error` event (anything else is not a refusal).
fn error_code(ev: &Value) -> Result<String> {
    ensure!(ev["event"] == "error", "not an error: {ev}");
    ev["data"]["code"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("an error without a code: {ev}"))
}

/// A `channel_limit` for `channel` must come from a tenant with a limit, for a channel
/// that did not count yet (when the action went out this walker held no subscription
/// or member in it, and it had no acknowledged publish in the last minute), with at
/// least the limit of other channels that may count.
fn judge_channel_limit(
    book: &Book,
    limits: Limits,
    channel: &str,
    window: bool,
    before: Before,
) -> Result<()> {
    let max = limits
        .max_channels
        .context("channel_limit from a tenant without max_channels")?;
    ensure!(
        !before.holds,
        "channel_limit for {channel}, which this walker holds a subscription or member in (it counts already)"
    );
    if !window {
        return Ok(());
    }
    ensure!(
        !before.published,
        "channel_limit for {channel}, which had an acknowledged publish within the minute (it counts already)"
    );
    let others = book.touched.iter().filter(|c| *c != channel).count();
    ensure!(
        others >= max as usize,
        "channel_limit for {channel} with at most {others} other channels active, the limit being {max}"
    );
    Ok(())
}
