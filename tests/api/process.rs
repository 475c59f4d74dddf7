//! `kms serve` as a separate process, for the tests that need a real one: several
//! replicas on one database, `kill -9` and restart, memory under load.
//!
//! Every process of a [`Cluster`] shares its database, master key and JWT secret (HS256
//! with the suite's `JWT_SECRET`), and the bootstrap admin `root`. Each listens on
//! 127.0.0.1:0 (no port to race for); its addresses come from its own log lines. Its
//! standard output and error go to a file, printed when the test panics.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use kms::proto::kms::v1::{
    self as pb, auth_client::AuthClient, keys_client::KeysClient, users_client::UsersClient,
};
use tokio::process::{Child, Command};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::common::{ADMIN, ADMIN_PASSWORD, Backend, JWT_SECRET, TestDb};

const KMS: &str = env!("CARGO_BIN_EXE_kms");
/// How long a process may take to start serving (migrations, bootstrap admin). Debug
/// build, two shared cores: generous.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// One database and one set of secrets, for any number of `kms serve` processes.
pub struct Cluster {
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
    /// Dropped last (fields drop in order): the processes are gone by then.
    db: TestDb,
}

impl Cluster {
    /// A fresh database on `backend`. `extra` adds or overrides `KMS_*` variables.
    pub async fn new(backend: &Backend, extra: &[(&str, &str)]) -> Self {
        let db = TestDb::new(backend).await;
        let master_key: [u8; 32] = kms::crypto::random::bytes().unwrap();
        let mut env: Vec<(String, String)> = [
            ("KMS_DATABASE_URL", db.url.as_str()),
            ("KMS_MASTER_KEY", &STANDARD.encode(master_key)),
            ("KMS_JWT_ALGORITHM", "HS256"),
            ("KMS_JWT_SECRET", std::str::from_utf8(JWT_SECRET).unwrap()),
            ("KMS_BOOTSTRAP_ADMIN_USERNAME", ADMIN),
            ("KMS_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD),
            ("KMS_GRPC_ADDR", "127.0.0.1:0"),
            ("KMS_HTTP_ADDR", "127.0.0.1:0"),
            ("KMS_DATABASE_MAX_CONNECTIONS", "8"),
            ("RUST_LOG", "info"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        for (k, v) in extra {
            env.retain(|(name, _)| name != k);
            env.push(((*k).to_owned(), (*v).to_owned()));
        }
        Self {
            env,
            dir: tempfile::tempdir().unwrap(),
            db,
        }
    }

    pub fn db_url(&self) -> &str {
        &self.db.url
    }

    /// The cluster's database, to fill before the first start (a fixture).
    pub fn db(&self) -> &TestDb {
        &self.db
    }

    /// The cluster's own folder (working directory of its processes).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// A variable of the processes' environment.
    pub fn env_var(&self, name: &str) -> Option<String> {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    /// Sets (or, with `None`, removes) a variable for the processes started from now.
    pub fn set_env(&mut self, name: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != name);
        if let Some(value) = value {
            self.env.push((name.to_owned(), value.to_owned()));
        }
    }

    /// Runs `kms ARGS...` to the end with the cluster's environment (an offline command,
    /// or a `serve` expected to refuse to start), within 60 s.
    pub async fn run(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(KMS);
        cmd.env_clear()
            .current_dir(self.dir.path())
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        tokio::time::timeout(START_DEADLINE, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("kms {args:?} did not end within {START_DEADLINE:?}"))
            .unwrap()
    }

    /// Starts `kms serve` named `name` and waits until its health is SERVING.
    pub async fn start(&self, name: &str) -> KmsProcess {
        self.launch(name, &[], None).await
    }

    /// `kms serve ARGS...` (such as `--dev`), as `start`.
    pub async fn start_with_args(&self, name: &str, args: &[&str]) -> KmsProcess {
        self.launch(name, args, None).await
    }

    /// `start` with RLIMIT_NOFILE set to `nofile` (soft and hard), through `prlimit`.
    pub async fn start_limited(&self, name: &str, nofile: u64) -> KmsProcess {
        self.launch(name, &[], Some(nofile)).await
    }

    async fn launch(&self, name: &str, args: &[&str], nofile: Option<u64>) -> KmsProcess {
        let generation = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref().is_ok_and(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("{name}-"))
                })
            })
            .count();
        let log = self.dir.path().join(format!("{name}-{generation}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = match nofile {
            None => Command::new(KMS),
            Some(n) => {
                let mut cmd = Command::new("/usr/bin/prlimit");
                cmd.arg(format!("--nofile={n}:{n}")).arg(KMS);
                cmd
            }
        };
        // A clean environment: nothing from the developer's or CI's KMS_* variables,
        // and a working directory without a `.env`.
        cmd.env_clear()
            .current_dir(self.dir.path())
            .arg("serve")
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .kill_on_drop(true);
        let child = cmd.spawn().expect("kms starts");
        let mut process = KmsProcess {
            name: format!("{name}#{generation}"),
            child,
            log,
            grpc_addr: None,
            http_addr: None,
            channel: None,
        };
        process.wait_until_serving().await;
        process
    }
}

/// One `kms serve` process. Killed (SIGKILL) when dropped; its log is printed then if
/// the test is failing.
pub struct KmsProcess {
    pub name: String,
    child: Child,
    log: PathBuf,
    grpc_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    channel: Option<Channel>,
}

impl KmsProcess {
    async fn wait_until_serving(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.fail(&format!("exited before serving: {status}"));
            }
            if started.elapsed() > START_DEADLINE {
                self.fail("did not serve within the start deadline");
            }
            let log = self.log_text();
            if self.grpc_addr.is_none() {
                self.grpc_addr = addr_after(&log, "gRPC listening");
            }
            if self.http_addr.is_none() {
                self.http_addr = addr_after(&log, "HTTP listening");
            }
            if let (Some(addr), None) = (self.grpc_addr, &self.channel) {
                self.channel = Channel::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect_timeout(Duration::from_secs(5))
                    .connect()
                    .await
                    .ok();
            }
            if let Some(channel) = &self.channel
                && health(channel, "").await == Some(ServingStatus::Serving)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[track_caller]
    fn fail(&self, why: &str) -> ! {
        panic!(
            "kms process {}: {why}\n--- log {} ---\n{}",
            self.name,
            self.log.display(),
            self.log_tail()
        );
    }

    /// The log, without the middle of a long one (a burst logs a line per call).
    fn log_tail(&self) -> String {
        const HEAD: usize = 40;
        const TAIL: usize = 200;
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() <= HEAD + TAIL {
            return text;
        }
        format!(
            "{}\n[... {} lines left out ...]\n{}\n",
            lines[..HEAD].join("\n"),
            lines.len() - HEAD - TAIL,
            lines[lines.len() - TAIL..].join("\n")
        )
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("the process is running")
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr.unwrap()
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr.unwrap()
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone().unwrap()
    }

    /// A channel of its own (its own HTTP/2 connection).
    pub async fn new_channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc_addr()))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap()
    }

    pub fn auth(&self) -> AuthClient<Channel> {
        AuthClient::new(self.channel())
    }

    pub fn keys(&self) -> KeysClient<Channel> {
        KeysClient::new(self.channel())
    }

    pub fn users(&self) -> UsersClient<Channel> {
        UsersClient::new(self.channel())
    }

    pub async fn login(&self, username: &str, password: &str) -> String {
        self.auth()
            .login(pb::LoginRequest {
                username: username.into(),
                password: password.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("login {username} on {}: {s:?}", self.name))
            .into_inner()
            .access_token
    }

    pub async fn admin_token(&self) -> String {
        self.login(ADMIN, ADMIN_PASSWORD).await
    }

    /// `kill -9`: no shutdown, no flush, no goodbye. Returns once the process is gone.
    pub async fn kill9(mut self) {
        // tokio's Child::kill sends SIGKILL.
        self.child.kill().await.unwrap();
    }

    /// The resident set size and its peak, in KiB, from /proc/<pid>/status.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc status"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for KmsProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- log of kms process {} ({}) ---\n{}--- end of log ---",
                self.name,
                self.log.display(),
                self.log_tail()
            );
        }
        let _ = self.child.start_kill();
    }
}

/// The address logged after `addr=` on the first line containing `needle`.
fn addr_after(log: &str, needle: &str) -> Option<SocketAddr> {
    log.lines()
        .find(|l| l.contains(needle))
        .and_then(|l| l.rsplit("addr=").next())
        .and_then(|a| a.trim().parse().ok())
}

/// The health of `service`, or `None` when the server does not answer.
pub async fn health(channel: &Channel, service: &str) -> Option<ServingStatus> {
    let mut client = HealthClient::new(channel.clone());
    let call = client.check(HealthCheckRequest {
        service: service.into(),
    });
    match tokio::time::timeout(Duration::from_secs(5), call).await {
        Ok(Ok(response)) => ServingStatus::try_from(response.into_inner().status).ok(),
        _ => None,
    }
}
