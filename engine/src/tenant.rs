//! Tenants, plans and per-tenant limits (SPEC §8). The table is read through
//! `arc-swap` by every shard, so it can be replaced at run time without locks (SIGHUP,
//! `crate::reload`). What a tenant has used (its active channels, its publishes of the
//! last minute: [`TenantUsage`]) is carried from one table to the next, so a reload
//! neither forgets nor resets a limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ringcast_protocol::event::PresenceSpelling;
use ringcast_protocol::TenantId;
use serde::Deserialize;

pub use crate::usage::TenantUsage;

use crate::metrics::TenantMetrics;

/// A plan from the seed's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Plan {
    /// 10 channels, 64 KB messages, 500 publishes/min, 100 messages of history.
    Free,
    /// 50 channels, 128 KB, 5,000/min, 1,000 messages.
    Builder,
    /// 200 channels, 512 KB, 50,000/min, 1,000 messages.
    Pro,
    /// Unlimited channels, 1 MB, unlimited rate, 1,000 messages.
    Enterprise,
}

/// The limits a tenant runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Active channels; `None` is unlimited.
    pub max_channels: Option<u32>,
    /// Largest `data` of one publish, in bytes.
    pub max_message_bytes: usize,
    /// Publishes per minute; `None` is unlimited.
    pub publishes_per_minute: Option<u32>,
    /// Messages kept per channel.
    pub history_messages: u32,
    /// Channels one connection may be subscribed to (`max_subscriptions_per_connection`,
    /// default 1,000 on every plan). Each costs the connection's shard memory, and its
    /// close one message to each channel's owner.
    pub max_subscriptions_per_connection: u32,
    /// Presence limits (the same on every plan unless overridden).
    pub presence: PresenceLimits,
}

/// Presence settings and limits of a tenant (SPEC §4). Going over a limit answers
/// `presence_limit` and changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceLimits {
    /// A member not seen for this long is expired (`presence_ttl_secs`, default 30).
    pub ttl_secs: u64,
    /// Largest `metadata` of one member, in bytes of JSON (`max_presence_metadata_bytes`,
    /// default 4,096).
    pub max_metadata_bytes: usize,
    /// Members per channel (`max_presence_members`, default 10,000).
    pub max_members_per_channel: u32,
    /// Channels one connection may be present in (`max_presence_channels_per_connection`,
    /// default 100).
    pub max_channels_per_connection: u32,
}

impl Default for PresenceLimits {
    fn default() -> Self {
        PresenceLimits {
            ttl_secs: 30,
            max_metadata_bytes: 4 * 1024,
            max_members_per_channel: 10_000,
            max_channels_per_connection: 100,
        }
    }
}

/// Subscriptions one connection may hold unless the tenant says otherwise.
pub const DEFAULT_SUBSCRIPTIONS_PER_CONNECTION: u32 = 1_000;

impl Plan {
    /// The plan's limits.
    pub fn limits(self) -> Limits {
        match self {
            Plan::Free => Limits {
                max_channels: Some(10),
                max_message_bytes: 64 * 1024,
                publishes_per_minute: Some(500),
                history_messages: 100,
                max_subscriptions_per_connection: DEFAULT_SUBSCRIPTIONS_PER_CONNECTION,
                presence: PresenceLimits::default(),
            },
            Plan::Builder => Limits {
                max_channels: Some(50),
                max_message_bytes: 128 * 1024,
                publishes_per_minute: Some(5_000),
                history_messages: 1_000,
                max_subscriptions_per_connection: DEFAULT_SUBSCRIPTIONS_PER_CONNECTION,
                presence: PresenceLimits::default(),
            },
            Plan::Pro => Limits {
                max_channels: Some(200),
                max_message_bytes: 512 * 1024,
                publishes_per_minute: Some(50_000),
                history_messages: 1_000,
                max_subscriptions_per_connection: DEFAULT_SUBSCRIPTIONS_PER_CONNECTION,
                presence: PresenceLimits::default(),
            },
            Plan::Enterprise => Limits {
                max_channels: None,
                max_message_bytes: 1024 * 1024,
                publishes_per_minute: None,
                history_messages: 1_000,
                max_subscriptions_per_connection: DEFAULT_SUBSCRIPTIONS_PER_CONNECTION,
                presence: PresenceLimits::default(),
            },
        }
    }
}

/// One `[[tenants]]` entry of the config file (its `Debug` does not show keys).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Tenant id (`?tenant=`, `X-Tenant-Id`).
    pub id: String,
    /// Plan.
    pub plan: Plan,
    /// Override of the plan's max message size.
    #[serde(default)]
    pub max_message_bytes: Option<usize>,
    /// Override of the plan's history length.
    #[serde(default)]
    pub history_messages: Option<u32>,
    /// Override of the plan's active-channel limit.
    #[serde(default)]
    pub max_channels: Option<u32>,
    /// Override of the plan's publish rate (per rolling minute, all shards).
    #[serde(default)]
    pub publishes_per_minute: Option<u32>,
    /// Bearer keys of the HTTP API (several, for rotation). Empty: outside `--dev` the
    /// tenant's HTTP API refuses every request (401).
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// HS256 secrets of the tenant's JWTs (SPEC §6), chosen by the token header's
    /// `kid`. The last one is the newest: `POST /api/realtime/tokens` mints with it.
    #[serde(default)]
    pub token_keys: Vec<TokenKeyConfig>,
    /// WebSocket/SSE `Origin` allow-list (exact `scheme://host[:port]`). Absent: any
    /// origin. A request without `Origin` (not a browser) is not refused by it.
    #[serde(default)]
    pub allowed_origins: Option<Vec<String>>,
    /// Whether `GET /api/maravilla/ren` needs no `token=` (SPEC §9; default false; always
    /// allowed in `--dev`).
    #[serde(default)]
    pub allow_anonymous_ren: bool,
    /// Presence TTL in seconds (default 30).
    #[serde(default)]
    pub presence_ttl_secs: Option<u64>,
    /// Override of the presence metadata bound (default 4,096 bytes).
    #[serde(default)]
    pub max_presence_metadata_bytes: Option<usize>,
    /// Override of the members-per-channel bound (default 10,000).
    #[serde(default)]
    pub max_presence_members: Option<u32>,
    /// Override of the presence-channels-per-connection bound (default 100).
    #[serde(default)]
    pub max_presence_channels_per_connection: Option<u32>,
    /// Override of the subscriptions-per-connection bound (default 1,000).
    #[serde(default)]
    pub max_subscriptions_per_connection: Option<u32>,
    /// `colon` (default: `presence:join`, what the SDK listens for) or `dot`
    /// (`presence.join`) for this tenant's WebSocket connections.
    #[serde(default)]
    pub presence_events: Option<PresenceEvents>,
}

/// One `[[tenants.token_keys]]` entry.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenKeyConfig {
    /// Key id, matched against the JWT header's `kid`.
    pub kid: String,
    /// The HS256 secret (at least 32 bytes, RFC 7518 §3.2).
    pub secret: String,
}

impl std::fmt::Debug for TokenKeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeyConfig")
            .field("kid", &self.kid)
            .field("secret", &"…")
            .finish()
    }
}

/// The `presence_events` tenant setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceEvents {
    /// `presence:join`, `presence:update`, `presence:leave`.
    Colon,
    /// `presence.join`, `presence.update`, `presence.leave`.
    Dot,
}

impl From<PresenceEvents> for PresenceSpelling {
    fn from(value: PresenceEvents) -> Self {
        match value {
            PresenceEvents::Colon => PresenceSpelling::Colon,
            PresenceEvents::Dot => PresenceSpelling::Dot,
        }
    }
}

impl TenantConfig {
    /// A tenant on `plan` with no overrides.
    pub fn new(id: &str, plan: Plan) -> TenantConfig {
        TenantConfig {
            id: id.to_owned(),
            plan,
            max_message_bytes: None,
            history_messages: None,
            presence_ttl_secs: None,
            max_presence_metadata_bytes: None,
            max_presence_members: None,
            max_presence_channels_per_connection: None,
            max_subscriptions_per_connection: None,
            presence_events: None,
            max_channels: None,
            publishes_per_minute: None,
            api_keys: Vec::new(),
            token_keys: Vec::new(),
            allowed_origins: None,
            allow_anonymous_ren: false,
        }
    }
}

/// A tenant as the shards see it (its `Debug` does not show keys).
#[derive(Clone)]
pub struct Tenant {
    /// Its id.
    pub id: TenantId,
    /// Its plan.
    pub plan: Plan,
    /// Plan limits with overrides applied.
    pub limits: Limits,
    /// How presence events are spelled on its WebSocket connections by default.
    pub presence_spelling: PresenceSpelling,
    /// Bearer keys of the HTTP API (empty: none configured).
    pub api_keys: Vec<String>,
    /// JWT secrets by kid, oldest first (see [`TokenKeyConfig`]).
    pub token_keys: Vec<TokenKeyConfig>,
    /// `Origin` allow-list; `None`: any.
    pub allowed_origins: Option<Vec<String>>,
    /// Whether the REN stream needs no token.
    pub allow_anonymous_ren: bool,
    /// What it has used: shared by every shard, carried across reloads.
    pub usage: Arc<TenantUsage>,
    /// Its per-shard counters (`[metrics] tenant_labels`), carried across reloads.
    pub metrics: Arc<TenantMetrics>,
    /// Which coming of the tenant this is: carried across reloads that keep it, new when
    /// a reload adds it (also when it comes back after a removal). What was admitted
    /// under an earlier one is closed, however quickly the tenant came back.
    incarnation: Incarnation,
}

/// One tenant's coming into the configuration (see [`Tenant::incarnation`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Incarnation(u64);

impl Incarnation {
    fn next() -> Incarnation {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Incarnation(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl std::fmt::Debug for TenantConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantConfig")
            .field("id", &self.id)
            .field("plan", &self.plan)
            .field("api_keys", &self.api_keys.len())
            .field("token_keys", &self.token_keys)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant")
            .field("id", &self.id)
            .field("plan", &self.plan)
            .field("limits", &self.limits)
            .field("api_keys", &self.api_keys.len())
            .field("token_keys", &self.token_keys)
            .field("usage", &self.usage)
            .finish_non_exhaustive()
    }
}

impl Tenant {
    /// Whether a browser page from `origin` may open a WebSocket or SSE stream.
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.allowed_origins
            .as_ref()
            .is_none_or(|list| list.iter().any(|o| o.eq_ignore_ascii_case(origin)))
    }
}

/// Every tenant, by id, and the default one.
#[derive(Debug, Clone, Default)]
pub struct TenantTable {
    tenants: HashMap<String, Arc<Tenant>>,
    default: Option<String>,
    /// Usage of removed tenants whose channels still count (owners hold them until
    /// they stop), so a tenant removed and added back finds its count.
    retired: HashMap<String, Arc<TenantUsage>>,
}

impl TenantTable {
    /// Builds the table from configuration.
    pub fn new(configs: &[TenantConfig], default: Option<&str>) -> TenantTable {
        TenantTable::rebuild(configs, default, &TenantTable::default())
    }

    /// Builds the table from configuration, keeping each remaining tenant's usage from
    /// `previous` (a reload).
    pub fn rebuild(
        configs: &[TenantConfig],
        default: Option<&str>,
        previous: &TenantTable,
    ) -> TenantTable {
        let tenants: HashMap<String, Arc<Tenant>> = configs
            .iter()
            .map(|c| {
                let mut limits = c.plan.limits();
                if let Some(max) = c.max_message_bytes {
                    limits.max_message_bytes = max;
                }
                if let Some(kept) = c.history_messages {
                    limits.history_messages = kept;
                }
                if let Some(max) = c.max_channels {
                    limits.max_channels = Some(max);
                }
                if let Some(rate) = c.publishes_per_minute {
                    limits.publishes_per_minute = Some(rate);
                }
                if let Some(max) = c.max_subscriptions_per_connection {
                    limits.max_subscriptions_per_connection = max;
                }
                let presence = &mut limits.presence;
                if let Some(ttl) = c.presence_ttl_secs {
                    presence.ttl_secs = ttl;
                }
                if let Some(max) = c.max_presence_metadata_bytes {
                    presence.max_metadata_bytes = max;
                }
                if let Some(max) = c.max_presence_members {
                    presence.max_members_per_channel = max;
                }
                if let Some(max) = c.max_presence_channels_per_connection {
                    presence.max_channels_per_connection = max;
                }
                (
                    c.id.clone(),
                    Arc::new(Tenant {
                        id: TenantId::new(&c.id),
                        plan: c.plan,
                        limits,
                        presence_spelling: c.presence_events.map(Into::into).unwrap_or_default(),
                        api_keys: c.api_keys.clone(),
                        token_keys: c.token_keys.clone(),
                        allowed_origins: c.allowed_origins.clone(),
                        allow_anonymous_ren: c.allow_anonymous_ren,
                        usage: previous
                            .get(&c.id)
                            .map(|t| t.usage.clone())
                            .or_else(|| previous.retired.get(&c.id).cloned())
                            .unwrap_or_default(),
                        metrics: previous
                            .get(&c.id)
                            .map(|t| t.metrics.clone())
                            .unwrap_or_default(),
                        incarnation: previous
                            .get(&c.id)
                            .map_or_else(Incarnation::next, |t| t.incarnation),
                    }),
                )
            })
            .collect();
        let still_counted = |usage: &Arc<TenantUsage>| Arc::strong_count(usage) > 1;
        let retired = previous
            .tenants
            .iter()
            .map(|(id, t)| (id, &t.usage))
            .chain(previous.retired.iter())
            .filter(|(id, usage)| !tenants.contains_key(id.as_str()) && still_counted(usage))
            .map(|(id, usage)| (id.clone(), usage.clone()))
            .collect();
        TenantTable {
            tenants,
            default: default.map(str::to_owned),
            retired,
        }
    }

    /// The tenant `id`, or the default tenant when `id` is `None`.
    pub fn resolve(&self, id: Option<&str>) -> Option<Arc<Tenant>> {
        let id = id.or(self.default.as_deref())?;
        self.tenants.get(id).cloned()
    }

    /// Every tenant.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.tenants.values()
    }

    /// Looks a tenant up by id.
    pub fn get(&self, id: &str) -> Option<Arc<Tenant>> {
        self.tenants.get(id).cloned()
    }

    /// Whether `tenant` (as a connection admitted under it holds it) is still configured:
    /// its id is here and it has not been removed and added back since.
    pub fn still_has(&self, tenant: &Tenant) -> bool {
        self.tenants
            .get(tenant.id.as_str())
            .is_some_and(|t| t.incarnation == tenant.incarnation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_apply_and_default_resolves() {
        let mut acme = TenantConfig::new("acme", Plan::Free);
        acme.max_message_bytes = Some(1000);
        let table = TenantTable::new(
            &[acme, TenantConfig::new("dev", Plan::Enterprise)],
            Some("dev"),
        );
        assert_eq!(
            table
                .resolve(Some("acme"))
                .unwrap()
                .limits
                .max_message_bytes,
            1000
        );
        assert_eq!(
            table.resolve(Some("acme")).unwrap().limits.history_messages,
            100
        );
        assert_eq!(table.resolve(None).unwrap().id.as_str(), "dev");
        assert!(table.resolve(Some("nope")).is_none());
        assert!(TenantTable::new(&[], None).resolve(None).is_none());
    }
}
