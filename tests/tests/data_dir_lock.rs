//! One server per data directory: a second `ringcast serve` on a directory in use exits
//! non-zero with a message naming the directory and the holder's pid, and writes nothing.

use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use ringcast_tests::{ringcast_bin, Server};

#[test]
fn a_second_server_on_a_locked_data_directory_exits_with_the_holders_pid() -> Result<()> {
    let first = Server::start(&[])?;
    let data_dir = first.data_dir().display().to_string();
    let second = Command::new(ringcast_bin())
        .args([
            "serve",
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data_dir,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let pid = second.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(second.wait_with_output());
    });
    let output = match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(output) => output?,
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            anyhow::bail!("the second server did not exit");
        }
    };
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
