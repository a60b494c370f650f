//! The blink tenant (a 2 s presence TTL): members that leave at the TTL, and one that
//! stays for as long as its connection answers pings.

use super::*;

/// A subscriber of the blink tenant that checks what it reads and remembers each
/// presence event with the seq of the message before it.
struct Watcher {
    name: &'static str,
    client: Client,
    dotted: bool,
    next: HashMap<String, u64>,
    present: HashMap<(String, String), bool>,
    log: Vec<String>,
    deadline: Instant,
}

impl Watcher {
    fn open(
        server: &Server,
        name: &'static str,
        dotted: bool,
        deadline: Instant,
    ) -> Result<Watcher> {
        let query = if dotted {
            "tenant=blink&presence_events=dot"
        } else {
            "tenant=blink"
        };
        Ok(Watcher {
            name,
            client: Client::open(server, query)?,
            dotted,
            next: HashMap::new(),
            present: HashMap::new(),
            log: Vec::new(),
            deadline,
        })
    }

    fn subscribe(&mut self, channel: &str, token: Option<&str>) -> Result<()> {
        let mut frame = json!({"action": "subscribe", "channel": channel});
        if let Some(token) = token {
            frame["token"] = json!(token);
        }
        self.client.send_json(&frame)?;
        let ev = self.client.expect_event("subscribed")?;
        self.next
            .insert(channel.to_owned(), ev["seq"].as_u64().context("seq")? + 1);
        Ok(())
    }

    fn read(&mut self) -> Result<Value> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        ensure!(
            !left.is_zero(),
            "watcher {} ran past the soak's limit",
            self.name
        );
        let ev = self.client.recv_event(left.min(Duration::from_secs(30)))?;
        let channel = ev["channel"].as_str().unwrap_or("").to_owned();
        let name = ev["event"].as_str().unwrap_or("");
        if let Some((kind, colon)) = presence_kind(name) {
            ensure!(
                colon != self.dotted,
                "watcher {}: spelling of {ev}",
                self.name
            );
            let user = ev["userId"].as_str().context("userId")?.to_owned();
            let was = self.present.get(&(channel.clone(), user.clone())).copied();
            let ok = if kind == "join" {
                was != Some(true)
            } else {
                was == Some(true)
            };
            ensure!(
                ok,
                "watcher {}: {kind} of {user} in {channel}, its events before had it {was:?}",
                self.name
            );
            self.present
                .insert((channel.clone(), user.clone()), kind != "leave");
            let meta = if kind == "leave" {
                Value::Null
            } else {
                ev["metadata"].clone()
            };
            let after = self.next.get(&channel).copied().unwrap_or(0);
            self.log.push(format!(
                "{channel}@{after}: {}",
                describe(kind, &user, &meta)
            ));
            return Ok(ev);
        }
        match name {
            "realtime.message" => {
                let seq = ev["seq"].as_u64().context("seq")?;
                let next = self
                    .next
                    .get_mut(&channel)
                    .with_context(|| format!("unfollowed: {ev}"))?;
                ensure!(
                    seq == *next,
                    "watcher {}: {channel} seq {seq}, expected {next}",
                    self.name
                );
                *next += 1;
            }
            "pong" => {}
            _ => bail!("watcher {}: unexpected {ev}", self.name),
        }
        Ok(ev)
    }

    /// Reads until `user`'s presence in `channel` is `present` (as its events say).
    fn await_presence(&mut self, channel: &str, user: &str, present: bool) -> Result<Instant> {
        let key = (channel.to_owned(), user.to_owned());
        for _ in 0..10_000 {
            if self.present.get(&key).copied().unwrap_or(false) == present {
                return Ok(Instant::now());
            }
            self.read().with_context(|| {
                format!(
                    "watcher {}: waiting for {user} to be {} in {channel}",
                    self.name,
                    if present { "present" } else { "gone" }
                )
            })?;
        }
        bail!(
            "watcher {}: {user} in {channel} never became {present}",
            self.name
        )
    }

    /// Reads until `channel`'s message `seq` has come.
    fn await_seq(&mut self, channel: &str, seq: u64) -> Result<()> {
        for _ in 0..10_000 {
            if self.next.get(channel).copied().unwrap_or(0) > seq {
                return Ok(());
            }
            self.read().with_context(|| {
                format!("watcher {}: waiting for {channel} seq {seq}", self.name)
            })?;
        }
        bail!("watcher {}: {channel} seq {seq} never came", self.name)
    }
}

/// An HTTP request to the blink tenant, answered 200.
fn blink_api(server: &Server, method: &str, path: &str, body: &str) -> Result<Value> {
    let mut conn = HttpConn::open(server)?;
    conn.send(json_request(method, path, "X-Tenant-Id: blink\r\n", body))?;
    let resp = conn.response()?;
    ensure!(
        resp.status == 200,
        "{method} {path}: {} {}",
        resp.status,
        resp.body_text()
    );
    resp.json()
}

fn blink_publish(client: &mut Client, channel: &str, reference: &str) -> Result<u64> {
    client.send_json(&json!({"action": "publish", "channel": channel, "data": {"barrier": reference}, "ref": reference}))?;
    let ack = client.recv_until(|e| e["ref"] == reference, TIMEOUT)?;
    ensure!(ack["event"] == "ack", "barrier refused: {ack}");
    ack["seq"].as_u64().context("ack seq")
}

/// The blink tenant: members of connections dropped without a leave, HTTP joins not
/// renewed and a member whose private token expired all leave at the TTL, and both
/// watchers (one per spelling) see the same presence events, each once.
pub(super) fn blink(server: &Server, deadline: Instant) -> Result<usize> {
    let ttl = Duration::from_secs(BLINK_TTL_SECS);
    let public = ["blink:0", "blink:1"];
    let private = "private-blink:0";
    let watcher_token = short_token("blink", BLINK_SECRET, private, "watcher", 3_600 + 30);
    let mut watchers = [
        Watcher::open(server, "colon", false, deadline)?,
        Watcher::open(server, "dot", true, deadline)?,
    ];
    for w in &mut watchers {
        for channel in public {
            w.subscribe(channel, None)?;
        }
        w.subscribe(private, Some(&watcher_token))?;
    }
    // A member whose connection sends nothing after its join, but reads (so answers the
    // server's pings, as browsers do by themselves): it stays for as long as that lasts.
    let mut quiet = Client::open(server, "tenant=blink")?;
    quiet
        .send_json(&json!({"action": "presence:join", "channel": public[1], "userId": "quiet"}))?;
    for w in &mut watchers {
        w.await_presence(public[1], "quiet", true)?;
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || -> Result<Client> {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match quiet.recv_event(Duration::from_millis(200)) {
                    Ok(ev) => bail!("the quiet member's connection got {ev}"),
                    Err(e) if e.to_string().starts_with("no message within") => {}
                    Err(e) => return Err(e.context("the quiet member's connection")),
                }
            }
            Ok(quiet)
        })
    };
    let mut leaves = 0;
    for round in 0..2 {
        let user = format!("b{round}");
        let http_user = format!("hb{round}");
        let joined_at = Instant::now();
        let mut member = Client::open(server, "tenant=blink")?;
        member.send_json(&json!({"action": "presence:join", "channel": public[0], "userId": user, "metadata": {"r": round}}))?;
        member
            .send_json(&json!({"action": "presence:join", "channel": public[1], "userId": user}))?;
        let path = format!(
            "/api/realtime/presence/{}/join",
            encode_component(public[1])
        );
        let answer = blink_api(
            server,
            "POST",
            &path,
            &json!({"userId": http_user}).to_string(),
        )?;
        ensure!(
            answer == json!({"isNew": true}),
            "HTTP join of {http_user}: {answer}"
        );
        // A member admitted by a token that expires within seconds.
        let mut expiring = None;
        if round == 0 {
            let token = short_token("blink", BLINK_SECRET, private, "e0", 5);
            let mut e = Client::open(server, "tenant=blink")?;
            e.send_json(&json!({"action": "subscribe", "channel": private, "token": token}))?;
            e.send_json(&json!({"action": "presence:join", "channel": private, "userId": "x", "token": token}))?;
            let answer = e.recv_event(TIMEOUT)?;
            ensure!(
                answer["event"] == "subscribed",
                "the short token's subscribe: {answer}"
            );
            expiring = Some(e);
        }
        // The joins are applied once the owner acknowledged a publish sent after them.
        let barriers: Vec<u64> = public
            .iter()
            .map(|c| blink_publish(&mut member, c, &format!("{user}-{c}")))
            .collect::<Result<_>>()?;
        for w in &mut watchers {
            for (channel, seq) in public.iter().zip(&barriers) {
                w.await_seq(channel, *seq)?;
            }
            w.await_presence(public[0], &user, true)?;
            w.await_presence(public[1], &user, true)?;
            w.await_presence(public[1], &http_user, true)?;
            if expiring.is_some() {
                w.await_presence(private, "e0", true)?;
            }
        }
        if round == 0 {
            // Gone without a close frame or a leave.
            drop(member);
        } else {
            // Gone, and back at once as the same user: it rejoins one channel and leaves
            // it. Whether its old connection still held it then or not, it is gone
            // from both channels in the end.
            drop(member);
            let mut back = Client::open(server, "tenant=blink")?;
            back.send_json(&json!({"action": "presence:join", "channel": public[0], "userId": user, "metadata": {"r": round}}))?;
            back.send_json(&json!({"action": "presence:leave", "channel": public[0]}))?;
            let seq = blink_publish(&mut back, public[0], &format!("{user}-back"))?;
            for w in &mut watchers {
                w.await_seq(public[0], seq)?;
            }
            back.ping_pong()?;
        }
        for w in &mut watchers {
            for (channel, who) in [
                (public[0], &user),
                (public[1], &user),
                (public[1], &http_user),
            ] {
                let left = w.await_presence(channel, who, false)?;
                // (In round 1 the leave from the new connection may end it at once.)
                let rejoined = round == 1 && channel == public[0];
                ensure!(
                    rejoined || left.duration_since(joined_at) >= ttl,
                    "watcher {}: {who} left {channel} {:?} after joining, before the TTL",
                    w.name,
                    left.duration_since(joined_at)
                );
                leaves += 1;
            }
            if expiring.is_some() {
                w.await_presence(private, "e0", false)?;
            }
        }
        if let Some(mut e) = expiring {
            // Its token's expiry ends the subscription (`unauthorized` then
            // `unsubscribed`) and the member (`unauthorized`, and it leaves).
            let mut got = Vec::new();
            while got.len() < 3 {
                let ev = e.recv_event(Duration::from_secs(30))?;
                match ev["event"].as_str() {
                    Some("error") => {
                        ensure!(
                            ev["data"]["code"] == "unauthorized" && ev["channel"] == private,
                            "{ev}"
                        );
                        got.push("unauthorized");
                    }
                    Some("unsubscribed") => {
                        ensure!(
                            got.last() == Some(&"unauthorized"),
                            "unsubscribed before its error: {got:?}"
                        );
                        got.push("unsubscribed");
                    }
                    Some(e) if e.starts_with("presence") => {}
                    _ => bail!("the expired member's connection got {ev}"),
                }
            }
            e.ping_pong()?;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut quiet = reader.join().expect("the quiet member's reader")?;
    for w in &watchers {
        ensure!(
            w.present.get(&(public[1].to_owned(), "quiet".to_owned())) == Some(&true),
            "watcher {}: the member whose connection answered every ping left (TTL {BLINK_TTL_SECS} s)",
            w.name
        );
    }
    quiet.send_json(&json!({"action": "presence:leave", "channel": public[1]}))?;
    for w in &mut watchers {
        w.await_presence(public[1], "quiet", false)?;
    }
    for channel in public.iter().chain([&private]) {
        let path = format!("/api/realtime/presence/{}", encode_component(channel));
        let listed = blink_api(server, "GET", &path, "")?;
        ensure!(
            listed == json!({"members": []}),
            "{channel} after every leave: {listed}"
        );
    }
    let [a, b] = &watchers;
    ensure!(
        a.log == b.log,
        "the watchers saw different presence events:\n{:#?}\n{:#?}",
        a.log,
        b.log
    );
    Ok(leaves)
}
