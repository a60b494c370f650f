//! Per-client-address limits: how many TCP connections may be open at once
//! (`max_connections_per_ip`) and how many WebSocket and SSE handshakes per second
//! (`handshakes_per_sec_per_ip`, a token bucket holding one second's worth).
//!
//! Every connection counts from its accept, whatever it carries: a plain HTTP connection,
//! one that has not finished its request head, a WebSocket, an SSE stream (found in
//! review: only upgrades counted, so one address holding idle keep-alive or half-sent
//! requests could take every `max_connections` slot and lock everyone else out). Over
//! the connection limit a new connection gets 429 before anything is read; over the
//! handshake rate the upgrade (or stream request) gets 429 and the connection stays.
//!
//! The client address is the one `client_addr` settles on. A trusted proxy's own
//! connections are not counted (they carry many clients): a PROXY header's client is
//! counted from the header, an `X-Forwarded-For` client from its upgrade. IPv6 addresses
//! count by their /64 ([`key`]). State is shared by every shard: 64 locked maps, chosen
//! by the key's hash, each entry a count and a bucket; an entry goes once its address has
//! no connection and a full bucket. Taken once per connection, once per handshake and
//! once per close, never per message.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use crate::client_addr::canonical;

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

/// The address an entry counts for: an IPv4 address as it is (an IPv4-mapped IPv6
/// address as its IPv4, as `client_addr` reads it), an IPv6 address by its /64 prefix.
/// One host, or one subscriber's network, usually gets a whole /64 and picks any address
/// in it: counted one by one, a single client had 2^64 budgets (found in review).
pub fn key(addr: IpAddr) -> IpAddr {
    match canonical(addr) {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !u128::from(u64::MAX);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

/// Why a connection or handshake was refused.
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
    /// The client address as seen (logged); it counts under [`key`] of it, worked out
    /// again when needed rather than kept (one slot per idle connection).
    addr: IpAddr,
}

impl IpSlot {
    /// The client address it counts for.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// Whether `addr` counts under the same entry as this slot.
    pub fn counts_for(&self, addr: IpAddr) -> bool {
        key(self.addr) == key(addr)
    }

    /// Takes one handshake of this slot's address at `now_ms` (the connection is
    /// counted already, so only the rate applies).
    pub fn handshake(&self, limits: IpLimits, now_ms: u64) -> Result<(), IpRefused> {
        if limits.handshakes_per_sec == 0 {
            // Nothing to count (the `--dev` default): no lock taken per upgrade.
            return Ok(());
        }
        let key = key(self.addr);
        let mut stripe = self.table.stripe(key);
        let entry = stripe.entry(key, limits, now_ms);
        entry.take_handshake(limits, now_ms)
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let key = key(self.addr);
        let mut stripe = self.table.stripe(key);
        if let Some(entry) = stripe.addrs.get_mut(&key) {
            entry.open = entry.open.saturating_sub(1);
        }
    }
}

impl Entry {
    /// Refills the bucket to `now_ms`; then whether a handshake is available.
    fn handshake_available(&mut self, limits: IpLimits, now_ms: u64) -> Result<(), IpRefused> {
        if limits.handshakes_per_sec == 0 {
            return Ok(());
        }
        let capacity = u64::from(limits.handshakes_per_sec) * 1000;
        // One token per 1000 / rate ms: rate × elapsed ms thousandths.
        let elapsed = now_ms.saturating_sub(self.refilled_ms);
        self.tokens_milli =
            (self.tokens_milli + elapsed * u64::from(limits.handshakes_per_sec)).min(capacity);
        self.refilled_ms = now_ms.max(self.refilled_ms);
        if self.tokens_milli < 1000 {
            return Err(IpRefused::TooManyHandshakes(limits.handshakes_per_sec));
        }
        Ok(())
    }

    /// Takes one handshake, or refuses and takes nothing.
    fn take_handshake(&mut self, limits: IpLimits, now_ms: u64) -> Result<(), IpRefused> {
        self.handshake_available(limits, now_ms)?;
        if limits.handshakes_per_sec > 0 {
            self.tokens_milli -= 1000;
        }
        Ok(())
    }

    /// Whether one more connection fits.
    fn connection_available(&self, limits: IpLimits) -> Result<(), IpRefused> {
        if limits.max_connections > 0 && self.open >= limits.max_connections {
            return Err(IpRefused::TooManyConnections(limits.max_connections));
        }
        Ok(())
    }
}

impl Stripe {
    /// The entry of `key` (made with a full bucket), once idle addresses are forgotten
    /// if the stripe has doubled since the last time.
    fn entry(&mut self, key: IpAddr, limits: IpLimits, now_ms: u64) -> &mut Entry {
        let capacity = u64::from(limits.handshakes_per_sec) * 1000;
        if self.addrs.len() >= self.sweep_at {
            self.addrs.retain(|_, e| {
                let refill =
                    now_ms.saturating_sub(e.refilled_ms) * u64::from(limits.handshakes_per_sec);
                e.open > 0 || e.tokens_milli + refill < capacity
            });
            self.sweep_at = (2 * self.addrs.len()).max(SWEEP_FROM);
        }
        self.addrs.entry(key).or_insert(Entry {
            open: 0,
            tokens_milli: capacity,
            refilled_ms: now_ms,
        })
    }
}

impl PerIp {
    fn stripe(&self, key: IpAddr) -> std::sync::MutexGuard<'_, Stripe> {
        let at = (self.hasher.hash_one(key) as usize) % STRIPES;
        self.stripes[at].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits one connection from `addr` at `now_ms` under `limits`, taking no
    /// handshake (a connection just accepted): the slot holds its place among the
    /// address's open connections until dropped.
    pub fn connect(
        table: &Arc<PerIp>,
        addr: IpAddr,
        limits: IpLimits,
        now_ms: u64,
    ) -> Result<IpSlot, IpRefused> {
        Self::take(table, addr, limits, now_ms, false)
    }

    /// Admits one handshake and one more connection from `addr` at `now_ms` under
    /// `limits` (a client that a trusted proxy named, on a connection not counted for
    /// it); refused, it takes neither.
    pub fn admit(
        table: &Arc<PerIp>,
        addr: IpAddr,
        limits: IpLimits,
        now_ms: u64,
    ) -> Result<IpSlot, IpRefused> {
        Self::take(table, addr, limits, now_ms, true)
    }

    /// One more connection from `addr`, and with `handshake` one handshake too; refused,
    /// it takes neither.
    fn take(
        table: &Arc<PerIp>,
        addr: IpAddr,
        limits: IpLimits,
        now_ms: u64,
        handshake: bool,
    ) -> Result<IpSlot, IpRefused> {
        let key = key(addr);
        let mut stripe = table.stripe(key);
        let entry = stripe.entry(key, limits, now_ms);
        if handshake {
            entry.handshake_available(limits, now_ms)?;
        }
        entry.connection_available(limits)?;
        if handshake {
            entry.take_handshake(limits, now_ms)?;
        }
        entry.open += 1;
        Ok(IpSlot {
            table: table.clone(),
            addr,
        })
    }

    /// Open connections of `addr` (tests, metrics).
    pub fn open(&self, addr: IpAddr) -> u32 {
        let key = key(addr);
        self.stripe(key).addrs.get(&key).map_or(0, |e| e.open)
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

    /// Addresses of one IPv6 /64 share an entry: a host picks any address in its prefix
    /// (found in review: each one counted apart). Another /64 is its own; an
    /// IPv4-mapped address is its IPv4.
    #[test]
    fn ipv6_addresses_count_by_their_64_prefix() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let table = Arc::new(PerIp::default());
        let limits = IpLimits {
            max_connections: 1,
            handshakes_per_sec: 0,
        };
        let _first = PerIp::connect(&table, ip("2001:db8:1:2::1"), limits, 0).unwrap();
        assert_eq!(
            PerIp::connect(&table, ip("2001:db8:1:2:ffff:ffff:ffff:fffe"), limits, 0).unwrap_err(),
            IpRefused::TooManyConnections(1)
        );
        assert_eq!(
            PerIp::admit(&table, ip("2001:db8:1:2::99"), limits, 0).unwrap_err(),
            IpRefused::TooManyConnections(1)
        );
        assert!(PerIp::connect(&table, ip("2001:db8:1:3::1"), limits, 0).is_ok());
        assert_eq!(table.open(ip("2001:db8:1:2::abcd")), 1);
        let _v4 = PerIp::connect(&table, ip("::ffff:203.0.113.7"), limits, 0).unwrap();
        assert!(
            PerIp::connect(&table, A, limits, 0).is_err(),
            "mapped is IPv4"
        );
        assert_eq!(key(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
    }

    /// A counted connection's upgrade takes a handshake and no second place; refused,
    /// the connection keeps its place.
    #[test]
    fn a_counted_connection_takes_handshakes_only() {
        let table = Arc::new(PerIp::default());
        let limits = IpLimits {
            max_connections: 1,
            handshakes_per_sec: 1,
        };
        let slot = PerIp::connect(&table, A, limits, 1_000).unwrap();
        assert!(slot.counts_for(A) && !slot.counts_for(B));
        slot.handshake(limits, 1_000).unwrap();
        assert_eq!(table.open(A), 1);
        assert_eq!(
            slot.handshake(limits, 1_500).unwrap_err(),
            IpRefused::TooManyHandshakes(1)
        );
        assert_eq!(table.open(A), 1);
        assert!(slot.handshake(limits, 2_000).is_ok(), "refilled");
        drop(slot);
        assert_eq!(table.open(A), 0);
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
