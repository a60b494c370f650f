//! What the walkers and the coordinator share: the configuration in force (a snapshot
//! the coordinator replaces between rounds), each tenant's book of what was published,
//! refused and touched, and the gate they all pass between the phases of a round.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};

use super::tenants::{TenantSpec, TENANTS};

/// How long a publish keeps its channel active and counts against the tenant's rate
/// (SPEC §8: a rolling minute). The soak's rate and channel checks lean on nothing
/// leaving that window, so they stop a little before it ends.
const WINDOW: Duration = Duration::from_secs(55);

/// What a party that did not fail says when another one stopped the walk.
pub const STOPPED: &str = "the walk stopped";

/// The configuration in force during a round.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub round: usize,
    /// The configured tenants, each with how many times it was (re-)added: a
    /// connection admitted under an earlier coming is closed with 4510.
    pub tenants: BTreeMap<&'static str, (TenantSpec, u32)>,
    /// API keys a tenant had once and no longer has.
    pub retired_keys: BTreeMap<&'static str, Vec<String>>,
}

impl Snapshot {
    pub fn tenant(&self, id: &str) -> Option<&TenantSpec> {
        self.tenants.get(id).map(|(spec, _)| spec)
    }

    pub fn coming(&self, id: &str) -> Option<u32> {
        self.tenants.get(id).map(|(_, n)| *n)
    }
}

/// One tenant's record of the walk, kept by whoever acts for it.
#[derive(Debug, Default)]
pub struct Book {
    /// Data of every acknowledged publish, by channel and seq.
    pub acked: BTreeMap<String, BTreeMap<u64, String>>,
    /// Publishes accepted (acknowledged) in all.
    pub accepted: u64,
    /// Of those, the ones accepted while the tenant had a rate limit: what its
    /// `publishes_per_minute` counts. A tenant without one keeps no log of its
    /// publishes (README, "Decisions on tenants and limits"), so what it published
    /// then does not count once a reload gives it a limit.
    pub rated: u64,
    /// `rated` when the round began.
    pub rated_at_round_start: u64,
    /// Publishes sent that were not refused before reaching the channel's owner.
    pub sent: u64,
    /// Of those, the ones known refused (by the owner: rate or channel limit).
    pub refused: u64,
    /// A publish was refused for the rate in this round: none sent after may pass.
    pub rate_refused: bool,
    /// Every channel an action may have made active (publish, subscribe, join).
    pub touched: BTreeSet<String>,
    /// Every user that may be a presence member, by channel.
    pub joined: BTreeMap<String, BTreeSet<String>>,
    /// Channels holding a message over 4 KiB: their history is bounded by bytes too, so
    /// the count it keeps is not modelled.
    pub big: BTreeSet<String>,
    /// Refusals seen, by what refused them (for the summary and the coverage checks).
    pub refusals: BTreeMap<&'static str, u64>,
}

impl Book {
    /// Whether `channel` had an acknowledged publish (it counts as active for a minute).
    pub fn published(&self, channel: &str) -> bool {
        self.acked.get(channel).is_some_and(|m| !m.is_empty())
    }

    /// The channel's latest acknowledged seq (0: none).
    pub fn last_seq(&self, channel: &str) -> u64 {
        self.acked
            .get(channel)
            .and_then(|m| m.keys().next_back().copied())
            .unwrap_or(0)
    }

    /// Records an acknowledged publish (`rated`: while the tenant had a rate limit);
    /// its seq must be new.
    pub fn ack(&mut self, channel: &str, seq: u64, data: String, rated: bool) -> Result<()> {
        let previous = self
            .acked
            .entry(channel.to_owned())
            .or_default()
            .insert(seq, data);
        ensure!(
            previous.is_none(),
            "seq {seq} of {channel} acknowledged twice"
        );
        self.accepted += 1;
        self.rated += u64::from(rated);
        Ok(())
    }

    pub fn count(&mut self, refusal: &'static str) {
        *self.refusals.entry(refusal).or_default() += 1;
    }
}

/// The walk's shared state.
#[derive(Debug)]
pub struct World {
    snapshot: RwLock<Arc<Snapshot>>,
    books: BTreeMap<&'static str, Mutex<Book>>,
    /// When the server started: the rolling minute of every limit began after it.
    started: Instant,
    pub gate: Gate,
}

impl World {
    pub fn new(snapshot: Snapshot, parties: usize) -> World {
        World {
            snapshot: RwLock::new(Arc::new(snapshot)),
            books: TENANTS.iter().map(|t| (*t, Mutex::default())).collect(),
            started: Instant::now(),
            gate: Gate::new(parties),
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().unwrap().clone()
    }

    pub fn set_snapshot(&self, snapshot: Snapshot) {
        *self.snapshot.write().unwrap() = Arc::new(snapshot);
    }

    pub fn book(&self, tenant: &str) -> std::sync::MutexGuard<'_, Book> {
        self.books[tenant].lock().unwrap()
    }

    /// Whether every publish so far is still inside the rolling minute (so a tenant's
    /// use of its rate and of its channels only grows).
    pub fn window_holds(&self) -> bool {
        self.started.elapsed() < WINDOW
    }
}

/// A barrier with a deadline that any party can break (a failed walker must not leave
/// the others waiting for it).
#[derive(Debug)]
pub struct Gate {
    parties: usize,
    state: Mutex<GateState>,
    passed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    generation: u64,
    arrived: usize,
    broken: Option<String>,
}

impl Gate {
    fn new(parties: usize) -> Gate {
        Gate {
            parties,
            state: Mutex::default(),
            passed: Condvar::new(),
        }
    }

    /// Waits until every party arrived (at most until `deadline`).
    pub fn wait(&self, who: &str, deadline: Instant) -> Result<()> {
        let mut state = self.state.lock().unwrap();
        if let Some(why) = &state.broken {
            bail!("{who}: {STOPPED} ({why})");
        }
        let generation = state.generation;
        state.arrived += 1;
        if state.arrived == self.parties {
            state.arrived = 0;
            state.generation += 1;
            self.passed.notify_all();
            return Ok(());
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            ensure!(
                !left.is_zero(),
                "{who}: the others did not come to the gate"
            );
            state = self.passed.wait_timeout(state, left).unwrap().0;
            if let Some(why) = &state.broken {
                bail!("{who}: {STOPPED} ({why})");
            }
            if state.generation != generation {
                return Ok(());
            }
        }
    }

    /// Lets every waiting party go with an error.
    pub fn break_for(&self, why: String) {
        let mut state = self.state.lock().unwrap();
        state.broken.get_or_insert(why);
        self.passed.notify_all();
    }
}
