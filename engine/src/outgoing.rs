//! Everything a shard sends: to itself through a local FIFO, to other shards through
//! their bounded inboxes, and, when an inbox is full, into a spill queue per destination
//! that keeps order and drains as room appears.
//!
//! Same-shard messages never run inline: they wait in the local queue until the handler
//! that produced them has returned, so no handler is ever re-entered.
//!
//! While any spill holds messages, the shard counts as spilling ([`Mesh::spill_started`]),
//! which holds back publishers on every shard; the spill is retried on every loop turn
//! and whenever the full inbox's owner reports that it drained.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::keys::ShardId;
use crate::mesh::{Mesh, ShardMsg};
use crate::metrics::ShardCounters;

/// A shard's outgoing messages.
#[derive(Debug)]
pub struct Outgoing {
    me: ShardId,
    mesh: Arc<Mesh>,
    local: VecDeque<ShardMsg>,
    spills: Vec<VecDeque<ShardMsg>>,
    spilling: bool,
}

impl Outgoing {
    /// Outgoing queues of shard `me`.
    pub fn new(me: ShardId, mesh: Arc<Mesh>) -> Outgoing {
        let shards = mesh.shards();
        Outgoing {
            me,
            mesh,
            local: VecDeque::new(),
            spills: (0..shards).map(|_| VecDeque::new()).collect(),
            spilling: false,
        }
    }

    /// Whether some shard holds spilled messages: publishers everywhere wait.
    pub fn under_pressure(&self) -> bool {
        self.mesh.under_pressure()
    }

    /// Sends `msg` to `to`; never drops it. A full inbox spills it (in order).
    pub fn send(&mut self, to: ShardId, msg: ShardMsg, counters: &ShardCounters) {
        if to == self.me {
            self.local.push_back(msg);
            return;
        }
        let spill = &mut self.spills[to.index()];
        let msg = if spill.is_empty() {
            match self.mesh.try_send(to, msg) {
                Ok(()) => return,
                Err(msg) => msg,
            }
        } else {
            msg
        };
        spill.push_back(msg);
        counters.inbox_spills.inc();
        self.mesh.wait_for_room(to, self.me);
        if !self.spilling {
            self.spilling = true;
            self.mesh.spill_started();
        }
    }

    /// Sends `msg` only if it can go now (the local queue, or room in `to`'s inbox and
    /// nothing spilled before it); hands it back otherwise, for the caller to refuse.
    pub fn try_send(&mut self, to: ShardId, msg: ShardMsg) -> Result<(), ShardMsg> {
        if to == self.me {
            self.local.push_back(msg);
            return Ok(());
        }
        if !self.spills[to.index()].is_empty() {
            return Err(msg);
        }
        self.mesh.try_send(to, msg)
    }

    /// The next message this shard sent itself.
    pub fn pop_local(&mut self) -> Option<ShardMsg> {
        self.local.pop_front()
    }

    /// Moves spilled messages into their inboxes while there is room.
    pub fn retry_spills(&mut self) {
        if !self.spilling {
            return;
        }
        for (index, spill) in self.spills.iter_mut().enumerate() {
            let to = ShardId(index as u16);
            while let Some(msg) = spill.pop_front() {
                if let Err(msg) = self.mesh.try_send(to, msg) {
                    spill.push_front(msg);
                    self.mesh.wait_for_room(to, self.me);
                    break;
                }
            }
        }
        if self.spills.iter().all(VecDeque::is_empty) {
            self.spilling = false;
            self.mesh.spill_ended();
        }
    }

    /// Messages waiting in spills.
    pub fn spilled(&self) -> usize {
        self.spills.iter().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::ChannelKey;
    use bytes::Bytes;
    use ringcast_protocol::{ChannelName, TenantId};

    fn deliver(n: u8) -> ShardMsg {
        ShardMsg::Deliver {
            key: ChannelKey::new(TenantId::new("t"), ChannelName::new("c").unwrap()),
            frame: Bytes::from(vec![n]),
        }
    }

    fn frame(msg: &ShardMsg) -> u8 {
        match msg {
            ShardMsg::Deliver { frame, .. } => frame[0],
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_full_inbox_spills_in_order_and_pressure_lasts_until_drained() {
        let mesh = Mesh::with_capacity(2, 2);
        let counters = ShardCounters::default();
        let mut out = Outgoing::new(ShardId(0), mesh.clone());
        for n in 0..5 {
            out.send(ShardId(1), deliver(n), &counters);
        }
        assert_eq!(out.spilled(), 3);
        assert_eq!(counters.inbox_spills.get(), 3);
        assert!(mesh.under_pressure());
        assert!(
            out.try_send(ShardId(1), deliver(9)).is_err(),
            "behind a spill"
        );

        let mut seen = Vec::new();
        let mut batch = Vec::new();
        for _ in 0..10 {
            mesh.inbox(ShardId(1)).try_recv_batch(&mut batch, 16);
            seen.extend(batch.drain(..).map(|m| frame(&m)));
            out.retry_spills();
            if out.spilled() == 0 && mesh.inbox(ShardId(1)).is_empty() {
                break;
            }
        }
        assert_eq!(seen, vec![0, 1, 2, 3, 4], "nothing lost, nothing reordered");
        assert!(!mesh.under_pressure());
    }

    #[test]
    fn messages_to_itself_wait_in_the_local_queue() {
        let mesh = Mesh::new(1);
        let mut out = Outgoing::new(ShardId(0), mesh.clone());
        out.send(ShardId(0), deliver(1), &ShardCounters::default());
        assert!(out.try_send(ShardId(0), deliver(2)).is_ok());
        assert!(mesh.inbox(ShardId(0)).is_empty());
        assert_eq!(out.pop_local().map(|m| frame(&m)), Some(1));
        assert_eq!(out.pop_local().map(|m| frame(&m)), Some(2));
        assert!(out.pop_local().is_none());
    }
}
