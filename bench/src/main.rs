//! `kms-bench`: the KMS load generator. It starts `kms serve` (or targets a running
//! server), prepares users, keys and tokens, drives one scenario at a time in a closed
//! loop, and reports calls/s, latency quantiles and every status code, each scenario
//! also as a ratio to the `health` baseline measured in the same run.
//!
//! `run` makes the whole BENCHMARKS.md table, `chart` the concurrency sweep PNG,
//! `smoke` a one-second-per-scenario check for CI, `seed` a bulk load, and `scenario`
//! any chosen scenarios.

mod bare;
mod chart;
mod driver;
mod report;
mod rounds;
mod run;
mod scenario;
mod seed;
mod server;
mod session;

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::{Args, Parser, Subcommand};

use crate::{
    report::{Row, fmt_count},
    rounds::{measure_rounds, measure_row, setting},
    scenario::Scenario,
    server::Jwt,
    session::{Prepare, ServerChoice, Session},
};

#[derive(Debug, Parser)]
#[command(
    name = "kms-bench",
    version,
    about = "Load generator for the KMS gRPC server"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The full table for BENCHMARKS.md: every scenario at 64 in flight, verify and
    /// get again with 1,000,000 keys, validate under HS256, the login flood, start-up.
    Run(RunArgs),
    /// Health, then the named scenarios (all when none is named).
    Scenario(ScenarioArgs),
    /// Sweep calls in flight (1, 4, 16, 64, 256) and draw calls/s and p99 to a PNG.
    Chart(ChartArgs),
    /// Every scenario for a second at low concurrency, on 100 keys: proves the harness
    /// and the server still work together (CI). Exits non-zero on any unexpected status.
    Smoke(SmokeArgs),
    /// Bulk-load keys and users into a database (migrating it first).
    Seed(SeedArgs),
    /// The bare baseline: a tonic server with one no-op unary method and no layers
    /// (started by the other commands; serves until killed).
    BareServer(BareServerArgs),
}

#[derive(Debug, Args)]
struct BareServerArgs {
    #[arg(long, default_value = "127.0.0.1:50099")]
    addr: std::net::SocketAddr,
}

#[derive(Debug, Clone, Args)]
struct ServerArgs {
    /// The kms binary [default: `kms` next to this executable, rebuilt first when run
    /// through `cargo run`].
    #[arg(long, env = "KMS_BIN")]
    kms_bin: Option<PathBuf>,
    /// Do not run `cargo build -p kms` before starting the server.
    #[arg(long)]
    no_build: bool,
    /// The spawned server's database: a temporary SQLite file by default;
    /// postgres://... gets a fresh schema, dropped at the end.
    #[arg(long)]
    database_url: Option<String>,
    /// Bench a server that is already running (http://HOST:PORT) instead of starting
    /// one: data is made through the API, and there are no memory or start-up figures.
    #[arg(long)]
    target: Option<String>,
    /// The admin to log in as on --target.
    #[arg(long)]
    admin_user: Option<String>,
    #[arg(long, env = "KMS_BENCH_ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: Option<String>,
    /// How the spawned server signs access tokens.
    #[arg(long, value_enum, default_value = "eddsa")]
    jwt: Jwt,
}

impl ServerArgs {
    fn choice(&self) -> ServerChoice {
        ServerChoice {
            kms_bin: self.kms_bin.clone(),
            no_build: self.no_build,
            database_url: self.database_url.clone(),
            target: self.target.clone(),
            admin_user: self.admin_user.clone(),
            admin_password: self.admin_password.clone(),
            jwt: self.jwt,
        }
    }
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Args)]
struct LoadArgs {
    /// Calls in flight: tasks each issuing one call at a time (a closed loop).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections the calls are spread over, round-robin. Two, like the cores:
    /// one connection is driven by one task on each side, so it caps a side at one
    /// core; more than the cores adds nothing.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Seconds each scenario is measured.
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    duration: Duration,
    /// Seconds each scenario runs, unmeasured, before that.
    #[arg(long, default_value = "2", value_parser = parse_secs)]
    warmup: Duration,
    /// Rounds of the per-call scenarios and their bare baselines: each row is the
    /// median round, its ratio the median of the rounds' ratios.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Keys seeded before the scenarios.
    #[arg(long, default_value_t = 1_000)]
    keys: u64,
    /// Users seeded (login spreads over them).
    #[arg(long, default_value_t = 1_000)]
    users: u64,
    /// Stored keys whose secrets are kept in memory for verify and get (spread evenly
    /// over all keys).
    #[arg(long, default_value_t = 10_000)]
    sample: u64,
}

impl LoadArgs {
    fn prepare(&self) -> Prepare {
        Prepare {
            keys: self.keys,
            users: self.users,
            sample: self.sample,
            connections: self.connections,
        }
    }
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    load: LoadArgs,
    /// Keys stored for the at-scale re-run of verify, verify-invalid and get (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    keys_at_scale: u64,
    /// Logins in flight during the login flood (0 skips it).
    #[arg(long, default_value_t = 1_000)]
    flood: usize,
    /// Restarts timed for the start-up figure (0 skips it).
    #[arg(long, default_value_t = 5)]
    startup_runs: usize,
    /// Also write the Markdown report to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ScenarioArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    load: LoadArgs,
    /// Scenarios to run (each after the bare baseline of its shape, in `--rounds`
    /// rounds): health, validate, verify, verify-scoped, verify-invalid, get, create,
    /// rotate, login, check; bare, bare+auth, bare+check-size alone.
    scenarios: Vec<Scenario>,
    /// Also print the Markdown table.
    #[arg(long)]
    markdown: bool,
}

#[derive(Debug, Args)]
struct ChartArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Where the PNG goes.
    #[arg(long, default_value = "docs/benchmarks.png")]
    out: PathBuf,
    /// Calls in flight to sweep.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64,256")]
    levels: Vec<usize>,
    /// Scenarios drawn (each against its bare baseline at the same level).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "bare,health,validate,verify,get"
    )]
    scenarios: Vec<Scenario>,
    #[arg(long, default_value_t = 2)]
    connections: usize,
    #[arg(long, default_value = "5", value_parser = parse_secs)]
    duration: Duration,
    #[arg(long, default_value = "1", value_parser = parse_secs)]
    warmup: Duration,
    #[arg(long, default_value_t = 1_000)]
    keys: u64,
    /// A TrueType font for the chart's text (no font: no chart, with a warning).
    #[arg(long, default_value = chart::DEFAULT_FONT)]
    font: PathBuf,
}

#[derive(Debug, Args)]
struct SmokeArgs {
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
struct SeedArgs {
    /// sqlite://PATH?mode=rwc or postgres://...
    #[arg(long)]
    database_url: String,
    /// Base64 of the 32-byte master key the server will run with (seals the secrets).
    #[arg(long, env = "KMS_MASTER_KEY", hide_env_values = true)]
    master_key: Option<String>,
    #[arg(long, default_value_t = 0)]
    keys: u64,
    #[arg(long, default_value_t = 0)]
    users: u64,
    /// First index: keys are named seed-NNNNNNNN, users bench-user-NNNNNNN.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// The password every seeded user gets [default: generated and printed].
    #[arg(long, env = "KMS_BENCH_USER_PASSWORD", hide_env_values = true)]
    user_password: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kms-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("kms-bench: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `Ok(false)`: the run finished but some call ended with a status its scenario does
/// not expect.
async fn dispatch(command: Cmd) -> Result<bool, String> {
    match command {
        Cmd::Run(args) => run::run(args).await,
        Cmd::Scenario(args) => scenarios(args).await,
        Cmd::Chart(args) => chart_cmd(args).await,
        Cmd::Smoke(args) => smoke(args).await,
        Cmd::Seed(args) => seed_cmd(args).await.map(|()| true),
        Cmd::BareServer(args) => bare::serve(args.addr).await.map(|()| true),
    }
}

/// Runs `f` on an open session and closes it whatever `f` returns.
async fn with_session<T>(
    session: Session,
    f: impl AsyncFnOnce(&mut Session) -> Result<T, String>,
) -> Result<T, String> {
    let mut session = session;
    let result = f(&mut session).await;
    let closed = session.close().await;
    let value = result?;
    closed?;
    Ok(value)
}

fn print_rows(rows: &[Row]) {
    println!("\n{}", report::text_table(rows));
}

/// Prints every row with a status its scenario does not expect; `true` when none.
fn all_expected(rows: &[Row]) -> bool {
    let bad: Vec<&Row> = rows.iter().filter(|r| r.unexpected() > 0).collect();
    for r in &bad {
        eprintln!(
            "kms-bench: UNEXPECTED statuses in {} ({}): {}",
            r.scenario,
            r.setting,
            report::fmt_outcomes(&r.outcomes)
        );
    }
    bad.is_empty()
}

/// What this machine is, for the report.
pub(crate) fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or_else(
            || "unknown".into(),
            |kib| format!("{:.0} GiB", kib as f64 / 1048576.0),
        );
    format!("{cores} cores ({cpu}), {mem} memory")
}

async fn scenarios(args: ScenarioArgs) -> Result<bool, String> {
    let session = Session::open(&args.server.choice(), args.load.prepare()).await?;
    let load = args.load.clone();
    let mut wanted = args.scenarios.clone();
    if wanted.is_empty() {
        wanted = Scenario::ALL.to_vec();
    }
    let rows = with_session(session, async move |s| {
        let (rows, _) = measure_rounds(
            s,
            &wanted,
            load.concurrency,
            load.duration,
            load.warmup,
            load.rounds,
        )
        .await?;
        Ok(rows)
    })
    .await?;
    print_rows(&rows);
    if args.markdown {
        println!("{}", report::markdown_table(&rows));
    }
    Ok(all_expected(&rows))
}

async fn smoke(args: SmokeArgs) -> Result<bool, String> {
    let started = Instant::now();
    let prepare = Prepare {
        keys: 100,
        users: 10,
        sample: 100,
        connections: 2,
    };
    let session = Session::open(&args.server.choice(), prepare).await?;
    let second = Duration::from_secs(1);
    let rows = with_session(session, async move |s| {
        let (mut rows, baselines) =
            measure_rounds(s, &Scenario::ALL, 4, second, Duration::ZERO, 1).await?;
        if s.is_spawned() {
            s.grow_keys(200).await?;
            rows.push(
                measure_row(s, Scenario::Verify, 4, second, Duration::ZERO, &baselines).await?,
            );
            let (verify, login, peak) = s
                .login_flood(16, 4, second, Duration::from_millis(200))
                .await?;
            rows.push(Row::new(
                "verify",
                setting(s, Scenario::Verify, ", during 16 logins"),
                4,
                &verify,
                rounds::baseline_of(Scenario::Verify, &baselines),
                peak,
            ));
            rows.push(
                Row::new(
                    "login",
                    setting(s, Scenario::Login, ", flood"),
                    16,
                    &login,
                    rounds::baseline_of(Scenario::Login, &baselines),
                    peak,
                )
                .shedding(),
            );
            let startup = s.startup_times(1).await?;
            if let Some(t) = startup.first() {
                eprintln!(
                    "kms-bench: start-up to SERVING: {:.1} ms",
                    t.as_secs_f64() * 1e3
                );
            }
            s.restart_with(Jwt::Hs256).await?;
            rows.push(
                measure_row(s, Scenario::Validate, 4, second, Duration::ZERO, &baselines).await?,
            );
        }
        Ok(rows)
    })
    .await?;
    print_rows(&rows);
    let ok = all_expected(&rows);
    println!(
        "kms-bench smoke: {} scenario runs in {:.1} s: {}",
        rows.len(),
        started.elapsed().as_secs_f64(),
        if ok {
            "all calls as expected"
        } else {
            "UNEXPECTED STATUSES"
        }
    );
    Ok(ok)
}

async fn chart_cmd(args: ChartArgs) -> Result<bool, String> {
    let font = chart::load_font(&args.font);
    if let Err(e) = &font {
        eprintln!("kms-bench: WARNING: {e}; the chart will be skipped, figures are printed");
    }
    let prepare = Prepare {
        keys: args.keys,
        users: 10,
        sample: 10_000,
        connections: args.connections,
    };
    let session = Session::open(&args.server.choice(), prepare).await?;
    let title = format!(
        "KMS, {}, {} keys, {} HTTP/2 connections, load generator on the same machine",
        machine(),
        fmt_count(args.keys as f64),
        args.connections
    );
    let (levels, wanted) = (args.levels.clone(), args.scenarios.clone());
    let (duration, warmup) = (args.duration, args.warmup);
    let (rows, series) = with_session(session, async move |s| {
        let mut rows = Vec::new();
        let mut by_scenario: Vec<(Scenario, Vec<chart::Point>)> =
            wanted.iter().map(|sc| (*sc, Vec::new())).collect();
        for &level in &levels {
            let (level_rows, _) = measure_rounds(s, &wanted, level, duration, warmup, 1).await?;
            for row in level_rows {
                if let Some((_, points)) = by_scenario
                    .iter_mut()
                    .find(|(sc, _)| sc.name() == row.scenario)
                {
                    points.push((level, row.calls_per_s, row.p99_ms, row.ratio));
                }
                rows.push(row);
            }
        }
        let series = by_scenario
            .into_iter()
            .map(|(sc, points)| chart::Series {
                name: sc.name().to_owned(),
                points,
            })
            .collect::<Vec<_>>();
        Ok((rows, series))
    })
    .await?;
    print_rows(&rows);
    if font.is_ok() {
        chart::draw(&args.out, &title, &series)?;
        println!("chart written to {}", args.out.display());
    }
    Ok(all_expected(&rows))
}

async fn seed_cmd(args: SeedArgs) -> Result<(), String> {
    let store = seed::connect(&args.database_url).await?;
    if args.users > 0 {
        let password = match &args.user_password {
            Some(p) => p.clone(),
            None => {
                let p = format!("bench-user-{}", server::random_hex(12)?);
                println!("seeded users' password: {p}");
                p
            }
        };
        let hash = seed::password_hash(&password).await?;
        let r = seed::seed_users(&store, &hash, args.start, args.users).await?;
        println!(
            "seeded {} users in {:.1} s ({}/s), all sharing one argon2id hash",
            fmt_count(r.inserted as f64),
            r.took.as_secs_f64(),
            fmt_count(r.rate())
        );
    }
    if args.keys > 0 {
        let b64 = args
            .master_key
            .as_deref()
            .ok_or("seeding keys needs the server's master key: KMS_MASTER_KEY or --master-key")?;
        let key = {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|_| "the master key must be base64 of 32 bytes".to_owned())?;
            let bytes: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| "the master key must be base64 of 32 bytes".to_owned())?;
            kms::crypto::sealing::MasterKey::from_bytes(bytes)
        };
        let sealer = kms::crypto::sealing::Sealer::new(&key);
        let r = seed::seed_keys(&store, &sealer, "seed-", args.start, args.keys, 0, true).await?;
        println!(
            "seeded {} keys in {:.1} s ({}/s)",
            fmt_count(r.inserted as f64),
            r.took.as_secs_f64(),
            fmt_count(r.rate())
        );
    }
    let _ = store.close().await;
    Ok(())
}
