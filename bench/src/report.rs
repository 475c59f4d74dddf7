//! The report: one row per measured scenario, as an aligned text table and as Markdown,
//! plus the performance targets checked against the figures.

use std::{collections::BTreeMap, fmt::Write};

use crate::driver::{Label, Measurement, OK};

#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    /// What else sets this row apart: keys stored, signing algorithm, backend.
    pub setting: String,
    pub concurrency: usize,
    pub calls_per_s: f64,
    /// The bare call this row is divided by (`Scenario::baseline`).
    pub baseline: String,
    /// Calls/s divided by the baseline's calls/s measured in the same round; over
    /// several rounds, the median of the rounds' ratios.
    pub ratio: Option<f64>,
    /// Over several rounds: the lowest and highest ratio and the number of rounds.
    pub spread: Option<(f64, f64, usize)>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// The server's largest RSS while the scenario ran.
    pub peak_rss_kib: Option<u64>,
    /// The server process's CPU time per call (every thread, user and system): what
    /// a call costs the server, whatever the load generator beside it costs.
    pub server_us_per_call: Option<f64>,
    pub outcomes: BTreeMap<Label, u64>,
    /// A flood beyond the server's bounds: RESOURCE_EXHAUSTED is the expected refusal.
    pub sheds: bool,
}

impl Row {
    /// `baseline`: the name of the bare call compared with and its calls/s.
    pub fn new(
        scenario: &str,
        setting: String,
        concurrency: usize,
        m: &Measurement,
        baseline: Option<(&str, f64)>,
        peak_rss_kib: Option<u64>,
    ) -> Self {
        let calls_per_s = m.calls_per_second();
        Self {
            scenario: scenario.to_owned(),
            setting,
            concurrency,
            calls_per_s,
            baseline: baseline.map_or_else(|| "-".into(), |(name, _)| name.to_owned()),
            ratio: baseline
                .map(|(_, b)| b)
                .filter(|b| *b > 0.0)
                .map(|b| calls_per_s / b),
            spread: None,
            p50_ms: m.quantile_ms(0.5),
            p99_ms: m.quantile_ms(0.99),
            p999_ms: m.quantile_ms(0.999),
            peak_rss_kib,
            server_us_per_call: None,
            outcomes: m.outcomes.clone(),
            sheds: false,
        }
    }

    /// With the server's CPU time per call, when it was measured.
    pub fn with_server_cpu(self, us_per_call: Option<f64>) -> Self {
        Self {
            server_us_per_call: us_per_call,
            ..self
        }
    }

    /// Marks a flood row, where refusals with RESOURCE_EXHAUSTED are expected.
    pub fn shedding(self) -> Self {
        Self {
            sheds: true,
            ..self
        }
    }

    /// Calls that did not end as the scenario expects (anything but OK, and in a
    /// flood RESOURCE_EXHAUSTED).
    pub fn unexpected(&self) -> u64 {
        let shed = crate::driver::code_label(tonic::Code::ResourceExhausted);
        self.outcomes
            .iter()
            .filter(|(l, _)| **l != OK && !(self.sheds && **l == shed))
            .map(|(_, n)| n)
            .sum()
    }
}

/// `OK=123456 UNAVAILABLE=3`: OK first, then the rest by name.
pub fn fmt_outcomes(outcomes: &BTreeMap<Label, u64>) -> String {
    let mut parts = Vec::new();
    if let Some(n) = outcomes.get(OK) {
        parts.push(format!("{OK}={n}"));
    }
    for (label, n) in outcomes.iter().filter(|(l, _)| **l != OK) {
        parts.push(format!("{label}={n}"));
    }
    if parts.is_empty() {
        "no calls".into()
    } else {
        parts.join(" ")
    }
}

/// Milliseconds with 3 decimals under 10 ms, 2 under 100 ms, 1 above.
pub fn fmt_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.3}")
    } else if ms < 100.0 {
        format!("{ms:.2}")
    } else {
        format!("{ms:.1}")
    }
}

/// A whole number with thousands separators: `12,345`.
pub fn fmt_count(n: f64) -> String {
    let rounded = n.round().max(0.0) as u64;
    let digits = rounded.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{:.0}%", r * 100.0))
}

/// The ratio, and over several rounds their range: `88% (85-90%, 3 rounds)`.
pub fn fmt_ratio_spread(r: Option<f64>, spread: Option<(f64, f64, usize)>) -> String {
    match (r, spread) {
        (Some(r), Some((lo, hi, n))) if n > 1 => format!(
            "{:.0}% ({:.0}-{:.0}%, {n} rounds)",
            r * 100.0,
            lo * 100.0,
            hi * 100.0
        ),
        _ => fmt_ratio(r),
    }
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

/// One row out of several rounds of the same scenario: the round with the median
/// calls/s, carrying the median of the rounds' ratios and their range.
pub fn median_row(rounds: &[Row]) -> Option<Row> {
    let mut sorted: Vec<&Row> = rounds.iter().collect();
    sorted.sort_by(|a, b| a.calls_per_s.total_cmp(&b.calls_per_s));
    let mut row = (*sorted.get(sorted.len() / 2)?).clone();
    let ratios: Vec<f64> = rounds.iter().filter_map(|r| r.ratio).collect();
    row.ratio = median(&ratios);
    let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    row.spread = (!ratios.is_empty()).then_some((lo, hi, ratios.len()));
    // Every call of every round counts towards the statuses.
    let mut outcomes = BTreeMap::new();
    for r in rounds {
        for (label, n) in &r.outcomes {
            *outcomes.entry(*label).or_default() += n;
        }
    }
    row.outcomes = outcomes;
    Some(row)
}

pub fn fmt_mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "-".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

const HEADERS: [&str; 12] = [
    "scenario",
    "setting",
    "in flight",
    "calls/s",
    "baseline",
    "vs baseline",
    "server CPU us/call",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "peak RSS MiB",
    "statuses",
];

fn cells(row: &Row) -> [String; 12] {
    [
        row.scenario.clone(),
        row.setting.clone(),
        row.concurrency.to_string(),
        fmt_count(row.calls_per_s),
        row.baseline.clone(),
        fmt_ratio_spread(row.ratio, row.spread),
        row.server_us_per_call
            .map_or_else(|| "-".into(), |us| format!("{us:.1}")),
        fmt_ms(row.p50_ms),
        fmt_ms(row.p99_ms),
        fmt_ms(row.p999_ms),
        fmt_mib(row.peak_rss_kib),
        fmt_outcomes(&row.outcomes),
    ]
}

/// Columns of figures, aligned right.
fn is_number(column: usize) -> bool {
    (2..=10).contains(&column) && column != 4
}

/// An aligned plain-text table for the terminal.
pub fn text_table(rows: &[Row]) -> String {
    let all: Vec<[String; 12]> = rows.iter().map(cells).collect();
    let mut widths = HEADERS.map(str::len);
    for r in &all {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cols: &[String]| {
        let mut s = String::new();
        for (i, (c, w)) in cols.iter().zip(widths.iter()).enumerate() {
            // Text left, numbers right.
            if is_number(i) {
                let _ = write!(s, "{c:>w$}  ");
            } else {
                let _ = write!(s, "{c:<w$}  ");
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&mut out, &HEADERS.map(String::from));
    for r in &all {
        line(&mut out, r);
    }
    out
}

pub fn markdown_table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| {} |", HEADERS.join(" | "));
    let align: Vec<&str> = (0..HEADERS.len())
        .map(|i| if is_number(i) { "---:" } else { "---" })
        .collect();
    let _ = writeln!(out, "|{}|", align.join("|"));
    for row in rows {
        let _ = writeln!(out, "| {} |", cells(row).join(" | "));
    }
    out
}

/// One of the performance targets, with the figure measured against it.
#[derive(Debug, Clone)]
pub struct Check {
    pub what: String,
    pub target: String,
    pub measured: String,
    /// `None`: reported, not judged (e.g. commit-bound figures).
    pub met: Option<bool>,
}

impl Check {
    pub fn new(what: &str, target: &str, measured: String, met: Option<bool>) -> Self {
        Self {
            what: what.into(),
            target: target.into(),
            measured,
            met,
        }
    }
}

pub fn markdown_checks(checks: &[Check]) -> String {
    let mut out = String::from("| target | wanted | measured | met |\n|---|---|---|---|\n");
    for c in checks {
        let met = match c.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "-",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {met} |",
            c.what, c.target, c.measured
        );
    }
    out
}

pub fn text_checks(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let met = match c.met {
            Some(true) => "met",
            Some(false) => "NOT MET",
            None => "reported",
        };
        let _ = writeln!(
            out,
            "  {:<8} {}: {} (target: {})",
            met, c.what, c.measured, c.target
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Row {
        Row {
            scenario: "verify".into(),
            setting: "1,000 keys".into(),
            concurrency: 64,
            calls_per_s: 12345.6,
            baseline: "bare+auth".into(),
            ratio: Some(0.715),
            spread: None,
            p50_ms: 1.23456,
            p99_ms: 12.3456,
            p999_ms: 123.456,
            peak_rss_kib: Some(20480),
            server_us_per_call: Some(24.44),
            outcomes: BTreeMap::from([("UNAVAILABLE", 3), (OK, 123456)]),
            sheds: false,
        }
    }

    #[test]
    fn a_flood_expects_refusals_for_load_only() {
        let mut flood = row().shedding();
        flood.outcomes.insert("RESOURCE_EXHAUSTED", 10);
        assert_eq!(flood.unexpected(), 3);
        let mut normal = row();
        normal.outcomes.insert("RESOURCE_EXHAUSTED", 10);
        assert_eq!(normal.unexpected(), 13);
    }

    #[test]
    fn outcomes_put_ok_first() {
        assert_eq!(fmt_outcomes(&row().outcomes), "OK=123456 UNAVAILABLE=3");
        assert_eq!(fmt_outcomes(&BTreeMap::new()), "no calls");
        assert_eq!(row().unexpected(), 3);
    }

    #[test]
    fn numbers() {
        assert_eq!(fmt_count(1234567.4), "1,234,567");
        assert_eq!(fmt_count(999.0), "999");
        assert_eq!(fmt_count(0.0), "0");
        assert_eq!(fmt_ms(1.23456), "1.235");
        assert_eq!(fmt_ms(12.3456), "12.35");
        assert_eq!(fmt_ms(123.456), "123.5");
        assert_eq!(fmt_ratio(Some(0.715)), "72%");
        assert_eq!(fmt_ratio(None), "-");
        assert_eq!(fmt_mib(Some(20480)), "20.0");
    }

    #[test]
    fn the_median_round_carries_the_median_ratio() {
        let rounds: Vec<Row> = [(100.0, 0.9), (300.0, 0.7), (200.0, 0.8)]
            .into_iter()
            .map(|(calls, ratio)| Row {
                calls_per_s: calls,
                ratio: Some(ratio),
                ..row()
            })
            .collect();
        let m = median_row(&rounds).unwrap();
        assert_eq!(m.calls_per_s, 200.0);
        assert_eq!(m.ratio, Some(0.8));
        assert_eq!(m.spread, Some((0.7, 0.9, 3)));
        assert_eq!(m.outcomes.get(OK), Some(&(3 * 123456)));
        assert_eq!(
            fmt_ratio_spread(m.ratio, m.spread),
            "80% (70-90%, 3 rounds)"
        );
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn tables() {
        let md = markdown_table(&[row()]);
        assert!(md.starts_with("| scenario | setting |"), "{md}");
        assert!(
            md.contains("| verify | 1,000 keys | 64 | 12,346 | bare+auth | 72% | 24.4 | 1.235 | 12.35 | 123.5 | 20.0 | OK=123456 UNAVAILABLE=3 |"),
            "{md}"
        );
        let text = text_table(&[row()]);
        assert_eq!(text.lines().count(), 2);
        assert!(text.lines().all(|l| !l.ends_with(' ')));
    }
}
