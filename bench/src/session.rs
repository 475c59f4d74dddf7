//! A bench session: the server under test (spawned, or a running one at `--target`),
//! the data prepared on it, the connections, and the measurements made through them.

use std::{
    path::PathBuf,
    sync::{Arc, atomic::AtomicU64},
    time::{Duration, Instant},
};

use kms::{
    crypto::sealing::Sealer,
    proto::kms::v1::{
        CreateKeyRequest, LoginRequest, RegisterRequest, auth_client::AuthClient,
        keys_client::KeysClient,
    },
};
use tonic::transport::Channel;

use crate::{
    bare::BareServer,
    driver::{self, Measurement, Stop},
    report::fmt_count,
    scenario::{Fixture, Scenario, call_fn},
    seed::{self, KeptKey},
    server::{self, BenchDb, Jwt, Memory, RssSampler, RunningServer, ServerSpec},
};

/// Keys that `rotate` cycles through (kept apart from the ones verify and get use).
const ROTATE_POOL: u64 = 256;
/// Well-formed keys that are not stored, for verify-invalid.
const INVALID_POOL: usize = 1_000;

/// Where the server comes from and what it stores.
#[derive(Debug, Clone)]
pub struct ServerChoice {
    pub kms_bin: Option<PathBuf>,
    pub no_build: bool,
    /// `None`: a temporary SQLite file. `postgres://...`: a fresh schema there.
    pub database_url: Option<String>,
    /// A server already running: bench it as it is (no seeding, no RSS).
    pub target: Option<String>,
    pub admin_user: Option<String>,
    pub admin_password: Option<String>,
    /// How the spawned server signs tokens at first.
    pub jwt: Jwt,
}

/// What to prepare.
#[derive(Debug, Clone, Copy)]
pub struct Prepare {
    pub keys: u64,
    pub users: u64,
    /// Stored keys whose secrets the bench keeps for verify and get.
    pub sample: u64,
    pub connections: usize,
}

struct Spawned {
    spec: ServerSpec,
    server: Option<RunningServer>,
    db: BenchDb,
    sealer: Sealer,
    _dir: tempfile::TempDir,
}

pub struct Session {
    spawned: Option<Spawned>,
    pub url: String,
    pub channels: Vec<Channel>,
    /// The bare baseline server (`bare.rs`) and as many connections to it.
    bare: BareServer,
    bare_channels: Vec<Channel>,
    pub fixture: Arc<Fixture>,
    pub keys_stored: u64,
    prepare: Prepare,
    admin_user: String,
    admin_password: String,
    /// The server's memory just after preparing, before any load.
    pub idle_memory: Option<Memory>,
    pub backend: String,
    /// Each bulk load of keys: (keys, time taken).
    pub seedings: Vec<(u64, Duration)>,
}

/// One scenario's figures.
pub struct Measured {
    pub measurement: Measurement,
    pub peak_rss_kib: Option<u64>,
    /// The server's CPU time (every thread) per call while it was measured.
    pub server_us_per_call: Option<f64>,
}

async fn login(channel: Channel, username: &str, password: &str) -> Result<String, String> {
    let answer = AuthClient::new(channel)
        .login(LoginRequest {
            username: username.to_owned(),
            password: password.to_owned(),
        })
        .await
        .map_err(|s| {
            format!(
                "login as {username} failed: {} {}",
                driver::code_label(s.code()),
                s.message()
            )
        })?;
    Ok(answer.into_inner().access_token)
}

fn invalid_keys() -> Result<Vec<String>, String> {
    (0..INVALID_POOL)
        .map(|_| kms::domain::api_key::generate().map_err(|e| e.to_string()))
        .collect()
}

impl Session {
    pub async fn open(choice: &ServerChoice, prepare: Prepare) -> Result<Self, String> {
        let bare = BareServer::start().await?;
        let bare_channels = server::connect(&bare.url, prepare.connections).await?;
        match &choice.target {
            Some(url) => Self::open_target(choice, url, prepare, bare, bare_channels).await,
            None => Self::open_spawned(choice, prepare, bare, bare_channels).await,
        }
    }

    async fn open_spawned(
        choice: &ServerChoice,
        prepare: Prepare,
        bare: BareServer,
        bare_channels: Vec<Channel>,
    ) -> Result<Self, String> {
        let bin = server::locate_kms_bin(choice.kms_bin.clone(), choice.no_build)?;
        let dir = tempfile::Builder::new()
            .prefix("kms-bench-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary folder: {e}"))?;
        let db = BenchDb::create(choice.database_url.as_deref(), dir.path()).await?;
        let mut spec = ServerSpec::new(bin, db.url.clone(), dir.path().to_path_buf())?;
        spec.jwt = choice.jwt;
        let sealer = Sealer::new(&spec.master_key()?);
        let backend = db.backend_name().to_owned();
        let login_password = format!("bench-user-{}", server::random_hex(12)?);

        eprintln!(
            "kms-bench: {backend} database; seeding {} keys (+{ROTATE_POOL} to rotate) and {} users",
            fmt_count(prepare.keys as f64),
            fmt_count(prepare.users as f64)
        );
        let store = seed::connect(&db.url).await?;
        let hash = seed::password_hash(&login_password).await?;
        seed::seed_users(&store, &hash, 0, prepare.users.max(1)).await?;
        let rotate =
            seed::seed_keys(&store, &sealer, "rot-", 0, ROTATE_POOL, ROTATE_POOL, false).await?;
        let seeded = seed::seed_keys(
            &store,
            &sealer,
            "seed-",
            0,
            prepare.keys,
            prepare.sample,
            true,
        )
        .await?;
        let _ = store.close().await;

        let mut session = Self {
            spawned: Some(Spawned {
                spec,
                server: None,
                db,
                sealer,
                _dir: dir,
            }),
            url: String::new(),
            channels: Vec::new(),
            bare,
            bare_channels,
            fixture: Arc::new(Fixture {
                admin_auth: Fixture::bearer("none")?,
                admin_token: String::new(),
                valid_keys: seeded.kept,
                invalid_keys: invalid_keys()?,
                rotate_names: rotate.kept.into_iter().map(|k| k.service_name).collect(),
                login_users: (0..prepare.users.max(1)).map(seed::username).collect(),
                login_password,
                run_id: server::random_hex(4)?,
                created: AtomicU64::new(0),
            }),
            keys_stored: prepare.keys,
            prepare,
            admin_user: String::new(),
            admin_password: String::new(),
            idle_memory: None,
            backend,
            seedings: vec![(seeded.inserted, seeded.took)],
        };
        if let Some(sp) = &session.spawned {
            session.admin_user = sp.spec.admin_user.clone();
            session.admin_password = sp.spec.admin_password.to_string();
        }
        session.start().await?;
        // Idle: nothing in flight, and the admin's login has handed argon2's working
        // memory back (it is kept for `IDLE_RELEASE` in case more logins follow).
        tokio::time::sleep(kms::crypto::password::IDLE_RELEASE + Duration::from_secs(2)).await;
        session.idle_memory = session.memory();
        Ok(session)
    }

    async fn open_target(
        choice: &ServerChoice,
        url: &str,
        prepare: Prepare,
        bare: BareServer,
        bare_channels: Vec<Channel>,
    ) -> Result<Self, String> {
        let (Some(admin_user), Some(admin_password)) = (&choice.admin_user, &choice.admin_password)
        else {
            return Err(
                "--target needs --admin-user and --admin-password (or KMS_BENCH_ADMIN_PASSWORD)"
                    .into(),
            );
        };
        let channels = server::connect(url, prepare.connections).await?;
        let first = channels.first().cloned().ok_or("no connection")?;
        let token = login(first.clone(), admin_user, admin_password).await?;
        let auth = Fixture::bearer(&token)?;
        let run_id = server::random_hex(4)?;
        eprintln!(
            "kms-bench: preparing {} keys (+{ROTATE_POOL} to rotate) and 1 user on {url} through the API",
            fmt_count(prepare.keys as f64)
        );
        let create = |name: String| {
            let mut request = tonic::Request::new(CreateKeyRequest {
                service_name: name,
                api_key: None,
                description: "kms-bench".into(),
                ttl_seconds: 0,
                // What `verify-scoped` requires, as the seeded keys hold.
                scopes: vec!["bench:*".into(), "read".into()],
                ..Default::default()
            });
            request.metadata_mut().insert("authorization", auth.clone());
            let channel = first.clone();
            async move {
                KeysClient::new(channel)
                    .create_key(request)
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|s| {
                        format!(
                            "CreateKey failed: {} {}",
                            driver::code_label(s.code()),
                            s.message()
                        )
                    })
            }
        };
        let keep_every = (prepare.keys / prepare.sample.max(1)).max(1);
        let mut valid_keys = Vec::new();
        for i in 0..prepare.keys {
            let key = create(format!("b{run_id}-k{i}")).await?;
            if i.is_multiple_of(keep_every) {
                valid_keys.push(KeptKey {
                    service_name: key.service_name,
                    secret: key.api_key,
                });
            }
        }
        let mut rotate_names = Vec::new();
        for i in 0..ROTATE_POOL {
            rotate_names.push(create(format!("b{run_id}-r{i}")).await?.service_name);
        }
        let username = format!("b{run_id}-user");
        let login_password = format!("bench-user-{}", server::random_hex(12)?);
        let mut register = tonic::Request::new(RegisterRequest {
            username: username.clone(),
            password: login_password.clone(),
            roles: Vec::new(),
        });
        register
            .metadata_mut()
            .insert("authorization", auth.clone());
        AuthClient::new(first.clone())
            .register(register)
            .await
            .map_err(|s| {
                format!(
                    "Register failed: {} {}",
                    driver::code_label(s.code()),
                    s.message()
                )
            })?;
        Ok(Self {
            spawned: None,
            url: url.to_owned(),
            channels,
            bare,
            bare_channels,
            fixture: Arc::new(Fixture {
                admin_auth: auth,
                admin_token: token,
                valid_keys,
                invalid_keys: invalid_keys()?,
                rotate_names,
                login_users: vec![username],
                login_password,
                run_id,
                created: AtomicU64::new(0),
            }),
            keys_stored: prepare.keys,
            prepare,
            admin_user: admin_user.clone(),
            admin_password: admin_password.clone(),
            idle_memory: None,
            backend: "target".into(),
            seedings: Vec::new(),
        })
    }

    pub fn is_spawned(&self) -> bool {
        self.spawned.is_some()
    }

    pub fn jwt(&self) -> Option<Jwt> {
        self.spawned.as_ref().map(|s| s.spec.jwt)
    }

    fn pid(&self) -> Option<u32> {
        self.spawned
            .as_ref()
            .and_then(|s| s.server.as_ref())
            .map(|s| s.pid)
    }

    pub fn memory(&self) -> Option<Memory> {
        self.spawned
            .as_ref()
            .and_then(|s| s.server.as_ref())
            .and_then(RunningServer::memory)
    }

    /// Starts the spawned server, connects and logs the admin in. Returns the time
    /// from spawn to SERVING.
    async fn start(&mut self) -> Result<Duration, String> {
        let Some(sp) = self.spawned.as_mut() else {
            return Ok(Duration::ZERO);
        };
        let (running, took) = sp.spec.start().await?;
        self.url = running.url.clone();
        sp.server = Some(running);
        self.channels = server::connect(&self.url, self.prepare.connections).await?;
        let first = self.channels.first().cloned().ok_or("no connection")?;
        let token = login(first, &self.admin_user, &self.admin_password).await?;
        let fixture = Arc::get_mut(&mut self.fixture).ok_or("the fixture is still in use")?;
        fixture.admin_auth = Fixture::bearer(&token)?;
        fixture.admin_token = token;
        Ok(took)
    }

    async fn stop(&mut self) -> Result<(), String> {
        self.channels.clear();
        if let Some(server) = self.spawned.as_mut().and_then(|s| s.server.take()) {
            server.stop().await?;
        }
        Ok(())
    }

    /// Restarts the server with another token signing algorithm.
    pub async fn restart_with(&mut self, jwt: Jwt) -> Result<(), String> {
        self.stop().await?;
        if let Some(sp) = self.spawned.as_mut() {
            sp.spec.jwt = jwt;
        }
        self.start().await?;
        Ok(())
    }

    /// Stops the server, seeds keys up to `total`, starts it again. The keys verify
    /// and get use are then a sample of the whole set.
    pub async fn grow_keys(&mut self, total: u64) -> Result<(), String> {
        if total <= self.keys_stored {
            return Ok(());
        }
        let Some(sp) = self.spawned.as_ref() else {
            return Err("seeding needs a server the bench started (not --target)".into());
        };
        let (url, sealer) = (sp.db.url.clone(), sp.sealer.clone());
        self.stop().await?;
        let more = total - self.keys_stored;
        eprintln!("kms-bench: seeding {} more keys", fmt_count(more as f64));
        let store = seed::connect(&url).await?;
        let seeded = seed::seed_keys(
            &store,
            &sealer,
            "seed-",
            self.keys_stored,
            more,
            self.prepare.sample,
            true,
        )
        .await?;
        let _ = store.close().await;
        eprintln!(
            "kms-bench: seeded {} keys in {:.1} s ({}/s)",
            fmt_count(seeded.inserted as f64),
            seeded.took.as_secs_f64(),
            fmt_count(seeded.rate())
        );
        {
            let fixture = Arc::get_mut(&mut self.fixture).ok_or("the fixture is still in use")?;
            fixture.valid_keys = seeded.kept;
        }
        self.keys_stored = total;
        self.seedings.push((seeded.inserted, seeded.took));
        self.start().await?;
        Ok(())
    }

    /// Restarts the server `runs` times on its existing database; the times from
    /// spawn to SERVING, sorted.
    pub async fn startup_times(&mut self, runs: usize) -> Result<Vec<Duration>, String> {
        let mut times = Vec::new();
        if self.spawned.is_none() {
            return Ok(times);
        }
        for _ in 0..runs {
            self.stop().await?;
            times.push(self.start().await?);
        }
        times.sort();
        Ok(times)
    }

    /// Warms up, then measures `scenario` at `concurrency` calls in flight.
    pub async fn measure(
        &self,
        scenario: Scenario,
        concurrency: usize,
        duration: Duration,
        warmup: Duration,
    ) -> Result<Measured, String> {
        let call = call_fn(scenario, self.fixture.clone(), concurrency)?;
        let (channels, pid) = if scenario.is_bare() {
            (&self.bare_channels, Some(self.bare.pid()))
        } else {
            (&self.channels, self.pid())
        };
        if !warmup.is_zero() {
            driver::drive(channels, concurrency, warmup, Stop::Drain, call.clone()).await?;
        }
        let sampler = pid.map(RssSampler::start);
        let cpu_before = pid.and_then(server::cpu_time);
        let measurement = driver::drive(channels, concurrency, duration, Stop::Drain, call).await?;
        let cpu_after = pid.and_then(server::cpu_time);
        let peak_rss_kib = match sampler {
            Some(s) => Some(s.finish().await),
            None => None,
        };
        let server_us_per_call = match (cpu_before, cpu_after) {
            (Some(before), Some(after)) if measurement.calls > 0 => {
                Some(after.saturating_sub(before).as_secs_f64() * 1e6 / measurement.calls as f64)
            }
            _ => None,
        };
        Ok(Measured {
            measurement,
            peak_rss_kib,
            server_us_per_call,
        })
    }

    /// `flood` logins in flight (on connections of their own) while verify runs at
    /// `concurrency`. Returns (verify, login, peak RSS).
    pub async fn login_flood(
        &self,
        flood: usize,
        concurrency: usize,
        duration: Duration,
        ramp: Duration,
    ) -> Result<(Measurement, Measurement, Option<u64>), String> {
        let flood_channels = server::connect(&self.url, self.prepare.connections).await?;
        let login = call_fn(Scenario::Login, self.fixture.clone(), flood)?;
        let verify = call_fn(Scenario::Verify, self.fixture.clone(), concurrency)?;
        let sampler = self.pid().map(RssSampler::start);
        let began = Instant::now();
        let flood_task = tokio::spawn(async move {
            driver::drive(&flood_channels, flood, ramp + duration, Stop::Cut, login).await
        });
        tokio::time::sleep(ramp.saturating_sub(began.elapsed())).await;
        let verified =
            driver::drive(&self.channels, concurrency, duration, Stop::Drain, verify).await?;
        let logins = flood_task
            .await
            .map_err(|e| format!("the login flood failed: {e}"))??;
        let peak = match sampler {
            Some(s) => Some(s.finish().await),
            None => None,
        };
        Ok((verified, logins, peak))
    }

    /// Stops the server and removes what the session made.
    pub async fn close(mut self) -> Result<(), String> {
        let stopped = self.stop().await;
        if let Some(sp) = self.spawned.take() {
            sp.db.remove().await;
        }
        stopped
    }
}
