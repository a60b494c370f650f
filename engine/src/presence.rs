//! Presence (SPEC §4): who is in a channel, kept by the channel's owner shard.
//!
//! ```text
//!  conn's shard: presence:join / update / leave ──Ask{Question::Presence*}──► owner
//!                any frame or ping: conn.presence_seen ─┐
//!                housekeeping tick: PresenceSeen{from, conns} per owner ──► owner
//!                connection closed: PresenceConnClosed{from, conn} ──► owner
//!  HTTP task:    Shard::ask(key, Question::Presence*) ──► owner
//!  owner:        PresenceTable (members by userId, holders, one deadline each)
//!                join / update / leave / expiry ──PresenceEvent (Arc, encoded lazily
//!                once per spelling)──► every watcher shard ──► local subscribers
//! ```
//!
//! A member is keyed by userId and held by the connections that joined as that user
//! (`(shard, conn)`) and/or by the HTTP API (one hold per member, refreshed only by an
//! HTTP join or an update). It leaves when its last connection leaves and no live HTTP
//! hold is left, on an HTTP leave (outright, whoever else holds it: the seed's server
//! `presence.leave` "removes a user from a channel's presence"), or when it was not seen
//! for the tenant's TTL. A connection that closes stops holding its members but does not
//! remove them: they stay until the TTL, so a quick reconnect of the same user rejoins
//! without a leave/join pair.
//!
//! The HTTP hold is live for the TTL (plus the grace) after its last join: the app must
//! join again within the TTL (SPEC §4). While a connection also holds the member, the
//! connection's heartbeats keep the member; once the last connection leaves, a lapsed
//! HTTP hold keeps nothing.
//!
//! Heartbeats: a frame from a connection only sets a flag on it; once per housekeeping
//! tick its shard sends each owner one `PresenceSeen` listing the connections seen, and
//! the owner moves `last_seen` of the members they hold. Nothing crosses cores per ping.
//!
//! Expiry: each member has exactly one entry in the table's [`DeadlineQueue`], at
//! `last_seen + ttl + EXPIRY_GRACE_MS` as of when it was (re)armed. Refreshing only moves
//! `last_seen`; when the entry falls due, a member seen since is re-armed at its new
//! deadline, the others expire. No tick ever scans the members.

use std::rc::Rc;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use hashbrown::{HashMap, HashSet};
use ringcast_protocol::event::{self, PresenceKind, PresenceSpelling};
use ringcast_protocol::{ChannelName, TenantId};

use crate::clock::Millis;
use crate::deadline::{DeadlineQueue, TimerKey};
use crate::keys::{ChannelKey, ConnId, ShardId};
use crate::tenant::PresenceLimits;

/// Slack after the TTL before a member expires: a connection's "seen" reaches the owner
/// up to one housekeeping tick late, and must not lose to the deadline.
pub const EXPIRY_GRACE_MS: u64 = crate::core::HOUSEKEEPING_MS;

/// Who holds a member in a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PresenceHolder {
    /// A WebSocket connection (refreshed by its frames and pings).
    Conn {
        /// The connection's shard.
        shard: ShardId,
        /// The connection.
        conn: ConnId,
    },
    /// The HTTP API (refreshed only by joining again, or by an update).
    Http,
}

/// A member as listed by `GET /api/realtime/presence/{channel}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceMember {
    /// The member's key.
    pub user_id: String,
    /// Raw JSON metadata; `None` is `null`.
    pub metadata: Option<Bytes>,
    /// When it was last seen, epoch seconds.
    pub last_seen_secs: u64,
}

/// Why a join or update was refused (`presence_limit`; nothing changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PresenceRefused {
    /// `metadata` is larger than the tenant allows.
    #[error("presence metadata is {size} bytes; the tenant's limit is {limit}")]
    MetadataTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The channel has as many members as the tenant allows.
    #[error("the channel has {limit} presence members, the tenant's limit")]
    TooManyMembers {
        /// The limit.
        limit: u32,
    },
}

/// A change the channel's subscribers are told about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    /// Join, update or leave.
    pub kind: PresenceKind,
    /// The member.
    pub user_id: Rc<str>,
    /// Its metadata (joins and updates).
    pub metadata: Option<Bytes>,
}

/// The outcome of a join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The user was not in the channel before.
    pub is_new: bool,
    /// What to announce: a join for a new user, an update when a rejoin changed the
    /// metadata, nothing for a plain refresh.
    pub announce: Option<Announce>,
}

#[derive(Debug)]
struct Member {
    metadata: Option<Bytes>,
    last_seen: Millis,
    /// Connections that joined as this user and have not left or closed (a set: an app
    /// may give every guest one userId, and a list made each join, leave and close of
    /// one of N connections cost N steps; found in review).
    conns: HashSet<HolderConn>,
    /// When the HTTP API last joined (or updated) it; `None`: not held by the HTTP API.
    http: Option<Millis>,
    timer: TimerKey,
}

#[derive(Debug)]
struct PresenceChannel {
    members: HashMap<Rc<str>, Member>,
    /// The tenant's TTL as of the last join or reload.
    ttl_ms: u64,
}

/// A connection holding presence, as the owner knows it.
type HolderConn = (ShardId, ConnId);
/// What each connection holds: `(channel, userId)` pairs.
type Held = HashMap<HolderConn, Vec<(ChannelKey, Rc<str>)>>;
/// Each member's expiry, keyed by channel and userId.
type Deadlines = DeadlineQueue<(ChannelKey, Rc<str>)>;

/// The presence members of every channel this shard owns.
#[derive(Debug, Default)]
pub struct PresenceTable {
    channels: HashMap<ChannelKey, PresenceChannel>,
    /// What each connection holds, for its `PresenceSeen` and `PresenceConnClosed`.
    held: Held,
    deadlines: Deadlines,
    /// Members over every channel (the `ringcast_presence_members` gauge).
    total_members: usize,
}

impl PresenceTable {
    /// Members over every channel.
    pub fn total_members(&self) -> usize {
        self.total_members
    }

    /// `user` joins `key` through `holder`; an existing member is refreshed (and its
    /// metadata replaced when `metadata` is given and differs).
    pub fn join(
        &mut self,
        key: &ChannelKey,
        user: &str,
        metadata: Option<Bytes>,
        holder: PresenceHolder,
        limits: &PresenceLimits,
        now: Millis,
    ) -> Result<Joined, PresenceRefused> {
        if let Err(refused) = check_metadata(metadata.as_ref(), limits) {
            // The connection drops its hold on a refusal, so the owner lets go of it too:
            // a member it joined before (its metadata refused only in a reload's race)
            // then expires unless held otherwise (found in review: it stayed held, and
            // refreshed by the connection's other channels, while the client could not
            // leave it).
            self.release(key, user, holder);
            return Err(refused);
        }
        let ttl_ms = limits.ttl_secs.saturating_mul(1000);
        let Self {
            channels,
            held,
            deadlines,
            total_members,
        } = self;
        if let Some(channel) = channels.get_mut(key) {
            if channel.ttl_ms != ttl_ms {
                // The tenant's TTL changed (a reload the tick has not applied yet): every
                // member follows it now, or the tick would find nothing to change (found
                // in review: the others kept their old deadlines).
                rearm(key, channel, deadlines, ttl_ms);
            }
            if let Some((user, member)) = channel.members.get_key_value_mut(user) {
                member.last_seen = now;
                hold(held, member, key, user, holder, now);
                let changed = metadata.is_some() && metadata != member.metadata;
                let announce = changed.then(|| {
                    member.metadata = metadata;
                    Announce {
                        kind: PresenceKind::Update,
                        user_id: user.clone(),
                        metadata: member.metadata.clone(),
                    }
                });
                return Ok(Joined {
                    is_new: false,
                    announce,
                });
            }
            let limit = limits.max_members_per_channel;
            if channel.members.len() >= limit as usize {
                return Err(PresenceRefused::TooManyMembers { limit });
            }
        } else if limits.max_members_per_channel == 0 {
            return Err(PresenceRefused::TooManyMembers { limit: 0 });
        }
        let user: Rc<str> = Rc::from(user);
        let deadline = now.plus(ttl_ms).plus(EXPIRY_GRACE_MS);
        let timer = deadlines.insert(deadline, (key.clone(), user.clone()));
        let mut member = Member {
            metadata: metadata.clone(),
            last_seen: now,
            conns: HashSet::new(),
            http: None,
            timer,
        };
        hold(held, &mut member, key, &user, holder, now);
        channels
            .entry_ref(key)
            .or_insert_with(|| PresenceChannel {
                members: HashMap::new(),
                ttl_ms,
            })
            .members
            .insert(user.clone(), member);
        *total_members += 1;
        Ok(Joined {
            is_new: true,
            announce: Some(Announce {
                kind: PresenceKind::Join,
                user_id: user,
                metadata,
            }),
        })
    }

    /// Replaces `user`'s metadata (and counts as seen; an update over HTTP also renews
    /// the member's HTTP hold, one from a connection does not: found in review, it kept a
    /// lapsed HTTP hold alive, so the connection's leave waited one more TTL);
    /// `Ok(None)` when it is not a member.
    pub fn update(
        &mut self,
        key: &ChannelKey,
        user: &str,
        metadata: Option<Bytes>,
        holder: PresenceHolder,
        limits: &PresenceLimits,
        now: Millis,
    ) -> Result<Option<Announce>, PresenceRefused> {
        check_metadata(metadata.as_ref(), limits)?;
        let Some((user, member)) = self
            .channels
            .get_mut(key)
            .and_then(|c| c.members.get_key_value_mut(user))
        else {
            return Ok(None);
        };
        member.last_seen = now;
        if holder == PresenceHolder::Http && member.http.is_some() {
            member.http = Some(now);
        }
        member.metadata = metadata;
        Ok(Some(Announce {
            kind: PresenceKind::Update,
            user_id: user.clone(),
            metadata: member.metadata.clone(),
        }))
    }

    /// `holder` leaves `user`'s membership of `key` at `now`. A connection's leave
    /// removes the member only when no other connection holds it and no HTTP hold is
    /// live (joined within the TTL); an HTTP leave removes it outright. Returns whether
    /// it was a member, and the leave to announce if it is gone.
    pub fn leave(
        &mut self,
        key: &ChannelKey,
        user: &str,
        holder: PresenceHolder,
        now: Millis,
    ) -> (bool, Option<Announce>) {
        let Some(channel) = self.channels.get_mut(key) else {
            return (false, None);
        };
        let ttl_ms = channel.ttl_ms;
        let Some(member) = channel.members.get_mut(user) else {
            return (false, None);
        };
        if let PresenceHolder::Conn { shard, conn } = holder {
            if member.conns.remove(&(shard, conn)) {
                unindex(&mut self.held, (shard, conn), key, user);
            }
            let http_live = member
                .http
                .is_some_and(|at| at.plus(ttl_ms).plus(EXPIRY_GRACE_MS) > now);
            if !member.conns.is_empty() || http_live {
                return (true, None);
            }
        }
        let user = self.remove_member(key, user).map(|(user, _)| user);
        (
            true,
            user.map(|user_id| Announce {
                kind: PresenceKind::Leave,
                user_id,
                metadata: None,
            }),
        )
    }

    /// `holder` no longer holds `user` in `key` (the member stays until its TTL).
    fn release(&mut self, key: &ChannelKey, user: &str, holder: PresenceHolder) {
        let PresenceHolder::Conn { shard, conn } = holder else {
            return;
        };
        let member = self
            .channels
            .get_mut(key)
            .and_then(|c| c.members.get_mut(user));
        if let Some(member) = member {
            if member.conns.remove(&(shard, conn)) {
                unindex(&mut self.held, (shard, conn), key, user);
            }
        }
    }

    /// Connections `conns` of shard `from` were seen at `now`.
    pub fn seen(&mut self, from: ShardId, conns: &[ConnId], now: Millis) {
        for conn in conns {
            let Some(list) = self.held.get(&(from, *conn)) else {
                continue;
            };
            for (key, user) in list {
                if let Some(member) = self
                    .channels
                    .get_mut(key)
                    .and_then(|c| c.members.get_mut(user))
                {
                    member.last_seen = now;
                }
            }
        }
    }

    /// Connection `conn` of shard `from` closed (`seen`: it sent a frame since the last
    /// `seen` report). Its members stay until their TTL.
    pub fn conn_closed(&mut self, from: ShardId, conn: ConnId, seen: bool, now: Millis) {
        let Some(list) = self.held.remove(&(from, conn)) else {
            return;
        };
        for (key, user) in list {
            if let Some(member) = self
                .channels
                .get_mut(&key)
                .and_then(|c| c.members.get_mut(&user))
            {
                member.conns.remove(&(from, conn));
                if seen {
                    member.last_seen = now;
                }
            }
        }
    }

    /// After a reload: each channel's TTL becomes its tenant's current one (`ttl_of`;
    /// `None` for a tenant gone, left as it is), and the members of a channel whose TTL
    /// changed are re-armed from when they were last seen (found in review: members kept
    /// expiring under the old TTL until someone joined the channel again).
    pub fn follow_ttls(&mut self, ttl_of: impl Fn(&TenantId) -> Option<u64>) {
        let Self {
            channels,
            deadlines,
            ..
        } = self;
        for (key, channel) in channels.iter_mut() {
            let Some(ttl_ms) = ttl_of(&key.tenant).filter(|t| *t != channel.ttl_ms) else {
                continue;
            };
            rearm(key, channel, deadlines, ttl_ms);
        }
    }

    /// Removes one member whose TTL passed by `now`, earliest first, and returns its
    /// channel and the leave to announce; members seen since they were armed are
    /// re-armed on the way.
    pub fn pop_expired(&mut self, now: Millis) -> Option<(ChannelKey, Announce)> {
        loop {
            let (_, (key, user)) = self.deadlines.pop_expired(now)?;
            let Some(channel) = self.channels.get_mut(&key) else {
                continue;
            };
            let ttl_ms = channel.ttl_ms;
            let Some(member) = channel.members.get_mut(&user) else {
                continue;
            };
            let due = member.last_seen.plus(ttl_ms).plus(EXPIRY_GRACE_MS);
            if due > now {
                member.timer = self.deadlines.insert(due, (key, user));
                continue;
            }
            let (user_id, _) = self.remove_member(&key, &user)?;
            let announce = Announce {
                kind: PresenceKind::Leave,
                user_id,
                metadata: None,
            };
            return Some((key, announce));
        }
    }

    /// The members of `key`, by userId.
    pub fn members(&self, key: &ChannelKey) -> Vec<PresenceMember> {
        let Some(channel) = self.channels.get(key) else {
            return Vec::new();
        };
        let mut members: Vec<PresenceMember> = channel
            .members
            .iter()
            .map(|(user, m)| PresenceMember {
                user_id: user.to_string(),
                metadata: m.metadata.clone(),
                last_seen_secs: m.last_seen.0 / 1000,
            })
            .collect();
        members.sort_unstable_by(|a, b| a.user_id.cmp(&b.user_id));
        members
    }

    /// The channels of `tenant` with at least one member.
    pub fn channels_of<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> impl Iterator<Item = &'a ChannelName> + 'a {
        self.channels
            .keys()
            .filter(move |key| &key.tenant == tenant)
            .map(|key| &key.channel)
    }

    /// Whether `key` has any member.
    pub fn has_members(&self, key: &ChannelKey) -> bool {
        self.channels.contains_key(key)
    }

    /// Number of members of `key`.
    pub fn member_count(&self, key: &ChannelKey) -> usize {
        self.channels.get(key).map_or(0, |c| c.members.len())
    }

    /// Channels with members.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// The earliest expiry deadline.
    pub fn next_deadline(&mut self) -> Option<Millis> {
        self.deadlines.next_deadline()
    }

    /// Takes back a join that was refused after the fact (the channel limit): the
    /// member is removed without a leave to announce (its join was never announced).
    pub fn forget(&mut self, key: &ChannelKey, user: &str) {
        self.remove_member(key, user);
    }

    fn remove_member(&mut self, key: &ChannelKey, user: &str) -> Option<(Rc<str>, Member)> {
        let channel = self.channels.get_mut(key)?;
        let (user, member) = channel.members.remove_entry(user)?;
        self.total_members -= 1;
        if channel.members.is_empty() {
            self.channels.remove(key);
        }
        for holder in &member.conns {
            unindex(&mut self.held, *holder, key, &user);
        }
        // Already stale when the entry just fired; live on a leave.
        self.deadlines.cancel(member.timer);
        Some((user, member))
    }
}

/// `channel` takes the TTL `ttl_ms`: each member is re-armed from when it was last seen.
fn rearm(key: &ChannelKey, channel: &mut PresenceChannel, deadlines: &mut Deadlines, ttl_ms: u64) {
    channel.ttl_ms = ttl_ms;
    for (user, member) in channel.members.iter_mut() {
        let due = member.last_seen.plus(ttl_ms).plus(EXPIRY_GRACE_MS);
        if !deadlines.reset(member.timer, due) {
            member.timer = deadlines.insert(due, (key.clone(), user.clone()));
        }
    }
}

/// Bytes a presence `userId` may have (at least one): every join and leave carries it
/// to every subscriber, and the members listing holds each one.
pub const MAX_USER_ID_BYTES: usize = 256;

/// Whether `user` may be a presence member's userId: `Err` says why not.
pub fn check_user_id(user: &str) -> Result<(), String> {
    match user.len() {
        0 => Err("userId must not be empty".to_owned()),
        n if n > MAX_USER_ID_BYTES => Err(format!(
            "userId is {n} bytes; a presence userId has at most {MAX_USER_ID_BYTES}"
        )),
        _ => Ok(()),
    }
}

fn check_metadata(
    metadata: Option<&Bytes>,
    limits: &PresenceLimits,
) -> Result<(), PresenceRefused> {
    match metadata {
        Some(m) if m.len() > limits.max_metadata_bytes => Err(PresenceRefused::MetadataTooLarge {
            size: m.len(),
            limit: limits.max_metadata_bytes,
        }),
        _ => Ok(()),
    }
}

fn hold(
    held: &mut Held,
    member: &mut Member,
    key: &ChannelKey,
    user: &Rc<str>,
    holder: PresenceHolder,
    now: Millis,
) {
    match holder {
        PresenceHolder::Http => member.http = Some(now),
        PresenceHolder::Conn { shard, conn } => {
            if member.conns.insert((shard, conn)) {
                held.entry((shard, conn))
                    .or_default()
                    .push((key.clone(), user.clone()));
            }
        }
    }
}

fn unindex(held: &mut Held, holder: HolderConn, key: &ChannelKey, user: &str) {
    let Some(list) = held.get_mut(&holder) else {
        return;
    };
    if let Some(at) = list.iter().position(|(k, u)| k == key && &**u == user) {
        list.swap_remove(at);
    }
    if list.is_empty() {
        held.remove(&holder);
    }
}

/// One presence change on its way from the owner to every watching shard: encoded at
/// most once per spelling, by the first shard with a subscriber wanting it, and shared
/// by every subscriber on every shard (an encode racing on two shards makes the second
/// wait for the first; nothing else is shared).
#[derive(Debug)]
pub struct PresenceEvent {
    /// Join, update or leave.
    pub kind: PresenceKind,
    /// The channel.
    pub channel: ChannelName,
    /// The member.
    pub user_id: Box<str>,
    /// Raw JSON metadata (joins and updates).
    pub metadata: Option<Bytes>,
    /// Epoch milliseconds.
    pub ts: u64,
    frames: [OnceLock<Bytes>; 2],
}

impl PresenceEvent {
    /// The event `announce` on `channel` at `ts`.
    pub fn new(channel: ChannelName, announce: Announce, ts: u64) -> Arc<PresenceEvent> {
        Arc::new(PresenceEvent {
            kind: announce.kind,
            channel,
            user_id: Box::from(&*announce.user_id),
            metadata: announce.metadata,
            ts,
            frames: [OnceLock::new(), OnceLock::new()],
        })
    }

    /// The encoded frame in `spelling`.
    pub fn frame(&self, spelling: PresenceSpelling) -> &Bytes {
        self.frames[spelling.index()].get_or_init(|| {
            event::presence(
                spelling,
                self.kind,
                self.channel.as_str(),
                &self.user_id,
                self.metadata.as_deref(),
                self.ts,
            )
        })
    }

    /// How many spellings were encoded so far.
    pub fn encoded(&self) -> usize {
        self.frames.iter().filter(|f| f.get().is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_protocol::TenantId;

    const TTL: u64 = 30_000;

    fn key(name: &str) -> ChannelKey {
        ChannelKey::new(TenantId::new("t"), ChannelName::new(name).unwrap())
    }

    fn conn(shard: u16, conn: u64) -> PresenceHolder {
        PresenceHolder::Conn {
            shard: ShardId(shard),
            conn: ConnId(conn),
        }
    }

    fn limits() -> PresenceLimits {
        PresenceLimits::default()
    }

    fn expired(table: &mut PresenceTable, now: u64) -> Vec<String> {
        std::iter::from_fn(|| table.pop_expired(Millis(now)))
            .map(|(_, a)| a.user_id.to_string())
            .collect()
    }

    #[test]
    fn a_second_connection_refreshes_and_only_the_last_leave_announces() {
        let mut t = PresenceTable::default();
        let k = key("c");
        let first = t
            .join(&k, "alice", None, conn(0, 1), &limits(), Millis(0))
            .unwrap();
        assert!(first.is_new);
        assert_eq!(first.announce.unwrap().kind, PresenceKind::Join);
        let second = t
            .join(&k, "alice", None, conn(1, 9), &limits(), Millis(5))
            .unwrap();
        assert_eq!(
            second,
            Joined {
                is_new: false,
                announce: None
            }
        );
        assert_eq!(t.leave(&k, "alice", conn(0, 1), Millis(6)), (true, None));
        let (was, announce) = t.leave(&k, "alice", conn(1, 9), Millis(6));
        assert!(was);
        assert_eq!(announce.unwrap().kind, PresenceKind::Leave);
        assert!(!t.has_members(&k));
        assert!(t.held.is_empty());
        assert_eq!(
            t.leave(&k, "alice", PresenceHolder::Http, Millis(6)),
            (false, None)
        );
    }

    #[test]
    fn a_rejoin_with_new_metadata_announces_an_update() {
        let mut t = PresenceTable::default();
        let k = key("c");
        let m1 = Bytes::from_static(b"{\"s\":1}");
        let m2 = Bytes::from_static(b"{\"s\":2}");
        t.join(&k, "a", Some(m1.clone()), conn(0, 1), &limits(), Millis(0))
            .unwrap();
        let same = t
            .join(&k, "a", Some(m1), conn(0, 1), &limits(), Millis(0))
            .unwrap();
        assert_eq!(same.announce, None);
        let changed = t
            .join(&k, "a", Some(m2.clone()), conn(0, 1), &limits(), Millis(0))
            .unwrap();
        assert_eq!(changed.announce.unwrap().kind, PresenceKind::Update);
        assert_eq!(t.members(&k)[0].metadata, Some(m2));
    }

    /// A TTL as large as the config takes (meaning "never") saturates: in debug builds
    /// `ttl + grace` overflowed and panicked the shard; in release it wrapped, and members
    /// expired a second after joining (found in review).
    #[test]
    fn a_huge_ttl_never_expires_and_does_not_overflow() {
        let mut t = PresenceTable::default();
        let k = key("c");
        let forever = PresenceLimits {
            ttl_secs: u64::MAX,
            ..limits()
        };
        t.join(&k, "a", None, PresenceHolder::Http, &forever, Millis(10))
            .unwrap();
        assert!(expired(&mut t, 1 << 50).is_empty());
        assert_eq!(t.leave(&k, "a", conn(0, 1), Millis(1 << 50)), (true, None));
        t.follow_ttls(|_| Some(u64::MAX - 5));
        assert!(expired(&mut t, 1 << 60).is_empty());
    }

    #[test]
    fn expiry_follows_last_seen_and_closed_connections_keep_members() {
        let mut t = PresenceTable::default();
        let k = key("c");
        t.join(&k, "a", None, conn(0, 1), &limits(), Millis(0))
            .unwrap();
        t.join(&k, "b", None, conn(0, 2), &limits(), Millis(0))
            .unwrap();
        t.seen(ShardId(0), &[ConnId(1)], Millis(20_000));
        t.conn_closed(ShardId(0), ConnId(2), false, Millis(20_000));
        assert_eq!(
            t.member_count(&k),
            2,
            "a closed connection keeps its member"
        );
        assert!(expired(&mut t, TTL).is_empty(), "within the grace");
        assert_eq!(expired(&mut t, TTL + EXPIRY_GRACE_MS), vec!["b"]);
        assert_eq!(
            t.next_deadline(),
            Some(Millis(20_000 + TTL + EXPIRY_GRACE_MS))
        );
        assert_eq!(expired(&mut t, 20_000 + TTL + EXPIRY_GRACE_MS), vec!["a"]);
        assert_eq!(t.channel_count(), 0);
        assert!(t.held.is_empty());
        assert!(t.deadlines.is_empty());
    }

    /// A re-join refused for its metadata (a reload lowered the bound while it was on its
    /// way) lets go of the connection's hold, as the connection does: the member then
    /// expires, though the connection is seen for its other channels (found in review: it
    /// stayed held and refreshed, and the client could not leave it).
    #[test]
    fn a_rejoin_refused_for_its_metadata_lets_go_of_the_connections_hold() {
        let mut t = PresenceTable::default();
        let (a, b) = (key("a"), key("b"));
        t.join(&a, "u", None, conn(0, 1), &limits(), Millis(0))
            .unwrap();
        t.join(&b, "u", None, conn(0, 1), &limits(), Millis(0))
            .unwrap();
        let tight = PresenceLimits {
            max_metadata_bytes: 4,
            ..limits()
        };
        let big = Bytes::from_static(b"{\"s\":12345}");
        assert!(t
            .join(&a, "u", Some(big), conn(0, 1), &tight, Millis(1))
            .is_err());
        t.seen(ShardId(0), &[ConnId(1)], Millis(20_000));
        assert_eq!(expired(&mut t, TTL + EXPIRY_GRACE_MS), vec!["u"]);
        assert_eq!(t.member_count(&a), 0);
        assert_eq!(t.member_count(&b), 1, "still held and seen");
        assert_eq!(
            t.held[&(ShardId(0), ConnId(1))].len(),
            1,
            "only b's hold left"
        );
    }

    #[test]
    fn limits_refuse_and_change_nothing() {
        let mut t = PresenceTable::default();
        let k = key("c");
        let small = PresenceLimits {
            max_metadata_bytes: 4,
            max_members_per_channel: 1,
            ..limits()
        };
        let big = Some(Bytes::from_static(b"\"12345\""));
        assert!(matches!(
            t.join(&k, "a", big.clone(), conn(0, 1), &small, Millis(0)),
            Err(PresenceRefused::MetadataTooLarge { size: 7, limit: 4 })
        ));
        assert!(!t.has_members(&k));
        t.join(&k, "a", None, conn(0, 1), &small, Millis(0))
            .unwrap();
        assert!(matches!(
            t.join(&k, "b", None, conn(0, 2), &small, Millis(0)),
            Err(PresenceRefused::TooManyMembers { limit: 1 })
        ));
        assert!(t
            .update(&k, "a", big, PresenceHolder::Http, &small, Millis(0))
            .is_err());
        assert_eq!(t.members(&k)[0].metadata, None);
        assert_eq!(t.member_count(&k), 1);
        assert!(t.held.get(&(ShardId(0), ConnId(2))).is_none());
    }

    #[test]
    fn http_members_leave_outright_and_update_reports_absence() {
        let mut t = PresenceTable::default();
        let k = key("c");
        t.join(&k, "a", None, PresenceHolder::Http, &limits(), Millis(0))
            .unwrap();
        t.join(&k, "a", None, conn(0, 1), &limits(), Millis(0))
            .unwrap();
        assert_eq!(
            t.leave(&k, "a", conn(0, 1), Millis(0)),
            (true, None),
            "http still holds"
        );
        t.join(&k, "a", None, conn(0, 1), &limits(), Millis(0))
            .unwrap();
        let (was, announce) = t.leave(&k, "a", PresenceHolder::Http, Millis(0));
        assert!(
            was && announce.is_some(),
            "outright, though a connection holds"
        );
        assert!(t.held.is_empty());
        assert!(t.deadlines.is_empty());
        assert_eq!(
            t.update(&k, "a", None, PresenceHolder::Http, &limits(), Millis(0)),
            Ok(None)
        );
    }

    #[test]
    fn an_http_hold_lapses_one_ttl_after_its_last_join_or_update() {
        let mut t = PresenceTable::default();
        let k = key("c");
        let lapse = TTL + EXPIRY_GRACE_MS;
        // Joined over HTTP at 0 and by a connection that keeps pinging.
        t.join(&k, "a", None, PresenceHolder::Http, &limits(), Millis(0))
            .unwrap();
        t.join(&k, "a", None, conn(0, 1), &limits(), Millis(0))
            .unwrap();
        t.seen(ShardId(0), &[ConnId(1)], Millis(lapse));
        assert!(expired(&mut t, lapse).is_empty(), "the connection keeps it");
        // The connection leaves after the HTTP hold lapsed: nothing holds it any more.
        let (was, announce) = t.leave(&k, "a", conn(0, 1), Millis(lapse));
        assert!(was);
        assert_eq!(announce.unwrap().kind, PresenceKind::Leave);
        assert!(!t.has_members(&k) && t.held.is_empty() && t.deadlines.is_empty());

        // An HTTP re-join (or an update) renews the hold: a connection leaving within
        // the TTL of it leaves the member in place, until the TTL of the last sighting.
        t.join(&k, "b", None, PresenceHolder::Http, &limits(), Millis(0))
            .unwrap();
        t.join(&k, "b", None, conn(0, 2), &limits(), Millis(0))
            .unwrap();
        t.join(
            &k,
            "b",
            None,
            PresenceHolder::Http,
            &limits(),
            Millis(20_000),
        )
        .unwrap();
        t.update(
            &k,
            "b",
            None,
            PresenceHolder::Http,
            &limits(),
            Millis(25_000),
        )
        .unwrap();
        let left_at = 25_000 + lapse - 1;
        assert_eq!(t.leave(&k, "b", conn(0, 2), Millis(left_at)), (true, None));
        assert_eq!(t.member_count(&k), 1);
        assert!(expired(&mut t, left_at).is_empty());
        assert_eq!(expired(&mut t, left_at + 1), vec!["b"]);
        assert!(t.deadlines.is_empty());
    }

    #[test]
    fn events_encode_once_per_spelling_asked_for() {
        let announce = Announce {
            kind: PresenceKind::Join,
            user_id: Rc::from("a"),
            metadata: None,
        };
        let e = PresenceEvent::new(ChannelName::new("c").unwrap(), announce, 1);
        assert_eq!(e.encoded(), 0);
        let a = e.frame(PresenceSpelling::Colon).clone();
        let b = e.frame(PresenceSpelling::Colon).clone();
        assert_eq!(a.as_ptr(), b.as_ptr());
        assert_eq!(e.encoded(), 1);
        e.frame(PresenceSpelling::Dot);
        assert_eq!(e.encoded(), 2);
    }
}
