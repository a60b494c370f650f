//! Memory settings: `vm.max_map_count` (history segments are memory-mapped, 64 MiB
//! each, and the allocator maps too) and transparent huge pages.

use super::{parse_number, sysctl_commands, Finding, Host, Needs, Outcome};

/// The kernel's default `vm.max_map_count`.
pub const DEFAULT_MAX_MAP_COUNT: u64 = 65_530;
/// Bytes of one history segment file (`store`), each one mapping (two areas once its
/// used part and its never-used tail are advised apart at start-up).
pub const SEGMENT_BYTES: u64 = 64 << 20;

/// Mappings a server with `needs` may hold: three per history segment (its used part
/// and its tail, which differ in read-ahead, and the allocator's own), plus room; at
/// least the kernel default.
pub fn mappings_needed(needs: &Needs) -> u64 {
    let segments = needs.history_bytes.map_or(0, |b| b.div_ceil(SEGMENT_BYTES));
    DEFAULT_MAX_MAP_COUNT.max(3 * segments + 16_384)
}

/// The `max_map_count` check.
pub fn check_max_map_count(host: &dyn Host, needs: &Needs) -> Outcome {
    let path = "/proc/sys/vm/max_map_count";
    let Some(value) = host.read(path).and_then(|t| parse_number(&t)) else {
        return Outcome::Unknown(format!(
            "cannot read {path}; check `sysctl vm.max_map_count`"
        ));
    };
    let need = mappings_needed(needs);
    if value >= need {
        return Outcome::Ok(format!("vm.max_map_count = {value} ≥ {need}"));
    }
    let to = need.max(262_144);
    Outcome::Finding(Finding {
        problem: format!("vm.max_map_count = {value} < {need}"),
        change: "history segments are memory-mapped (64 MiB each): past the limit a new segment cannot be mapped".into(),
        commands: sysctl_commands("vm.max_map_count", &to.to_string()),
    })
}

/// The selected value of a `[a] b c` sysfs choice (`always [madvise] never`).
pub fn parse_choice(text: &str) -> Option<&str> {
    let start = text.find('[')? + 1;
    let end = start + text[start..].find(']')?;
    Some(&text[start..end])
}

/// The `thp` check.
pub fn check_thp(host: &dyn Host) -> Outcome {
    let path = "/sys/kernel/mm/transparent_hugepage/enabled";
    let Some(text) = host.read(path) else {
        return Outcome::Ok("transparent huge pages not configurable here".into());
    };
    match parse_choice(&text) {
        Some("always") => Outcome::Finding(Finding {
            problem: "transparent huge pages: always".into(),
            change: "use madvise: with `always`, khugepaged compaction can stall shard threads and many small allocations grow RSS (general advice for latency-sensitive servers; not measured on Ringcast)".into(),
            commands: vec![
                format!("echo madvise | sudo tee {path}"),
                "add transparent_hugepage=madvise to the kernel command line   # persist".into(),
            ],
        }),
        Some(choice) => Outcome::Ok(format!("transparent huge pages: {choice}")),
        None => Outcome::Unknown(format!("cannot parse {path}: {}", text.trim())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::fake::FakeHost;

    #[test]
    fn choices_parse() {
        assert_eq!(parse_choice("always [madvise] never\n"), Some("madvise"));
        assert_eq!(parse_choice("[always] madvise never"), Some("always"));
        assert_eq!(parse_choice("always"), None);
    }

    #[test]
    fn thp_always_is_a_finding() {
        assert!(matches!(
            check_thp(&FakeHost::untuned()),
            Outcome::Finding(_)
        ));
        assert!(matches!(check_thp(&FakeHost::tuned()), Outcome::Ok(_)));
    }

    #[test]
    fn the_map_count_grows_with_a_bounded_history() {
        let mut needs = Needs {
            max_connections: 1,
            shards: 1,
            history_bytes: None,
            listen_port: 3001,
        };
        assert_eq!(mappings_needed(&needs), DEFAULT_MAX_MAP_COUNT);
        assert!(matches!(
            check_max_map_count(&FakeHost::untuned(), &needs),
            Outcome::Ok(_)
        ));
        needs.history_bytes = Some(16 << 40); // 16 TiB: 262,144 segments
        assert_eq!(mappings_needed(&needs), 3 * 262_144 + 16_384);
        assert!(matches!(
            check_max_map_count(&FakeHost::tuned(), &needs),
            Outcome::Finding(_)
        ));
    }
}
