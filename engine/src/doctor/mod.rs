//! `ringcast doctor`: checks the host for running Ringcast at scale and says, for each
//! finding, what to change and the exact command. One file per role: [`limits`]
//! (open files), [`net`] (accept and SYN backlogs, ephemeral ports), [`uring`]
//! (io_uring, memlock), [`memory`] (`vm.max_map_count`, transparent huge pages),
//! [`cpu`] (CPUs vs shards), [`time`] (clock sync).
//!
//! ```text
//!  Host (ThisHost: /proc, /sys, timedatectl; tests: a fake) ──► each check parses its
//!  text with a pure function ──► Outcome (ok / finding / unknown) ──► Report::render
//! ```
//!
//! Every check reads through [`Host`], so the parsers and thresholds are unit-tested on
//! fed text. The process's own limits are read (`/proc/self/limits`): run `doctor` the
//! way the server runs (same user, same unit) for them to mean the server's.

pub mod cpu;
pub mod limits;
pub mod memory;
pub mod net;
pub mod time;
pub mod uring;

use std::fmt::Write as _;

use crate::config::Config;

/// Where the checks read the host.
pub trait Host {
    /// The text of a file (`/proc/…`, `/sys/…`), `None` when it cannot be read.
    fn read(&self, path: &str) -> Option<String>;
    /// The standard output of `program args` when it runs and exits 0.
    fn run(&self, program: &str, args: &[&str]) -> Option<String>;
    /// CPUs this process may run on (affinity and cgroup quota included).
    fn cpus(&self) -> usize;
    /// Whether an io_uring instance can be created here.
    fn io_uring_works(&self) -> bool;
}

/// The real host.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThisHost;

impl Host for ThisHost {
    fn read(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }

    fn run(&self, program: &str, args: &[&str]) -> Option<String> {
        let out = std::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn cpus(&self) -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    fn io_uring_works(&self) -> bool {
        monoio::utils::detect_uring()
    }
}

/// What the server will need, from its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// `max_connections`.
    pub max_connections: usize,
    /// `shards`.
    pub shards: usize,
    /// `[history] max_total_bytes`, if bounded.
    pub history_bytes: Option<u64>,
    /// The port of `listen` (0: the kernel picks one).
    pub listen_port: u16,
}

impl Needs {
    /// The needs of a server running `config`.
    pub fn of(config: &Config) -> Needs {
        Needs {
            max_connections: config.max_connections,
            shards: config.shards,
            history_bytes: config.history.max_total_bytes,
            listen_port: config.listen.port(),
        }
    }
}

/// A problem and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What is wrong, with the numbers.
    pub problem: String,
    /// What to change, and why.
    pub change: String,
    /// The exact commands (first: now; then: to persist).
    pub commands: Vec<String>,
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Fine, with what was seen.
    Ok(String),
    /// Something to change.
    Finding(Finding),
    /// Could not tell (not readable here); with how to check by hand.
    Unknown(String),
}

/// One check's name and result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Stable name (`nofile`, `somaxconn`, …).
    pub name: &'static str,
    /// What it found.
    pub outcome: Outcome,
}

/// Every check's result, in a fixed order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// What the checks assumed.
    pub needs: Needs,
    /// The results.
    pub checks: Vec<Checked>,
}

/// The names of every check, in the order they run.
pub const CHECKS: &[&str] = &[
    "nofile",
    "somaxconn",
    "syn_backlog",
    "io_uring",
    "memlock",
    "max_map_count",
    "cpus",
    "port_range",
    "thp",
    "time_sync",
];

/// Runs every check against `host` for a server with `needs`.
pub fn run(host: &dyn Host, needs: &Needs) -> Report {
    let checks = vec![
        Checked {
            name: "nofile",
            outcome: limits::check_nofile(host, needs),
        },
        Checked {
            name: "somaxconn",
            outcome: net::check_somaxconn(host),
        },
        Checked {
            name: "syn_backlog",
            outcome: net::check_syn_backlog(host),
        },
        Checked {
            name: "io_uring",
            outcome: uring::check_io_uring(host),
        },
        Checked {
            name: "memlock",
            outcome: uring::check_memlock(host, needs),
        },
        Checked {
            name: "max_map_count",
            outcome: memory::check_max_map_count(host, needs),
        },
        Checked {
            name: "cpus",
            outcome: cpu::check_cpus(host, needs),
        },
        Checked {
            name: "port_range",
            outcome: net::check_port_range(host, needs),
        },
        Checked {
            name: "thp",
            outcome: memory::check_thp(host),
        },
        Checked {
            name: "time_sync",
            outcome: time::check_time_sync(host),
        },
    ];
    Report {
        needs: *needs,
        checks,
    }
}

impl Report {
    /// Whether any check found something to change.
    pub fn has_findings(&self) -> bool {
        self.checks
            .iter()
            .any(|c| matches!(c.outcome, Outcome::Finding(_)))
    }

    /// The text `ringcast doctor` prints.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "ringcast doctor: checking this host for max_connections = {}, shards = {}",
            self.needs.max_connections, self.needs.shards
        );
        let _ = writeln!(out);
        let mut findings = 0;
        for check in &self.checks {
            match &check.outcome {
                Outcome::Ok(seen) => {
                    let _ = writeln!(out, "ok    {:<14} {seen}", check.name);
                }
                Outcome::Unknown(why) => {
                    let _ = writeln!(out, "?     {:<14} {why}", check.name);
                }
                Outcome::Finding(f) => {
                    findings += 1;
                    let _ = writeln!(out, "FIX   {:<14} {}", check.name, f.problem);
                    let _ = writeln!(out, "      {:<14} change: {}", "", f.change);
                    for command in &f.commands {
                        let _ = writeln!(out, "      {:<14} run:    {command}", "");
                    }
                }
            }
        }
        let _ = writeln!(out);
        if findings == 0 {
            let _ = writeln!(out, "no findings");
        } else {
            let _ = writeln!(
                out,
                "{findings} finding(s); tuning/README.md explains each setting"
            );
        }
        out
    }
}

/// Parses a file holding one integer (`/proc/sys/...`).
pub fn parse_number(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// The command that sets a sysctl now, and the line that keeps it across reboots.
pub fn sysctl_commands(key: &str, value: &str) -> Vec<String> {
    vec![
        format!("sudo sysctl -w {key}=\"{value}\""),
        format!(
            "echo '{key} = {value}' | sudo tee -a /etc/sysctl.d/60-ringcast.conf   # persist (or use tuning/sysctl.conf)"
        ),
    ]
}

#[cfg(test)]
pub(crate) mod fake;

#[cfg(test)]
mod tests {
    use super::fake::FakeHost;
    use super::*;

    #[test]
    fn a_tuned_host_has_no_findings_and_every_check_is_named() {
        let host = FakeHost::tuned();
        let needs = Needs {
            max_connections: 100_000,
            shards: 4,
            history_bytes: None,
            listen_port: 3001,
        };
        let report = run(&host, &needs);
        let names: Vec<&str> = report.checks.iter().map(|c| c.name).collect();
        assert_eq!(names, CHECKS);
        assert!(!report.has_findings(), "{}", report.render());
        let text = report.render();
        for name in CHECKS {
            assert!(text.contains(name), "{name} in\n{text}");
        }
        assert!(text.contains("no findings"));
    }

    #[test]
    fn a_default_host_has_findings_with_commands() {
        let host = FakeHost::untuned();
        let needs = Needs {
            max_connections: 100_000,
            shards: 8,
            history_bytes: None,
            listen_port: 3001,
        };
        let report = run(&host, &needs);
        assert!(report.has_findings());
        let text = report.render();
        assert!(text.contains("FIX   nofile"), "{text}");
        assert!(
            text.contains("sudo sysctl -w net.core.somaxconn=\"4096\""),
            "{text}"
        );
        assert!(text.contains("FIX   cpus"), "{text}");
    }
}
