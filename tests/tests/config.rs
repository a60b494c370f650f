//! Wire contract: every flag has a twin key in the `--config` TOML file; a flag beats the
//! file; `--help` documents every flag.

use std::net::TcpStream;
use std::process::Command;

use anyhow::Result;
use ringcast_tests::{ringcast_bin, Client, ConnectError, Server};

const SERVE_FLAGS: &[&str] = &[
    "--config",
    "--listen",
    "--shards",
    "--data-dir",
    "--dev",
    "--max-connections",
    "--max-message-bytes",
    "--outbound-buffer-bytes",
    "--handshake-timeout-ms",
];

fn write_config(dir: &std::path::Path, data_dir: &std::path::Path) -> Result<std::path::PathBuf> {
    let path = dir.join("ringcast.toml");
    let data_dir = data_dir.display().to_string().replace('\\', "\\\\");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\nshards = 3\nmax_connections = 2\ndev = true\ndata_dir = \"{data_dir}\"\n\
             max_message_bytes = 65536\n"
        ),
    )?;
    Ok(path)
}

fn expect_503(server: &Server) {
    let stream = TcpStream::connect(server.addr()).expect("tcp connect");
    match Client::handshake(stream, server.addr(), "") {
        Err(ConnectError::Http(resp)) => resp.assert_error(503, "overloaded"),
        Err(e) => panic!("expected HTTP 503, got {e}"),
        Ok(_) => panic!("connection accepted beyond max_connections"),
    }
}

#[test]
fn config_file_sets_listen_shards_max_connections() -> Result<()> {
    let conf_dir = tempfile::tempdir()?;
    let data_dir = tempfile::tempdir()?;
    let path = write_config(conf_dir.path(), data_dir.path())?;
    let server = Server::start_raw(
        vec![
            "serve".into(),
            "--config".into(),
            path.display().to_string(),
        ],
        data_dir,
    )?;
    assert_eq!(server.shards(), 3, "shards from the file");
    assert!(
        server.addr().ip().is_loopback() && server.addr().port() != 0,
        "listen from the file: {}",
        server.addr()
    );

    let mut a = Client::open(&server, "")?;
    let mut b = Client::open(&server, "")?;
    expect_503(&server);
    a.ping_pong()?;
    b.ping_pong()?;
    // max_message_bytes from the file.
    a.send_json(
        &serde_json::json!({"action": "publish", "channel": "c", "data": "x".repeat(70_000)}),
    )?;
    assert_eq!(a.expect_close(ringcast_tests::TIMEOUT)?, 1009);
    Ok(())
}

#[test]
fn flags_beat_the_config_file() -> Result<()> {
    let conf_dir = tempfile::tempdir()?;
    let data_dir = tempfile::tempdir()?;
    let path = write_config(conf_dir.path(), data_dir.path())?;
    let args = [
        "serve",
        "--config",
        &path.display().to_string(),
        "--shards",
        "1",
        "--max-connections",
        "3",
    ]
    .map(String::from)
    .to_vec();
    let server = Server::start_raw(args, data_dir)?;
    assert_eq!(server.shards(), 1, "--shards beats the file");
    let _clients: Vec<Client> = (0..3)
        .map(|_| Client::open(&server, ""))
        .collect::<Result<_>>()?;
    expect_503(&server);
    Ok(())
}

#[test]
fn unknown_config_key_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "listen = \"127.0.0.1:0\"\nno_such_key = 1\n")?;
    let out = Command::new(ringcast_bin())
        .args(["serve", "--config"])
        .arg(&path)
        .output()?;
    assert!(
        !out.status.success(),
        "an unknown key must be an error, not silently ignored"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no_such_key"),
        "the error names the key: {stderr}"
    );
    Ok(())
}

#[test]
fn help_mentions_every_flag() -> Result<()> {
    let out = Command::new(ringcast_bin()).arg("--help").output()?;
    assert!(out.status.success(), "ringcast --help: {}", out.status);
    let top = String::from_utf8_lossy(&out.stdout);
    assert!(
        top.contains("serve"),
        "ringcast --help lists `serve`:\n{top}"
    );

    let out = Command::new(ringcast_bin())
        .args(["serve", "--help"])
        .output()?;
    assert!(
        out.status.success(),
        "ringcast serve --help: {}",
        out.status
    );
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in SERVE_FLAGS {
        assert!(
            help.contains(flag),
            "`ringcast serve --help` does not mention {flag}:\n{help}"
        );
    }
    Ok(())
}
