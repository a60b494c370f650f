//! `scripts/compare.sh`'s options reach the load generator's command lines as documented.
//!
//! The script runs against stand-ins: a `cargo` that builds nothing, and a target folder
//! (`CARGO_TARGET_DIR`) whose `loadgen` writes its arguments down, a warning on stderr
//! and a result line, whose `ringcast` says it listens, sleeps, and says it stopped when
//! told to, and whose `benchtable` prints nothing. Nothing is measured; the results go
//! to a folder of the test's own (`BENCH_RESULTS`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn script(path: &Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("write stand-in");
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// What a run of compare.sh against the stand-ins left.
struct Run {
    /// Each loadgen command line.
    lines: Vec<String>,
    /// The case logs, one string each.
    logs: Vec<String>,
}

/// Runs compare.sh with `args` against the stand-ins.
fn run(args: &[&str]) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("bin");
    let release = dir.path().join("target/release");
    fs::create_dir_all(&bin).expect("mkdir");
    fs::create_dir_all(&release).expect("mkdir");
    let log = dir.path().join("loadgen.log");
    script(&bin.join("cargo"), "exit 0");
    script(
        &release.join("loadgen"),
        &format!(
            "echo \"$*\" >> '{}'\necho 'loadgen: a warning' >&2\n\
             echo '{{\"server\":\"stub\",\"workload\":\"w6\"}}'",
            log.display()
        ),
    );
    // Says it stopped on SIGTERM, as the servers log their shutdown, with a line long
    // enough to cover the loadgen's.
    script(
        &release.join("ringcast"),
        "trap 'echo \"the server stopped, after the load generator wrote\"; kill $!; exit 0' TERM\n\
         echo 'listening on 127.0.0.1:9'\nsleep 30 &\nwait",
    );
    script(&release.join("benchtable"), "exit 0");
    script(&release.join("floor"), "exit 0");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let compare = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/compare.sh");
    let out = Command::new("bash")
        .arg(&compare)
        .args(args)
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", dir.path().join("target"))
        .env("BENCH_RESULTS", dir.path().join("results"))
        .output()
        .expect("run compare.sh");
    assert!(
        out.status.success(),
        "compare.sh failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = fs::read_to_string(&log)
        .expect("loadgen ran")
        .lines()
        .map(str::to_owned)
        .collect();
    let mut logs = Vec::new();
    for stamp in fs::read_dir(dir.path().join("results")).expect("results") {
        for f in fs::read_dir(stamp.expect("stamp").path()).expect("stamp folder") {
            let path = f.expect("file").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with("ringcast-") && name.ends_with(".log") {
                logs.push(fs::read_to_string(&path).expect("log"));
            }
        }
    }
    Run { lines, logs }
}

fn arg<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let mut words = line.split_whitespace();
    words.find(|w| *w == name)?;
    words.next()
}

#[test]
fn w2_max_and_subscribers_reach_w6_as_they_reach_w2() {
    let lines = run(&[
        "--servers",
        "ringcast",
        "--workloads",
        "w2 w6",
        "--w2-max",
        "40000",
        "--subscribers",
        "500",
    ])
    .lines;
    assert_eq!(lines.len(), 2, "{lines:?}");
    for (line, wl) in lines.iter().zip(["w2", "w6"]) {
        assert_eq!(arg(line, "--workload"), Some(wl), "{line}");
        // Found in review: W6 got no rate, so each server ran at 80 % of its own probe,
        // and `--subscribers` did not reach it although the README's commands pass it.
        assert_eq!(arg(line, "--rate"), Some("40000"), "{line}");
        assert_eq!(arg(line, "--subscribers"), Some("500"), "{line}");
    }
}

#[test]
fn without_the_options_w2_and_w6_probe_with_10000_connections() {
    let lines = run(&["--servers", "ringcast", "--workloads", "w2 w6"]).lines;
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in &lines {
        assert_eq!(arg(line, "--rate"), None, "{line}");
        assert_eq!(arg(line, "--subscribers"), Some("10000"), "{line}");
    }
}

#[test]
fn the_loadgens_warnings_survive_in_the_case_log_beside_the_servers_lines() {
    // Found running W6 with --quick: the server wrote its log at its own offset, so its
    // shutdown lines overwrote what the load generator had appended (W6's warning that
    // the stalled phase stayed within the buffers).
    let logs = run(&["--servers", "ringcast", "--workloads", "w6"]).logs;
    assert_eq!(logs.len(), 1, "{logs:?}");
    for want in [
        "listening on",
        "loadgen: a warning",
        "the server stopped, after the load generator wrote",
    ] {
        assert!(logs[0].contains(want), "{want:?} in {:?}", logs[0]);
    }
}
