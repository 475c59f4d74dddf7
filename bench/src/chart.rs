//! The chart: calls/s and p99 latency against calls in flight, one line per scenario,
//! drawn to a PNG with plotters. Text needs a TrueType font, read at run time; without
//! one the chart is skipped with a warning (the figures are printed either way).

use std::path::Path;

use plotters::prelude::*;

pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const FAMILY: &str = "sans-serif";

/// One level of a sweep: (calls in flight, calls/s, p99 ms, calls/s as a share of the
/// bare baseline at the same level).
pub type Point = (usize, f64, f64, Option<f64>);

/// One scenario's sweep, a point per level.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<Point>,
}

/// Registers the font once per process. `Err` says why text cannot be drawn.
pub fn load_font(path: &Path) -> Result<(), String> {
    static LOADED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    LOADED
        .get_or_init(|| {
            let bytes = std::fs::read(path)
                .map_err(|e| format!("cannot read the font {}: {e}", path.display()))?;
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FAMILY, FontStyle::Normal, bytes)
                .map_err(|_| format!("{} is not a usable TrueType font", path.display()))
        })
        .clone()
}

/// Fixed colours for the main scenarios, so charts compare at a glance.
fn color_of(name: &str, i: usize) -> RGBAColor {
    match name {
        "bare" => RGBColor(0, 0, 0).to_rgba(),
        "health" => RGBColor(90, 90, 90).to_rgba(),
        "validate" => RGBColor(31, 119, 180).to_rgba(),
        "verify" => RGBColor(44, 160, 44).to_rgba(),
        "get" => RGBColor(214, 39, 40).to_rgba(),
        "verify-invalid" => RGBColor(255, 127, 14).to_rgba(),
        _ => Palette99::pick(i).to_rgba(),
    }
}

/// A tick value without trailing zeros: 100, 10, 1, 0.5, 0.05.
fn tick(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_owned()
}

fn err<E: std::fmt::Display>(e: E) -> String {
    format!("drawing the chart failed: {e}")
}

/// Draws three panels side by side into `out`: calls/s (linear), calls/s as a share of
/// the bare baseline of the same shape at the same level, and p99 ms (log), all
/// against calls in flight on a log2 axis.
pub fn draw(out: &Path, title: &str, series: &[Series]) -> Result<(), String> {
    let levels: Vec<usize> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    let max_level = levels.iter().copied().max().unwrap_or(1).max(2) as f64;
    let x_max = max_level.log2().ceil();
    let x_of = |level: usize| (level.max(1) as f64).log2();
    let max_rate = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(1.0f64, f64::max);
    let p99s = || series.iter().flat_map(|s| s.points.iter().map(|p| p.2));
    let p99_min = p99s()
        .filter(|v| *v > 0.0)
        .fold(f64::MAX, f64::min)
        .min(1.0);
    let p99_max = p99s().fold(0.01f64, f64::max);

    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let max_ratio = series
        .iter()
        .flat_map(|s| s.points.iter().filter_map(|p| p.3))
        .fold(1.0f64, f64::max);
    let root = BitMapBackend::new(out, (2000, 620)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, (FAMILY, 24)).map_err(err)?;
    let (left, rest) = root.split_horizontally(667);
    let (middle, right) = rest.split_horizontally(667);
    let x_label = |x: &f64| format!("{}", 2f64.powf(*x).round());

    let mut rate = ChartBuilder::on(&left)
        .caption("calls/s", (FAMILY, 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(75)
        .build_cartesian_2d(0f64..x_max, 0f64..max_rate * 1.1)
        .map_err(err)?;
    rate.configure_mesh()
        .x_desc("calls in flight")
        .y_desc("calls/s")
        .x_labels(usize::try_from(x_max as u64 + 1).unwrap_or(9))
        .x_label_formatter(&x_label)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style((FAMILY, 14))
        .draw()
        .map_err(err)?;

    let mut share = ChartBuilder::on(&middle)
        .caption("calls/s vs the bare tonic baseline (%)", (FAMILY, 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(75)
        .build_cartesian_2d(0f64..x_max, 0f64..(max_ratio * 110.0).max(110.0))
        .map_err(err)?;
    share
        .configure_mesh()
        .x_desc("calls in flight")
        .y_desc("% of bare")
        .x_labels(usize::try_from(x_max as u64 + 1).unwrap_or(9))
        .x_label_formatter(&x_label)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style((FAMILY, 14))
        .draw()
        .map_err(err)?;

    let mut p99 = ChartBuilder::on(&right)
        .caption("p99 latency (ms, log scale)", (FAMILY, 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(75)
        .build_cartesian_2d(0f64..x_max, (p99_min / 2.0..p99_max * 2.0).log_scale())
        .map_err(err)?;
    p99.configure_mesh()
        .x_desc("calls in flight")
        .y_desc("p99 ms")
        .x_labels(usize::try_from(x_max as u64 + 1).unwrap_or(9))
        .x_label_formatter(&x_label)
        .y_label_formatter(&|y| tick(*y))
        .label_style((FAMILY, 14))
        .draw()
        .map_err(err)?;

    for (i, s) in series.iter().enumerate() {
        let color = color_of(&s.name, i);
        let rates: Vec<(f64, f64)> = s.points.iter().map(|p| (x_of(p.0), p.1)).collect();
        let lat: Vec<(f64, f64)> = s
            .points
            .iter()
            .map(|p| (x_of(p.0), p.2.max(p99_min / 2.0)))
            .collect();
        rate.draw_series(LineSeries::new(rates.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        rate.draw_series(rates.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(err)?;
        p99.draw_series(LineSeries::new(lat.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        p99.draw_series(lat.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(err)?;
        let shares: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter_map(|p| p.3.map(|r| (x_of(p.0), r * 100.0)))
            .collect();
        share
            .draw_series(LineSeries::new(shares.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        share
            .draw_series(shares.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(err)?;
    }
    rate.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FAMILY, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    share
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .label_font((FAMILY, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    p99.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FAMILY, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png_when_a_font_is_there() {
        let font = Path::new(DEFAULT_FONT);
        if load_font(font).is_err() {
            eprintln!("no font at {DEFAULT_FONT}: chart drawing not tested");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("sub/chart.png");
        let series = vec![
            Series {
                name: "health".into(),
                points: vec![
                    (1, 5000.0, 0.2, Some(0.9)),
                    (4, 15000.0, 0.4, Some(0.95)),
                    (64, 30000.0, 3.0, Some(0.8)),
                ],
            },
            Series {
                name: "verify".into(),
                points: vec![
                    (1, 3000.0, 0.4, None),
                    (4, 9000.0, 0.8, Some(0.7)),
                    (64, 20000.0, 5.0, Some(0.6)),
                ],
            },
        ];
        draw(&out, "test", &series).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
    }

    #[test]
    fn ticks_lose_trailing_zeros() {
        assert_eq!(tick(100.0), "100");
        assert_eq!(tick(0.5), "0.5");
        assert_eq!(tick(0.05), "0.05");
        assert_eq!(tick(2.25), "2.25");
    }
}
