//! The walkers' presence actions (WebSocket, the twin, HTTP) and the model of their own
//! members they are checked against.

use super::*;

/// The model of one of a walker's own members in one channel, as the channel's owner
/// has it once the walker's frames sent so far are applied.
#[derive(Debug, Clone)]
pub(super) struct Member {
    /// `None`: not known (see `stale`) until the next members listing.
    pub(super) exists: Option<bool>,
    /// Its metadata (`Null` when none); `None`: not known.
    pub(super) meta: Option<Value>,
    /// Held by the HTTP API (the TTL outlives the soak, so a hold never lapses).
    pub(super) http: bool,
    /// Held by the walker's current connections: its main one and its twin.
    pub(super) conns: [bool; 2],
    /// A connection the walker closed held it, and the owner may not have heard of the
    /// close yet: a leave from the new connection may find the old one still holding it.
    pub(super) stale: bool,
}

impl Default for Member {
    fn default() -> Member {
        Member {
            exists: Some(false),
            meta: Some(Value::Null),
            http: false,
            conns: [false; 2],
            stale: false,
        }
    }
}

impl Member {
    pub(super) fn known(&self) -> bool {
        match self.exists {
            Some(true) => self.meta.is_some(),
            Some(false) => true,
            None => false,
        }
    }

    pub(super) fn remove(&mut self) {
        *self = Member::default();
    }
}

impl Walker<'_> {
    // ----- presence over WebSocket -----

    /// The owner's side of connection `which`'s leave of `user` in `channel`: the leave
    /// it announces, if the model knows it does.
    pub(super) fn leave_at_owner(&mut self, channel: &str, user: &str, which: usize) {
        let m = self.member(channel, user);
        m.conns[which] = false;
        let event = match m.exists {
            Some(true) if m.http || m.conns.contains(&true) => None,
            Some(true) if m.stale => {
                // The closed connection may hold it still.
                m.exists = None;
                self.lax.insert(channel.to_owned());
                None
            }
            Some(true) => {
                m.remove();
                Some(describe("leave", user, &Value::Null))
            }
            Some(false) => None,
            None => {
                self.lax.insert(channel.to_owned());
                None
            }
        };
        if let Some(event) = event {
            self.expect_own(channel, event);
        }
    }

    /// The owner's side of connection `which`'s join of `user` in `channel`.
    pub(super) fn join_at_owner(
        &mut self,
        channel: &str,
        user: &str,
        meta: Option<Value>,
        which: usize,
    ) {
        let m = self.member(channel, user);
        let known = m.known();
        m.conns[which] = true;
        let event = match m.exists {
            Some(true) => match meta {
                Some(meta) if m.meta.as_ref() != Some(&meta) => {
                    let event = describe("update", user, &meta);
                    m.meta = Some(meta);
                    Some(event)
                }
                _ => None,
            },
            Some(false) => {
                let meta = meta.unwrap_or(Value::Null);
                let event = describe("join", user, &meta);
                m.exists = Some(true);
                m.meta = Some(meta);
                Some(event)
            }
            None => {
                m.exists = Some(true);
                m.meta = meta;
                None
            }
        };
        match (known, event) {
            (true, Some(event)) => self.expect_own(channel, event),
            (true, None) => {}
            (false, _) => {
                self.lax.insert(channel.to_owned());
            }
        }
        self.dirty.insert(channel.to_owned());
    }

    /// A join or leave of the main user from the twin connection (never subscribed).
    pub(super) fn presence_twin(&mut self, channel: &str) -> Result<()> {
        // Two connections' frames reach the owner in no set order: the main one's are
        // applied before the twin acts, and the other way round.
        self.sync(channel)?;
        let user = self.main_user();
        if self.twin_user.remove(channel).is_some() {
            self.twin_send(&json!({"action": "presence:leave", "channel": channel}))?;
            self.leave_at_owner(channel, &user, TWIN);
        } else {
            let meta = (!self.rng.chance(3)).then(|| json!({"v": self.rng.below(3)}));
            let mut frame = json!({"action": "presence:join", "channel": channel, "userId": user});
            if let Some(meta) = &meta {
                frame["metadata"] = meta.clone();
            }
            self.token_field(channel, &mut frame);
            self.twin_send(&frame)?;
            self.twin_user.insert(channel.to_owned(), user.clone());
            self.join_at_owner(channel, &user, meta, TWIN);
        }
        self.twin_dirty.insert(channel.to_owned());
        self.dirty.insert(channel.to_owned());
        Ok(())
    }

    /// The twin's presence frames on `channel` are applied before what the main
    /// connection sends next: two connections' frames reach the owner in no set order
    /// (a subscription settled after the twin's join could see its event, or not).
    pub(super) fn twin_applied(&mut self, channel: &str) -> Result<()> {
        if self.twin_dirty.remove(channel) {
            self.twin_barrier(channel)?;
        }
        Ok(())
    }

    pub(super) fn twin_send(&mut self, frame: &Value) -> Result<()> {
        self.note(format!("twin -> {frame}"));
        self.twin.send_json(frame)
    }

    /// The twin's frames on `channel` are applied once the owner acknowledged a publish
    /// it sent after them.
    pub(super) fn twin_barrier(&mut self, channel: &str) -> Result<()> {
        let reference = self.next_ref();
        let data = self.next_data();
        let mut frame =
            json!({"action": "publish", "channel": channel, "data": data, "ref": reference});
        self.token_field(channel, &mut frame);
        self.twin_send(&frame)?;
        let ack = loop {
            let ev = self.twin.recv_event(self.left()?)?;
            self.note(format!("twin <- {ev}"));
            match ev["event"].as_str() {
                Some("ack") if ev["ref"] == reference.as_str() => break ev,
                Some("pong") => {}
                _ => bail!("walker {}: the twin got {ev}", self.id),
            }
        };
        let seq = ack["seq"].as_u64().context("ack seq")?;
        let ts = ack["ts"].as_u64().context("ack ts")?;
        let user = is_private(channel).then(|| self.main_user());
        self.record(
            channel,
            seq,
            Msg {
                data: data.to_string(),
                user,
                ts,
            },
        )
    }

    /// The twin closes (with a close frame or without) and opens again.
    pub(super) fn twin_reconnect(&mut self) -> Result<()> {
        let dirty: Vec<String> = self.twin_dirty.drain().collect();
        for channel in dirty {
            self.twin_barrier(&channel)?;
        }
        self.twin_user.clear();
        for member in self.members.values_mut() {
            if member.conns[TWIN] {
                member.conns[TWIN] = false;
                member.stale = true;
            }
        }
        let mut twin = Client::open(self.server, "")?;
        std::mem::swap(&mut self.twin, &mut twin);
        if self.rng.chance(2) {
            twin.close_quietly();
        }
        self.note("== twin reconnected".into());
        Ok(())
    }

    pub(super) fn presence_ws(&mut self, channel: &str) -> Result<()> {
        self.twin_applied(channel)?;
        let private = is_private(channel);
        let user = if private || self.rng.chance(4) {
            self.main_user()
        } else if self.rng.chance(3) {
            self.alt_user()
        } else {
            self.main_user()
        };
        let reference = self.next_ref();
        match self.rng.below(10) {
            0..=4 => {
                let meta = (!self.rng.chance(4)).then(|| json!({"v": self.rng.below(3)}));
                let mut frame = json!({
                    "action": "presence:join", "channel": channel, "userId": user, "ref": reference,
                });
                match &meta {
                    Some(meta) => frame["metadata"] = meta.clone(),
                    // `null` is no metadata: the member keeps what it has.
                    None if self.rng.chance(2) => frame["metadata"] = Value::Null,
                    None => {}
                }
                if private {
                    if self.rng.chance(8) {
                        return self.refused(frame, "unauthorized");
                    }
                    // The token's sub is the member, whatever userId the frame names.
                    frame["userId"] = json!("mallory");
                    self.token_field(channel, &mut frame);
                }
                // Joining as another userId leaves as the previous one first.
                if let Some(previous) = self.conn_user.get(channel).cloned() {
                    if previous != user {
                        self.leave_at_owner(channel, &previous, MAIN);
                    }
                }
                self.conn_user.insert(channel.to_owned(), user.clone());
                self.join_at_owner(channel, &user, meta, MAIN);
                self.send(&frame)
            }
            5..=7 => {
                let Some(joined) = self.conn_user.get(channel).cloned() else {
                    let frame = json!({
                        "action": "presence:update", "channel": channel, "userId": user,
                        "metadata": 1,
                    });
                    return self.refused(frame, "bad_request");
                };
                let m = self.member(channel, &joined);
                if !m.known() {
                    return Ok(());
                }
                let meta = (!self.rng.chance(4)).then(|| json!({"v": self.rng.below(3), "u": 1}));
                let mut frame = json!({
                    "action": "presence:update", "channel": channel, "userId": joined,
                    "ref": reference,
                });
                if let Some(meta) = &meta {
                    frame["metadata"] = meta.clone();
                }
                let m = self.member(channel, &joined);
                if m.exists == Some(false) {
                    // Removed by an HTTP leave; the connection was not told.
                    return self.refused(frame, "bad_request");
                }
                let meta = meta.unwrap_or(Value::Null);
                m.meta = Some(meta.clone());
                self.expect_own(channel, describe("update", &joined, &meta));
                self.dirty.insert(channel.to_owned());
                self.send(&frame)
            }
            _ => {
                let frame =
                    json!({"action": "presence:leave", "channel": channel, "ref": reference});
                let Some(joined) = self.conn_user.remove(channel) else {
                    return self.refused(frame, "bad_request");
                };
                self.leave_at_owner(channel, &joined, MAIN);
                self.dirty.insert(channel.to_owned());
                self.send(&frame)
            }
        }
    }

    // ----- presence over HTTP -----

    pub(super) fn presence_path(channel: &str, action: &str) -> String {
        let channel = encode_component(channel);
        match action {
            "" => format!("/api/realtime/presence/{channel}"),
            action => format!("/api/realtime/presence/{channel}/{action}"),
        }
    }

    /// `GET …/presence/{channel}`, checked against the model of the walker's members
    /// (and teaching it what it did not know).
    pub(super) fn members_listing(&mut self, channel: &str) -> Result<()> {
        self.sync(channel)?;
        let listed = self.api_ok("GET", &Self::presence_path(channel, ""), "", "")?;
        let members = listed["members"].as_array().context("members")?;
        let users: Vec<&str> = members
            .iter()
            .map(|m| m["userId"].as_str().unwrap_or(""))
            .collect();
        ensure!(
            users.windows(2).all(|w| w[0] < w[1]),
            "walker {}: members of {channel} not sorted by userId, or twice: {listed}",
            self.id
        );
        for m in members {
            ensure!(m["lastSeen"].is_u64(), "lastSeen in seconds: {m}");
        }
        for user in [self.main_user(), self.alt_user()] {
            let entry = members.iter().find(|m| m["userId"] == user.as_str());
            let model = self.member(channel, &user).clone();
            if model.known() {
                ensure!(
                    entry.is_some() == (model.exists == Some(true)),
                    "walker {}: {user} in {channel}: listed {entry:?}, its model {model:?}",
                    self.id
                );
                if let Some(entry) = entry {
                    ensure!(
                        Some(&entry["metadata"]) == model.meta.as_ref(),
                        "walker {}: {user} in {channel}: listed {entry}, its model {model:?}",
                        self.id
                    );
                }
            }
            let m = self.member(channel, &user);
            match entry {
                Some(entry) => {
                    m.exists = Some(true);
                    m.meta = Some(entry["metadata"].clone());
                }
                None => m.remove(),
            }
        }
        self.report.members_checked += 1;
        Ok(())
    }

    pub(super) fn presence_http(&mut self, channel: &str) -> Result<()> {
        let user = if self.rng.chance(3) {
            self.alt_user()
        } else {
            self.main_user()
        };
        self.sync(channel)?;
        if !self.member(channel, &user).known() || self.rng.chance(4) {
            return self.members_listing(channel);
        }
        let m = self.member(channel, &user).clone();
        let exists = m.exists == Some(true);
        match self.rng.below(5) {
            0..=1 => {
                let meta = match self.rng.below(4) {
                    0 => None,
                    1 => Some(Value::Null),
                    _ => Some(json!({"v": self.rng.below(3)})),
                };
                let mut body = json!({"userId": user});
                if let Some(meta) = &meta {
                    body["metadata"] = meta.clone();
                }
                let answer = self.api_ok(
                    "POST",
                    &Self::presence_path(channel, "join"),
                    "",
                    &body.to_string(),
                )?;
                ensure!(
                    answer == json!({"isNew": !exists}),
                    "walker {}: HTTP join of {user} in {channel} answered {answer}, its model {m:?}",
                    self.id
                );
                let meta = meta.filter(|m| !m.is_null());
                let m = self.member(channel, &user);
                m.http = true;
                let event = if exists {
                    match meta {
                        Some(meta) if m.meta.as_ref() != Some(&meta) => {
                            let ev = describe("update", &user, &meta);
                            m.meta = Some(meta);
                            Some(ev)
                        }
                        _ => None,
                    }
                } else {
                    let meta = meta.unwrap_or(Value::Null);
                    m.exists = Some(true);
                    m.meta = Some(meta.clone());
                    Some(describe("join", &user, &meta))
                };
                if let Some(ev) = event {
                    self.expect_own(channel, ev);
                }
            }
            2 => {
                let meta = if self.rng.chance(4) {
                    Value::Null
                } else {
                    json!({"h": self.rng.below(3)})
                };
                let body = json!({"userId": user, "metadata": meta});
                let answer = self.api_ok(
                    "POST",
                    &Self::presence_path(channel, "update"),
                    "",
                    &body.to_string(),
                )?;
                ensure!(
                    answer == json!({"updated": exists}),
                    "walker {}: HTTP update of {user} in {channel} answered {answer}, its model {m:?}",
                    self.id
                );
                if exists {
                    self.member(channel, &user).meta = Some(meta.clone());
                    self.expect_own(channel, describe("update", &user, &meta));
                }
            }
            _ => {
                let body = json!({"userId": user});
                let answer = self.api_ok(
                    "POST",
                    &Self::presence_path(channel, "leave"),
                    "",
                    &body.to_string(),
                )?;
                ensure!(
                    answer == json!({"wasPresent": exists}),
                    "walker {}: HTTP leave of {user} in {channel} answered {answer}, its model {m:?}",
                    self.id
                );
                // Removed outright, whoever holds it; a connection holding it is not told.
                self.member(channel, &user).remove();
                if exists {
                    self.expect_own(channel, describe("leave", &user, &Value::Null));
                }
            }
        }
        // The event is on its way: the next barrier finds it delivered.
        self.dirty.insert(channel.to_owned());
        Ok(())
    }

    /// `GET /api/realtime/channels` names every channel the walker subscribes to or has a
    /// member in.
    pub(super) fn channels_listing(&mut self) -> Result<()> {
        let listed = self.api_ok("GET", "/api/realtime/channels", "", "")?;
        let names: Vec<&str> = listed["channels"]
            .as_array()
            .context("channels")?
            .iter()
            .map(|c| c.as_str().unwrap_or(""))
            .collect();
        ensure!(
            names.windows(2).all(|w| w[0] < w[1]),
            "channels not sorted, or twice: {listed}"
        );
        let all = channels();
        for name in &names {
            ensure!(
                all.iter().any(|c| c == name),
                "an unknown channel listed: {listed}"
            );
        }
        for (channel, f) in &self.following {
            if f.settled() && f.expiring.is_none() {
                ensure!(
                    names.contains(&channel.as_str()),
                    "walker {}: subscribed to {channel}, not listed: {listed}",
                    self.id
                );
            }
        }
        for ((channel, user), m) in &self.members {
            if m.exists == Some(true) && !self.dirty.contains(channel) {
                ensure!(
                    names.contains(&channel.as_str()),
                    "walker {}: {user} is a member of {channel}, not listed: {listed}",
                    self.id
                );
            }
        }
        Ok(())
    }
}
