//! Server configuration: defaults, the TOML file (`--config`) and command-line flags, in
//! that order of precedence (a flag beats the file, the file beats the default). Every
//! flag has a twin key in the file.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::tenant::{Plan, TenantConfig};

/// Room a publish needs around its `data` (action, channel, token, ref, userId), which
/// `max_message_bytes` must leave above every tenant's limit ([`Config::warnings`]).
pub const FRAME_ENVELOPE_BYTES: usize = 8 * 1024;

/// Most shards a node runs (`shards`).
pub const MAX_SHARDS: usize = 1024;

/// The `--dev` tenant (SPEC §2).
pub const DEV_TENANT: &str = "dev";

/// The tenant the SDK's `getPlatform()` names in `X-Tenant-Id` when given none (and no
/// `MARAVILLA_TENANT`): with `--dev` it is taken as [`DEV_TENANT`] unless configured,
/// so an app on the SDK's defaults reaches the channels its `RealtimeClient` uses.
pub const SDK_DEFAULT_TENANT: &str = "dev-tenant-001";
/// `max_connections_per_ip` outside `--dev`.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: u32 = 10_000;
/// `handshakes_per_sec_per_ip` outside `--dev`.
pub const DEFAULT_HANDSHAKES_PER_SEC_PER_IP: u32 = 200;

/// Everything the server needs to start, after merging file and flags.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Address every shard listens on (SO_REUSEPORT).
    pub listen: SocketAddr,
    /// Number of shards (threads, one per CPU by default).
    pub shards: usize,
    /// Where history logs live.
    pub data_dir: PathBuf,
    /// Development mode: the `dev` tenant, no API key.
    pub dev: bool,
    /// With `dev`: host names with a dot (a tunnel's, a LAN name) or addresses taken
    /// as `Host` besides `localhost`, `*.localhost` and `*.internal`, and as a page's
    /// `Origin` (see `dev_guard.rs`). Bare hosts, without scheme, port or path.
    pub dev_allowed_hosts: Vec<String>,
    /// Connections beyond this get `503 overloaded`.
    pub max_connections: usize,
    /// Largest WebSocket message accepted (close 1009 beyond).
    pub max_message_bytes: usize,
    /// Per-connection outbound buffer; when full the connection is closed with 4008.
    pub outbound_buffer_bytes: usize,
    /// Time allowed for a request head to arrive.
    pub handshake_timeout_ms: u64,
    /// Time allowed for connections to close on shutdown.
    pub shutdown_grace_ms: u64,
    /// A WebSocket connection that sent nothing (no frame, ping or pong) for half this
    /// long gets a WebSocket ping; for this long, it is closed (1001, counted as
    /// `timeout`): a peer that vanished without a FIN (NAT state dropped, a laptop lid
    /// closed) would otherwise hold its slot, subscriptions and descriptor for good.
    /// 0: never. The SDK pings every 25 s, and browsers answer pings by themselves.
    pub idle_timeout_secs: u64,
    /// After SIGTERM, how long the server keeps serving with `/readyz` answering 503
    /// (so a load balancer stops sending new connections) before it closes connections
    /// with 1001. 0: close at once.
    pub drain_ms: u64,
    /// Log lines as `text` or `json` (stderr).
    pub log_format: LogFormat,
    /// Log filter when `RUST_LOG` is not set (`info`, `warn`, `ringcast_engine=debug`, …).
    pub log_level: String,
    /// What `/metrics` labels.
    pub metrics: MetricsConfig,
    /// How long a handler waits for an owner shard's answer (a WebSocket publish's
    /// `ack`, an HTTP route's answer) before giving up with `overloaded`.
    pub request_timeout_ms: u64,
    /// Bound of each shard's inbox, in messages (see ARCHITECTURE.md, "Queues").
    pub inbox_capacity: usize,
    /// How long an HTTP publish's idempotency key is remembered.
    pub idempotency_ttl_secs: u64,
    /// Idempotency keys kept per tenant on each shard (the oldest is forgotten past it).
    pub idempotency_max_keys: usize,
    /// Tenant used when a request names none.
    pub default_tenant: Option<String>,
    /// Proxies whose word on the client address (`X-Forwarded-For`, PROXY header) is
    /// taken: addresses or CIDR blocks.
    pub trusted_proxies: Vec<String>,
    /// Whether the listener reads a PROXY protocol header (v1 or v2) from trusted
    /// proxies; from any other peer one is refused.
    pub proxy_protocol: bool,
    /// Open TCP connections per client address, of every kind, counted from the accept
    /// (IPv6 by its /64; a trusted proxy's own connections not; `0`: unlimited).
    pub max_connections_per_ip: u32,
    /// WebSocket/SSE handshakes per second per client address (`0`: unlimited).
    pub handshakes_per_sec_per_ip: u32,
    /// Whether `GET /` serves the demo page (`demo.rs`); default: in `--dev` only.
    pub demo: bool,
    /// The SDK bundle the demo page loads, read once at start-up (default: the
    /// `demo/dist/platform.js` that `scripts/build-demo.sh` writes in the source tree the
    /// binary was built from).
    pub demo_bundle: PathBuf,
    /// Tenants and their plans.
    pub tenants: Vec<TenantConfig>,
    /// History settings.
    pub history: HistoryConfig,
    /// REN settings.
    pub ren: RenConfig,
}

/// `[ren]`: the per-tenant resume buffer of the REN stream (SPEC §7).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RenConfig {
    /// Events kept per tenant for streams that reconnect with `Last-Event-ID`.
    pub buffer_events: usize,
    /// Bytes of encoded events kept per tenant.
    pub buffer_bytes: usize,
    /// How long an event is kept; also how long a tenant whose last stream closed keeps
    /// mirroring channel events into REN (after that its channels pay nothing for REN).
    pub buffer_secs: u64,
}

impl Default for RenConfig {
    fn default() -> Self {
        RenConfig {
            buffer_events: 1000,
            buffer_bytes: 1 << 20,
            buffer_secs: 300,
        }
    }
}

impl RenConfig {
    /// The bounds as the engine uses them.
    pub fn limits(&self) -> crate::ren::RenLimits {
        crate::ren::RenLimits {
            max_events: self.buffer_events,
            max_bytes: self.buffer_bytes,
            max_age_ms: self.buffer_secs.saturating_mul(1000),
        }
    }
}

/// How history logs are kept (see `docs/store-format.md`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Byte bound of each channel's ring (the message bound comes from the plan). It is
    /// also the largest message history keeps: a publish larger than that (as kept:
    /// envelope and `userId` included) is refused with `message_too_large`. The default,
    /// 1 MiB + 64 KiB, keeps a message of the enterprise plan's 1 MiB `data`.
    pub max_bytes_per_channel: u64,
    /// `never` (page cache; survives a process crash), `every_append` (msync per
    /// message; survives power loss), or `interval` with `flush_interval_ms`.
    pub flush: FlushPolicy,
    /// For `flush = "interval"`.
    pub flush_interval_ms: u32,
    /// Histories of channels idle this long are deleted.
    pub idle_ttl_secs: u64,
    /// Bound on the history bytes of the whole node (split evenly between shards). When
    /// a new or growing ring would pass it, the rings of closed channels are evicted,
    /// least recently written first; open channels' rings never are. Absent: unbounded.
    pub max_total_bytes: Option<u64>,
    /// Channels whose history was freed as idle or evicted that keep their epoch and
    /// last seq, per shard (tombstones: their next publish goes on numbering, so a
    /// resume from before shows its gap); past it the oldest start a new epoch at seq 1
    /// instead. About 100 B of memory each. 0: none.
    pub max_tombstones_per_shard: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            max_bytes_per_channel: (1 << 20) + (64 << 10),
            flush: FlushPolicy::Never,
            flush_interval_ms: 1000,
            idle_ttl_secs: 7 * 24 * 3600,
            max_total_bytes: None,
            max_tombstones_per_shard: ringcast_store::DEFAULT_TOMBSTONES,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines (`tracing-subscriber`'s default format).
    #[default]
    Text,
    /// One JSON object per line, fields at the top level.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("log format must be text or json, not `{other}`")),
        }
    }
}

/// `[metrics]`: labels of `/metrics` whose number depends on the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Render the `ringcast_tenant_*` families, labelled by tenant (shards count per
    /// tenant only when this is on).
    pub tenant_labels: bool,
    /// At most this many tenants (the first by id) get their own label; the others are
    /// summed under `tenant="_other"`, so a scrape's size stays bounded.
    pub max_tenant_labels: usize,
    /// When set, `GET /metrics` needs `Authorization: Bearer <this>` (401 otherwise):
    /// the scrape is served on the public port, and with `tenant_labels` it lists every
    /// tenant id with its traffic (found in review).
    pub bearer_token: Option<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            tenant_labels: false,
            max_tenant_labels: 100,
            bearer_token: None,
        }
    }
}

/// When history is msync'ed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlushPolicy {
    /// Never explicitly: the page cache keeps it across a process crash.
    Never,
    /// After every append.
    EveryAppend,
    /// At most every `flush_interval_ms`.
    Interval,
}

/// The TOML file, every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    listen: Option<SocketAddr>,
    shards: Option<usize>,
    data_dir: Option<PathBuf>,
    dev: Option<bool>,
    dev_allowed_hosts: Option<Vec<String>>,
    max_connections: Option<usize>,
    max_message_bytes: Option<usize>,
    outbound_buffer_bytes: Option<usize>,
    handshake_timeout_ms: Option<u64>,
    shutdown_grace_ms: Option<u64>,
    idle_timeout_secs: Option<u64>,
    drain_ms: Option<u64>,
    log_format: Option<LogFormat>,
    log_level: Option<String>,
    #[serde(default)]
    metrics: MetricsConfig,
    request_timeout_ms: Option<u64>,
    inbox_capacity: Option<usize>,
    idempotency_ttl_secs: Option<u64>,
    idempotency_max_keys: Option<usize>,
    default_tenant: Option<String>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    proxy_protocol: Option<bool>,
    max_connections_per_ip: Option<u32>,
    handshakes_per_sec_per_ip: Option<u32>,
    demo: Option<bool>,
    demo_bundle: Option<PathBuf>,
    #[serde(default)]
    tenants: Vec<TenantConfig>,
    #[serde(default)]
    history: HistoryConfig,
    #[serde(default)]
    ren: RenConfig,
}

/// Values given on the command line (each `None` when absent).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--listen`
    pub listen: Option<SocketAddr>,
    /// `--shards`
    pub shards: Option<usize>,
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--dev`
    pub dev: bool,
    /// `--max-connections`
    pub max_connections: Option<usize>,
    /// `--max-message-bytes`
    pub max_message_bytes: Option<usize>,
    /// `--outbound-buffer-bytes`
    pub outbound_buffer_bytes: Option<usize>,
    /// `--handshake-timeout-ms`
    pub handshake_timeout_ms: Option<u64>,
    /// `--drain-ms`
    pub drain_ms: Option<u64>,
    /// `--log-format`
    pub log_format: Option<LogFormat>,
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema. Shown without the offending line's
    /// text and with quoted values elided: they may be secrets, and this message goes to
    /// logs (found in review: `api_keys = "sk_live_…"` was logged whole).
    #[error("invalid config {path}, line {line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The line the error is on (1 when unknown).
        line: usize,
        /// What is wrong, quoted values elided.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid setting: {0}")]
    Invalid(String),
}

impl ConfigError {
    /// The error as logs may show it: the same as its `Display`, which never holds a
    /// value from the file.
    pub fn redacted(&self) -> String {
        self.to_string()
    }

    fn parse(path: &Path, text: &str, error: &toml::de::Error) -> ConfigError {
        let line = error.span().map_or(1, |span| {
            let end = span.start.min(text.len());
            text.as_bytes()[..end]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1
        });
        ConfigError::Parse {
            path: path.to_owned(),
            line,
            message: elide_quoted(error.message()),
        }
    }
}

/// `message` with every value of the file elided: each `"…"` (serde quotes a value it
/// did not want with Rust's string escapes, so an escaped quote does not end it; found
/// in review) and the variant of an ``unknown variant `…` `` become `…`. Key names and
/// the variants serde expected stay: they come from the schema, not the file.
fn elide_quoted(message: &str) -> String {
    const VARIANT: &str = "unknown variant `";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(['"', '`']) {
        let (before, from) = rest.split_at(at);
        out.push_str(before);
        if let Some(quoted) = from.strip_prefix('"') {
            out.push_str("\"…\"");
            rest = after_quoted(quoted);
        } else if out.ends_with(&VARIANT[..VARIANT.len() - 1]) {
            // serde writes the variant raw: it may hold backticks itself, so it ends at
            // the "`, expected" serde puts after it (or with the message).
            out.push_str("`…`");
            rest = from[1..]
                .rfind("`, expected")
                .map_or("", |end| &from[1 + end + 1..]);
        } else {
            out.push('`');
            rest = &from[1..];
        }
    }
    out.push_str(rest);
    out
}

/// What follows the closing quote of a quoted string whose opening quote is just before
/// `s` (a backslash escapes the character after it); empty when it never closes.
fn after_quoted(s: &str) -> &str {
    let mut escaped = false;
    for (at, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return &s[at + 1..],
            _ => {}
        }
    }
    ""
}

impl Config {
    /// The trusted proxies (validated when the config was loaded).
    pub fn trusted(&self) -> crate::client_addr::TrustedProxies {
        crate::client_addr::TrustedProxies::parse(&self.trusted_proxies).unwrap_or_default()
    }

    /// The per-address limits.
    pub fn ip_limits(&self) -> crate::per_ip::IpLimits {
        crate::per_ip::IpLimits {
            max_connections: self.max_connections_per_ip,
            handshakes_per_sec: self.handshakes_per_sec_per_ip,
        }
    }

    /// Merges defaults, the file at `path` (if any) and the flags.
    pub fn load(path: Option<&Path>, flags: &Overrides) -> Result<Config, ConfigError> {
        let file = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::parse(path, &text, &e))?
            }
            None => FileConfig::default(),
        };
        Config::merge(file, flags)
    }

    fn merge(file: FileConfig, flags: &Overrides) -> Result<Config, ConfigError> {
        let dev = flags.dev || file.dev.unwrap_or(false);
        let mut tenants = file.tenants;
        if dev && !tenants.iter().any(|t| t.id == DEV_TENANT) {
            tenants.push(TenantConfig::new(DEV_TENANT, Plan::Enterprise));
        }
        let default_tenant = file
            .default_tenant
            .or_else(|| dev.then(|| DEV_TENANT.to_owned()));
        let config = Config {
            listen: flags
                .listen
                .or(file.listen)
                .unwrap_or_else(|| "127.0.0.1:3001".parse().expect("literal address")),
            shards: flags.shards.or(file.shards).unwrap_or_else(default_shards),
            data_dir: flags
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("./data")),
            dev,
            dev_allowed_hosts: file.dev_allowed_hosts.unwrap_or_default(),
            max_connections: flags
                .max_connections
                .or(file.max_connections)
                .unwrap_or(100_000),
            max_message_bytes: flags
                .max_message_bytes
                .or(file.max_message_bytes)
                .unwrap_or(2 << 20),
            outbound_buffer_bytes: flags
                .outbound_buffer_bytes
                .or(file.outbound_buffer_bytes)
                .unwrap_or(4 << 20),
            handshake_timeout_ms: flags
                .handshake_timeout_ms
                .or(file.handshake_timeout_ms)
                .unwrap_or(10_000),
            shutdown_grace_ms: file.shutdown_grace_ms.unwrap_or(5_000),
            idle_timeout_secs: file.idle_timeout_secs.unwrap_or(90),
            drain_ms: flags.drain_ms.or(file.drain_ms).unwrap_or(0),
            log_format: flags.log_format.or(file.log_format).unwrap_or_default(),
            log_level: file.log_level.unwrap_or_else(|| "info".to_owned()),
            metrics: file.metrics,
            request_timeout_ms: file.request_timeout_ms.unwrap_or(10_000),
            inbox_capacity: file
                .inbox_capacity
                .unwrap_or(crate::mesh::DEFAULT_INBOX_CAPACITY),
            idempotency_ttl_secs: file.idempotency_ttl_secs.unwrap_or(300),
            idempotency_max_keys: file.idempotency_max_keys.unwrap_or(10_000),
            default_tenant,
            trusted_proxies: file.trusted_proxies,
            proxy_protocol: file.proxy_protocol.unwrap_or(false),
            // Off in --dev (benchmarks open thousands of connections from one address).
            max_connections_per_ip: file.max_connections_per_ip.unwrap_or(if dev {
                0
            } else {
                DEFAULT_MAX_CONNECTIONS_PER_IP
            }),
            handshakes_per_sec_per_ip: file.handshakes_per_sec_per_ip.unwrap_or(if dev {
                0
            } else {
                DEFAULT_HANDSHAKES_PER_SEC_PER_IP
            }),
            demo: file.demo.unwrap_or(dev),
            demo_bundle: file
                .demo_bundle
                .unwrap_or_else(crate::demo::default_bundle_path),
            tenants,
            history: file.history,
            ren: file.ren,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.shards == 0 || self.shards > MAX_SHARDS {
            return Err(ConfigError::Invalid(format!(
                "shards must be 1..={MAX_SHARDS}, got {}",
                self.shards
            )));
        }
        if self.max_message_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "max_message_bytes must be at least 1024".into(),
            ));
        }
        if let Some(token) = &self.metrics.bearer_token {
            if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::Invalid(
                    "[metrics] bearer_token must be at least 16 printable ASCII characters \
                     without spaces"
                        .into(),
                ));
            }
        }
        // Checked here, in the config's own words (found in review: start-up failed
        // later naming the store's `max_bytes_per_ring`, or said "every remaining ring
        // is pinned" for a node bound too small for one ring per shard).
        let history = &self.history;
        if !(4096..=1 << 30).contains(&history.max_bytes_per_channel) {
            return Err(ConfigError::Invalid(format!(
                "[history] max_bytes_per_channel must be between 4096 and 1073741824, got {}",
                history.max_bytes_per_channel
            )));
        }
        if let Some(total) = history.max_total_bytes {
            let least = self.shards as u64 * 64 * 1024;
            if total < least {
                return Err(ConfigError::Invalid(format!(
                    "[history] max_total_bytes must be at least 64 KiB per shard ({least} for {} shards), got {total}",
                    self.shards
                )));
            }
        }
        if self.outbound_buffer_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "outbound_buffer_bytes must be at least 1024".into(),
            ));
        }
        if self.inbox_capacity < 64 {
            return Err(ConfigError::Invalid(
                "inbox_capacity must be at least 64".into(),
            ));
        }
        if self.log_level.trim().is_empty() {
            return Err(ConfigError::Invalid("log_level must not be empty".into()));
        }
        crate::logging::valid_level(&self.log_level).map_err(ConfigError::Invalid)?;
        if self.drain_ms > 3_600_000 {
            return Err(ConfigError::Invalid(
                "drain_ms must be at most 3600000 (one hour)".into(),
            ));
        }
        if self.request_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "request_timeout_ms must be at least 1".into(),
            ));
        }
        if self.idempotency_max_keys == 0 {
            return Err(ConfigError::Invalid(
                "idempotency_max_keys must be at least 1".into(),
            ));
        }
        if let Some(default) = &self.default_tenant {
            if !self.tenants.iter().any(|t| &t.id == default) {
                return Err(ConfigError::Invalid(format!(
                    "default_tenant `{default}` is not configured"
                )));
            }
        }
        if let Some(t) = self.tenants.iter().find(|t| t.presence_ttl_secs == Some(0)) {
            return Err(ConfigError::Invalid(format!(
                "tenant `{}`: presence_ttl_secs must be at least 1",
                t.id
            )));
        }
        for t in &self.tenants {
            validate_tenant(t)?;
            // An override past the server's own bound could never apply: a message
            // between the two would close the WebSocket with 1009 (HTTP: 413, then close)
            // instead of getting `message_too_large` (found in review).
            if let Some(max) = t.max_message_bytes.filter(|m| *m > self.max_message_bytes) {
                return Err(ConfigError::Invalid(format!(
                    "tenant `{}`: max_message_bytes = {max} is above the server's \
                     max_message_bytes ({}), which bounds every message",
                    t.id, self.max_message_bytes
                )));
            }
        }
        crate::client_addr::TrustedProxies::parse(&self.trusted_proxies)
            .map_err(ConfigError::Invalid)?;
        for entry in &self.dev_allowed_hosts {
            crate::dev_guard::check_listed_host(entry).map_err(ConfigError::Invalid)?;
        }
        let mut ids: Vec<&str> = self.tenants.iter().map(|t| t.id.as_str()).collect();
        ids.sort_unstable();
        if let Some(pair) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(ConfigError::Invalid(format!(
                "tenant `{}` configured twice",
                pair[0]
            )));
        }
        check_credentials_are_per_tenant(&self.tenants)
    }
}

/// Refuses an API key or token secret that two tenants hold. A key is checked against
/// the tenant the request names (`X-Tenant-Id`), so one that tenant A and tenant B both
/// list lets A's holder act as B; a secret both hold lets either mint the other's
/// tokens, and an API key that is another tenant's secret lets its holder mint them too
/// (found in review: each tenant was checked alone). The error names the tenants and
/// what each holds, never the value.
fn check_credentials_are_per_tenant(tenants: &[TenantConfig]) -> Result<(), ConfigError> {
    let mut holder: HashMap<&str, (&str, String)> = HashMap::new();
    for t in tenants {
        let api_keys = t
            .api_keys
            .iter()
            .map(|key| (key.as_str(), "an api_keys entry".to_owned()));
        let secrets = t.token_keys.iter().map(|key| {
            (
                key.secret.as_str(),
                format!("the secret of token_keys `{}`", key.kid),
            )
        });
        for (credential, what) in api_keys.chain(secrets) {
            match holder.get(credential) {
                Some((other, what_other)) if *other != t.id.as_str() => {
                    return Err(ConfigError::Invalid(format!(
                        "tenants `{other}` and `{}` share a credential ({what_other} of \
                         `{other}` is also {what} of `{}`): each tenant needs keys and \
                         secrets of its own",
                        t.id, t.id
                    )));
                }
                Some(_) => {}
                None => {
                    holder.insert(credential, (t.id.as_str(), what));
                }
            }
        }
    }
    Ok(())
}

impl Config {
    /// What the config allows that cannot work as meant, one line each (logged at
    /// start-up and reload, printed by `check-config`): the server's `max_message_bytes`
    /// bounds a whole message, so it must leave room for the frame around each tenant's
    /// largest `data`; otherwise a publish within the tenant's limit closes the WebSocket
    /// with 1009 (or gets 413) instead of being delivered (found in review).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let public = !self.listen.ip().is_loopback();
        if self.metrics.tenant_labels && self.metrics.bearer_token.is_none() && public {
            warnings.push(format!(
                "[metrics] tenant_labels is on and /metrics needs no bearer_token: anyone \
                 who reaches {} can read every tenant id and its traffic; set \
                 [metrics] bearer_token or keep /metrics from the public side",
                self.listen
            ));
        }
        let tenants = crate::tenant::TenantTable::new(&self.tenants, None);
        let mut ids: Vec<&str> = self.tenants.iter().map(|t| t.id.as_str()).collect();
        ids.sort_unstable();
        let too_large = ids
            .into_iter()
            .filter_map(|id| tenants.get(id))
            .filter(|t| t.limits.max_message_bytes + FRAME_ENVELOPE_BYTES > self.max_message_bytes)
            .map(|t| {
                format!(
                    "tenant `{}`: publishes may carry {} bytes of data, but max_message_bytes \
                     ({}) bounds the whole WebSocket message (1009 beyond) and HTTP body (413); \
                     a publish near the tenant's limit is cut there: set max_message_bytes to \
                     at least {} or lower the tenant's",
                    t.id.as_str(),
                    t.limits.max_message_bytes,
                    self.max_message_bytes,
                    t.limits.max_message_bytes + FRAME_ENVELOPE_BYTES,
                )
            });
        warnings.extend(too_large);
        warnings
    }

    /// What the server would run with, for `ringcast check-config` (no secrets).
    pub fn describe(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(out, "listen = {}", self.listen);
        let _ = writeln!(out, "shards = {}", self.shards);
        let _ = writeln!(out, "data_dir = {}", self.data_dir.display());
        let _ = writeln!(out, "dev = {}", self.dev);
        let _ = writeln!(out, "max_connections = {}", self.max_connections);
        let _ = writeln!(out, "drain_ms = {}", self.drain_ms);
        let _ = writeln!(
            out,
            "log_format = {:?}, log_level = {}",
            self.log_format, self.log_level
        );
        let _ = writeln!(
            out,
            "metrics: tenant_labels = {}, max_tenant_labels = {}, bearer_token = {}",
            self.metrics.tenant_labels,
            self.metrics.max_tenant_labels,
            if self.metrics.bearer_token.is_some() {
                "set"
            } else {
                "none"
            }
        );
        let default = self.default_tenant.as_deref().unwrap_or("(none)");
        let _ = writeln!(out, "default_tenant = {default}");
        let tenants = crate::tenant::TenantTable::new(&self.tenants, None);
        let mut ids: Vec<&str> = self.tenants.iter().map(|t| t.id.as_str()).collect();
        ids.sort_unstable();
        for id in ids {
            let Some(t) = tenants.get(id) else { continue };
            let l = &t.limits;
            let unlimited = |n: Option<u32>| n.map_or("unlimited".to_owned(), |n| n.to_string());
            let kids: Vec<&str> = t.token_keys.iter().map(|k| k.kid.as_str()).collect();
            let _ = writeln!(
                out,
                "tenant {id}: plan {:?}, max_channels {}, max_message_bytes {}, publishes_per_minute {}, history_messages {}, presence_ttl_secs {}, api_keys {}, token kids {:?}, allowed_origins {}, allow_anonymous_ren {}",
                t.plan,
                unlimited(l.max_channels),
                l.max_message_bytes,
                unlimited(l.publishes_per_minute),
                l.history_messages,
                l.presence.ttl_secs,
                t.api_keys.len(),
                kids,
                t.allowed_origins.as_ref().map_or("any".to_owned(), |o| o.join(" ")),
                t.allow_anonymous_ren,
            );
        }
        for warning in self.warnings() {
            let _ = writeln!(out, "warning: {warning}");
        }
        out
    }
}

/// Checks one tenant's keys and overrides.
fn validate_tenant(t: &TenantConfig) -> Result<(), ConfigError> {
    let bad = |what: String| Err(ConfigError::Invalid(format!("tenant `{}`: {what}", t.id)));
    if t.id.is_empty() || t.id.len() > 64 || t.id.chars().any(|c| c.is_control()) {
        return bad("id must be 1 to 64 characters without control characters".into());
    }
    if t.id == crate::metrics::tenant::OTHER_TENANTS {
        return bad(format!(
            "the id `{}` is reserved: it is the metrics label that sums the tenants past \
             max_tenant_labels",
            crate::metrics::tenant::OTHER_TENANTS
        ));
    }
    if t.api_keys.iter().any(|k| k.len() < 16) {
        return bad("every api_keys entry must be at least 16 characters".into());
    }
    let mut kids: Vec<&str> = Vec::new();
    for key in &t.token_keys {
        if key.kid.is_empty() {
            return bad("a token_keys entry has an empty kid".into());
        }
        if kids.contains(&key.kid.as_str()) {
            return bad(format!("token_keys kid `{}` appears twice", key.kid));
        }
        kids.push(&key.kid);
        if key.secret.len() < 32 {
            return bad(format!(
                "token_keys `{}`: an HS256 secret must be at least 32 bytes (RFC 7518 §3.2)",
                key.kid
            ));
        }
    }
    if let Some(origin) = t
        .allowed_origins
        .iter()
        .flatten()
        .find(|o| !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/'))
    {
        return bad(format!(
            "allowed_origins entry `{origin}` must be scheme://host[:port], without a path"
        ));
    }
    Ok(())
}

fn default_shards() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let file: FileConfig = toml::from_str(
            "listen = \"127.0.0.1:4000\"\nshards = 3\nmax_connections = 7\n[[tenants]]\nid = \"acme\"\nplan = \"pro\"\n",
        )
        .unwrap();
        let flags = Overrides {
            shards: Some(2),
            ..Overrides::default()
        };
        let config = Config::merge(file, &flags).unwrap();
        assert_eq!(config.listen, "127.0.0.1:4000".parse().unwrap());
        assert_eq!(config.shards, 2);
        assert_eq!(config.max_connections, 7);
        assert_eq!(config.tenants.len(), 1);
        assert_eq!(
            config.default_tenant, None,
            "nothing open that the config does not open"
        );
    }

    /// A file that does not parse names its line, never a value from it: the message
    /// goes to logs, and the value may be a key or secret (found in review).
    #[test]
    fn a_parse_error_shows_no_value_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ringcast.toml");
        for (text, line) in [
            (
                "shards = 1\n[[tenants]]\nid = \"a\"\napi_keys = \"sk_live_SECRET0123456789\"\n",
                4,
            ),
            (
                "[[tenants]]\nid = \"a\"\ntoken_keys = { kid = \"k\", secret = \"TOPSECRET0123456789abcdef0123456789\" }\n",
                3,
            ),
            (
                "[[tenants]]\nid = \"a\"\nplan = \"SECRET_in_a_variant\"\n",
                3,
            ),
            (
                "shards = 1\n[[tenants]]\nid = \"a\"\napi_keys = \"sk_AB\\\"CD_SECRET\"\n",
                4,
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let error = Config::load(Some(&path), &Overrides::default()).unwrap_err();
            for shown in [error.to_string(), error.redacted()] {
                assert!(!shown.contains("SECRET"), "{shown}");
                assert!(shown.contains(&format!("line {line}")), "{shown}");
            }
        }
        assert_eq!(elide_quoted(r#"a "x" b "y" c"#), r#"a "…" b "…" c"#);
        // An escaped quote does not end a value; a variant is a value too.
        assert_eq!(
            elide_quoted(r#"invalid type: string "AB\"CDSECRET", expected a sequence"#),
            r#"invalid type: string "…", expected a sequence"#
        );
        assert_eq!(
            elide_quoted("unknown variant `sk_live_SECRET`, expected one of `free`, `pro`"),
            "unknown variant `…`, expected one of `free`, `pro`"
        );
        assert_eq!(
            elide_quoted("unknown field `api_key`"),
            "unknown field `api_key`"
        );
        assert_eq!(
            elide_quoted("unknown variant `a`SECRET`, expected one of `free`"),
            "unknown variant `…`, expected one of `free`"
        );
    }

    #[test]
    fn dev_adds_the_dev_tenant() {
        let config = Config::merge(
            FileConfig::default(),
            &Overrides {
                dev: true,
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(config.default_tenant.as_deref(), Some(DEV_TENANT));
        assert_eq!(config.tenants[0].plan, Plan::Enterprise);
        assert_eq!(config.listen.port(), 3001);
    }

    #[test]
    fn warns_of_a_tenant_whose_messages_the_server_bound_would_cut() {
        let config = |text: &str| {
            Config::merge(toml::from_str(text).unwrap(), &Overrides::default()).unwrap()
        };
        // The default bound (2 MiB) leaves room around every plan's largest message.
        let roomy = config("[[tenants]]\nid = \"a\"\nplan = \"enterprise\"\n");
        assert_eq!(roomy.warnings(), Vec::<String>::new());
        // 64 KiB holds no free-plan message of 64 KB and its frame: the plan's own
        // limit is checked, not only an override.
        let tight = config("max_message_bytes = 65536\n[[tenants]]\nid = \"a\"\nplan = \"free\"\n");
        let warnings = tight.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("tenant `a`"), "{warnings:?}");
        assert!(tight.describe().contains("warning: tenant `a`"));
        let lowered = config(
            "max_message_bytes = 65536\n[[tenants]]\nid = \"a\"\nplan = \"free\"\nmax_message_bytes = 32768\n",
        );
        assert_eq!(lowered.warnings(), Vec::<String>::new());
    }

    /// Tenant labels on a public address without a scrape token are warned of; a
    /// token too short or with spaces is refused.
    #[test]
    fn metrics_bearer_token_is_checked_and_its_absence_warned_of() {
        let config =
            |text: &str| Config::merge(toml::from_str(text).unwrap(), &Overrides::default());
        let labels = "[metrics]\ntenant_labels = true\n";
        let public = config(&format!("listen = \"0.0.0.0:3913\"\n{labels}")).unwrap();
        let warnings = public.warnings();
        assert!(
            warnings.iter().any(|w| w.contains("bearer_token")),
            "{warnings:?}"
        );
        let local = config(&format!("listen = \"127.0.0.1:3913\"\n{labels}")).unwrap();
        assert_eq!(local.warnings(), Vec::<String>::new());
        let with_token = config(&format!(
            "listen = \"0.0.0.0:3913\"\n{labels}bearer_token = \"0123456789abcdef\"\n"
        ))
        .unwrap();
        assert_eq!(with_token.warnings(), Vec::<String>::new());
        assert!(with_token.describe().contains("bearer_token = set"));
        assert!(
            !with_token.describe().contains("0123456789abcdef"),
            "no secret"
        );
        for bad in ["short", "has spaces 0123456789"] {
            let refused = config(&format!("[metrics]\nbearer_token = \"{bad}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(refused.contains("bearer_token"), "{refused}");
        }
    }

    #[test]
    fn refuses_bad_values() {
        let flags = Overrides {
            shards: Some(0),
            ..Overrides::default()
        };
        assert!(Config::merge(FileConfig::default(), &flags).is_err());
        let file: FileConfig = toml::from_str("default_tenant = \"ghost\"").unwrap();
        assert!(Config::merge(file, &Overrides::default()).is_err());
        assert!(toml::from_str::<FileConfig>("no_such_key = 1").is_err());
        let zero_ttl: FileConfig =
            toml::from_str("[[tenants]]\nid = \"a\"\nplan = \"free\"\npresence_ttl_secs = 0\n")
                .unwrap();
        assert!(Config::merge(zero_ttl, &Overrides::default()).is_err());
        let over: FileConfig = toml::from_str(
            "max_message_bytes = 4096\n[[tenants]]\nid = \"a\"\nplan = \"free\"\nmax_message_bytes = 4097\n",
        )
        .unwrap();
        let refused = Config::merge(over, &Overrides::default()).unwrap_err();
        assert!(
            refused.to_string().contains("above the server's"),
            "{refused}"
        );
        for (history, named) in [
            ("max_bytes_per_channel = 10", "max_bytes_per_channel"),
            ("max_total_bytes = 100", "max_total_bytes"),
        ] {
            let file: FileConfig = toml::from_str(&format!("[history]\n{history}\n")).unwrap();
            let refused = Config::merge(file, &Overrides::default()).unwrap_err();
            assert!(refused.to_string().contains(named), "{refused}");
        }
    }

    /// `[history] max_tombstones_per_shard` reaches the stores' config (0 turns
    /// tombstones off); absent, the store's default.
    #[test]
    fn max_tombstones_per_shard_reaches_the_store_config() {
        let parse = |text: &str| {
            let file: FileConfig = toml::from_str(text).unwrap();
            Config::merge(file, &Overrides::default()).unwrap().history
        };
        let off = parse("[history]\nmax_tombstones_per_shard = 0\n");
        assert_eq!(off.max_tombstones_per_shard, 0);
        assert_eq!(crate::history::store_config(&off, 2).max_tombstones, 0);
        let default = parse("");
        assert_eq!(
            crate::history::store_config(&default, 2).max_tombstones,
            ringcast_store::DEFAULT_TOMBSTONES
        );
    }

    /// A `dev_allowed_hosts` entry with a scheme, port or path would never match the
    /// host it is compared with (found in review): refused, naming it.
    #[test]
    fn dev_allowed_hosts_entries_are_bare_hosts() {
        let config =
            |text: &str| Config::merge(toml::from_str(text).unwrap(), &Overrides::default());
        let ok = config("dev_allowed_hosts = [\"mybox.lan\", \"192.168.1.7\", \"fd00::9\"]\n");
        assert_eq!(ok.unwrap().dev_allowed_hosts.len(), 3);
        for bad in ["mybox.lan:3001", "https://x.ngrok.app", "mybox.lan/", ""] {
            let refused = config(&format!("dev_allowed_hosts = [\"{bad}\"]\n"))
                .unwrap_err()
                .to_string();
            assert!(
                refused.contains(&format!("dev_allowed_hosts entry `{bad}`")),
                "{refused}"
            );
        }
    }

    #[test]
    fn the_metrics_overflow_label_is_not_a_tenant_id() {
        let file: FileConfig = toml::from_str(&format!(
            "[[tenants]]\nid = \"{}\"\nplan = \"free\"\n",
            crate::metrics::tenant::OTHER_TENANTS
        ))
        .unwrap();
        let refused = Config::merge(file, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("`_other`") && refused.contains("reserved"),
            "{refused}"
        );
        // A name that merely starts the same way is fine.
        let file: FileConfig =
            toml::from_str("[[tenants]]\nid = \"_others\"\nplan = \"free\"\n").unwrap();
        assert!(Config::merge(file, &Overrides::default()).is_ok());
    }

    /// The same API key or token secret in two tenants would let one tenant's holder act
    /// as the other (found in review): refused, naming the tenants and not the value.
    #[test]
    fn a_credential_held_by_two_tenants_is_refused() {
        let key = "shared-api-key-0123456789";
        let secret = "shared-token-secret-0123456789abcdef-0123";
        let tenant = |id: &str, keys: &[&str], secret: Option<(&str, &str)>| {
            let mut text =
                format!("[[tenants]]\nid = \"{id}\"\nplan = \"free\"\napi_keys = {keys:?}\n");
            if let Some((kid, secret)) = secret {
                text.push_str(&format!(
                    "[[tenants.token_keys]]\nkid = \"{kid}\"\nsecret = \"{secret}\"\n"
                ));
            }
            text
        };
        let load = |text: String| {
            let file: FileConfig = toml::from_str(&text).unwrap();
            Config::merge(file, &Overrides::default())
        };
        let refused = |text: String| load(text).unwrap_err().to_string();
        let a_own = tenant(
            "a",
            &["a-api-key-0123456789"],
            Some(("ka", &"a".repeat(32))),
        );
        let b_own = tenant(
            "b",
            &["b-api-key-0123456789"],
            Some(("kb", &"b".repeat(32))),
        );
        assert!(load(format!("{a_own}{b_own}")).is_ok());

        let cases = [
            (
                tenant("a", &[key], None) + &tenant("b", &["b-api-key-0123456789", key], None),
                "an api_keys entry of `a` is also an api_keys entry of `b`",
            ),
            (
                tenant("a", &[], Some(("k1", secret))) + &tenant("b", &[], Some(("k2", secret))),
                "the secret of token_keys `k1` of `a` is also the secret of token_keys `k2`",
            ),
            (
                tenant("a", &[], Some(("k1", secret))) + &tenant("b", &[secret], None),
                "is also an api_keys entry of `b`",
            ),
        ];
        for (text, says) in cases {
            let message = refused(text);
            assert!(
                message.contains("tenants `a` and `b` share a credential"),
                "{message}"
            );
            assert!(message.contains(says), "{message}");
            assert!(
                !message.contains(key) && !message.contains(secret),
                "{message}"
            );
        }
        // One tenant listing a key twice crosses no tenant.
        assert!(load(tenant("a", &[key, key], Some(("k1", secret)))).is_ok());
    }

    #[test]
    fn ren_settings_and_defaults() {
        let config = Config::merge(FileConfig::default(), &Overrides::default()).unwrap();
        assert_eq!(config.ren, RenConfig::default());
        assert_eq!(config.ren.limits().max_age_ms, 300_000);
        let file: FileConfig =
            toml::from_str("[ren]\nbuffer_events = 5\nbuffer_secs = 2\n").unwrap();
        let config = Config::merge(file, &Overrides::default()).unwrap();
        assert_eq!((config.ren.buffer_events, config.ren.buffer_secs), (5, 2));
        assert_eq!(config.ren.buffer_bytes, 1 << 20);
        assert!(toml::from_str::<FileConfig>("[ren]\nbuffer = 1\n").is_err());
        let anonymous: FileConfig = toml::from_str(
            "[[tenants]]\nid = \"a\"\nplan = \"free\"\nallow_anonymous_ren = true\n\
             allowed_origins = [\"https://app.example\"]\n",
        )
        .unwrap();
        let config = Config::merge(anonymous, &Overrides::default()).unwrap();
        let table = crate::tenant::TenantTable::new(&config.tenants, None);
        let tenant = table.get("a").unwrap();
        assert!(tenant.allow_anonymous_ren);
        assert_eq!(
            tenant.allowed_origins.as_deref(),
            Some(&["https://app.example".to_owned()][..])
        );
    }

    #[test]
    fn ops_settings_from_the_file_and_flags() {
        let file: FileConfig = toml::from_str(
            "drain_ms = 1500\nlog_format = \"json\"\nlog_level = \"warn,ringcast_engine=debug\"\n\
             [metrics]\ntenant_labels = true\nmax_tenant_labels = 7\n",
        )
        .unwrap();
        let config = Config::merge(file, &Overrides::default()).unwrap();
        assert_eq!(config.drain_ms, 1500);
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.log_level, "warn,ringcast_engine=debug");
        assert!(config.metrics.tenant_labels);
        assert_eq!(config.metrics.max_tenant_labels, 7);

        let flags = Overrides {
            drain_ms: Some(0),
            log_format: Some(LogFormat::Text),
            ..Overrides::default()
        };
        let file: FileConfig = toml::from_str("drain_ms = 1500\nlog_format = \"json\"\n").unwrap();
        let config = Config::merge(file, &flags).unwrap();
        assert_eq!((config.drain_ms, config.log_format), (0, LogFormat::Text));

        let defaults = Config::merge(FileConfig::default(), &Overrides::default()).unwrap();
        assert_eq!(defaults.drain_ms, 0);
        assert_eq!(defaults.log_level, "info");
        assert!(!defaults.metrics.tenant_labels);

        for bad in [
            "log_level = \"\"\n",
            "log_level = \"[[[\"\n",
            "log_format = \"xml\"\n",
            "[metrics]\nnope = 1\n",
        ] {
            let parsed: Result<FileConfig, _> = toml::from_str(bad);
            let refused = match parsed {
                Err(_) => true,
                Ok(file) => Config::merge(file, &Overrides::default()).is_err(),
            };
            assert!(refused, "{bad}");
        }
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert!("xml".parse::<LogFormat>().is_err());
    }

    #[test]
    fn presence_settings_per_tenant() {
        let file: FileConfig = toml::from_str(
            "[[tenants]]\nid = \"a\"\nplan = \"free\"\npresence_ttl_secs = 5\n\
             max_presence_members = 3\npresence_events = \"dot\"\n",
        )
        .unwrap();
        let config = Config::merge(file, &Overrides::default()).unwrap();
        let table = crate::tenant::TenantTable::new(&config.tenants, None);
        let tenant = table.get("a").unwrap();
        assert_eq!(tenant.limits.presence.ttl_secs, 5);
        assert_eq!(tenant.limits.presence.max_members_per_channel, 3);
        assert_eq!(tenant.limits.presence.max_metadata_bytes, 4096);
        assert_eq!(
            tenant.presence_spelling,
            ringcast_protocol::event::PresenceSpelling::Dot
        );
    }
}
