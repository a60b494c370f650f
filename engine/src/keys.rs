//! Identifiers: shards, connections, requests, channels scoped by tenant.

use std::fmt;
use std::hash::{Hash, Hasher};

use ringcast_protocol::{ChannelName, TenantId};

/// A shard (one thread, one core, one monoio runtime).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u16);

impl ShardId {
    /// As an index into per-shard tables.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A connection, unique within its shard for the life of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(pub u64);

/// A request from one shard's handler to another shard (or to itself), unique on the
/// asking shard for the life of the process. Answers are matched to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// A channel within a tenant: the unit of ownership, ordering and history.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChannelKey {
    /// The tenant.
    pub tenant: TenantId,
    /// The channel name.
    pub channel: ChannelName,
}

impl ChannelKey {
    /// Combines a tenant and a channel.
    pub fn new(tenant: TenantId, channel: ChannelName) -> ChannelKey {
        ChannelKey { tenant, channel }
    }

    /// The shard that owns this channel among `shards`: a fixed hash, so every shard
    /// computes the same owner without asking anyone.
    pub fn owner(&self, shards: usize) -> ShardId {
        owner_of(self.tenant.as_str(), self.channel.as_str(), shards)
    }

    /// The identity of the channel's history log: tenant, NUL, channel.
    pub fn log_key(&self) -> Vec<u8> {
        let mut key =
            Vec::with_capacity(self.tenant.as_str().len() + 1 + self.channel.as_str().len());
        key.extend_from_slice(self.tenant.as_str().as_bytes());
        key.push(0);
        key.extend_from_slice(self.channel.as_str().as_bytes());
        key
    }
}

/// The shard that owns the channel whose [`ChannelKey::log_key`] is `log_key`; `None`
/// when the bytes are not a log key.
pub fn log_key_owner(log_key: &[u8], shards: usize) -> Option<ShardId> {
    let nul = log_key.iter().position(|&b| b == 0)?;
    let tenant = std::str::from_utf8(&log_key[..nul]).ok()?;
    let channel = std::str::from_utf8(&log_key[nul + 1..]).ok()?;
    Some(owner_of(tenant, channel, shards))
}

/// The REN owner of `tenant` among `shards` (keeps its REN sequence and resume buffer):
/// the tenant hashed with the empty channel name, which no channel has.
pub fn tenant_owner(tenant: &TenantId, shards: usize) -> ShardId {
    owner_of(tenant.as_str(), "", shards)
}

fn owner_of(tenant: &str, channel: &str, shards: usize) -> ShardId {
    let mut hasher = rustc_hash::FxHasher::default();
    tenant.hash(&mut hasher);
    channel.hash(&mut hasher);
    // Fx leaves the low bits weak; fold the high half in before the modulo.
    let hash = hasher.finish();
    let mixed = (hash ^ (hash >> 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    ShardId((mixed % shards as u64) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tenant: &str, channel: &str) -> ChannelKey {
        ChannelKey::new(TenantId::new(tenant), ChannelName::new(channel).unwrap())
    }

    #[test]
    fn owners_spread_and_are_stable() {
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            let k = key("dev", &format!("chat:{i}"));
            assert_eq!(k.owner(4), k.clone().owner(4));
            counts[k.owner(4).index()] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }

    #[test]
    fn a_log_key_names_its_channels_owner() {
        for i in 0..1000 {
            let k = key("dev", &format!("chat:{i}"));
            assert_eq!(log_key_owner(&k.log_key(), 4), Some(k.owner(4)));
        }
        assert_eq!(log_key_owner(b"no separator", 4), None);
    }

    #[test]
    fn tenant_scopes_the_key() {
        assert_ne!(key("a", "x").log_key(), key("b", "x").log_key());
        assert_ne!(key("a", "x"), key("b", "x"));
    }
}
