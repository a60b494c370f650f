//! Per-client-address limits on long-lived connections (WebSocket upgrades and SSE
//! streams): how many may be open at once (`max_connections_per_ip`) and how many
//! handshakes per second (`handshakes_per_sec_per_ip`, a token bucket holding one
//! second's worth). Over either, the handshake gets 429 and nothing else changes.
//!
//! The client address is the one `client_addr` settles on (so behind a trusted proxy,
//! the real client). State is shared by every shard: 64 locked maps, chosen by the
//! address's hash, each entry a count and a bucket; an entry goes once its address has no
//! connection and a full bucket. Taken once per handshake and once per close, never per
//! message.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Lock stripes.
const STRIPES: usize = 64;

/// The limits; `0` turns one off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpLimits {
    /// Open connections per address.
    pub max_connections: u32,
    /// Handshakes per second per address (the bucket holds as many).
    pub handshakes_per_sec: u32,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    open: u32,
    /// Handshakes available, in thousandths.
    tokens_milli: u64,
    refilled_ms: u64,
}

/// Why a handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpRefused {
    /// The address has `max_connections` open.
    TooManyConnections(u32),
    /// The address used its handshakes of the last second.
    TooManyHandshakes(u32),
}

impl std::fmt::Display for IpRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IpRefused::TooManyConnections(n) => {
                write!(
                    f,
                    "this address has {n} connections open, the per-address limit"
                )
            }
            IpRefused::TooManyHandshakes(n) => {
                write!(f, "more than {n} handshakes per second from this address")
            }
        }
    }
}

/// Every address's open connections and handshake bucket.
#[derive(Debug)]
pub struct PerIp {
    stripes: Vec<Mutex<Stripe>>,
    hasher: std::collections::hash_map::RandomState,
}

/// One lock's share of the addresses.
#[derive(Debug)]
struct Stripe {
    addrs: HashMap<IpAddr, Entry>,
    /// The size at which idle addresses are next forgotten: twice what was left after the
    /// last time (at least [`SWEEP_FROM`]), so the sweep costs O(1) per handshake
    /// amortised (found in review: past 1,024 entries it ran on every handshake, over
    /// entries with open connections that never leave).
    sweep_at: usize,
}

/// A stripe this small is never swept.
const SWEEP_FROM: usize = 1024;

impl Default for Stripe {
    fn default() -> Self {
        Stripe {
            addrs: HashMap::new(),
            sweep_at: SWEEP_FROM,
        }
    }
}

impl Default for PerIp {
    fn default() -> Self {
        PerIp {
            stripes: (0..STRIPES).map(|_| Mutex::default()).collect(),
            hasher: Default::default(),
        }
    }
}

/// One open connection of an address; released on drop.
#[derive(Debug)]
pub struct IpSlot {
    table: Arc<PerIp>,
    addr: IpAddr,
}

impl IpSlot {
    /// The client address it counts for.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut stripe = self.table.stripe(self.addr);
        if let Some(entry) = stripe.addrs.get_mut(&self.addr) {
            entry.open = entry.open.saturating_sub(1);
        }
    }
}

impl PerIp {
    fn stripe(&self, addr: IpAddr) -> std::sync::MutexGuard<'_, Stripe> {
        let at = (self.hasher.hash_one(addr) as usize) % STRIPES;
        self.stripes[at].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits one handshake from `addr` at `now_ms` under `limits`: the slot holds its
    /// place among the address's open connections until dropped.
    pub fn admit(
        table: &Arc<PerIp>,
        addr: IpAddr,
        limits: IpLimits,
        now_ms: u64,
    ) -> Result<IpSlot, IpRefused> {
        let capacity = u64::from(limits.handshakes_per_sec) * 1000;
        let mut stripe = table.stripe(addr);
        // Forget addresses that are idle and whose bucket is full again, each time the
        // stripe has doubled since.
        if stripe.addrs.len() >= stripe.sweep_at {
            stripe.addrs.retain(|_, e| {
                let refill =
                    now_ms.saturating_sub(e.refilled_ms) * u64::from(limits.handshakes_per_sec);
                e.open > 0 || e.tokens_milli + refill < capacity
            });
            stripe.sweep_at = (2 * stripe.addrs.len()).max(SWEEP_FROM);
        }
        let entry = stripe.addrs.entry(addr).or_insert(Entry {
            open: 0,
            tokens_milli: capacity,
            refilled_ms: now_ms,
        });
        if limits.handshakes_per_sec > 0 {
            // One token per 1000 / rate ms: rate × elapsed ms thousandths.
            let elapsed = now_ms.saturating_sub(entry.refilled_ms);
            entry.tokens_milli =
                (entry.tokens_milli + elapsed * u64::from(limits.handshakes_per_sec)).min(capacity);
            entry.refilled_ms = now_ms.max(entry.refilled_ms);
            if entry.tokens_milli < 1000 {
                return Err(IpRefused::TooManyHandshakes(limits.handshakes_per_sec));
            }
        }
        if limits.max_connections > 0 && entry.open >= limits.max_connections {
            return Err(IpRefused::TooManyConnections(limits.max_connections));
        }
        if limits.handshakes_per_sec > 0 {
            entry.tokens_milli -= 1000;
        }
        entry.open += 1;
        Ok(IpSlot {
            table: table.clone(),
            addr,
        })
    }

    /// Open connections of `addr` (tests, metrics).
    pub fn open(&self, addr: IpAddr) -> u32 {
        self.stripe(addr).addrs.get(&addr).map_or(0, |e| e.open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 7));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 8));

    #[test]
    fn open_connections_are_bounded_per_address_and_released_on_drop() {
        let table = Arc::new(PerIp::default());
        let limits = IpLimits {
            max_connections: 2,
            handshakes_per_sec: 0,
        };
        let first = PerIp::admit(&table, A, limits, 0).unwrap();
        let _second = PerIp::admit(&table, A, limits, 0).unwrap();
        assert_eq!(
            PerIp::admit(&table, A, limits, 0).unwrap_err(),
            IpRefused::TooManyConnections(2)
        );
        assert!(
            PerIp::admit(&table, B, limits, 0).is_ok(),
            "another address is not limited"
        );
        drop(first);
        assert_eq!(table.open(A), 1);
        assert!(PerIp::admit(&table, A, limits, 0).is_ok());
    }

    /// A stripe full of addresses with open connections is swept each time it doubles,
    /// not on every handshake; idle addresses are still forgotten at the next sweep.
    #[test]
    fn a_large_stripe_is_swept_when_it_doubles() {
        let table = Arc::new(PerIp::default());
        let limits = IpLimits {
            max_connections: 0,
            handshakes_per_sec: 0,
        };
        let stripe_of = |addr: IpAddr| (table.hasher.hash_one(addr) as usize) % STRIPES;
        let target = stripe_of(A);
        let same_stripe: Vec<IpAddr> = (0u32..)
            .map(|n| IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n)))
            .filter(|a| stripe_of(*a) == target)
            .take(3 * SWEEP_FROM)
            .collect();
        let mut held: Vec<IpSlot> = same_stripe[..2 * SWEEP_FROM]
            .iter()
            .map(|a| PerIp::admit(&table, *a, limits, 0).unwrap())
            .collect();
        // Swept at 1,024 entries (all kept: open), next at 2,048.
        assert_eq!(
            table.stripes[target].lock().unwrap().sweep_at,
            2 * SWEEP_FROM
        );
        held.truncate(SWEEP_FROM / 2);
        for a in &same_stripe[2 * SWEEP_FROM..] {
            drop(PerIp::admit(&table, *a, limits, 0).unwrap());
        }
        let stripe = table.stripes[target].lock().unwrap();
        assert!(
            stripe.addrs.len() < 2 * SWEEP_FROM,
            "idle addresses forgotten: {}",
            stripe.addrs.len()
        );
    }

    #[test]
    fn handshakes_refill_at_the_rate_and_refusals_take_nothing() {
        let table = Arc::new(PerIp::default());
        let limits = IpLimits {
            max_connections: 0,
            handshakes_per_sec: 4,
        };
        let slots: Vec<_> = (0..4)
            .map(|_| PerIp::admit(&table, A, limits, 1_000).unwrap())
            .collect();
        assert_eq!(
            PerIp::admit(&table, A, limits, 1_000).unwrap_err(),
            IpRefused::TooManyHandshakes(4)
        );
        assert!(
            PerIp::admit(&table, A, limits, 1_249).is_err(),
            "a token takes 250 ms"
        );
        assert!(PerIp::admit(&table, A, limits, 1_250).is_ok());
        assert!(PerIp::admit(&table, A, limits, 1_250).is_err());
        drop(slots);
        assert!(
            PerIp::admit(&table, A, limits, 2_250).is_ok(),
            "four more after a second"
        );
    }

    #[test]
    fn zero_turns_both_off() {
        let table = Arc::new(PerIp::default());
        let off = IpLimits {
            max_connections: 0,
            handshakes_per_sec: 0,
        };
        let slots: Vec<_> = (0..10_000)
            .map(|_| PerIp::admit(&table, A, off, 0).unwrap())
            .collect();
        assert_eq!(table.open(A), 10_000);
        drop(slots);
        assert_eq!(table.open(A), 0);
    }
}
