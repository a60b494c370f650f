//! Checks every delivery against what was published, so a server that loses its way
//! cannot score by it: a copy may reach only a connection subscribed to the message's
//! channel, and each connection must see each publisher's messages to a channel at most
//! once and in the order published (SPEC's per-channel order; a duplicate shows as a
//! repeat). Messages from different publishers may interleave in any order.
//!
//! What these checks cannot see is a message that never arrives: a lost copy breaks no
//! order. Loss shows as lag instead (the pool's `lagging_msgs`: published, not yet
//! delivered to every expected subscriber), and per connection and channel as
//! [`Verifier::received`] against what was published there (W6's stopped readers: a
//! server that drops what a slow reader's queue cannot hold, without closing it, scores
//! no error here; found in review).
//!
//! Cost: one hash lookup per publish (the channel's name), a few compares per delivery.

use std::collections::HashMap;

/// What the checks found since the pool started (never reset between phases).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Deliveries checked.
    pub checked: u64,
    /// Deliveries to a connection not subscribed to the message's channel.
    pub misrouted: u64,
    /// Deliveries of a message at or before one already seen from the same publisher on
    /// the same channel by the same connection: a duplicate or a reordering.
    pub repeated_or_reordered: u64,
    /// Deliveries whose id was never published.
    pub unknown: u64,
}

impl Counts {
    /// Every delivery that broke a check.
    pub fn errors(&self) -> u64 {
        self.misrouted + self.repeated_or_reordered + self.unknown
    }
}

/// A dense id of a channel name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelId(u32);

/// A dense id of a publishing connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PublisherId(u32);

/// What one connection saw on one channel it subscribes to.
#[derive(Debug)]
struct SeenOn {
    channel: ChannelId,
    /// Per publisher, one past the newest message id (0: none yet).
    newest: Vec<u64>,
    /// Deliveries that passed the checks (a repeat is not counted again).
    received: u64,
}

/// What one connection saw, per channel it subscribes to.
#[derive(Debug, Default)]
pub struct Seen {
    subs: Vec<SeenOn>,
}

/// The origin of every message published, and the counts.
#[derive(Debug, Default)]
pub struct Verifier {
    channels: HashMap<Box<str>, ChannelId>,
    /// Keyed by the connection's `cid`, unique for the pool's life: a pool slot is
    /// reused after a close, so keying by slot made a new publisher the old one's
    /// successor, and its messages overtaking the old one's still in flight a false
    /// reordering (found in review).
    publishers: HashMap<u64, PublisherId>,
    /// Indexed by message id (ids are dense from 0).
    origin: Vec<Option<(ChannelId, PublisherId)>>,
    /// What the checks found.
    pub counts: Counts,
}

impl Verifier {
    /// The id of channel `name`.
    pub fn channel(&mut self, name: &str) -> ChannelId {
        if let Some(&id) = self.channels.get(name) {
            return id;
        }
        let id = ChannelId(self.channels.len() as u32);
        self.channels.insert(name.into(), id);
        id
    }

    /// What a new connection subscribed to `channels` has seen: nothing.
    pub fn seen_for(&mut self, channels: &[String]) -> Seen {
        Seen {
            subs: channels
                .iter()
                .map(|c| SeenOn {
                    channel: self.channel(c),
                    newest: Vec::new(),
                    received: 0,
                })
                .collect(),
        }
    }

    /// How many messages on `channel` a connection that has seen `seen` received and
    /// that passed the checks; `None` if it does not subscribe to `channel`. Against
    /// what was published there, the rest were lost (or are still on their way).
    pub fn received(&self, seen: &Seen, channel: &str) -> Option<u64> {
        let channel = *self.channels.get(channel)?;
        seen.subs
            .iter()
            .find(|s| s.channel == channel)
            .map(|s| s.received)
    }

    /// Message `id` went to `channel` from the connection whose `cid` is `publisher`.
    pub fn published(&mut self, id: u64, channel: &str, publisher: u64) {
        let channel = self.channel(channel);
        let next = PublisherId(self.publishers.len() as u32);
        let publisher = *self.publishers.entry(publisher).or_insert(next);
        let id = id as usize;
        if self.origin.len() <= id {
            self.origin.resize(id + 1, None);
        }
        self.origin[id] = Some((channel, publisher));
    }

    /// A connection that has seen `seen` got message `id`.
    pub fn delivered(&mut self, seen: &mut Seen, id: u64) {
        self.counts.checked += 1;
        let Some(&Some((channel, publisher))) = self.origin.get(id as usize) else {
            self.counts.unknown += 1;
            return;
        };
        let Some(on) = seen.subs.iter_mut().find(|s| s.channel == channel) else {
            self.counts.misrouted += 1;
            return;
        };
        let p = publisher.0 as usize;
        if on.newest.len() <= p {
            on.newest.resize(p + 1, 0);
        }
        if id < on.newest[p] {
            self.counts.repeated_or_reordered += 1;
        } else {
            on.newest[p] = id + 1;
            on.received += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channels(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn in_order_deliveries_from_interleaved_publishers_pass() {
        let mut v = Verifier::default();
        let mut seen = v.seen_for(&channels(&["a", "b"]));
        v.published(0, "a", 7);
        v.published(1, "a", 8);
        v.published(2, "b", 7);
        v.published(3, "a", 7);
        // Publisher 8's message overtaken by 7's later ones: allowed.
        for id in [0, 2, 3, 1] {
            v.delivered(&mut seen, id);
        }
        assert_eq!(v.counts.errors(), 0, "{:?}", v.counts);
        assert_eq!(v.counts.checked, 4);
    }

    #[test]
    fn a_copy_on_a_channel_not_subscribed_is_misrouted() {
        let mut v = Verifier::default();
        let mut seen = v.seen_for(&channels(&["a"]));
        v.published(0, "b", 1);
        v.delivered(&mut seen, 0);
        assert_eq!(v.counts.misrouted, 1);
    }

    #[test]
    fn a_duplicate_or_a_reordering_from_one_publisher_is_caught() {
        let mut v = Verifier::default();
        let mut seen = v.seen_for(&channels(&["a"]));
        for id in 0..3 {
            v.published(id, "a", 1);
        }
        v.delivered(&mut seen, 0);
        v.delivered(&mut seen, 0);
        assert_eq!(v.counts.repeated_or_reordered, 1, "duplicate");
        v.delivered(&mut seen, 2);
        v.delivered(&mut seen, 1);
        assert_eq!(v.counts.repeated_or_reordered, 2, "reordered");
        // Another connection's copies are its own.
        let mut other = v.seen_for(&channels(&["a"]));
        v.delivered(&mut other, 0);
        assert_eq!(v.counts.errors(), 2);
    }

    #[test]
    fn received_counts_per_connection_and_channel_so_a_loss_shows() {
        let mut v = Verifier::default();
        let mut reader = v.seen_for(&channels(&["a", "hot"]));
        let mut other = v.seen_for(&channels(&["hot"]));
        for id in 0..5 {
            v.published(id, "hot", 1);
        }
        v.published(5, "a", 1);
        // The server dropped 2 and 3 for `reader`: in order, no check breaks.
        for id in [0, 1, 4, 5] {
            v.delivered(&mut reader, id);
        }
        // A repeat is an error, not a second receipt.
        v.delivered(&mut reader, 4);
        for id in 0..5 {
            v.delivered(&mut other, id);
        }
        assert_eq!(v.counts.repeated_or_reordered, 1, "{:?}", v.counts);
        assert_eq!(v.received(&reader, "hot"), Some(3), "5 published, 2 lost");
        assert_eq!(v.received(&reader, "a"), Some(1));
        assert_eq!(v.received(&other, "hot"), Some(5));
        assert_eq!(v.received(&other, "a"), None, "not subscribed");
        assert_eq!(v.received(&other, "never-named"), None);
    }

    #[test]
    fn an_id_never_published_is_unknown() {
        let mut v = Verifier::default();
        let mut seen = v.seen_for(&channels(&["a"]));
        v.delivered(&mut seen, 5);
        assert_eq!(v.counts.unknown, 1);
    }
}
