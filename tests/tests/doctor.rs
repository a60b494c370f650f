//! `ringcast doctor` on this machine: it prints every check by name, a command for each
//! finding, and exits 0 (nothing to change) or 1 (findings), never crashing; `--config`
//! sets what it checks for.

use std::process::Command;

use anyhow::Result;
use ringcast_tests::{config_file, ringcast_bin};

const CHECKS: &[&str] = &[
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

fn doctor(args: &[&str]) -> Result<(i32, String, String)> {
    let out = Command::new(ringcast_bin())
        .arg("doctor")
        .args(args)
        .output()?;
    let code = out.status.code().unwrap_or(-1);
    Ok((
        code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn doctor_checks_this_host_and_says_whether_anything_is_wrong() -> Result<()> {
    let (code, stdout, stderr) = doctor(&[])?;
    assert!(code == 0 || code == 1, "exit {code}\n{stdout}\n{stderr}");
    for name in CHECKS {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no line for {name}:\n{stdout}"));
        let status = line.split_whitespace().next().unwrap_or("");
        assert!(["ok", "FIX", "?"].contains(&status), "{line}");
    }
    let findings = stdout.lines().filter(|l| l.starts_with("FIX")).count();
    assert_eq!(code == 1, findings > 0, "exit code vs findings:\n{stdout}");
    if findings > 0 {
        assert!(
            stdout.contains("run:"),
            "each finding has a command:\n{stdout}"
        );
        assert!(
            stdout.contains(&format!("{findings} finding(s)")),
            "{stdout}"
        );
    } else {
        assert!(stdout.contains("no findings"), "{stdout}");
    }
    Ok(())
}

#[test]
fn doctor_reads_max_connections_and_shards_from_the_config() -> Result<()> {
    let (_dir, path) = config_file("max_connections = 10\nshards = 1\n")?;
    let (code, stdout, _) = doctor(&["--config", &path.display().to_string()])?;
    assert!(code == 0 || code == 1, "{stdout}");
    assert!(
        stdout.contains("max_connections = 10, shards = 1"),
        "{stdout}"
    );
    // The open-file need is computed from the file: 10 connections + 4,096 headroom.
    let nofile = stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("nofile"))
        .unwrap_or_default();
    assert!(nofile.contains("4106"), "{stdout}");
    let (_dir, bad) = config_file("shards = 0\n")?;
    let (code, _, stderr) = doctor(&["--config", &bad.display().to_string()])?;
    assert_eq!(code, 2, "{stderr}");
    Ok(())
}
