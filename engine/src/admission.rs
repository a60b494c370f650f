//! Admission of TCP connections: the per-address bound (`max_connections_per_ip`, see
//! `per_ip.rs`), then the process-wide `max_connections` bound, both at the accept.
//!
//! The address is checked first: a connection over its address's budget never takes a
//! `max_connections` slot, not even for a turn, so one address flooding connects cannot
//! make another's be refused as the server being full.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::client_addr::canonical;
use crate::keys::ShardId;
use crate::per_ip::{IpRefused, IpSlot, PerIp};
use crate::shared::Shared;

/// What a connection just accepted is let do.
#[derive(Debug)]
pub enum Admission {
    /// Within both bounds. `ip` is its place among its address's connections; `None`
    /// for a trusted proxy's connection, which carries many clients (each counted once
    /// it is named: by a PROXY header, or `X-Forwarded-For` at an upgrade).
    Open {
        /// Its `max_connections` slot.
        slot: ConnectionSlot,
        /// Its per-address place.
        ip: Option<IpSlot>,
    },
    /// `max_connections` is reached: its request head is still read (probes are
    /// answered), then it closes. It holds its address's place meanwhile.
    Full {
        /// Its per-address place.
        ip: Option<IpSlot>,
    },
    /// Its address has `max_connections_per_ip` open: refused before anything is read.
    AddressFull(IpRefused),
}

/// Admits a connection accepted on `shard` from `peer` at `now_ms`.
pub fn admit(shared: &Arc<Shared>, shard: ShardId, peer: IpAddr, now_ms: u64) -> Admission {
    let peer = canonical(peer);
    let ip = if shared.trusted.load().trusts(peer) {
        None
    } else {
        let limits = shared.config.load().ip_limits();
        match PerIp::connect(&shared.per_ip, peer, limits, now_ms) {
            Ok(ip) => Some(ip),
            Err(refused) => {
                shared.metrics.shard(shard).connections_accepted.inc();
                return Admission::AddressFull(refused);
            }
        }
    };
    match ConnectionSlot::acquire(shared, shard) {
        Some(slot) => Admission::Open { slot, ip },
        None => Admission::Full { ip },
    }
}

/// Counts an open TCP connection for `max_connections`; released on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    shared: Arc<Shared>,
    shard: ShardId,
}

impl ConnectionSlot {
    /// Takes a slot for a connection accepted on `shard`; `None` when `max_connections`
    /// is reached.
    pub fn acquire(shared: &Arc<Shared>, shard: ShardId) -> Option<ConnectionSlot> {
        let max = shared.config.load().max_connections;
        let before = shared.open_connections.fetch_add(1, Ordering::SeqCst);
        let counters = shared.metrics.shard(shard);
        counters.connections_accepted.inc();
        if before >= max {
            shared.open_connections.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        counters.connections.add(1);
        Some(ConnectionSlot {
            shared: shared.clone(),
            shard,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.shared.open_connections.fetch_sub(1, Ordering::SeqCst);
        self.shared.metrics.shard(self.shard).connections.add(-1);
    }
}
