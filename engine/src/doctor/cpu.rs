//! CPUs vs shards: one shard is one thread pinned to one CPU; more shards than CPUs
//! this process may use means shards share cores (pinned modulo the CPU list).

use super::{Finding, Host, Needs, Outcome};

/// The `cpus` check.
pub fn check_cpus(host: &dyn Host, needs: &Needs) -> Outcome {
    let cpus = host.cpus();
    if needs.shards > cpus {
        return Outcome::Finding(Finding {
            problem: format!("{} shards > {cpus} CPUs available to this process", needs.shards),
            change: "shards pinned to the same core take turns; run one shard per CPU (fewer if a TLS terminator or NIC interrupts need cores)".into(),
            commands: vec![format!(
                "ringcast serve --shards {cpus} …   # or `shards = {cpus}` in the config file"
            )],
        });
    }
    let spare = cpus - needs.shards;
    Outcome::Ok(if spare == 0 {
        format!("{} shards on {cpus} CPUs", needs.shards)
    } else {
        format!(
            "{} shards on {cpus} CPUs ({spare} left for interrupts, a TLS terminator, the OS)",
            needs.shards
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::fake::FakeHost;

    #[test]
    fn more_shards_than_cpus_is_a_finding() {
        let host = FakeHost::tuned(); // 4 CPUs
        let needs = |shards| Needs {
            max_connections: 1,
            shards,
            history_bytes: None,
            listen_port: 3001,
        };
        assert!(matches!(check_cpus(&host, &needs(4)), Outcome::Ok(_)));
        assert!(matches!(check_cpus(&host, &needs(2)), Outcome::Ok(_)));
        let Outcome::Finding(f) = check_cpus(&host, &needs(8)) else {
            panic!("expected a finding");
        };
        assert!(f.commands[0].contains("--shards 4"));
    }
}
