//! io_uring: shards run on it when the kernel allows, and on monoio's epoll driver
//! (slower, with a log line) otherwise. Kernels before 5.12 charge each ring to the
//! process's locked-memory limit (`RLIMIT_MEMLOCK`); later ones charge the memory cgroup.

use super::limits::parse_limit;
use super::{Finding, Host, Needs, Outcome};

/// Locked memory a shard's rings need on kernels before 5.12: monoio's (its default of
/// 1,024 entries is about 100 KiB) and the send ring's (4,096 submissions of 64 B and
/// 32,768 completions of 16 B, about 780 KiB), with room.
pub const MEMLOCK_PER_SHARD: u64 = 1280 * 1024;

/// `(major, minor)` of a kernel release string (`6.8.0-45-generic`).
pub fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The `io_uring` check.
pub fn check_io_uring(host: &dyn Host) -> Outcome {
    let disabled = host
        .read("/proc/sys/kernel/io_uring_disabled")
        .and_then(|t| super::parse_number(&t));
    if host.io_uring_works() {
        return Outcome::Ok("io_uring available: shards run on monoio's io_uring driver".into());
    }
    let mut commands = Vec::new();
    if disabled.is_some_and(|d| d > 0) {
        commands.extend(super::sysctl_commands("kernel.io_uring_disabled", "0"));
    }
    commands.push(
        "docker/podman: run with a seccomp profile that allows io_uring_setup, io_uring_enter, io_uring_register".into(),
    );
    Outcome::Finding(Finding {
        problem: match disabled {
            Some(d) if d > 0 => format!("io_uring is disabled (kernel.io_uring_disabled = {d})"),
            _ => "io_uring cannot be set up here (old kernel, seccomp, or a sandbox)".into(),
        },
        change: "shards fall back to the epoll driver; allow io_uring for the fast path".into(),
        commands,
    })
}

/// The `memlock` check.
pub fn check_memlock(host: &dyn Host, needs: &Needs) -> Outcome {
    let Some(version) = host
        .read("/proc/sys/kernel/osrelease")
        .and_then(|t| parse_kernel_version(&t))
    else {
        return Outcome::Unknown("cannot read the kernel version".into());
    };
    if version >= (5, 12) {
        return Outcome::Ok(format!(
            "kernel {}.{}: io_uring rings are charged to the memory cgroup, not RLIMIT_MEMLOCK",
            version.0, version.1
        ));
    }
    let Some(limit) = host
        .read("/proc/self/limits")
        .and_then(|t| parse_limit(&t, "Max locked memory"))
    else {
        return Outcome::Unknown("cannot read /proc/self/limits; check `ulimit -l`".into());
    };
    let need = needs.shards as u64 * MEMLOCK_PER_SHARD;
    match limit.soft {
        Some(soft) if soft < need => Outcome::Finding(Finding {
            problem: format!(
                "kernel {}.{} charges io_uring rings to RLIMIT_MEMLOCK: {soft} bytes < {need} ({} shards × {MEMLOCK_PER_SHARD})",
                version.0, version.1, needs.shards
            ),
            change: "raise the locked-memory limit, or shards fall back to epoll".into(),
            commands: vec![
                format!("ulimit -l {}   # KiB, in the shell that starts ringcast", need.div_ceil(1024)),
                "sudo systemctl edit ringcast   # [Service] LimitMEMLOCK=infinity".into(),
            ],
        }),
        soft => Outcome::Ok(format!(
            "locked-memory limit {} is enough for {} rings",
            soft.map_or("unlimited".to_owned(), |s| s.to_string()),
            needs.shards
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::fake::FakeHost;

    const NEEDS: Needs = Needs {
        max_connections: 1000,
        shards: 64,
        history_bytes: None,
        listen_port: 3001,
    };

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(parse_kernel_version("6.8.0-45-generic\n"), Some((6, 8)));
        assert_eq!(parse_kernel_version("5.4.0"), Some((5, 4)));
        assert_eq!(parse_kernel_version("x"), None);
    }

    #[test]
    fn memlock_matters_only_before_5_12() {
        let new = FakeHost::untuned();
        assert!(matches!(check_memlock(&new, &NEEDS), Outcome::Ok(_)));
        let old = FakeHost::untuned().with_file("/proc/sys/kernel/osrelease", "5.4.0-100\n");
        let Outcome::Finding(f) = check_memlock(&old, &NEEDS) else {
            panic!("expected a finding");
        };
        assert!(
            f.problem.contains("65536 bytes < 83886080"),
            "{}",
            f.problem
        );
    }

    #[test]
    fn io_uring_unavailable_is_a_finding_naming_the_sysctl_when_set() {
        assert!(matches!(check_io_uring(&FakeHost::tuned()), Outcome::Ok(_)));
        let mut host = FakeHost::tuned().with_file("/proc/sys/kernel/io_uring_disabled", "2\n");
        host.uring = false;
        let Outcome::Finding(f) = check_io_uring(&host) else {
            panic!("expected a finding");
        };
        assert!(f.problem.contains("= 2"));
        assert!(f.commands[0].contains("kernel.io_uring_disabled=\"0\""));
    }
}
