//! Network settings: the accept backlog (`net.core.somaxconn` caps the backlog every
//! shard's listener asks for), the SYN backlog (`net.ipv4.tcp_max_syn_backlog`, half-open
//! connections during a reconnect storm), and the ephemeral port range (how many
//! connections a proxy or load generator on the same host can open to one Ringcast
//! address; widening it past the listen port comes with reserving that port,
//! `net.ipv4.ip_local_reserved_ports`).

use super::{parse_number, sysctl_commands, Finding, Host, Needs, Outcome};

/// The backlog each shard's listener asks for (`server.rs`); the kernel caps it at
/// `somaxconn`.
pub const LISTEN_BACKLOG: u64 = 4096;
/// The ephemeral ports a local proxy needs at most: past 60,000 the range cannot grow
/// (ports below 1024 are privileged).
pub const MAX_USEFUL_PORTS: u64 = 60_000;

/// Parses `ip_local_port_range` (`"32768\t60999"`) into the number of ports.
pub fn parse_port_range(text: &str) -> Option<(u64, u64)> {
    let mut fields = text.split_whitespace();
    let low = fields.next()?.parse().ok()?;
    let high = fields.next()?.parse().ok()?;
    (low <= high).then_some((low, high))
}

fn backlog(host: &dyn Host, path: &str, key: &str, what: &str) -> Outcome {
    let Some(value) = host.read(path).and_then(|t| parse_number(&t)) else {
        return Outcome::Unknown(format!("cannot read {path}; check `sysctl {key}`"));
    };
    if value >= LISTEN_BACKLOG {
        return Outcome::Ok(format!("{key} = {value} ≥ {LISTEN_BACKLOG}"));
    }
    Outcome::Finding(Finding {
        problem: format!("{key} = {value} < {LISTEN_BACKLOG}"),
        change: format!(
            "each shard listens with a backlog of {LISTEN_BACKLOG}; {what} past {value} are dropped during a reconnect storm"
        ),
        commands: sysctl_commands(key, &LISTEN_BACKLOG.to_string()),
    })
}

/// The `somaxconn` check.
pub fn check_somaxconn(host: &dyn Host) -> Outcome {
    backlog(
        host,
        "/proc/sys/net/core/somaxconn",
        "net.core.somaxconn",
        "accepted connections waiting for the shard",
    )
}

/// The `syn_backlog` check.
pub fn check_syn_backlog(host: &dyn Host) -> Outcome {
    backlog(
        host,
        "/proc/sys/net/ipv4/tcp_max_syn_backlog",
        "net.ipv4.tcp_max_syn_backlog",
        "half-open connections",
    )
}

/// Whether `list` (`ip_local_reserved_ports`: `8000-8010,9000`) holds `port`.
fn reserves(list: &str, port: u16) -> bool {
    list.trim()
        .split(',')
        .filter(|s| !s.is_empty())
        .any(|item| {
            let (low, high) = item.split_once('-').unwrap_or((item, item));
            match (low.trim().parse::<u16>(), high.trim().parse::<u16>()) {
                (Ok(low), Ok(high)) => (low..=high).contains(&port),
                _ => false,
            }
        })
}

/// The `port_range` check.
pub fn check_port_range(host: &dyn Host, needs: &Needs) -> Outcome {
    let path = "/proc/sys/net/ipv4/ip_local_port_range";
    let Some((low, high)) = host.read(path).and_then(|t| parse_port_range(&t)) else {
        return Outcome::Unknown(format!(
            "cannot read {path}; check `sysctl net.ipv4.ip_local_port_range`"
        ));
    };
    let ports = high - low + 1;
    let need = (needs.max_connections as u64).min(MAX_USEFUL_PORTS);
    if ports >= need {
        return Outcome::Ok(format!("{low}–{high}: {ports} ephemeral ports"));
    }
    let mut commands = sysctl_commands("net.ipv4.ip_local_port_range", "1024 65535");
    let mut change = "a TLS terminator or proxy on this host takes one ephemeral port per connection it opens to Ringcast; widen the range (harmless when no proxy is local)".to_owned();
    // The wider range covers the server's own port: reserved, no outgoing connection
    // takes it as its local port, which would stop a restarted server from listening.
    // Added to what is reserved already (found in review: the command replaced it), and
    // only for a port the wider range covers.
    let reserved = host
        .read("/proc/sys/net/ipv4/ip_local_reserved_ports")
        .unwrap_or_default();
    let port = needs.listen_port;
    if port >= 1024 && !reserves(&reserved, port) {
        change.push_str(&format!(
            ", and reserve the listen port {port} so that no outgoing connection takes it (a restart could not listen on it then)"
        ));
        let list = match reserved.trim() {
            "" => port.to_string(),
            kept => format!("{kept},{port}"),
        };
        commands.extend(sysctl_commands("net.ipv4.ip_local_reserved_ports", &list));
    }
    Outcome::Finding(Finding {
        problem: format!(
            "{low}–{high} is {ports} ephemeral ports < {need} (max_connections, at most {MAX_USEFUL_PORTS})"
        ),
        change,
        commands,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::fake::FakeHost;

    const NEEDS: Needs = Needs {
        max_connections: 100_000,
        shards: 2,
        history_bytes: None,
        listen_port: 3001,
    };

    #[test]
    fn port_ranges_parse_with_tabs_or_spaces() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("1024 65535"), Some((1024, 65535)));
        assert_eq!(parse_port_range("9 1"), None);
        assert_eq!(parse_port_range(""), None);
    }

    #[test]
    fn default_backlogs_and_ports_are_findings_tuned_ones_are_not() {
        let untuned = FakeHost::untuned();
        for outcome in [
            check_somaxconn(&untuned),
            check_syn_backlog(&untuned),
            check_port_range(&untuned, &NEEDS),
        ] {
            assert!(matches!(outcome, Outcome::Finding(_)), "{outcome:?}");
        }
        let tuned = FakeHost::tuned();
        for outcome in [
            check_somaxconn(&tuned),
            check_syn_backlog(&tuned),
            check_port_range(&tuned, &NEEDS),
        ] {
            assert!(matches!(outcome, Outcome::Ok(_)), "{outcome:?}");
        }
    }

    #[test]
    fn widening_the_port_range_reserves_the_listen_port() {
        let Outcome::Finding(finding) = check_port_range(&FakeHost::untuned(), &NEEDS) else {
            panic!("the default range is a finding");
        };
        let reserve = "sudo sysctl -w net.ipv4.ip_local_reserved_ports=\"3001\"";
        assert!(
            finding.commands.iter().any(|c| c == reserve),
            "{:?}",
            finding.commands
        );
        assert!(
            finding
                .commands
                .iter()
                .any(|c| c.contains("'net.ipv4.ip_local_reserved_ports = 3001'")),
            "persisted too: {:?}",
            finding.commands
        );
        assert!(
            finding.change.contains("listen port 3001"),
            "says why: {}",
            finding.change
        );
    }

    /// What is reserved already stays reserved, and a port reserved already (or below
    /// 1024, outside the wider range) is not asked for again.
    #[test]
    fn the_reservation_keeps_what_is_reserved_already() {
        let path = "/proc/sys/net/ipv4/ip_local_reserved_ports";
        let host = FakeHost::untuned().with_file(path, "30000-32767\n");
        let Outcome::Finding(finding) = check_port_range(&host, &NEEDS) else {
            panic!("a finding");
        };
        let reserve = "sudo sysctl -w net.ipv4.ip_local_reserved_ports=\"30000-32767,3001\"";
        assert!(
            finding.commands.iter().any(|c| c == reserve),
            "{:?}",
            finding.commands
        );
        for (list, port) in [("1000-4000", 3001), ("", 443)] {
            let host = FakeHost::untuned().with_file(path, list);
            let needs = Needs {
                listen_port: port,
                ..NEEDS
            };
            let Outcome::Finding(finding) = check_port_range(&host, &needs) else {
                panic!("a finding");
            };
            assert!(
                finding
                    .commands
                    .iter()
                    .all(|c| !c.contains("reserved_ports")),
                "{list} / {port}: {:?}",
                finding.commands
            );
        }
    }

    #[test]
    fn a_small_server_needs_few_ports() {
        let host = FakeHost::untuned();
        let small = Needs {
            max_connections: 10_000,
            ..NEEDS
        };
        assert!(matches!(check_port_range(&host, &small), Outcome::Ok(_)));
    }
}
