//! Measuring against the bare baseline: each scenario is divided by the bare call of
//! its shape (`Scenario::baseline`) measured in the same round, and a list measured in
//! several rounds gives, per scenario, the median round with the median of the
//! rounds' ratios. The machine's speed drifts over minutes; a ratio within one round
//! does not.

use std::{collections::BTreeMap, time::Duration};

use crate::{
    report::{self, Row, fmt_count, fmt_ms},
    scenario::Scenario,
    server::Jwt,
    session::Session,
};

/// The bare calls' calls/s, by baseline scenario.
pub type Baselines = BTreeMap<Scenario, f64>;

/// What else sets a row apart: keys stored, signing algorithm, backend (the bare
/// server has none of these).
pub fn setting(session: &Session, scenario: Scenario, extra: &str) -> String {
    if scenario.is_bare() {
        return format!("bare tonic{extra}");
    }
    let jwt = match session.jwt() {
        Some(Jwt::Hs256) => ", HS256",
        Some(Jwt::EdDsa) => ", EdDSA",
        None => "",
    };
    format!(
        "{} keys{jwt}, {}{extra}",
        fmt_count(session.keys_stored as f64),
        session.backend
    )
}

/// The baseline of `scenario` in `baselines`, as a row wants it.
pub fn baseline_of(scenario: Scenario, baselines: &Baselines) -> Option<(&'static str, f64)> {
    let b = scenario.baseline();
    baselines.get(&b).map(|v| (b.name(), *v))
}

/// Measures one scenario (after its warm-up) and divides it by its baseline.
pub async fn measure_row(
    session: &Session,
    scenario: Scenario,
    concurrency: usize,
    duration: Duration,
    warmup: Duration,
    baselines: &Baselines,
) -> Result<Row, String> {
    eprintln!(
        "kms-bench: {} at {concurrency} in flight for {:.1} s",
        scenario.name(),
        duration.as_secs_f64()
    );
    let m = session
        .measure(scenario, concurrency, duration, warmup)
        .await?;
    let own;
    let baseline = if scenario.is_bare() {
        own = m.measurement.calls_per_second();
        Some((scenario.name(), own))
    } else {
        baseline_of(scenario, baselines)
    };
    let row = Row::new(
        scenario.name(),
        setting(session, scenario, ""),
        concurrency,
        &m.measurement,
        baseline,
        m.peak_rss_kib,
    )
    .with_server_cpu(m.server_us_per_call);
    eprintln!(
        "           {} calls/s ({} of {}), server {} us/call, p50 {} ms, p99 {} ms, {}",
        fmt_count(row.calls_per_s),
        report::fmt_ratio(row.ratio),
        row.baseline,
        row.server_us_per_call
            .map_or_else(|| "-".into(), |us| format!("{us:.1}")),
        fmt_ms(row.p50_ms),
        fmt_ms(row.p99_ms),
        report::fmt_outcomes(&row.outcomes)
    );
    Ok(row)
}

/// The bare baselines `list` needs, in a fixed order, followed by the rest of `list`.
fn with_baselines(list: &[Scenario]) -> Vec<Scenario> {
    let mut all: Vec<Scenario> = Scenario::BARE
        .into_iter()
        .filter(|b| list.iter().any(|s| s.baseline() == *b))
        .collect();
    all.extend(list.iter().copied().filter(|s| !s.is_bare()));
    all
}

/// Measures `list` (with the baselines it needs, first in each round) `rounds` times.
/// Returns one row per scenario, baselines first (the median round, with the median
/// of the rounds' ratios), and the baselines' median calls/s for rows measured later.
pub async fn measure_rounds(
    session: &Session,
    list: &[Scenario],
    concurrency: usize,
    duration: Duration,
    warmup: Duration,
    rounds: usize,
) -> Result<(Vec<Row>, Baselines), String> {
    let order = with_baselines(list);
    let mut measured: Vec<Vec<Row>> = vec![Vec::new(); order.len()];
    for round in 0..rounds.max(1) {
        if rounds > 1 {
            eprintln!("kms-bench: round {} of {rounds}", round + 1);
        }
        let mut baselines = Baselines::new();
        for (i, sc) in order.iter().enumerate() {
            let row = measure_row(session, *sc, concurrency, duration, warmup, &baselines).await?;
            if sc.is_bare() {
                baselines.insert(*sc, row.calls_per_s);
            }
            measured[i].push(row);
        }
    }
    let mut rows = Vec::new();
    let mut baselines = Baselines::new();
    for (sc, rounds) in order.iter().zip(&measured) {
        let Some(row) = report::median_row(rounds) else {
            continue;
        };
        if sc.is_bare() {
            let rates: Vec<f64> = rounds.iter().map(|r| r.calls_per_s).collect();
            if let Some(m) = report::median(&rates) {
                baselines.insert(*sc, m);
            }
        }
        rows.push(row);
    }
    Ok((rows, baselines))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baselines_come_first_once_each() {
        let order = with_baselines(&[
            Scenario::Health,
            Scenario::Verify,
            Scenario::Get,
            Scenario::Bare,
        ]);
        assert_eq!(
            order,
            vec![
                Scenario::Bare,
                Scenario::BareAuth,
                Scenario::Health,
                Scenario::Verify,
                Scenario::Get
            ]
        );
        assert_eq!(
            with_baselines(&[Scenario::Check]),
            vec![Scenario::BareCheck, Scenario::Check]
        );
    }
}
