//! A randomized soak of tenants, plans and limits changing under load (SPEC §8, §9):
//! several tenants on several plans on two shards, each with walkers that push against
//! every limit a tenant has, while the configuration is rewritten and reloaded (SIGHUP)
//! between rounds: limits raised and lowered, plans changed, a tenant added, one
//! removed and added back, one removed and added back at once, API keys and token keys
//! rotated and retired, and a broken file refused.
//!
//! The walk goes in rounds. In a round every walker takes seeded random steps on its
//! tenant's public and `private-` channels, each answered before the next: WebSocket
//! and HTTP publishes (some at the tenant's message size give or take two bytes),
//! subscribes, resumes with `lastEventId`, unsubscribes, presence joins (WebSocket and
//! HTTP) and leaves, members listings, reconnects (which resume everything), and
//! credentials that are not its tenant's. Half the walkers sign a channel token per
//! private channel, half connect with a connection token naming them.
//!
//! What every walker checks as it goes:
//! - a refusal decided before the channel's owner is asked is exactly the documented one
//!   for the limits in force: `message_too_large` (WebSocket error event / HTTP 413)
//!   for `data` over the tenant's `max_message_bytes`, `channel_limit` for a subscribe
//!   past `max_subscriptions_per_connection`, `presence_limit` for metadata over
//!   `max_presence_metadata_bytes` (WebSocket and HTTP 403) or a join past
//!   `max_presence_channels_per_connection`, `unauthorized` for a token signed with a
//!   key the tenant no longer has or by another tenant, 401 for a retired or wrong API
//!   key, 403 `forbidden` for another tenant's, 401 for a connection token of a retired
//!   key and 404 `unknown_tenant` for a tenant not configured; and nothing else is
//!   refused for those reasons;
//! - what the owner refuses is possible by the tenant's book (every walker of the
//!   tenant writes in it): `rate_limited` (429 with `Retry-After`) only once at least
//!   `publishes_per_minute` publishes may have been accepted, and no publish acked
//!   after one in the same round; `channel_limit` (error event, 403) only for a channel
//!   that counted neither through a publish in the last minute nor through a
//!   subscription or member of this walker, with at least `max_channels` other channels
//!   the tenant touched; a presence `presence_limit` only with `max_presence_members`
//!   other users that may be members, and never for a member joining again;
//! - every channel it follows is delivered in seq order with no gap or duplicate, a
//!   resume replaying every kept message after its `lastEventId` (no more than
//!   `history_messages`) and saying `recovered: false` exactly when its replay begins
//!   later than asked; every message carries its own tenant's data and every presence
//!   event and member its own tenant's users;
//! - at a round's end, every channel it follows was delivered up to the latest
//!   acknowledged seq;
//! - when its tenant is removed (or removed and added back at once), its connection is
//!   closed with 4510; when it is back, it connects again and resumes.
//!
//! Between rounds, with every walker waiting, the coordinator knows what each tenant
//! used and checks exactly: every seq of a channel up to its latest was acknowledged (a
//! refused publish takes none), and its history keeps the newest `history_messages` of
//! them (the bound in force when it was last touched), with their data; the tenant's
//! active channels and accepted publishes are within the round's limits; publishing up
//! to `publishes_per_minute` passes and the next one gets 429. (What a tenant published
//! while it had no rate limit does not count once a reload gives it one: the engine
//! keeps no log for such a tenant, README "Decisions on tenants and limits"; the walk
//! models that.) Then it rewrites the file, sends SIGHUP and waits for the server's log
//! line, and checks what README "Configuration" and docs/wire-contract.md ("Reload")
//! say a reload does: new limits apply to the next action of existing connections and
//! of new ones (the message size just at and just over the new bound, the rate at
//! once, with what was used before carried over, the channel count likewise, a lowered
//! history bound at the next read), retired keys and kids are refused, new ones taken,
//! a removed tenant's requests and upgrades get 404, a refused file changes nothing;
//! subscriptions and connections already open stay, also over a lowered bound (what the
//! docs leave unsaid, a subscription admitted by a key retired since, and a connection
//! token of one, is kept as the engine keeps it: the token was good when presented).
//!
//! At the end, every message a walker saw is the acknowledged publish of its tenant at
//! that seq, and the walk refused something for each limit.
//!
//! `RINGCAST_SOAK_SEED` (decimal or 0x-hex) walks another seed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ringcast_tests::walk::{soak_seed, Rng};
use ringcast_tests::{
    encode_component, json, json_request, poll_until, Client, ConnectError, HttpConn, HttpResponse,
    Server, TIMEOUT,
};
use serde_json::Value;

#[path = "soak_limits/tenants.rs"]
mod tenants;
#[path = "soak_limits/walker.rs"]
mod walker;
#[path = "soak_limits/world.rs"]
mod world;

use tenants::{api_key, config_toml, kid, token, Plan, TenantSpec, TENANTS};
use walker::{Report, Walker};
use world::{Snapshot, World};

/// Public and private channels of every tenant's walkers (12: more than the free plan's
/// 10).
const PUBLIC: usize = 9;
const PRIVATE: usize = 3;
const ROUNDS: usize = 7;
const OPS_PER_ROUND: usize = 80;
/// Walkers of each tenant, by `TENANTS`.
const WALKERS: [usize; 4] = [2, 2, 2, 1];
/// The whole soak stops failing-fast after this long (every loop is bounded by it).
const SOAK_LIMIT: Duration = Duration::from_secs(120);
const DEFAULT_SEED: u64 = 0x5eed_0000_0000_0011;

#[test]
fn tenants_plans_and_limits_reloaded_under_load_refuse_exactly_and_lose_nothing() -> Result<()> {
    soak(soak_seed(DEFAULT_SEED)?)
}

/// The wire contract's error shape: `status`, JSON, `{"error":{"code","message"}}`.
fn http_error(resp: &HttpResponse, status: u16, code: &str) -> Result<()> {
    ensure!(
        resp.status == status,
        "wanted {status} {code}, got {} {}",
        resp.status,
        resp.body_text()
    );
    let ctype = resp.header("content-type").unwrap_or("");
    ensure!(
        ctype.starts_with("application/json"),
        "content-type {ctype:?}"
    );
    let body = resp.json()?;
    ensure!(body["error"]["code"] == code, "wanted {code}: {body}");
    ensure!(body["error"]["message"].is_string(), "no message: {body}");
    Ok(())
}

/// The tenants as the walk begins (hooli comes later).
fn initial_tenants() -> Vec<TenantSpec> {
    let mut acme = TenantSpec::new("acme", Plan::Free);
    acme.set.max_message_bytes = Some(1_500);
    acme.set.history_messages = Some(6);
    acme.set.publishes_per_minute = Some(40);
    let mut globex = TenantSpec::new("globex", Plan::Builder);
    globex.set.max_channels = Some(8);
    globex.set.max_message_bytes = Some(900);
    globex.set.history_messages = Some(4);
    let mut initech = TenantSpec::new("initech", Plan::Pro);
    initech.set.max_channels = Some(7);
    initech.set.history_messages = Some(10);
    initech.set.publishes_per_minute = Some(30);
    let mut all = vec![acme, globex, initech];
    for spec in &mut all {
        per_connection_limits(spec);
    }
    all
}

/// The per-connection and presence bounds a tenant starts with.
fn per_connection_limits(spec: &mut TenantSpec) {
    spec.set.max_subscriptions_per_connection = Some(4);
    spec.set.max_presence_channels_per_connection = Some(2);
    spec.set.max_presence_members = Some(3);
    spec.set.max_presence_metadata_bytes = Some(120);
}

fn soak(seed: u64) -> Result<()> {
    let specs = initial_tenants();
    let (server, path) = Server::start_with_config(&config_toml(&specs), &[])?;
    let began = Instant::now();
    let deadline = began + SOAK_LIMIT;
    let parties = WALKERS.iter().sum::<usize>() + 1;
    let world = World::new(Snapshot::default(), parties);
    let mut coordinator = Coordinator::new(&server, &world, path, specs, seed)?;
    let tenant_of_each = TENANTS
        .iter()
        .zip(WALKERS)
        .flat_map(|(tenant, count)| std::iter::repeat_n(*tenant, count));
    let walkers: Vec<Walker<'_>> = tenant_of_each
        .enumerate()
        .map(|(id, tenant)| Walker::new(id, tenant, &server, &world, seed, deadline))
        .collect::<Result<_>>()?;
    let outcome = std::thread::scope(|scope| -> Result<Vec<Report>> {
        let world = &world;
        let threads: Vec<_> = walkers
            .into_iter()
            .map(|mut walker| {
                scope.spawn(move || -> Result<Report> {
                    if let Err(e) = walk(&mut walker, world, deadline) {
                        world.gate.break_for(format!("walker {} failed", walker.id));
                        return Err(e.context(format!(
                            "walker {} of {}, seed {seed:#x}; last frames:\n{}",
                            walker.id,
                            walker.tenant,
                            walker.trail()
                        )));
                    }
                    Ok(walker.into_report())
                })
            })
            .collect();
        let coordinated = coordinator.run(deadline);
        if let Err(e) = &coordinated {
            world
                .gate
                .break_for(format!("the coordinator failed: {e:#}"));
        }
        let mut reports = Vec::new();
        let mut stopped = None;
        for thread in threads {
            match thread.join().expect("walker thread") {
                Ok(report) => reports.push(report),
                // A walker's own failure says more than the others' "the walk stopped".
                Err(e) if format!("{e:#}").contains(world::STOPPED) => {
                    stopped.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        coordinated.with_context(|| {
            format!(
                "the coordinator, seed {seed:#x}; server log:\n{}",
                server.stderr_tail()
            )
        })?;
        match stopped {
            Some(e) => Err(e),
            None => Ok(reports),
        }
    });
    let reports = outcome?;
    coordinator.finish(&world, &reports)?;
    eprintln!(
        "soak_limits: seed {seed:#x}, {:?} from the server's start",
        began.elapsed()
    );
    Ok(())
}

/// One walker's rounds: wait for the round to open, walk, wait for the others, drain
/// what it follows, wait for the coordinator.
fn walk(walker: &mut Walker<'_>, world: &World, deadline: Instant) -> Result<()> {
    let who = format!("walker {}", walker.id);
    for round in 0..ROUNDS {
        world.gate.wait(&who, deadline)?;
        let active = walker
            .begin_round(world.snapshot())
            .with_context(|| format!("beginning round {round}"))?;
        if active {
            for op in 0..OPS_PER_ROUND {
                walker
                    .step()
                    .with_context(|| format!("round {round}, op {op}"))?;
            }
        }
        world.gate.wait(&who, deadline)?;
        if active {
            walker
                .drain()
                .with_context(|| format!("draining round {round}"))?;
        }
        world.gate.wait(&who, deadline)?;
    }
    Ok(())
}

/// What a probe publish must get, from the tenant's exact state (only the coordinator
/// acts between rounds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Must {
    Ack,
    TooLarge,
    Rate,
    ChannelLimit,
}

/// Acts between rounds: checks each tenant's state exactly, rewrites the config file
/// and reloads it, and checks what the reload changed.
struct Coordinator<'s> {
    server: &'s Server,
    path: PathBuf,
    world: &'s World,
    rng: Rng,
    specs: Vec<TenantSpec>,
    /// How many times each tenant was (re-)added.
    comings: BTreeMap<&'static str, u32>,
    retired_keys: BTreeMap<&'static str, Vec<String>>,
    retired_kids: BTreeMap<&'static str, Vec<(String, String)>>,
    /// The history each channel keeps, as modelled: (messages kept, the last seq
    /// accounted for).
    kept: BTreeMap<(&'static str, String), (u64, u64)>,
    /// Each tenant's active channels at the round's start.
    active_at_start: BTreeMap<&'static str, usize>,
    reloads: usize,
    refused_reloads: usize,
    probes: u64,
    /// How long each round's phases took, for the summary.
    timings: Vec<String>,
    http: HttpConn,
}

impl<'s> Coordinator<'s> {
    fn new(
        server: &'s Server,
        world: &'s World,
        path: PathBuf,
        specs: Vec<TenantSpec>,
        seed: u64,
    ) -> Result<Coordinator<'s>> {
        let comings = specs.iter().map(|s| (s.id, 1)).collect();
        let http = HttpConn::open(server)?;
        Ok(Coordinator {
            server,
            path,
            world,
            rng: Rng::new(seed, 1_000),
            specs,
            comings,
            retired_keys: BTreeMap::new(),
            retired_kids: BTreeMap::new(),
            kept: BTreeMap::new(),
            active_at_start: BTreeMap::new(),
            reloads: 0,
            refused_reloads: 0,
            probes: 0,
            timings: Vec::new(),
            http,
        })
    }

    fn snapshot(&self, round: usize) -> Snapshot {
        Snapshot {
            round,
            tenants: self
                .specs
                .iter()
                .map(|s| (s.id, (s.clone(), self.comings[s.id])))
                .collect(),
            retired_keys: self.retired_keys.clone(),
        }
    }

    fn spec(&self, tenant: &str) -> Option<&TenantSpec> {
        self.specs.iter().find(|s| s.id == tenant)
    }

    fn run(&mut self, deadline: Instant) -> Result<()> {
        let world = self.world;
        for round in 0..ROUNDS {
            for tenant in TENANTS {
                let mut book = world.book(tenant);
                book.rated_at_round_start = book.rated;
                book.rate_refused = false;
            }
            world.set_snapshot(self.snapshot(round));
            let began = Instant::now();
            world.gate.wait("the coordinator", deadline)?;
            world.gate.wait("the coordinator", deadline)?;
            let walked = began.elapsed();
            world.gate.wait("the coordinator", deadline)?;
            let drained = began.elapsed();
            self.check_round()
                .with_context(|| format!("checking round {round}"))?;
            if round + 1 < ROUNDS {
                self.change(round)
                    .with_context(|| format!("reloading after round {round}"))?;
            }
            self.timings.push(format!(
                "round {round}: walked {walked:.1?}, drained {drained:.1?}, reloaded {:.1?}",
                began.elapsed()
            ));
        }
        Ok(())
    }

    // ----- exact checks between rounds -----

    /// With every walker waiting: each tenant's history, active channels and accepted
    /// publishes against the round's limits.
    fn check_round(&mut self) -> Result<()> {
        let world = self.world;
        for spec in self.specs.clone() {
            let limits = spec.limits();
            let active = self.active_channels(&spec)?;
            let book = world.book(spec.id);
            if world.window_holds() {
                if let Some(max) = limits.max_channels {
                    let start = self.active_at_start.get(spec.id).copied().unwrap_or(0);
                    ensure!(
                        active.len() <= start.max(max as usize),
                        "{}: {} active channels, the limit being {max} (and {start} at the round's start): {active:?}",
                        spec.id,
                        active.len()
                    );
                }
                if let Some(rate) = limits.publishes_per_minute {
                    let bound = u64::from(rate).max(book.rated_at_round_start);
                    ensure!(
                        book.rated <= bound,
                        "{}: {} publishes accepted that count, the rate being {rate}",
                        spec.id,
                        book.rated
                    );
                }
            }
            drop(book);
            self.check_histories(&spec, false)?;
        }
        Ok(())
    }

    /// The tenant's channels that count against `max_channels` now: those listed as
    /// active (subscribers or presence members) and those with a publish in the minute.
    /// Every listed one is a channel the tenant touched.
    fn active_channels(&mut self, spec: &TenantSpec) -> Result<BTreeSet<String>> {
        let resp = self.api(spec, "GET", "/api/realtime/channels", "")?;
        ensure!(resp.status == 200, "channels: {}", resp.body_text());
        let listed: BTreeSet<String> = resp.json()?["channels"]
            .as_array()
            .context("channels")?
            .iter()
            .map(|c| c.as_str().unwrap_or("").to_owned())
            .collect();
        let book = self.world.book(spec.id);
        for channel in &listed {
            ensure!(
                book.touched.contains(channel),
                "{} lists {channel}, which none of its clients touched",
                spec.id
            );
        }
        let mut active = listed;
        active.extend(
            book.acked
                .iter()
                .filter(|(_, m)| !m.is_empty())
                .map(|(c, _)| c.clone()),
        );
        Ok(active)
    }

    /// Each channel's history is the newest acknowledged publishes, as many as the
    /// model says it keeps (`history_messages` bounds each touch of the ring). With
    /// `reloaded`, the bound just changed: this read applies it.
    fn check_histories(&mut self, spec: &TenantSpec, reloaded: bool) -> Result<()> {
        let bound = u64::from(spec.limits().history_messages);
        let acked = self.world.book(spec.id).acked.clone();
        let big = self.world.book(spec.id).big.clone();
        for (channel, messages) in acked {
            let Some(&last) = messages.keys().next_back() else {
                continue;
            };
            let key = (spec.id, channel.clone());
            let (kept_before, accounted) = self.kept.get(&key).copied().unwrap_or((0, 0));
            let new = messages.range(accounted + 1..).count() as u64;
            let kept = (kept_before + new).min(bound);
            ensure!(
                messages.len() as u64 == last,
                "{} {channel}: acked {} seqs up to {last}",
                spec.id,
                messages.len()
            );
            let path = format!(
                "/api/realtime/history/{}?limit=1000",
                encode_component(&channel)
            );
            let resp = self.api(spec, "GET", &path, "")?;
            ensure!(resp.status == 200, "history: {}", resp.body_text());
            let page = resp.json()?;
            let got: Vec<(u64, String)> = page["messages"]
                .as_array()
                .context("messages")?
                .iter()
                .map(|m| (m["seq"].as_u64().unwrap_or(0), m["data"].to_string()))
                .collect();
            let first = got.first().map_or(last + 1, |m| m.0);
            ensure!(
                got.iter().map(|m| m.0).eq(first..=last),
                "{} {channel}: history {:?} is not contiguous up to {last}",
                spec.id,
                got.iter().map(|m| m.0).collect::<Vec<_>>()
            );
            for (seq, data) in &got {
                ensure!(
                    messages.get(seq) == Some(data),
                    "{} {channel} seq {seq}: history has {data}, acked {:?}",
                    spec.id,
                    messages.get(seq)
                );
            }
            let n = got.len() as u64;
            if big.contains(&channel) {
                ensure!(
                    n >= 1 && n <= bound,
                    "{} {channel}: {n} kept, bound {bound}",
                    spec.id
                );
            } else {
                ensure!(
                    n == kept,
                    "{} {channel}: history keeps {n} of seqs up to {last}, the model {kept} \
                     (history_messages {bound}{})",
                    spec.id,
                    if reloaded { ", just reloaded" } else { "" },
                );
            }
            self.kept.insert(key, (n, last));
        }
        Ok(())
    }

    // ----- the reload between rounds -----

    /// Probes the limits in force, changes the configuration (the schedule below and
    /// seeded new limits), reloads it and probes what changed.
    fn change(&mut self, round: usize) -> Result<()> {
        for spec in self.specs.clone() {
            self.probe_rate_exhaustion(&spec)?;
            // Its publishes were kept under the bound in force.
            self.check_histories(&spec, false)?;
        }
        let before = self.specs.clone();
        let mut next = self.specs.clone();
        let mut actives = BTreeMap::new();
        for spec in &before {
            actives.insert(spec.id, self.active_channels(spec)?.len());
        }
        for spec in &mut next {
            let rated = self.world.book(spec.id).rated;
            self.new_limits(spec, rated, actives[spec.id]);
        }
        let mut blink = None;
        match round {
            0 => {
                let mut hooli = TenantSpec::new("hooli", Plan::Enterprise);
                hooli.set.max_subscriptions_per_connection = Some(5);
                hooli.set.history_messages = Some(5);
                next.push(hooli);
                self.comings.insert("hooli", 1);
                tenant_mut(&mut next, "acme").kids.push(kid("acme", 2));
                tenant_mut(&mut next, "initech")
                    .api_keys
                    .push(api_key("initech", 2));
            }
            1 => {
                let initech = tenant_mut(&mut next, "initech");
                let retired = initech.api_keys.remove(0);
                self.retired_keys
                    .entry("initech")
                    .or_default()
                    .push(retired);
                let acme = tenant_mut(&mut next, "acme");
                acme.plan = Plan::Builder;
                acme.set.max_channels = None;
            }
            2 => {
                // A file two tenants share a key in is refused whole first.
                let mut broken = next.clone();
                let stolen = tenant_mut(&mut broken, "acme").api_keys[0].clone();
                tenant_mut(&mut broken, "hooli").api_keys.push(stolen);
                broken.retain(|s| s.id != "initech");
                self.reload_refused(&broken)?;
                next.retain(|s| s.id != "globex");
                let acme = tenant_mut(&mut next, "acme");
                let retired = acme.kids.remove(0);
                self.retired_kids.entry("acme").or_default().push(retired);
            }
            3 => {
                // globex comes back on its plan with its first key and kid retired.
                let mut globex = TenantSpec::new("globex", Plan::Builder);
                per_connection_limits(&mut globex);
                let (old_key, old_kid) = (globex.api_keys.clone(), globex.kids.clone());
                globex.api_keys = vec![api_key("globex", 2)];
                globex.kids = vec![kid("globex", 2)];
                self.retired_keys
                    .entry("globex")
                    .or_default()
                    .extend(old_key);
                self.retired_kids
                    .entry("globex")
                    .or_default()
                    .extend(old_kid);
                let rated = self.world.book("globex").rated;
                let active = self.active_of_absent("globex");
                self.new_limits(&mut globex, rated, active);
                next.push(globex);
                *self.comings.get_mut("globex").expect("was configured") += 1;
                tenant_mut(&mut next, "hooli").plan = Plan::Pro;
            }
            4 => {
                blink = Some("initech");
                tenant_mut(&mut next, "acme").plan = Plan::Free;
            }
            _ => {}
        }
        if let Some(tenant) = blink {
            // Removed and added back before the shards' next housekeeping tick: its
            // connections are closed all the same (a new coming of the tenant).
            let without: Vec<TenantSpec> =
                next.iter().filter(|s| s.id != tenant).cloned().collect();
            self.reload(&without)?;
            *self.comings.get_mut(tenant).expect("configured") += 1;
        }
        self.reload(&next)?;
        self.specs = next;
        for spec in self.specs.clone() {
            self.probe_after_reload(&spec, before_or(&before, spec.id), round)?;
        }
        for spec in &before {
            if self.spec(spec.id).is_none() {
                self.probe_removed(spec)?;
            }
        }
        for spec in self.specs.clone() {
            let active = self.active_channels(&spec)?.len();
            self.active_at_start.insert(spec.id, active);
        }
        Ok(())
    }

    /// A removed tenant's channels that still count: those it published to in the
    /// minute, and those its members (kept to the TTL) hold.
    fn active_of_absent(&self, tenant: &str) -> usize {
        let book = self.world.book(tenant);
        let mut active: BTreeSet<&String> = book
            .acked
            .iter()
            .filter(|(_, m)| !m.is_empty())
            .map(|(c, _)| c)
            .collect();
        active.extend(book.joined.keys());
        active.len()
    }

    /// Seeded new limits for `spec`, around what it used (`accepted` publishes, `active`
    /// channels): raised, lowered below the use, exactly at it, or back to the plan's.
    fn new_limits(&mut self, spec: &mut TenantSpec, rated: u64, active: usize) {
        let rng = &mut self.rng;
        let set = &mut spec.set;
        let rated = u32::try_from(rated).unwrap_or(u32::MAX);
        let active = u32::try_from(active).unwrap_or(u32::MAX);
        set.max_message_bytes = if rng.chance(5) {
            None
        } else {
            Some(600 + rng.below(1_400))
        };
        set.history_messages = if rng.chance(6) {
            None
        } else {
            Some(1 + rng.below(8) as u32)
        };
        set.publishes_per_minute = match rng.below(6) {
            0 => None,
            1 => Some(rated.saturating_sub(3)),
            2 => Some(rated),
            _ => Some(rated + 10 + rng.below(60) as u32),
        };
        // acme runs on its plan's channel count, the others around their use.
        set.max_channels = match (spec.id, rng.below(5)) {
            ("acme" | "hooli", _) => None,
            (_, 0) => Some(active.saturating_sub(1)),
            (_, 1) => Some(active),
            (_, n) => Some(active + n as u32 - 1),
        };
        set.max_subscriptions_per_connection = Some(2 + rng.below(5) as u32);
        set.max_presence_channels_per_connection = Some(1 + rng.below(3) as u32);
        set.max_presence_members = Some(2 + rng.below(3) as u32);
        set.max_presence_metadata_bytes = Some(64 + rng.below(200));
        if spec.id == "hooli" && spec.plan == Plan::Enterprise {
            // Unlimited: the plan's.
            set.publishes_per_minute = None;
        }
    }

    /// Writes `specs`, sends SIGHUP and waits for the server to log the reload.
    fn reload(&mut self, specs: &[TenantSpec]) -> Result<()> {
        std::fs::write(&self.path, config_toml(specs))?;
        self.server.signal(libc::SIGHUP)?;
        self.reloads += 1;
        let want = self.reloads;
        let line = poll_until(TIMEOUT, Duration::from_millis(5), || {
            let log = self.server.stderr_text();
            ensure!(
                log.matches("config reload refused").count() == self.refused_reloads,
                "a reload was refused: {}",
                self.server.stderr_tail()
            );
            Ok(log
                .lines()
                .filter(|l| l.contains("config reloaded"))
                .nth(want - 1)
                .map(str::to_owned))
        })
        .context("waiting for `config reloaded`")?;
        // The line names the tenants added and removed.
        let before: BTreeSet<&str> = self.specs.iter().map(|s| s.id).collect();
        let after: BTreeSet<&str> = specs.iter().map(|s| s.id).collect();
        for added in after.difference(&before) {
            ensure!(
                line.contains(&format!("\"{added}\"")),
                "{added} not in: {line}"
            );
        }
        for removed in before.difference(&after) {
            ensure!(
                line.contains(&format!("\"{removed}\"")),
                "{removed} not in: {line}"
            );
        }
        self.specs = specs.to_vec();
        Ok(())
    }

    /// Writes `specs` (an invalid file), sends SIGHUP and waits for the refusal; then
    /// checks nothing changed: every tenant still answers, and a probe of the message
    /// size still meets the old bound.
    fn reload_refused(&mut self, specs: &[TenantSpec]) -> Result<()> {
        std::fs::write(&self.path, config_toml(specs))?;
        self.server.signal(libc::SIGHUP)?;
        self.refused_reloads += 1;
        let want = self.refused_reloads;
        poll_until(TIMEOUT, Duration::from_millis(5), || {
            let log = self.server.stderr_text();
            Ok((log.matches("config reload refused").count() >= want).then_some(()))
        })
        .context("waiting for `config reload refused`")?;
        for spec in self.specs.clone() {
            let resp = self.api(&spec, "GET", "/api/realtime/channels", "")?;
            ensure!(
                resp.status == 200,
                "{} after a refused reload: {}",
                spec.id,
                resp.body_text()
            );
            let limit = spec.limits().max_message_bytes;
            let mut probe = self.probe_client(&spec)?;
            self.probe_publish(&spec, &mut probe, "room:0", limit + 1, Must::TooLarge)?;
        }
        Ok(())
    }

    /// With the limits in force: when `publishes_per_minute` is within three of what
    /// the tenant used, publishing up to it passes and the next one gets 429.
    fn probe_rate_exhaustion(&mut self, spec: &TenantSpec) -> Result<()> {
        let Some(rate) = spec.limits().publishes_per_minute else {
            return Ok(());
        };
        let rated = self.world.book(spec.id).rated;
        let Some(channel) = self.counted_channel(spec) else {
            return Ok(());
        };
        if !self.world.window_holds() || rated + 3 < u64::from(rate) {
            return Ok(());
        }
        let mut probe = self.probe_client(spec)?;
        for _ in rated..u64::from(rate) {
            self.probe_publish(spec, &mut probe, &channel, 100, Must::Ack)?;
        }
        self.probe_http_publish(spec, &channel, 100, Must::Rate)?;
        self.probe_publish(spec, &mut probe, &channel, 100, Must::Rate)
    }

    /// After a reload: keys, kids and limits as the new file has them, usage carried
    /// over, existing history bounded anew.
    fn probe_after_reload(
        &mut self,
        spec: &TenantSpec,
        before: Option<TenantSpec>,
        round: usize,
    ) -> Result<()> {
        let limits = spec.limits();
        // Every key of the file answers, every retired one is 401.
        for key in &spec.api_keys {
            let resp = self.api_with(spec.id, key, "GET", "/api/realtime/channels", "")?;
            ensure!(
                resp.status == 200,
                "{} key {key}: {}",
                spec.id,
                resp.body_text()
            );
        }
        for key in self.retired_keys.get(spec.id).cloned().unwrap_or_default() {
            let resp = self.api_with(spec.id, &key, "GET", "/api/realtime/channels", "")?;
            http_error(&resp, 401, "unauthorized").with_context(|| format!("retired key {key}"))?;
        }
        let mut probe = self.probe_client(spec)?;
        // Tokens of a retired kid: refused on a subscribe and as a connection token.
        for (kid, secret) in self.retired_kids.get(spec.id).cloned().unwrap_or_default() {
            let channel = "private-room:0";
            let stale = token(
                &kid,
                &secret,
                spec.id,
                &format!("{}-probe", spec.id),
                &[channel],
            );
            let reference = format!("probe-{}", self.next_probe());
            probe.send_json(&json!({
                "action": "subscribe", "channel": channel, "token": stale, "ref": reference,
            }))?;
            let ev = probe.recv_until(|e| e["ref"] == reference.as_str(), TIMEOUT)?;
            ensure!(
                ev["event"] == "error" && ev["data"]["code"] == "unauthorized",
                "{}: a token of retired kid {kid}: {ev}",
                spec.id
            );
            let addr = self.server.addr();
            let query = format!("tenant={}&token={stale}", spec.id);
            match Client::handshake(TcpStream::connect(addr)?, addr, &query) {
                Err(ConnectError::Http(resp)) => http_error(&resp, 401, "unauthorized")?,
                Err(e) => bail!("a connection token of retired kid {kid}: {e}"),
                Ok(_) => bail!(
                    "{}: a connection token of retired kid {kid} was taken",
                    spec.id
                ),
            }
        }
        // The message size: just over the new bound is refused (WebSocket and HTTP),
        // just at it passes where the rate and the channels let it.
        let size = limits.max_message_bytes;
        // What follows leans on every publish of the walk still counting.
        let channel = self
            .counted_channel(spec)
            .filter(|_| self.world.window_holds());
        self.probe_publish(spec, &mut probe, "room:0", size + 1, Must::TooLarge)?;
        self.probe_http_publish(spec, "room:0", size + 1, Must::TooLarge)?;
        if let Some(channel) = &channel {
            let must = self.must(spec, channel, size)?;
            self.probe_publish(spec, &mut probe, channel, size, must)?;
            // The rate as reloaded, over what was used before.
            let must = self.must(spec, channel, 100)?;
            self.probe_http_publish(spec, channel, 100, must)?;
        }
        // The channel count as reloaded, over what was active before: fresh channels
        // until the limit, then `channel_limit`; a channel that counts passes.
        if let Some(max) = limits.max_channels.filter(|_| self.world.window_holds()) {
            let active = self.active_channels(spec)?.len();
            if active <= max as usize + 3 && (max as usize) < active + 4 {
                self.probe_channels(spec, max as usize, active, round)?;
            }
        }
        // A lowered history bound applies at the next read of the channel.
        let lowered = before.is_some_and(|b| b.limits().history_messages > limits.history_messages);
        self.check_histories(spec, lowered)?;
        probe.close_quietly();
        Ok(())
    }

    /// Subscribes fresh channels up to `max` (from `active`), each on a connection of
    /// its own (the per-connection bound is not what is probed), checks the next one is
    /// refused with `channel_limit` and that a channel that counts still passes, then
    /// unsubscribes them all.
    fn probe_channels(
        &mut self,
        spec: &TenantSpec,
        max: usize,
        active: usize,
        round: usize,
    ) -> Result<()> {
        let room = max.saturating_sub(active);
        let mut holders = Vec::new();
        let fresh = (0..=room).map(|i| format!("probe:{round}:{i}"));
        for (i, channel) in fresh.chain(self.counted_channel(spec)).enumerate() {
            self.world.book(spec.id).touched.insert(channel.clone());
            let mut holder = self.probe_client(spec)?;
            let reference = format!("probe-{}", self.next_probe());
            holder
                .send_json(&json!({"action": "subscribe", "channel": channel, "ref": reference}))?;
            let ev = holder.recv_until(
                |e| e["event"] == "subscribed" || e["ref"] == reference.as_str(),
                TIMEOUT,
            )?;
            let counted = i > room;
            if i == room {
                ensure!(
                    ev["event"] == "error" && ev["data"]["code"] == "channel_limit",
                    "{}: a channel past max_channels {max} ({active} active before): {ev}",
                    spec.id
                );
                self.world.book(spec.id).count("channel_limit");
                continue;
            }
            ensure!(
                ev["event"] == "subscribed",
                "{}: {} ({active} active, max_channels {max}): {ev}",
                spec.id,
                if counted {
                    format!("{channel}, which counts, at the limit")
                } else {
                    format!("fresh channel {} of {room} free", i + 1)
                }
            );
            holders.push((holder, channel));
        }
        for (mut holder, channel) in holders {
            holder.send_json(&json!({"action": "unsubscribe", "channel": channel}))?;
            holder.recv_until(|e| e["event"] == "unsubscribed", TIMEOUT)?;
            holder.close_quietly();
        }
        Ok(())
    }

    /// A removed tenant: its requests and upgrades get 404 `unknown_tenant`.
    fn probe_removed(&mut self, spec: &TenantSpec) -> Result<()> {
        let resp = self.api(spec, "GET", "/api/realtime/channels", "")?;
        http_error(&resp, 404, "unknown_tenant")?;
        let addr = self.server.addr();
        match Client::handshake(
            TcpStream::connect(addr)?,
            addr,
            &format!("tenant={}", spec.id),
        ) {
            Err(ConnectError::Http(resp)) => http_error(&resp, 404, "unknown_tenant"),
            Err(e) => bail!("upgrade to removed {}: {e}", spec.id),
            Ok(_) => bail!("removed {} still upgrades", spec.id),
        }
    }

    /// What a publish of `len` bytes to `channel` must get, by the tenant's exact state.
    fn must(&mut self, spec: &TenantSpec, channel: &str, len: usize) -> Result<Must> {
        let limits = spec.limits();
        if len > limits.max_message_bytes {
            return Ok(Must::TooLarge);
        }
        let rated = self.world.book(spec.id).rated;
        if limits
            .publishes_per_minute
            .is_some_and(|rate| rated >= u64::from(rate))
        {
            return Ok(Must::Rate);
        }
        let active = self.active_channels(spec)?;
        if !active.contains(channel)
            && limits
                .max_channels
                .is_some_and(|m| active.len() >= m as usize)
        {
            return Ok(Must::ChannelLimit);
        }
        Ok(Must::Ack)
    }

    /// A public channel that counts now (published to in the minute), if any.
    fn counted_channel(&self, spec: &TenantSpec) -> Option<String> {
        let book = self.world.book(spec.id);
        book.acked
            .iter()
            .find(|(c, m)| !m.is_empty() && !c.starts_with("private-") && !c.starts_with("probe:"))
            .map(|(c, _)| c.clone())
    }

    fn next_probe(&mut self) -> u64 {
        self.probes += 1;
        self.probes
    }

    fn probe_client(&self, spec: &TenantSpec) -> Result<Client> {
        Client::open(self.server, &format!("tenant={}&cid=probe", spec.id))
    }

    fn probe_data(&mut self, spec: &TenantSpec, len: usize) -> Value {
        let n = self.next_probe();
        let mut data = json!({"t": spec.id, "probe": n, "p": ""});
        let pad = len.saturating_sub(data.to_string().len());
        data["p"] = json!("x".repeat(pad));
        data
    }

    /// A WebSocket publish that must get `must`; recorded in the tenant's book.
    fn probe_publish(
        &mut self,
        spec: &TenantSpec,
        probe: &mut Client,
        channel: &str,
        len: usize,
        must: Must,
    ) -> Result<()> {
        let data = self.probe_data(spec, len);
        let reference = format!("probe-{}", self.next_probe());
        probe.send_json(&json!({
            "action": "publish", "channel": channel, "data": data, "ref": reference,
        }))?;
        let ev = probe.recv_until(|e| e["ref"] == reference.as_str(), TIMEOUT)?;
        let got = match (ev["event"].as_str(), ev["data"]["code"].as_str()) {
            (Some("ack"), _) => Must::Ack,
            (_, Some("message_too_large")) => Must::TooLarge,
            (_, Some("rate_limited")) => Must::Rate,
            (_, Some("channel_limit")) => Must::ChannelLimit,
            _ => bail!("{} probe publish to {channel}: {ev}", spec.id),
        };
        ensure!(
            got == must,
            "{}: a publish of {len} bytes to {channel} must get {must:?} ({:?}, {} accepted that count): {ev}",
            spec.id,
            spec.limits(),
            self.world.book(spec.id).rated
        );
        let seq = ev["seq"].as_u64();
        self.record(spec, channel, len, must, seq, data)
    }

    /// The same over HTTP (413, 429 with `Retry-After`, 403, 200).
    fn probe_http_publish(
        &mut self,
        spec: &TenantSpec,
        channel: &str,
        len: usize,
        must: Must,
    ) -> Result<()> {
        let data = self.probe_data(spec, len);
        let body = json!({"channel": channel, "data": data}).to_string();
        let resp = self.api(spec, "POST", "/api/realtime/publish", &body)?;
        let seq = match must {
            Must::Ack => {
                ensure!(
                    resp.status == 200,
                    "{}: HTTP publish must pass: {}",
                    spec.id,
                    resp.body_text()
                );
                resp.json()?["seq"].as_u64()
            }
            Must::TooLarge => {
                http_error(&resp, 413, "message_too_large")?;
                None
            }
            Must::Rate => {
                http_error(&resp, 429, "rate_limited").with_context(|| {
                    format!(
                        "{} at {} accepted that count",
                        spec.id,
                        self.world.book(spec.id).rated
                    )
                })?;
                let retry: u64 = resp.header("retry-after").context("Retry-After")?.parse()?;
                ensure!((1..=60).contains(&retry), "Retry-After: {retry}");
                None
            }
            Must::ChannelLimit => {
                http_error(&resp, 403, "channel_limit")?;
                None
            }
        };
        self.record(spec, channel, len, must, seq, data)
    }

    fn record(
        &mut self,
        spec: &TenantSpec,
        channel: &str,
        len: usize,
        must: Must,
        seq: Option<u64>,
        data: Value,
    ) -> Result<()> {
        let world = self.world;
        let mut book = world.book(spec.id);
        match must {
            Must::TooLarge => book.count("message_too_large"),
            Must::Ack => {
                book.sent += 1;
                book.touched.insert(channel.to_owned());
                let rated = spec.limits().publishes_per_minute.is_some();
                book.ack(channel, seq.context("ack seq")?, data.to_string(), rated)?;
                if len > 4_096 {
                    book.big.insert(channel.to_owned());
                }
            }
            Must::Rate | Must::ChannelLimit => {
                book.sent += 1;
                book.refused += 1;
                book.count(if must == Must::Rate {
                    "rate_limited"
                } else {
                    "channel_limit"
                });
            }
        }
        Ok(())
    }

    fn api(
        &mut self,
        spec: &TenantSpec,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<HttpResponse> {
        let key = spec.api_keys.last().cloned().context("an API key")?;
        self.api_with(spec.id, &key, method, path, body)
    }

    /// A request on the coordinator's keep-alive connection (every answer the soak
    /// asks for keeps it open).
    fn api_with(
        &mut self,
        tenant: &str,
        key: &str,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<HttpResponse> {
        let headers = format!("X-Tenant-Id: {tenant}\r\nAuthorization: Bearer {key}\r\n");
        self.http.send(json_request(method, path, &headers, body))?;
        self.http.response()
    }

    /// After the walk: every message a walker saw is its tenant's acknowledged publish
    /// at that seq; the walk refused something for every limit and closed every
    /// removed tenant's connections.
    fn finish(&self, world: &World, reports: &[Report]) -> Result<()> {
        let mut walker = 0;
        let mut stats = BTreeMap::new();
        for (tenant, count) in TENANTS.iter().zip(WALKERS) {
            let book = world.book(tenant);
            for report in &reports[walker..walker + count] {
                for ((channel, seq), data) in &report.seen {
                    let acked = book.acked.get(channel).and_then(|m| m.get(seq));
                    ensure!(
                        acked == Some(data),
                        "{tenant} {channel} seq {seq}: a walker saw {data}, acked {acked:?}"
                    );
                }
                for (what, n) in &report.stats {
                    *stats.entry(what.to_string()).or_insert(0) += n;
                }
            }
            walker += count;
            for (what, n) in &book.refusals {
                *stats.entry(format!("refused {what}")).or_insert(0) += n;
            }
            *stats.entry("acked publishes".into()).or_insert(0) += book.accepted;
        }
        eprintln!(
            "soak_limits: {} reloads, {} refused; {:#?}; {stats:#?}",
            self.reloads, self.refused_reloads, self.timings
        );
        let n = |what: &str| stats.get(what).copied().unwrap_or(0);
        ensure!(
            n("acked publishes") > 200,
            "only {} publishes acked",
            n("acked publishes")
        );
        for what in [
            "refused message_too_large",
            "refused rate_limited",
            "refused channel_limit",
            "refused presence_limit",
            "refused unauthorized",
            "subscriptions per connection refused",
            "resumes not recovered",
        ] {
            ensure!(n(what) > 0, "the walk never got to `{what}`: {stats:#?}");
        }
        // globex's and initech's walkers, once each.
        ensure!(n("closed 4510") == 4, "4510 closes: {}", n("closed 4510"));
        Ok(())
    }
}

fn tenant_mut<'a>(specs: &'a mut [TenantSpec], id: &str) -> &'a mut TenantSpec {
    specs
        .iter_mut()
        .find(|s| s.id == id)
        .expect("the schedule names configured tenants")
}

fn before_or(specs: &[TenantSpec], id: &str) -> Option<TenantSpec> {
    specs.iter().find(|s| s.id == id).cloned()
}
