//! Log set-up: `tracing` lines on stderr, as text or JSON (`--log-format`, `log_format`),
//! filtered by `RUST_LOG` when it is set and by `log_level` otherwise (`RUST_LOG` wins, so
//! an operator can turn up one module without editing the file).
//!
//! What is logged: start-up and shutdown, reloads, shard failures, and one line per
//! connection closed abnormally (rate-limited per shard and reason, `close_log.rs`).
//! Nothing is logged per message.
//!
//! JSON lines carry the event's fields at the top level:
//! `{"timestamp":"…","level":"WARN","message":"connection closed","shard":0,"transport":"ws","reason":"slow_consumer","code":4008,"tenant":"dev","target":"ringcast_engine::core"}`.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The filter: `RUST_LOG` if set (and valid), else `level`.
pub fn filter(level: &str) -> Result<EnvFilter, String> {
    match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => {
            EnvFilter::try_new(&env).map_err(|e| format!("invalid RUST_LOG `{env}`: {e}"))
        }
        _ => EnvFilter::try_new(level).map_err(|e| format!("invalid log_level `{level}`: {e}")),
    }
}

/// Whether `level` is a filter `tracing-subscriber` accepts (for config validation).
pub fn valid_level(level: &str) -> Result<(), String> {
    EnvFilter::try_new(level)
        .map(|_| ())
        .map_err(|e| format!("invalid log_level `{level}`: {e}"))
}

/// Installs the global subscriber (once per process; later calls do nothing).
pub fn init(format: LogFormat, level: &str) -> Result<(), String> {
    let filter = filter(level)?;
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    let installed = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    // Already installed (a second call in one process): keep the first.
    let _ = installed;
    Ok(())
}
