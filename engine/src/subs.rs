//! A connection's subscriptions: channel → [`Sub`], kept compact because most connections
//! follow a handful of channels and idle connections are the common case.
//!
//! Up to [`SCAN_UP_TO`] entries live in a plain vector found by a scan (up to four
//! entries cost one 128-byte block, where a hash map's smallest table costs 152). A
//! connection that follows more moves to a hash map, so a connection with thousands of
//! channels stays O(1) per lookup.

use hashbrown::HashMap;
use ringcast_protocol::ChannelName;

#[cfg(test)]
use crate::conn::FirstLive;
use crate::conn::Sub;

/// Entries kept in the scanned vector before moving to a hash map.
const SCAN_UP_TO: usize = 16;

/// One connection's subscriptions.
#[derive(Debug)]
pub enum SubSet {
    /// Few entries: scanned.
    Few(Vec<(ChannelName, Sub)>),
    /// Many entries: hashed (boxed, so the set is as small as a vector).
    Many(Box<HashMap<ChannelName, Sub>>),
}

impl Default for SubSet {
    fn default() -> SubSet {
        SubSet::Few(Vec::new())
    }
}

impl SubSet {
    /// The state of the subscription to `channel`.
    pub fn get(&self, channel: &ChannelName) -> Option<Sub> {
        match self {
            SubSet::Few(entries) => entries
                .iter()
                .find(|(name, _)| name == channel)
                .map(|(_, sub)| *sub),
            SubSet::Many(map) => map.get(channel).copied(),
        }
    }

    /// Sets the subscription to `channel`; returns the one it replaced.
    pub fn insert(&mut self, channel: ChannelName, sub: Sub) -> Option<Sub> {
        match self {
            SubSet::Few(entries) => {
                if let Some((_, held)) = entries.iter_mut().find(|(name, _)| *name == channel) {
                    return Some(std::mem::replace(held, sub));
                }
                if entries.len() < SCAN_UP_TO {
                    entries.push((channel, sub));
                    return None;
                }
                let mut map: HashMap<ChannelName, Sub> = entries.drain(..).collect();
                map.insert(channel, sub);
                *self = SubSet::Many(Box::new(map));
                None
            }
            SubSet::Many(map) => map.insert(channel, sub),
        }
    }

    /// Removes the subscription to `channel`; returns it.
    pub fn remove(&mut self, channel: &ChannelName) -> Option<Sub> {
        match self {
            SubSet::Few(entries) => {
                let at = entries.iter().position(|(name, _)| name == channel)?;
                Some(entries.swap_remove(at).1)
            }
            SubSet::Many(map) => map.remove(channel),
        }
    }

    /// Every subscription, leaving the set empty.
    pub fn take_all(&mut self) -> Vec<(ChannelName, Sub)> {
        match std::mem::take(self) {
            SubSet::Few(entries) => entries,
            SubSet::Many(map) => map.into_iter().collect(),
        }
    }

    /// How many subscriptions there are.
    pub fn len(&self) -> usize {
        match self {
            SubSet::Few(entries) => entries.len(),
            SubSet::Many(map) => map.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::RequestId;

    fn name(i: usize) -> ChannelName {
        ChannelName::new(&format!("c{i}")).unwrap()
    }

    #[test]
    fn behaves_as_a_map_below_and_above_the_switch() {
        let mut set = SubSet::default();
        for i in 0..40 {
            assert_eq!(
                set.insert(
                    name(i),
                    Sub::Pending {
                        request: RequestId(i as u64),
                        live: None
                    }
                ),
                None
            );
            assert_eq!(set.len(), i + 1);
            if i < SCAN_UP_TO {
                assert!(matches!(set, SubSet::Few(_)), "{i} entries are scanned");
            }
        }
        assert!(matches!(set, SubSet::Many(_)), "40 entries are hashed");
        for i in 0..40 {
            assert_eq!(
                set.get(&name(i)),
                Some(Sub::Pending {
                    request: RequestId(i as u64),
                    live: None
                })
            );
        }
        let replaced = set.insert(
            name(3),
            Sub::Active {
                request: RequestId(99),
                live: FirstLive::after(0),
            },
        );
        assert_eq!(
            replaced,
            Some(Sub::Pending {
                request: RequestId(3),
                live: None
            })
        );
        assert_eq!(
            set.remove(&name(3)),
            Some(Sub::Active {
                request: RequestId(99),
                live: FirstLive::after(0)
            })
        );
        assert_eq!(set.remove(&name(3)), None);
        assert_eq!(set.take_all().len(), 39);
        assert!(set.is_empty());
    }

    #[test]
    fn a_few_entries_replace_and_remove_in_place() {
        let mut set = SubSet::default();
        set.insert(
            name(1),
            Sub::Pending {
                request: RequestId(1),
                live: None,
            },
        );
        set.insert(
            name(2),
            Sub::Pending {
                request: RequestId(2),
                live: None,
            },
        );
        assert_eq!(
            set.insert(
                name(1),
                Sub::Active {
                    request: RequestId(1),
                    live: FirstLive::after(0)
                }
            ),
            Some(Sub::Pending {
                request: RequestId(1),
                live: None
            })
        );
        assert_eq!(set.len(), 2, "a replace adds nothing");
        assert_eq!(
            set.remove(&name(1)),
            Some(Sub::Active {
                request: RequestId(1),
                live: FirstLive::after(0)
            })
        );
        assert_eq!(
            set.get(&name(2)),
            Some(Sub::Pending {
                request: RequestId(2),
                live: None
            })
        );
        assert_eq!(set.get(&name(1)), None);
    }
}
