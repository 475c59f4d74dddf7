//! The server under test: a separate `kms serve` process on free loopback ports, its
//! database (a temporary SQLite file, or a fresh PostgreSQL schema), its memory as
//! /proc shows it, and the health check that says it is up.

use std::{
    fs::File,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use sea_orm::{ConnectionTrait, Database};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use zeroize::Zeroizing;

/// Where the `kms` binary is: `--kms-bin`/`KMS_BIN`, else next to this executable
/// (cargo puts both in the same target folder). Launched by `cargo run`, the binary
/// is first brought up to date with the same profile, so a run never measures a stale
/// server; `no_build` skips that.
pub fn locate_kms_bin(explicit: Option<PathBuf>, no_build: bool) -> Result<PathBuf, String> {
    if let Some(path) = explicit {
        return Ok(path);
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let bin = exe.with_file_name("kms");
    if let (Some(cargo), false) = (std::env::var_os("CARGO"), no_build) {
        let profile = exe
            .parent()
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .unwrap_or("debug")
            .to_owned();
        let mut cmd = Command::new(cargo);
        // Built together with kms-bench, as `cargo run -p kms-bench` just built the
        // kms library: the same features, so nothing is compiled twice.
        cmd.args(["build", "--quiet", "-p", "kms", "-p", "kms-bench", "--bins"]);
        match profile.as_str() {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        // `cargo run` gave this process the bench's package variables; some build
        // scripts (ring's) rebuild when one of them changes, so the inner build must
        // see the environment the outer one had.
        for (name, _) in std::env::vars_os() {
            if let Some(name) = name.to_str()
                && (name.starts_with("CARGO_PKG_")
                    || matches!(
                        name,
                        "CARGO_MANIFEST_DIR"
                            | "CARGO_MANIFEST_PATH"
                            | "CARGO_CRATE_NAME"
                            | "CARGO_BIN_NAME"
                            | "CARGO_PRIMARY_PACKAGE"
                            | "OUT_DIR"
                    ))
            {
                cmd.env_remove(name);
            }
        }
        if let Some(root) = Path::new(env!("CARGO_MANIFEST_DIR")).parent() {
            cmd.current_dir(root);
        }
        eprintln!(
            "kms-bench: bringing the server up to date (cargo build -p kms, {profile} profile)"
        );
        let status = cmd
            .status()
            .map_err(|e| format!("cannot run cargo build: {e}"))?;
        if !status.success() {
            return Err(format!("cargo build -p kms failed ({status})"));
        }
    }
    if !bin.is_file() {
        return Err(format!(
            "no kms binary at {}: build it (cargo build [--release] -p kms) or pass --kms-bin",
            bin.display()
        ));
    }
    Ok(bin)
}

/// A free loopback port: bind port 0, read it, let it go.
pub fn free_addr() -> Result<SocketAddr, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot bind a port: {e}"))?;
    listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound port: {e}"))
}

pub fn random_hex(bytes: usize) -> Result<String, String> {
    let mut buf = vec![0u8; bytes];
    kms::crypto::random::fill(&mut buf).map_err(|e| e.to_string())?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The database a spawned server uses, and its removal.
pub struct BenchDb {
    pub url: String,
    pg_schema: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl BenchDb {
    /// `None`: a SQLite file in `dir`. `Some(postgres://...)`: a new schema there.
    pub async fn create(base: Option<&str>, dir: &Path) -> Result<Self, String> {
        match base {
            None => Ok(Self {
                url: format!("sqlite://{}?mode=rwc", dir.join("kms.db").display()),
                pg_schema: None,
                _dir: None,
            }),
            Some(base) if base.starts_with("sqlite:") => Ok(Self {
                url: base.to_owned(),
                pg_schema: None,
                _dir: None,
            }),
            Some(base) => {
                let schema = format!("kms_bench_{}", random_hex(6)?);
                let db = Database::connect(base)
                    .await
                    .map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
                db.execute_unprepared(&format!("CREATE SCHEMA {schema}"))
                    .await
                    .map_err(|e| format!("cannot create schema {schema}: {e}"))?;
                let _ = db.close().await;
                let sep = if base.contains('?') { '&' } else { '?' };
                Ok(Self {
                    url: format!("{base}{sep}options=-c%20search_path%3D{schema}"),
                    pg_schema: Some((base.to_owned(), schema)),
                    _dir: None,
                })
            }
        }
    }

    pub fn backend_name(&self) -> &'static str {
        if self.pg_schema.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    }

    /// Drops the PostgreSQL schema (SQLite: the temporary folder goes with its owner).
    pub async fn remove(mut self) {
        if let Some((base, schema)) = self.pg_schema.take() {
            match Database::connect(base.as_str()).await {
                Ok(db) => {
                    if let Err(e) = db
                        .execute_unprepared(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                        .await
                    {
                        eprintln!("kms-bench: could not drop schema {schema}: {e}");
                    }
                    let _ = db.close().await;
                }
                Err(e) => eprintln!("kms-bench: could not drop schema {schema}: {e}"),
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Jwt {
    /// Ed25519 keys generated by the KMS (the default).
    #[value(name = "eddsa")]
    EdDsa,
    /// The shared secret KMS_JWT_SECRET.
    #[value(name = "hs256")]
    Hs256,
}

/// How to start `kms serve`.
pub struct ServerSpec {
    pub bin: PathBuf,
    pub db_url: String,
    pub master_key_b64: Zeroizing<String>,
    pub jwt_secret: Zeroizing<String>,
    pub jwt: Jwt,
    pub admin_user: String,
    pub admin_password: Zeroizing<String>,
    /// The server's working folder (no `.env` is found from there) and its log.
    pub workdir: PathBuf,
}

impl ServerSpec {
    pub fn new(bin: PathBuf, db_url: String, workdir: PathBuf) -> Result<Self, String> {
        let master = kms::crypto::random::bytes::<32>().map_err(|e| e.to_string())?;
        Ok(Self {
            bin,
            db_url,
            master_key_b64: Zeroizing::new(STANDARD.encode(master)),
            jwt_secret: Zeroizing::new(random_hex(32)?),
            jwt: Jwt::EdDsa,
            admin_user: "bench-admin".into(),
            admin_password: Zeroizing::new(format!("bench-{}", random_hex(12)?)),
            workdir,
        })
    }

    pub fn master_key(&self) -> Result<kms::crypto::sealing::MasterKey, String> {
        let bytes = STANDARD
            .decode(self.master_key_b64.as_bytes())
            .map_err(|e| e.to_string())?;
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| "master key is not 32 bytes".to_owned())?;
        Ok(kms::crypto::sealing::MasterKey::from_bytes(key))
    }

    fn spawn(&self) -> Result<(Child, SocketAddr), String> {
        let grpc = free_addr()?;
        let http = free_addr()?;
        let log_path = self.workdir.join("kms-serve.log");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve")
            // Only what the server needs: none of this shell's KMS_* or the original
            // service's DATABASE_URL/SECRET_KEY can leak in.
            .env_clear()
            .current_dir(&self.workdir)
            .env("KMS_DATABASE_URL", &self.db_url)
            .env("KMS_MASTER_KEY", self.master_key_b64.as_str())
            .env("KMS_GRPC_ADDR", grpc.to_string())
            .env("KMS_HTTP_ADDR", http.to_string())
            .env("KMS_BOOTSTRAP_ADMIN_USERNAME", &self.admin_user)
            .env("KMS_BOOTSTRAP_ADMIN_PASSWORD", self.admin_password.as_str())
            // Limits that would distort a benchmark: the login flood keeps ~1,000 calls
            // queued for argon2 for many seconds, beyond the default 1,024 in flight
            // and 30 s timeout. The login throttle counts attempts in flight against
            // the client address (4 x KMS_LOGIN_MAX_FAILURES = 20 by default; more
            // wait, at most KMS_LOGIN_WAIT_SECONDS, for one to finish), and every
            // bench call comes from 127.0.0.1: the largest setting lets 4,000 run at
            // once. Only right passwords are sent, so no failure is ever counted.
            .env("KMS_MAX_CONCURRENT_REQUESTS", "1000000")
            .env("KMS_REQUEST_TIMEOUT_SECONDS", "600")
            .env("KMS_LOGIN_MAX_FAILURES", "1000")
            .env("KMS_SHUTDOWN_GRACE_SECONDS", "2")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        if let Some(filter) = std::env::var_os("RUST_LOG") {
            cmd.env("RUST_LOG", filter);
        }
        match self.jwt {
            Jwt::EdDsa => {
                cmd.env("KMS_JWT_ALGORITHM", "EdDSA");
            }
            Jwt::Hs256 => {
                cmd.env("KMS_JWT_ALGORITHM", "HS256")
                    .env("KMS_JWT_SECRET", self.jwt_secret.as_str());
            }
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        Ok((child, grpc))
    }

    /// Starts the server and waits until health says SERVING. Returns it with the
    /// time from spawn to SERVING.
    pub async fn start(&self) -> Result<(RunningServer, Duration), String> {
        let began = Instant::now();
        let (mut child, addr) = self.spawn()?;
        let url = format!("http://{addr}");
        let limit = Duration::from_secs(120);
        loop {
            if let Ok(true) = health_serving(&url).await {
                let took = began.elapsed();
                let pid = child.id();
                return Ok((
                    RunningServer {
                        child,
                        pid,
                        url,
                        log: self.workdir.join("kms-serve.log"),
                    },
                    took,
                ));
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "kms serve exited ({status}) before serving:\n{}",
                    log_tail(&self.workdir.join("kms-serve.log"))
                ));
            }
            if began.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "kms serve did not answer SERVING within {limit:?}:\n{}",
                    log_tail(&self.workdir.join("kms-serve.log"))
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// One health Check on a fresh connection: `Ok(true)` when SERVING.
pub async fn health_serving(url: &str) -> Result<bool, String> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(1));
    let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok(answer.get_ref().status == ServingStatus::Serving as i32)
}

/// `n` separate HTTP/2 connections to `url`.
pub async fn connect(url: &str, n: usize) -> Result<Vec<Channel>, String> {
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let channel = Endpoint::from_shared(url.to_owned())
            .map_err(|e| format!("bad server URL {url}: {e}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {url}: {e}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

pub struct RunningServer {
    child: Child,
    pub pid: u32,
    pub url: String,
    log: PathBuf,
}

/// Memory of a process from /proc/PID/status, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

pub fn read_memory(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// The CPU time (user and system, every thread) a process has used so far, from
/// /proc/PID/stat, in the kernel's USER_HZ ticks (100 a second on Linux).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    const USER_HZ: u64 = 100;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces:
    // the third field (state) first, so utime (14th) is the 12th of these.
    let mut fields = stat.rsplit_once(')')?.1.split_ascii_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis(
        utime.saturating_add(stime).saturating_mul(1000 / USER_HZ),
    ))
}

/// Samples a process's RSS every 100 ms until stopped; `finish` gives the peak.
pub struct RssSampler {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<u64>,
}

impl RssSampler {
    pub fn start(pid: u32) -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut peak = 0u64;
            loop {
                if let Some(m) = read_memory(pid) {
                    peak = peak.max(m.rss_kib);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stopped.changed() => break,
                }
            }
            if let Some(m) = read_memory(pid) {
                peak = peak.max(m.rss_kib);
            }
            peak
        });
        Self { stop, task }
    }

    /// The peak RSS seen, in KiB.
    pub async fn finish(self) -> u64 {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or(0)
    }
}

impl RunningServer {
    pub fn memory(&self) -> Option<Memory> {
        read_memory(self.pid)
    }

    /// SIGTERM, then up to 15 s for the graceful shutdown, then SIGKILL.
    pub async fn stop(mut self) -> Result<(), String> {
        if let Some(pid) = i32::try_from(self.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let began = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if began.elapsed() < Duration::from_secs(15) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(format!(
                        "kms serve did not stop within 15 s of SIGTERM; killed. Log:\n{}",
                        log_tail(&self.log)
                    ));
                }
            }
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        // A server left behind by an error path must not outlive the bench.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_time_is_readable_and_grows() {
        let before = cpu_time(std::process::id()).unwrap();
        let began = Instant::now();
        let mut x = 0u64;
        while began.elapsed() < Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(cpu_time(std::process::id()).unwrap() > before);
    }

    #[test]
    fn own_memory_is_readable() {
        let m = read_memory(std::process::id()).unwrap();
        assert!(m.rss_kib > 0 && m.hwm_kib >= m.rss_kib);
    }
}
