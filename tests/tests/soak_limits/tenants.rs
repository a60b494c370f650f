//! The soak's tenants as its config file has them: plan, overrides, API keys and token
//! keys; the limits each one runs under (SPEC §8's plan table with the file's overrides,
//! as README "Configuration" lists them); the file's TOML; and the tokens its clients
//! sign with a JWT library, as an app would.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

/// Every tenant's presence TTL: longer than the soak, so no member expires by itself
/// (a member of a closed connection keeps its channel active to the end).
pub const PRESENCE_TTL_SECS: u64 = 600;

/// The tenants the soak may configure, in the order their walkers are numbered.
pub const TENANTS: [&str; 4] = ["acme", "globex", "initech", "hooli"];

/// A plan of SPEC §8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Free,
    Builder,
    Pro,
    Enterprise,
}

impl Plan {
    fn name(self) -> &'static str {
        match self {
            Plan::Free => "free",
            Plan::Builder => "builder",
            Plan::Pro => "pro",
            Plan::Enterprise => "enterprise",
        }
    }

    /// SPEC §8's row: max channels, max message, publishes per minute, history kept
    /// (`None`: unlimited; "64 KB" is 64 KiB, as the engine reads it).
    fn row(self) -> (Option<u32>, usize, Option<u32>, u32) {
        match self {
            Plan::Free => (Some(10), 64 << 10, Some(500), 100),
            Plan::Builder => (Some(50), 128 << 10, Some(5_000), 1_000),
            Plan::Pro => (Some(200), 512 << 10, Some(50_000), 1_000),
            Plan::Enterprise => (None, 1 << 20, None, 1_000),
        }
    }
}

/// The optional per-tenant keys the soak sets (absent: the plan's or the default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub max_channels: Option<u32>,
    pub max_message_bytes: Option<usize>,
    pub publishes_per_minute: Option<u32>,
    pub history_messages: Option<u32>,
    pub max_subscriptions_per_connection: Option<u32>,
    pub max_presence_channels_per_connection: Option<u32>,
    pub max_presence_members: Option<u32>,
    pub max_presence_metadata_bytes: Option<usize>,
}

/// One `[[tenants]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantSpec {
    pub id: &'static str,
    pub plan: Plan,
    /// `api_keys`.
    pub api_keys: Vec<String>,
    /// `[[tenants.token_keys]]` as (kid, secret), the newest last.
    pub kids: Vec<(String, String)>,
    pub set: Overrides,
}

/// What a tenant runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_channels: Option<u32>,
    pub max_message_bytes: usize,
    pub publishes_per_minute: Option<u32>,
    pub history_messages: u32,
    pub subscriptions_per_connection: u32,
    pub presence_channels_per_connection: u32,
    pub presence_members: u32,
    pub metadata_bytes: usize,
}

impl TenantSpec {
    /// A tenant on `plan` with one API key and one token key, numbered `n`.
    pub fn new(id: &'static str, plan: Plan) -> TenantSpec {
        TenantSpec {
            id,
            plan,
            api_keys: vec![api_key(id, 1)],
            kids: vec![kid(id, 1)],
            set: Overrides::default(),
        }
    }

    /// The plan's limits with the overrides applied (README: the defaults of the
    /// per-connection and presence bounds are 1,000, 100, 10,000 and 4,096).
    pub fn limits(&self) -> Limits {
        let (channels, message, rate, history) = self.plan.row();
        let set = &self.set;
        Limits {
            max_channels: set.max_channels.or(channels),
            max_message_bytes: set.max_message_bytes.unwrap_or(message),
            publishes_per_minute: set.publishes_per_minute.or(rate),
            history_messages: set.history_messages.unwrap_or(history).max(1),
            subscriptions_per_connection: set.max_subscriptions_per_connection.unwrap_or(1_000),
            presence_channels_per_connection: set
                .max_presence_channels_per_connection
                .unwrap_or(100),
            presence_members: set.max_presence_members.unwrap_or(10_000),
            metadata_bytes: set.max_presence_metadata_bytes.unwrap_or(4_096),
        }
    }

    /// The newest token key: what new tokens are signed with.
    pub fn newest_kid(&self) -> (&str, &str) {
        let (kid, secret) = self.kids.last().expect("every tenant has a token key");
        (kid, secret)
    }

    /// Whether tokens signed with `kid` still verify.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.kids.iter().any(|(k, _)| k == kid)
    }

    fn toml(&self, out: &mut String) {
        let keys: Vec<String> = self.api_keys.iter().map(|k| format!("\"{k}\"")).collect();
        let _ = writeln!(
            out,
            "[[tenants]]\nid = \"{}\"\nplan = \"{}\"\napi_keys = [{}]\npresence_ttl_secs = {PRESENCE_TTL_SECS}",
            self.id,
            self.plan.name(),
            keys.join(", ")
        );
        let set = &self.set;
        let numbers = [
            ("max_channels", set.max_channels.map(u64::from)),
            ("max_message_bytes", set.max_message_bytes.map(|n| n as u64)),
            (
                "publishes_per_minute",
                set.publishes_per_minute.map(u64::from),
            ),
            ("history_messages", set.history_messages.map(u64::from)),
            (
                "max_subscriptions_per_connection",
                set.max_subscriptions_per_connection.map(u64::from),
            ),
            (
                "max_presence_channels_per_connection",
                set.max_presence_channels_per_connection.map(u64::from),
            ),
            (
                "max_presence_members",
                set.max_presence_members.map(u64::from),
            ),
            (
                "max_presence_metadata_bytes",
                set.max_presence_metadata_bytes.map(|n| n as u64),
            ),
        ];
        for (key, value) in numbers {
            if let Some(value) = value {
                let _ = writeln!(out, "{key} = {value}");
            }
        }
        for (kid, secret) in &self.kids {
            let _ = writeln!(
                out,
                "[[tenants.token_keys]]\nkid = \"{kid}\"\nsecret = \"{secret}\""
            );
        }
    }
}

/// The config file for `tenants` (no default tenant: every client names its own).
pub fn config_toml(tenants: &[TenantSpec]) -> String {
    let mut out = String::new();
    for tenant in tenants {
        tenant.toml(&mut out);
    }
    out
}

/// API key `n` of `tenant` (16 characters at least, unique to the tenant).
pub fn api_key(tenant: &str, n: u32) -> String {
    format!("{tenant}-api-key-{n}-0123456789")
}

/// Token key `n` of `tenant`: a kid and a secret of 32 bytes at least, unique to it.
pub fn kid(tenant: &str, n: u32) -> (String, String) {
    (
        format!("{tenant}-{n}"),
        format!("{tenant}-secret-{n}-0123456789abcdef0123456789"),
    )
}

/// An HS256 token (kid `kid`, signed with `secret`) for `user` of `tenant` with
/// `subscribe` and `publish` on `channels`, valid for an hour: a channel token with one
/// channel, a connection token with several.
pub fn token(kid: &str, secret: &str, tenant: &str, user: &str, channels: &[&str]) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let claims = json!({
        "sub": user, "channels": channels, "permissions": ["subscribe", "publish"],
        "tenant": tenant, "iat": now, "exp": now + 3_600,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid.to_owned());
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).expect("an HMAC key");
    jsonwebtoken::encode(&header, &claims, &key).expect("HS256 encodes")
}
