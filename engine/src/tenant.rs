//! Tenants, plans and per-tenant limits (SPEC §8). The table is read through
//! `arc-swap` by every shard, so it can be replaced at run time without locks.

use std::collections::HashMap;
use std::sync::Arc;

use ringcast_protocol::TenantId;
use serde::Deserialize;

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
}

impl Plan {
    /// The plan's limits.
    pub fn limits(self) -> Limits {
        match self {
            Plan::Free => Limits {
                max_channels: Some(10),
                max_message_bytes: 64 * 1024,
                publishes_per_minute: Some(500),
                history_messages: 100,
            },
            Plan::Builder => Limits {
                max_channels: Some(50),
                max_message_bytes: 128 * 1024,
                publishes_per_minute: Some(5_000),
                history_messages: 1_000,
            },
            Plan::Pro => Limits {
                max_channels: Some(200),
                max_message_bytes: 512 * 1024,
                publishes_per_minute: Some(50_000),
                history_messages: 1_000,
            },
            Plan::Enterprise => Limits {
                max_channels: None,
                max_message_bytes: 1024 * 1024,
                publishes_per_minute: None,
                history_messages: 1_000,
            },
        }
    }
}

/// One `[[tenants]]` entry of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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
    /// Bearer keys of the HTTP API. Empty: the API needs no key for this tenant (until
    /// the tenants work makes keys required outside `--dev`).
    #[serde(default)]
    pub api_keys: Vec<String>,
}

impl TenantConfig {
    /// A tenant on `plan` with no overrides.
    pub fn new(id: &str, plan: Plan) -> TenantConfig {
        TenantConfig {
            id: id.to_owned(),
            plan,
            max_message_bytes: None,
            history_messages: None,
            api_keys: Vec::new(),
        }
    }
}

/// A tenant as the shards see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Its id.
    pub id: TenantId,
    /// Its plan.
    pub plan: Plan,
    /// Plan limits with overrides applied.
    pub limits: Limits,
    /// Bearer keys of the HTTP API (empty: none configured).
    pub api_keys: Vec<String>,
}

/// Every tenant, by id, and the default one.
#[derive(Debug, Clone, Default)]
pub struct TenantTable {
    tenants: HashMap<String, Arc<Tenant>>,
    default: Option<String>,
}

impl TenantTable {
    /// Builds the table from configuration.
    pub fn new(configs: &[TenantConfig], default: Option<&str>) -> TenantTable {
        let tenants = configs
            .iter()
            .map(|c| {
                let mut limits = c.plan.limits();
                if let Some(max) = c.max_message_bytes {
                    limits.max_message_bytes = max;
                }
                if let Some(kept) = c.history_messages {
                    limits.history_messages = kept;
                }
                (
                    c.id.clone(),
                    Arc::new(Tenant {
                        id: TenantId::new(&c.id),
                        plan: c.plan,
                        limits,
                        api_keys: c.api_keys.clone(),
                    }),
                )
            })
            .collect();
        TenantTable {
            tenants,
            default: default.map(str::to_owned),
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
