//! Open-file limits: every connection is one descriptor, so the soft `RLIMIT_NOFILE` of
//! the server must exceed `max_connections` (the server does not raise its own limit),
//! and the system-wide `fs.file-max` / per-process ceiling `fs.nr_open` must allow it.

use super::{parse_number, sysctl_commands, Finding, Host, Needs, Outcome};

/// Descriptors beyond the connections: the server's own (`fd_table::RESERVE`: listeners,
/// io_uring and event fds, history segment files, log and lock files), four times over
/// for room to spare.
pub const HEADROOM: u64 = 4 * crate::fd_table::RESERVE as u64;

/// A soft and hard limit from `/proc/self/limits` (`None`: unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// The soft limit (what the process gets).
    pub soft: Option<u64>,
    /// The hard limit (how far the soft one may be raised without privilege).
    pub hard: Option<u64>,
}

/// Parses the line starting with `name` (e.g. `Max open files`) of `/proc/self/limits`.
pub fn parse_limit(limits: &str, name: &str) -> Option<Limit> {
    let line = limits.lines().find(|l| l.starts_with(name))?;
    let mut fields = line[name.len()..].split_whitespace();
    let value = |v: &str| -> Option<Option<u64>> {
        if v == "unlimited" {
            Some(None)
        } else {
            v.parse().ok().map(Some)
        }
    };
    let soft = value(fields.next()?)?;
    let hard = value(fields.next()?)?;
    Some(Limit { soft, hard })
}

/// Descriptors a server with `needs` may hold.
pub fn descriptors_needed(needs: &Needs) -> u64 {
    descriptors_for(needs.max_connections)
}

/// Descriptors a server with `max_connections` may hold (the server's own start-up
/// warning asks the same).
pub fn descriptors_for(max_connections: usize) -> u64 {
    max_connections as u64 + HEADROOM
}

/// The `nofile` check.
pub fn check_nofile(host: &dyn Host, needs: &Needs) -> Outcome {
    let Some(limit) = host
        .read("/proc/self/limits")
        .and_then(|text| parse_limit(&text, "Max open files"))
    else {
        return Outcome::Unknown("cannot read /proc/self/limits; check `ulimit -n`".into());
    };
    let need = descriptors_needed(needs);
    let target = need.max(1 << 20);
    let nr_open = host
        .read("/proc/sys/fs/nr_open")
        .and_then(|t| parse_number(&t));
    let file_max = host
        .read("/proc/sys/fs/file-max")
        .and_then(|t| parse_number(&t));
    let mut commands = Vec::new();
    let mut problems = Vec::new();
    if limit.soft.is_some_and(|soft| soft < need) {
        problems.push(format!(
            "soft open-file limit {} < {need} (max_connections {} + {HEADROOM})",
            limit.soft.unwrap_or(0),
            needs.max_connections
        ));
        if limit.hard.is_none_or(|hard| hard >= need) {
            let to = limit.hard.map_or(target, |hard| hard.min(target));
            commands.push(format!(
                "ulimit -n {to}   # in the shell that starts ringcast"
            ));
        } else {
            commands.push(format!(
                "printf 'ringcast soft nofile {target}\\nringcast hard nofile {target}\\n' | sudo tee /etc/security/limits.d/ringcast.conf   # then log in again"
            ));
        }
        commands.push(format!(
            "sudo systemctl edit ringcast   # [Service] LimitNOFILE={target} (tuning/ringcast.service has it)"
        ));
    }
    if nr_open.is_some_and(|n| n < need) {
        problems.push(format!("fs.nr_open {} < {need}", nr_open.unwrap_or(0)));
        commands.extend(sysctl_commands("fs.nr_open", &target.to_string()));
    }
    if file_max.is_some_and(|n| n < need) {
        problems.push(format!("fs.file-max {} < {need}", file_max.unwrap_or(0)));
        commands.extend(sysctl_commands("fs.file-max", &(2 * target).to_string()));
    }
    if problems.is_empty() {
        let soft = limit.soft.map_or("unlimited".to_owned(), |s| s.to_string());
        return Outcome::Ok(format!(
            "soft open-file limit {soft} ≥ {need} (max_connections + {HEADROOM})"
        ));
    }
    Outcome::Finding(Finding {
        problem: problems.join("; "),
        change: "every connection is one descriptor: let the server open max_connections + headroom (it does not raise its own limit)".into(),
        commands,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::fake::{FakeHost, DEFAULT_LIMITS, TUNED_LIMITS};

    fn needs(max_connections: usize) -> Needs {
        Needs {
            max_connections,
            shards: 2,
            history_bytes: None,
            listen_port: 3001,
        }
    }

    #[test]
    fn limits_are_parsed_from_proc_text() {
        assert_eq!(
            parse_limit(DEFAULT_LIMITS, "Max open files"),
            Some(Limit {
                soft: Some(1024),
                hard: Some(524288)
            })
        );
        assert_eq!(
            parse_limit(TUNED_LIMITS, "Max cpu time"),
            Some(Limit {
                soft: None,
                hard: None
            })
        );
        assert_eq!(parse_limit("garbage", "Max open files"), None);
    }

    #[test]
    fn a_low_soft_limit_is_a_finding_with_ulimit_when_the_hard_one_allows() {
        let host = FakeHost::untuned();
        let Outcome::Finding(f) = check_nofile(&host, &needs(100_000)) else {
            panic!("expected a finding");
        };
        assert!(f.problem.contains("1024 < 104096"), "{}", f.problem);
        assert!(
            f.commands[0].starts_with("ulimit -n 524288"),
            "{:?}",
            f.commands
        );
    }

    #[test]
    fn a_low_hard_limit_needs_limits_conf_and_nr_open_is_checked() {
        let host = FakeHost::untuned()
            .with_file("/proc/sys/fs/nr_open", "1048576\n")
            .with_file(
                "/proc/self/limits",
                "Max open files            1024                 4096                 files\n",
            );
        let Outcome::Finding(f) = check_nofile(&host, &needs(2_000_000)) else {
            panic!("expected a finding");
        };
        assert!(f.commands[0].contains("limits.d"), "{:?}", f.commands);
        assert!(
            f.problem.contains("fs.nr_open 1048576 < 2004096"),
            "{}",
            f.problem
        );
    }

    #[test]
    fn enough_is_ok_and_unreadable_is_unknown() {
        assert!(matches!(
            check_nofile(&FakeHost::tuned(), &needs(100_000)),
            Outcome::Ok(_)
        ));
        let host = FakeHost::tuned().without_file("/proc/self/limits");
        assert!(matches!(
            check_nofile(&host, &needs(10)),
            Outcome::Unknown(_)
        ));
    }
}
