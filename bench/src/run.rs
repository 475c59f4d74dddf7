//! `kms-bench run`: the whole BENCHMARKS.md table and its targets in one command.

use std::time::{Duration, Instant};

use crate::{
    RunArgs, all_expected, machine, print_rows,
    report::{self, Check, Row, fmt_count, fmt_mib, fmt_ms},
    rounds::{baseline_of, measure_rounds, measure_row, setting},
    scenario::Scenario,
    seed,
    server::Jwt,
    session::Session,
    with_session,
};

/// The per-call scenarios, measured in rounds with their baselines.
const PER_CALL: [Scenario; 5] = [
    Scenario::Health,
    Scenario::Validate,
    Scenario::Verify,
    Scenario::VerifyScoped,
    Scenario::Check,
];

/// Measured once each, against the baselines' medians.
const ONCE: [Scenario; 5] = [
    Scenario::VerifyInvalid,
    Scenario::Get,
    Scenario::Create,
    Scenario::Rotate,
    Scenario::Login,
];

/// The latency target's level: verify's p99 at this many calls in flight.
const TAIL_LEVEL: usize = 16;

/// Everything `run` measured, for the report.
struct RunFigures {
    rows: Vec<Row>,
    checks: Vec<Check>,
    notes: Vec<String>,
}

fn find(rows: &[Row], name: &str) -> Option<Row> {
    rows.iter().find(|r| r.scenario == name).cloned()
}

fn pct(r: Option<f64>) -> String {
    report::fmt_ratio(r)
}

/// A ratio target: `row` at least `at_least` of its baseline.
fn ratio_check(rows: &[Row], name: &str, what: &str, at_least: f64) -> Option<Check> {
    let row = find(rows, name)?;
    Some(Check::new(
        what,
        &format!(">= {:.0}%", at_least * 100.0),
        format!(
            "{} of {} ({} calls/s in the median round)",
            report::fmt_ratio_spread(row.ratio, row.spread),
            row.baseline,
            fmt_count(row.calls_per_s)
        ),
        row.ratio.map(|r| r >= at_least),
    ))
}

pub async fn run(args: RunArgs) -> Result<bool, String> {
    let started = Instant::now();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    let session = Session::open(&args.server.choice(), args.load.prepare()).await?;
    let load = args.load.clone();
    let (keys_at_scale, flood, startup_runs) = (args.keys_at_scale, args.flood, args.startup_runs);
    let figures = with_session(session, async move |s| {
        let (c, d, w, n) = (load.concurrency, load.duration, load.warmup, load.rounds);
        let mut notes = Vec::new();
        let mut checks = Vec::new();
        let idle = s.idle_memory;

        // The per-call tax: each scenario against the bare call of its shape, in rounds.
        let (mut rows, baselines) = measure_rounds(s, &PER_CALL, c, d, w, n).await?;
        let per_call = rows.clone();
        // Verify's tail where a p99 of 2 ms can hold: 16 in flight.
        let (tail_rows, _) = measure_rounds(s, &[Scenario::Verify], TAIL_LEVEL, d, w, n).await?;
        rows.extend(tail_rows.iter().cloned());
        let mut once = Vec::new();
        let mut argon2 = None;
        for sc in ONCE {
            if sc == Scenario::Login {
                // Timed right before the logins, while the server idles: the machine's
                // speed drifts over minutes here.
                eprintln!("kms-bench: timing argon2id with the server's parameters");
                let one = seed::argon2_time(10).await?;
                argon2 = Some((one, seed::argon2_parallel_rate(cores, 10).await?));
            }
            once.push(measure_row(s, sc, c, d, w, &baselines).await?);
        }
        rows.extend(once.iter().cloned());
        let (hash_time, argon2_parallel) = argon2.ok_or("login was not measured")?;
        let argon2_rate = cores as f64 / hash_time.as_secs_f64();

        let mut at_scale = Vec::new();
        if keys_at_scale > s.keys_stored && s.is_spawned() {
            s.grow_keys(keys_at_scale).await?;
            let (scaled, scaled_baselines) = measure_rounds(s, &[Scenario::Verify], c, d, w, n).await?;
            at_scale.extend(scaled.into_iter().filter(|r| r.scenario != "bare+auth"));
            for sc in [Scenario::VerifyInvalid, Scenario::Get] {
                at_scale.push(measure_row(s, sc, c, d, w, &scaled_baselines).await?);
            }
            rows.extend(at_scale.iter().cloned());
        }
        for (keys, took) in &s.seedings {
            if *keys >= 100_000 {
                notes.push(format!(
                    "Seeding: {} keys in {:.1} s ({} keys/s) on {}.",
                    fmt_count(*keys as f64),
                    took.as_secs_f64(),
                    fmt_count(*keys as f64 / took.as_secs_f64().max(1e-9)),
                    s.backend
                ));
            }
        }

        let startup = s.startup_times(startup_runs).await?;

        let mut flood_figures = None;
        if flood > 0 {
            eprintln!("kms-bench: login flood: {flood} logins in flight while verify runs at {c}");
            let (verify, login, peak) = s.login_flood(flood, c, d, w.max(Duration::from_secs(2))).await?;
            let v = Row::new("verify", setting(s, Scenario::Verify, &format!(", during {flood} logins")), c, &verify, baseline_of(Scenario::Verify, &baselines), peak);
            let l = Row::new("login", setting(s, Scenario::Login, ", flood"), flood, &login, baseline_of(Scenario::Login, &baselines), peak).shedding();
            flood_figures = Some((v.clone(), l.clone(), peak));
            rows.push(v);
            rows.push(l);
        }

        let mut hs256 = None;
        if s.is_spawned() {
            s.restart_with(Jwt::Hs256).await?;
            let (hs, _) = measure_rounds(s, &[Scenario::Validate], c, d, w, n).await?;
            let row = hs.into_iter().find(|r| r.scenario == "validate");
            if let Some(row) = &row {
                rows.push(row.clone());
            }
            hs256 = row;
        }

        // The targets (BENCHMARKS.md, "Targets"), judged on these figures.
        checks.extend(ratio_check(&per_call, "health", "health vs bare", 0.9));
        checks.extend(ratio_check(&per_call, "verify", "verify vs bare+auth", 0.85));
        checks.extend(ratio_check(&per_call, "validate", "validate (EdDSA) vs bare", 0.85));
        if let Some(v) = &hs256 {
            checks.extend(ratio_check(std::slice::from_ref(v), "validate", "validate (HS256) vs bare", 0.85));
        }
        checks.extend(ratio_check(&per_call, "check", "ext_authz check (API key) vs bare+check-size", 0.8));
        if let (Some(v), Some(sc)) = (find(&per_call, "verify"), find(&per_call, "verify-scoped"))
            && let (Some(a), Some(b)) = (v.ratio, sc.ratio)
        {
            let rel = b / a.max(1e-9);
            checks.push(Check::new(
                "verify with required_scopes vs without",
                "within 5%",
                format!("{:.0}% ({} vs {} of bare+auth)", rel * 100.0, pct(sc.ratio), pct(v.ratio)),
                Some(rel >= 0.95),
            ));
        }
        if let (Some(small), Some(big)) = (find(&per_call, "verify"), find(&at_scale, "verify"))
            && let (Some(a), Some(b)) = (small.ratio, big.ratio)
        {
            let rel = b / a.max(1e-9);
            checks.push(Check::new(
                &format!("verify with {} keys vs {}", fmt_count(keys_at_scale as f64), fmt_count(load.keys as f64)),
                "within 10%",
                format!(
                    "{:.0}% ({} vs {} of bare+auth; {} vs {} calls/s)",
                    rel * 100.0,
                    pct(big.ratio),
                    pct(small.ratio),
                    fmt_count(big.calls_per_s),
                    fmt_count(small.calls_per_s)
                ),
                Some(rel >= 0.9),
            ));
        }
        // What a call costs the server itself, beside the bare server's cost for the
        // call of the same shape: the per-call tax in microseconds of CPU, which does
        // not depend on what the load generator costs on the same cores.
        for row in per_call.iter().filter(|r| !r.scenario.starts_with("bare")) {
            if let (Some(us), Some(base)) = (row.server_us_per_call, find(&per_call, &row.baseline).and_then(|b| b.server_us_per_call)) {
                checks.push(Check::new(
                    &format!("{} server CPU per call vs {}", row.scenario, row.baseline),
                    "reported",
                    format!("{us:.1} vs {base:.1} us (+{:.1} us, {:.0}% of the bare server's rate per core)", us - base, 100.0 * base / us.max(1e-9)),
                    None,
                ));
            }
        }
        if let Some(v) = find(&tail_rows, "verify") {
            checks.push(Check::new(
                &format!("verify p99 at {TAIL_LEVEL} in flight"),
                "<= 2 ms",
                format!("{} ms (bare+auth: {} ms)", fmt_ms(v.p99_ms), find(&tail_rows, "bare+auth").map_or_else(|| "-".into(), |b| fmt_ms(b.p99_ms))),
                Some(v.p99_ms <= 2.0),
            ));
        }
        if let Some(v) = find(&per_call, "verify") {
            checks.push(Check::new(&format!("verify p99 at {c} in flight"), "reported", format!("{} ms", fmt_ms(v.p99_ms)), None));
        }
        for g in find(&once, "get").into_iter().chain(find(&at_scale, "get")) {
            checks.push(Check::new(
                &format!("GetKey p99 / p50 over gRPC ({})", g.setting),
                "<= 10x",
                format!("{:.1}x (p50 {} ms, p99 {} ms, p99.9 {} ms)", g.p99_ms / g.p50_ms.max(1e-9), fmt_ms(g.p50_ms), fmt_ms(g.p99_ms), fmt_ms(g.p999_ms)),
                Some(g.p99_ms <= 10.0 * g.p50_ms),
            ));
        }
        if let Some(g) = find(&once, "get") {
            checks.push(Check::new("get vs bare+auth", "reported (the durable audit row)", pct(g.ratio), None));
        }
        for name in ["create", "rotate"] {
            if let Some(r) = find(&once, name) {
                checks.push(Check::new(
                    &format!("{name} calls/s"),
                    "bound by the database's commit rate: reported",
                    format!("{} calls/s ({})", fmt_count(r.calls_per_s), s.backend),
                    None,
                ));
            }
        }
        notes.push(format!(
            "argon2id (m=19 MiB, t=2, p=1): one hash takes {} ms here, so {cores} cores allow {} logins/s.",
            fmt_ms(hash_time.as_secs_f64() * 1e3),
            fmt_count(argon2_rate)
        ));
        notes.push(format!(
            "With {cores} hashes running at once (the server's pool kept full) they make {} hashes/s: \
             what the cores allow when they share cache and memory bandwidth.",
            fmt_count(argon2_parallel)
        ));
        if let Some(l) = find(&once, "login") {
            let rel = l.calls_per_s / argon2_rate;
            checks.push(Check::new(
                "login calls/s vs cores / argon2 time",
                ">= 90%",
                format!("{:.0}% ({} of {} logins/s)", rel * 100.0, fmt_count(l.calls_per_s), fmt_count(argon2_rate)),
                Some(rel >= 0.9),
            ));
            let rel = l.calls_per_s / argon2_parallel;
            checks.push(Check::new(
                &format!("login calls/s vs {cores} hashes at once, measured"),
                "reported",
                format!("{:.0}% ({} of {} logins/s)", rel * 100.0, fmt_count(l.calls_per_s), fmt_count(argon2_parallel)),
                None,
            ));
        }
        if let Some((v, l, peak)) = &flood_figures {
            checks.push(Check::new(
                &format!("verify p99 during a flood of {flood} logins"),
                "< 10 ms",
                format!("{} ms (logins: {} calls/s)", fmt_ms(v.p99_ms), fmt_count(l.calls_per_s)),
                Some(v.p99_ms < 10.0),
            ));
            if let (Some(peak), Some(idle)) = (peak, idle) {
                let pool = cores as u64;
                let bound = idle.rss_kib + pool * u64::from(kms::crypto::password::M_COST_KIB);
                // The fixed part: the idle server plus what ~1,000 queued calls and
                // their connections hold; 10 MiB is allowed for that.
                let allowed = bound + 10 * 1024;
                checks.push(Check::new(
                    "RSS under the login flood",
                    &format!("<= idle + {pool} x 19 MiB (+10 MiB) = {} MiB", fmt_mib(Some(allowed))),
                    format!("{} MiB", fmt_mib(Some(*peak))),
                    Some(*peak <= allowed),
                ));
            }
        }
        if let Some(idle) = idle {
            checks.push(Check::new("RSS idle", "< 30 MB", format!("{} MiB", fmt_mib(Some(idle.rss_kib))), Some(idle.rss_kib * 1024 < 30_000_000)));
        }
        let loaded = per_call
            .iter()
            .chain(once.iter())
            .filter(|r| !r.setting.starts_with("bare"))
            .filter_map(|r| r.peak_rss_kib)
            .max();
        if loaded.is_some() {
            checks.push(Check::new(
                &format!("RSS under {c}-in-flight load (largest of the scenarios)"),
                "< 100 MB",
                format!("{} MiB", fmt_mib(loaded)),
                loaded.map(|k| k * 1024 < 100_000_000),
            ));
        }
        if let Some(hwm) = s.memory().map(|m| m.hwm_kib) {
            notes.push(format!("Server VmHWM (peak RSS) of the last server process: {} MiB.", fmt_mib(Some(hwm))));
        }
        if !startup.is_empty() {
            let median = startup[startup.len() / 2];
            let all: Vec<String> = startup.iter().map(|t| format!("{:.0}", t.as_secs_f64() * 1e3)).collect();
            checks.push(Check::new(
                &format!("start-up on an existing database ({} keys) to health SERVING", fmt_count(s.keys_stored as f64)),
                "< 200 ms",
                format!("median {:.0} ms of {} ({} ms)", median.as_secs_f64() * 1e3, startup.len(), all.join(", ")),
                Some(median < Duration::from_millis(200)),
            ));
        }
        Ok(RunFigures { rows, checks, notes })
    })
    .await?;

    print_rows(&figures.rows);
    println!("Targets:\n{}", report::text_checks(&figures.checks));
    for n in &figures.notes {
        println!("{n}");
    }
    let markdown = run_markdown(&args, &figures, started.elapsed());
    println!("\n{markdown}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &markdown)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("Markdown written to {}", path.display());
    }
    Ok(all_expected(&figures.rows))
}

fn run_markdown(args: &RunArgs, figures: &RunFigures, took: Duration) -> String {
    let mut out = String::new();
    let load =
        uptime_load().map_or_else(String::new, |l| format!(" Load average at the end: {l}."));
    out.push_str(&format!(
        "Measured {} on {}, `kms-bench run` ({} in flight over {} HTTP/2 connections, {:.0} s per scenario after {:.0} s warm-up, per-call scenarios in {} rounds; the whole run took {:.0} s).{load}\n\n",
        chrono::Utc::now().format("%Y-%m-%d"),
        machine(),
        args.load.concurrency,
        args.load.connections,
        args.load.duration.as_secs_f64(),
        args.load.warmup.as_secs_f64(),
        args.load.rounds,
        took.as_secs_f64()
    ));
    out.push_str(&report::markdown_table(&figures.rows));
    out.push('\n');
    let legend: Vec<String> = Scenario::ALL
        .iter()
        .map(|s| format!("`{}`: {}", s.name(), s.describe()))
        .collect();
    out.push_str(&format!("Scenarios: {}.\n\n", legend.join("; ")));
    for n in &figures.notes {
        out.push_str(&format!("- {n}\n"));
    }
    out.push('\n');
    out.push_str(&report::markdown_checks(&figures.checks));
    out
}

/// The 1, 5 and 15 minute load averages, to say how busy the machine was.
fn uptime_load() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let parts: Vec<&str> = text.split_whitespace().take(3).collect();
    (parts.len() == 3).then(|| parts.join(", "))
}
