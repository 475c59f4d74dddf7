//! The `kms` client commands, run as a subprocess against a real server started in
//! this process: a clean environment, `KMS_CONFIG_DIR` a temporary folder,
//! `KMS_SERVER` the server's URL, passwords and keys on standard input.

mod end_to_end;
mod session;
mod surface;
mod tls;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, Command},
};

use crate::common::{ADMIN, ADMIN_PASSWORD, TestServer};

const KMS: &str = env!("CARGO_BIN_EXE_kms");

/// One `kms` user: a configuration folder of its own and a server URL.
pub struct Client {
    dir: tempfile::TempDir,
    server: String,
    env: Vec<(String, String)>,
}

/// How a command ended.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "kms failed: {self:#?}");
        &self.stdout
    }

    /// Asserts success and parses stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        let out = self.ok();
        serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }

    /// Asserts the exit status and that stderr mentions every needle.
    #[track_caller]
    pub fn fails(&self, code: i32, needles: &[&str]) {
        assert_eq!(self.code, code, "{self:#?}");
        for needle in needles {
            assert!(self.stderr.contains(needle), "{needle:?} not in {self:#?}");
        }
        assert!(
            !self.stderr.contains("panicked") && !self.stderr.contains("RUST_BACKTRACE"),
            "{self:#?}"
        );
    }
}

pub fn url(server: &TestServer) -> String {
    format!("http://{}", server.addr)
}

impl Client {
    pub fn new(server: impl Into<String>) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            server: server.into(),
            env: Vec::new(),
        }
    }

    pub fn with_env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("kms")
    }

    pub fn credentials_path(&self) -> PathBuf {
        self.config_dir().join("credentials.json")
    }

    /// The stored login to this client's server.
    pub fn credentials(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.credentials_path()).unwrap();
        let file: serde_json::Value = serde_json::from_str(&text).unwrap();
        file["servers"][self.server.as_str()].clone()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(KMS);
        cmd.env_clear()
            .current_dir(self.dir.path())
            .args(args)
            .env("KMS_CONFIG_DIR", self.config_dir())
            .env("KMS_SERVER", &self.server)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs `kms ARGS` with `stdin` as its standard input.
    pub async fn run_with(&self, args: &[&str], stdin: &str) -> Run {
        let mut child = self.command(args).spawn().expect("kms starts");
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).await.unwrap();
        drop(input);
        let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("kms {args:?} did not end within 30 s"))
            .unwrap();
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    pub async fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, "").await
    }

    pub async fn login(&self, username: &str, password: &str) -> Run {
        self.run_with(
            &["login", "--username", username, "--password-stdin"],
            &format!("{password}\n"),
        )
        .await
    }

    pub async fn login_admin(&self) {
        self.login(ADMIN, ADMIN_PASSWORD).await.ok();
    }

    /// A long-running `kms ARGS` whose output lines are collected.
    pub fn spawn(&self, args: &[&str]) -> Streaming {
        let mut child = self.command(args).spawn().expect("kms starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let stdout = child.stdout.take().unwrap();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        Streaming { child, lines }
    }
}

pub struct Streaming {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Streaming {
    /// Waits for a stdout line containing `needle`.
    pub async fn wait_for(&self, needle: &str) -> String {
        for _ in 0..200 {
            if let Some(line) = self.lines().into_iter().find(|l| l.contains(needle)) {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no line with {needle:?} in {:?}", self.lines());
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Ctrl-C (SIGINT); returns the exit status.
    pub async fn interrupt(mut self) -> i32 {
        let pid = self.child.id().unwrap().to_string();
        let sent = Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .await
            .unwrap();
        assert!(sent.success());
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("kms ends after Ctrl-C")
            .unwrap()
            .code()
            .unwrap_or(-1)
    }
}

#[cfg(unix)]
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}
