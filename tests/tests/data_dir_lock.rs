//! One server per data directory: a second `ringcast serve` on a directory in use exits
//! non-zero with a message naming the directory and the holder's pid, and writes nothing.
//! One server per address too: a second one on the first one's port, with a data
//! directory of its own, exits non-zero naming the address (every listener sets
//! `SO_REUSEPORT`, so without the check the kernel would split clients between the two).

use std::time::Duration;

use anyhow::Result;
use ringcast_tests::{run_to_exit, Server};

#[test]
fn a_second_server_on_a_locked_data_directory_exits_with_the_holders_pid() -> Result<()> {
    let first = Server::start(&[])?;
    let data_dir = first.data_dir().display().to_string();
    let args = [
        "serve",
        "--dev",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data_dir,
    ];
    let output = run_to_exit(&args, Duration::from_secs(20))?;
    let status = output.status;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!status.success(), "second server exited 0: {stderr}");
    assert!(stderr.contains(&data_dir), "{stderr}");
    assert!(stderr.contains(&format!("pid {}", first.pid())), "{stderr}");
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("listening"),
        "the second server must not listen"
    );
    Ok(())
}

#[test]
fn the_lock_goes_with_the_process_so_a_restart_after_kill9_starts() -> Result<()> {
    let mut server = Server::start(&[])?;
    server.kill9();
    server.restart_after_kill9()?;
    assert!(server.metrics()?.contains("ringcast_connections"));
    Ok(())
}

#[test]
fn a_second_server_on_a_port_in_use_exits_naming_the_address() -> Result<()> {
    let first = Server::start(&[])?;
    let addr = first.addr().to_string();
    let other_dir = tempfile::tempdir()?;
    let data_dir = other_dir.path().display().to_string();
    let args = ["serve", "--dev", "--listen", &addr, "--data-dir", &data_dir];
    let output = run_to_exit(&args, Duration::from_secs(20))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Status 1, as for any address it cannot listen on.
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&addr), "names the address: {stderr}");
    assert!(stderr.contains("in use"), "says why: {stderr}");
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("listening"),
        "the second server must not listen"
    );
    // The first server still has the address alone.
    assert!(first.metrics()?.contains("ringcast_connections"));
    Ok(())
}
