//! Summaries of samples and the result table (pure: no I/O).

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

/// One row of the result table: latency percentiles of `runs` samples and/or one figure
/// in `extra` (throughput, MiB/s, MiB per sandbox, ...).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stat {
    pub name: String,
    pub runs: usize,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub mean_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra: Option<Extra>,
}

/// A figure that is not a latency, with its unit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Extra {
    pub value: f64,
    pub unit: String,
}

impl std::fmt::Display for Extra {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.value;
        if v.abs() >= 100.0 || v == v.trunc() {
            write!(f, "{v:.0} {}", self.unit)
        } else if v.abs() >= 10.0 {
            write!(f, "{v:.1} {}", self.unit)
        } else {
            write!(f, "{v:.2} {}", self.unit)
        }
    }
}

/// The sample at quantile `q` (0..=1) of sorted samples: nearest rank on `(n - 1) * q`.
pub fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * q.clamp(0.0, 1.0)).round() as usize;
    Some(sorted[i.min(sorted.len() - 1)])
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Percentiles and mean of `samples` (any order).
pub fn stat(name: &str, mut samples: Vec<Duration>) -> Stat {
    samples.sort();
    let pick = |q: f64| percentile(&samples, q).map(ms);
    let mean = if samples.is_empty() {
        None
    } else {
        Some(samples.iter().map(|d| ms(*d)).sum::<f64>() / samples.len() as f64)
    };
    Stat {
        name: name.to_string(),
        runs: samples.len(),
        p50_ms: pick(0.5),
        p90_ms: pick(0.9),
        p99_ms: pick(0.99),
        mean_ms: mean,
        extra: None,
    }
}

impl Stat {
    /// A row with one figure and no latencies.
    pub fn value(name: &str, runs: usize, value: f64, unit: &str) -> Stat {
        Stat {
            name: name.to_string(),
            runs,
            p50_ms: None,
            p90_ms: None,
            p99_ms: None,
            mean_ms: None,
            extra: Some(Extra {
                value,
                unit: unit.to_string(),
            }),
        }
    }

    pub fn with_extra(mut self, value: f64, unit: &str) -> Stat {
        self.extra = Some(Extra {
            value,
            unit: unit.to_string(),
        });
        self
    }
}

const NAME_WIDTH: usize = 50;

/// The result table: one header line and one line per row; `-` where a row has no value.
pub fn format_table(rows: &[Stat]) -> String {
    let width = rows
        .iter()
        .map(|r| r.name.chars().count())
        .max()
        .unwrap_or(0)
        .max(NAME_WIDTH);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<width$} {:>6} {:>9} {:>9} {:>9} {:>9}  extra",
        "scenario", "runs", "p50 ms", "p90 ms", "p99 ms", "mean ms"
    );
    let cell = |v: Option<f64>| match v {
        Some(v) => format!("{v:>9.3}"),
        None => format!("{:>9}", "-"),
    };
    for r in rows {
        // `{:<width$}` pads by chars, so names with `→` line up.
        let pad = width - r.name.chars().count().min(width);
        let extra = r.extra.as_ref().map(|e| e.to_string()).unwrap_or_default();
        let line = format!(
            "{}{} {:>6} {} {} {} {}  {}",
            r.name,
            " ".repeat(pad),
            r.runs,
            cell(r.p50_ms),
            cell(r.p90_ms),
            cell(r.p99_ms),
            cell(r.mean_ms),
            extra
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms_samples(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn percentiles() {
        assert_eq!(percentile(&[], 0.5), None);
        let one = ms_samples(&[7]);
        assert_eq!(percentile(&one, 0.0), Some(Duration::from_millis(7)));
        assert_eq!(percentile(&one, 0.99), Some(Duration::from_millis(7)));
        let hundred: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&hundred, 0.5), Some(Duration::from_millis(51)));
        assert_eq!(percentile(&hundred, 0.9), Some(Duration::from_millis(90)));
        assert_eq!(percentile(&hundred, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&hundred, 1.0), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&hundred, 2.0), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&hundred, 0.0), Some(Duration::from_millis(1)));
    }

    #[test]
    fn stat_sorts_and_averages() {
        let s = stat("x", ms_samples(&[30, 10, 20]));
        assert_eq!(s.runs, 3);
        assert_eq!(s.p50_ms, Some(20.0));
        assert_eq!(s.p99_ms, Some(30.0));
        assert_eq!(s.mean_ms, Some(20.0));
        let empty = stat("none", Vec::new());
        assert_eq!((empty.runs, empty.p50_ms, empty.mean_ms), (0, None, None));
    }

    #[test]
    fn extra_formatting() {
        let e = |value: f64| {
            Extra {
                value,
                unit: "u".into(),
            }
            .to_string()
        };
        assert_eq!(e(1234.56), "1235 u");
        assert_eq!(e(12.345), "12.3 u");
        assert_eq!(e(1.2345), "1.23 u");
        assert_eq!(e(3.0), "3 u");
    }

    #[test]
    fn table_lines_up() {
        let rows = vec![
            stat("lifecycle: create → first output", ms_samples(&[1, 2, 3])),
            Stat::value("density: PSS per sandbox", 1000, 1.5, "MiB/sandbox"),
            stat("concurrent", ms_samples(&[4])).with_extra(812.0, "execs/s"),
        ];
        let t = format_table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("scenario "));
        assert!(lines[0].ends_with("extra"));
        // The runs column ends at the same character position on every line.
        let col = |l: &str| l.chars().take(NAME_WIDTH + 7).collect::<String>();
        assert!(col(lines[0]).ends_with(" runs"));
        assert!(col(lines[1]).ends_with(" 3"));
        assert!(col(lines[2]).ends_with(" 1000"));
        assert!(lines[1].ends_with("     3     2.000     3.000     3.000     2.000"));
        assert!(lines[2].contains("        -         -         -         -  1.50 MiB/sandbox"));
        assert!(lines[3].ends_with("  812 execs/s"));
        // No trailing blanks on rows without an extra.
        assert!(!lines[1].ends_with(' '));
    }

    #[test]
    fn table_widens_for_long_names() {
        let long = "x".repeat(NAME_WIDTH + 10);
        let t = format_table(&[stat(&long, ms_samples(&[1]))]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].starts_with(&format!("{long}      1 ")));
        assert!(lines[0].starts_with(&format!("scenario{}", " ".repeat(NAME_WIDTH + 2))));
    }
}
