//! Runs Node scripts for the tests that drive real clients (the official SDK, a browser):
//! bounded in time, output collected by threads so a chatty script never blocks on a full
//! pipe, and checked for the script's `<name>: ok` line.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// What a finished script printed.
#[derive(Debug)]
pub struct NodeOutput {
    /// Its exit status was 0.
    pub success: bool,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
}

/// A Node script to run: `node DIR/SCRIPT ARGS…` in DIR.
#[derive(Debug)]
pub struct NodeScript {
    dir: PathBuf,
    script: String,
    args: Vec<String>,
    env: Vec<(String, OsString)>,
    timeout: Duration,
}

impl NodeScript {
    /// `script` in `dir` (which holds its node_modules); 30 s unless [`NodeScript::timeout`].
    pub fn new(dir: &Path, script: &str) -> NodeScript {
        NodeScript {
            dir: dir.to_owned(),
            script: script.to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            timeout: Duration::from_secs(30),
        }
    }

    /// Appends arguments.
    pub fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> NodeScript {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the script.
    pub fn env(mut self, name: &str, value: impl Into<OsString>) -> NodeScript {
        self.env.push((name.to_owned(), value.into()));
        self
    }

    /// How long the script may run before it is killed.
    pub fn timeout(mut self, timeout: Duration) -> NodeScript {
        self.timeout = timeout;
        self
    }

    /// Runs the script to its end (or kills it at the timeout).
    pub fn run(&self) -> Result<NodeOutput> {
        let mut cmd = Command::new("node");
        cmd.arg(self.dir.join(&self.script))
            .args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in &self.env {
            cmd.env(name, value);
        }
        let mut child = cmd
            .spawn()
            .context("running node (Node 20 or newer is required)")?;
        let stdout = drain(child.stdout.take().expect("piped stdout"));
        let stderr = drain(child.stderr.take().expect("piped stderr"));
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let (out, err) = (join(stdout), join(stderr));
                bail!(
                    "node {} did not finish within {:?}\nstdout:\n{out}\nstderr:\n{err}",
                    self.script,
                    self.timeout
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(NodeOutput {
            success: status.success(),
            stdout: join(stdout),
            stderr: join(stderr),
        })
    }

    /// Runs the script and checks that it exited 0 and printed `<name>: ok` (the name
    /// being the script's file name without `.mjs`); `context` is added to a failure.
    pub fn run_ok(&self, context: impl FnOnce() -> String) -> Result<NodeOutput> {
        let out = self.run()?;
        let name = self.script.trim_end_matches(".mjs");
        let name = name.rsplit('/').next().unwrap_or(name);
        if !out.success || !out.stdout.contains(&format!("{name}: ok")) {
            bail!(
                "{} failed:\nstdout:\n{}\nstderr:\n{}\n{}",
                self.script,
                out.stdout,
                out.stderr,
                context()
            );
        }
        Ok(out)
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn join(reader: std::thread::JoinHandle<String>) -> String {
    reader.join().unwrap_or_default()
}

/// The directory cargo builds into (`CARGO_TARGET_DIR` or `target/`), found from the
/// running test executable (`<target>/<profile>/deps/<test>`).
pub fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf))
        .unwrap_or_else(|| crate::workspace_root().join("target"))
}

/// `<target>/artifacts/NAME/`, where tests leave what a person may want to look at
/// (screenshots); created when absent; files from earlier runs are overwritten.
pub fn artifacts_dir(name: &str) -> Result<PathBuf> {
    let dir = target_dir().join("artifacts").join(name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
