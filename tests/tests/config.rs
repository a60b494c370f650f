//! Wire contract: every flag has a twin key in the `--config` TOML file; a flag beats the
//! file; `--help` documents every flag.

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use ringcast_tests::{
    config_file, ringcast_bin, run_to_exit, workspace_root, Client, ConnectError, Server,
};

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

/// The README's ```toml blocks, in order.
fn readme_toml_blocks() -> Result<Vec<String>> {
    let readme = std::fs::read_to_string(workspace_root().join("README.md"))?;
    Ok(readme
        .split("```toml\n")
        .skip(1)
        .map(|block| block.split("\n```").next().unwrap_or(block).to_owned())
        .collect())
}

/// The README's reference ```toml block (the one with every setting: tenant `acme`),
/// with each quoted placeholder (a string holding `…`, such as `"…at least 32 bytes…"`)
/// replaced by a distinct value long enough for an API key and a token secret alike.
fn readme_config() -> Result<String> {
    let blocks = readme_toml_blocks()?;
    let mut reference = blocks.iter().filter(|b| b.contains("id = \"acme\""));
    let block = reference
        .next()
        .context("README.md has no ```toml block with tenant acme")?;
    assert!(
        reference.next().is_none(),
        "README.md has more than one ```toml block with tenant acme; say which one this test reads"
    );
    let mut placeholders = 0;
    let lines: Vec<String> = block
        .lines()
        .map(|line| {
            // Between quotes: odd pieces (the block's strings have no escaped quotes).
            let pieces: Vec<String> = line
                .split('"')
                .enumerate()
                .map(|(i, piece)| {
                    if i % 2 == 1 && piece.contains('\u{2026}') {
                        placeholders += 1;
                        format!("readme-placeholder-{placeholders:02}-0123456789abcdef")
                    } else {
                        piece.to_owned()
                    }
                })
                .collect();
            pieces.join("\"")
        })
        .collect();
    assert!(placeholders > 0, "no placeholders found in:\n{block}");
    Ok(lines.join("\n") + "\n")
}

/// Found in review: the README's example set `allowed_origins` and
/// `allow_anonymous_ren` twice in `[[tenants]]`, which TOML refuses ("duplicate key"),
/// so the file the README shows did not load.
#[test]
fn the_readme_example_config_loads() -> Result<()> {
    let text = readme_config()?;
    let (_dir, path) = config_file(&text)?;
    let out = run_to_exit(
        &["check-config", &path.display().to_string()],
        Duration::from_secs(30),
    )?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "ringcast check-config on the README's example: {}\n{stderr}\n{text}",
        out.status
    );
    assert!(
        stdout.contains("default_tenant = acme")
            && stdout.contains("tenant acme: plan Pro")
            && stdout.contains("allowed_origins https://app.acme.example"),
        "what check-config says it would run:\n{stdout}"
    );
    Ok(())
}

/// The README's file for trying `private-` channels in dev mode (the `dev` tenant with a
/// token key): the server runs on it alone, and a token `ringcast token` mints from it
/// lets a WebSocket subscribe to a private channel (found in a SPEC audit: `--dev` alone
/// has no key, so private channels could not be tried, and the README did not say how).
#[test]
fn the_readme_dev_file_with_a_token_key_opens_private_channels() -> Result<()> {
    // `--dev` alone: the tokens route says how to get a key.
    let plain = Server::start(&[])?;
    let body = r#"{"channel":"private-room","permissions":["subscribe"],"expiresIn":60}"#;
    let request = format!(
        "POST /api/realtime/tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let resp = ringcast_tests::http_request(plain.addr(), request.as_bytes())?;
    assert_eq!(resp.status, 400, "{}", resp.body_text());
    assert!(
        resp.body_text().contains("[[tenants.token_keys]]"),
        "{}",
        resp.body_text()
    );

    let blocks = readme_toml_blocks()?;
    let text = blocks
        .iter()
        .find(|b| b.contains("id = \"dev\"") && b.contains("token_keys"))
        .context("README.md has no ```toml block declaring the dev tenant with a token key")?;
    let (server, path) = Server::start_with_config(text, &[])?;
    let out = Command::new(ringcast_bin())
        .args(["token", "--config"])
        .arg(&path)
        .args([
            "--tenant",
            "dev",
            "--channel",
            "private-room",
            "--permissions",
            "subscribe",
        ])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ringcast token: {stderr}");
    let token = String::from_utf8(out.stdout)?.trim().to_owned();
    let mut client = Client::open(&server, "")?;
    client.send_json(&serde_json::json!({"action":"subscribe","channel":"private-room"}))?;
    let refused = client.expect_event("error")?;
    assert_eq!(refused["data"]["code"], "unauthorized", "{refused}");
    client.send_json(
        &serde_json::json!({"action":"subscribe","channel":"private-room","token":token}),
    )?;
    client.expect_event("subscribed")?;
    Ok(())
}
