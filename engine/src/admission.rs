//! Admission of TCP connections: the process-wide `max_connections` bound.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::keys::ShardId;
use crate::shared::Shared;

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
