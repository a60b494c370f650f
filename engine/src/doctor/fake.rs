//! A host made of fed text, for the checks' unit tests.

use std::collections::HashMap;

use super::Host;

/// Files, command outputs, CPUs and io_uring, as given.
#[derive(Debug, Clone, Default)]
pub struct FakeHost {
    pub files: HashMap<String, String>,
    pub commands: HashMap<String, String>,
    pub cpus: usize,
    pub uring: bool,
}

pub const TUNED_LIMITS: &str = "\
Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max open files            1048576              1048576              files
Max locked memory         8388608              8388608              bytes
";

pub const DEFAULT_LIMITS: &str = "\
Limit                     Soft Limit           Hard Limit           Units
Max open files            1024                 524288               files
Max locked memory         65536                65536                bytes
";

impl FakeHost {
    /// A host set up as tuning/ says.
    pub fn tuned() -> FakeHost {
        let mut host = FakeHost {
            cpus: 4,
            uring: true,
            ..FakeHost::default()
        };
        for (path, text) in [
            ("/proc/self/limits", TUNED_LIMITS),
            ("/proc/sys/fs/file-max", "9223372036854775807\n"),
            ("/proc/sys/fs/nr_open", "1048576\n"),
            ("/proc/sys/net/core/somaxconn", "65535\n"),
            ("/proc/sys/net/ipv4/tcp_max_syn_backlog", "65535\n"),
            ("/proc/sys/net/ipv4/ip_local_port_range", "1024\t65535\n"),
            ("/proc/sys/kernel/io_uring_disabled", "0\n"),
            ("/proc/sys/kernel/osrelease", "6.8.0-45-generic\n"),
            ("/proc/sys/vm/max_map_count", "262144\n"),
            (
                "/sys/kernel/mm/transparent_hugepage/enabled",
                "always [madvise] never\n",
            ),
        ] {
            host.files.insert(path.to_owned(), text.to_owned());
        }
        host.commands.insert(
            "timedatectl show -p NTPSynchronized --value".to_owned(),
            "yes\n".to_owned(),
        );
        host
    }

    /// A fresh distribution's defaults.
    pub fn untuned() -> FakeHost {
        let mut host = FakeHost::tuned();
        for (path, text) in [
            ("/proc/self/limits", DEFAULT_LIMITS),
            ("/proc/sys/net/core/somaxconn", "128\n"),
            ("/proc/sys/net/ipv4/tcp_max_syn_backlog", "512\n"),
            ("/proc/sys/net/ipv4/ip_local_port_range", "32768\t60999\n"),
            ("/proc/sys/vm/max_map_count", "65530\n"),
            (
                "/sys/kernel/mm/transparent_hugepage/enabled",
                "[always] madvise never\n",
            ),
        ] {
            host.files.insert(path.to_owned(), text.to_owned());
        }
        host.commands.insert(
            "timedatectl show -p NTPSynchronized --value".to_owned(),
            "no\n".to_owned(),
        );
        host
    }

    pub fn with_file(mut self, path: &str, text: &str) -> FakeHost {
        self.files.insert(path.to_owned(), text.to_owned());
        self
    }

    pub fn without_file(mut self, path: &str) -> FakeHost {
        self.files.remove(path);
        self
    }
}

impl Host for FakeHost {
    fn read(&self, path: &str) -> Option<String> {
        self.files.get(path).cloned()
    }

    fn run(&self, program: &str, args: &[&str]) -> Option<String> {
        let line = std::iter::once(program)
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        self.commands.get(&line).cloned()
    }

    fn cpus(&self) -> usize {
        self.cpus
    }

    fn io_uring_works(&self) -> bool {
        self.uring
    }
}
