//! The readable table `smtpgate stats` prints from the API's answer.

use std::fmt::Write;

use super::query::{Report, Summary};

const HEADINGS: [&str; 9] = [
    "value",
    "received",
    "delivered",
    "bounced",
    "deferred",
    "delivery",
    "bounce",
    "p50",
    "p90",
];

/// The report as a table: one row per value (or one for all mail), then the totals.
pub fn table(report: &Report) -> String {
    let mut rows: Vec<[String; 9]> = report.values.iter().map(|v| row(&v.value, &v.summary)).collect();
    if report.by.is_none() || rows.len() != 1 {
        rows.push(row("total", &report.totals));
    }
    let mut widths = HEADINGS.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    line(&mut out, &HEADINGS.map(String::from), &widths);
    for r in &rows {
        line(&mut out, r, &widths);
    }
    out
}

fn row(value: &str, s: &Summary) -> [String; 9] {
    let value = if value.is_empty() { "(none)" } else { value };
    [
        value.to_owned(),
        s.received.to_string(),
        s.delivered.to_string(),
        s.bounced.to_string(),
        s.deferred.to_string(),
        percent(s.delivery_rate),
        percent(s.bounce_rate),
        millis(s.latency_ms.p50),
        millis(s.latency_ms.p90),
    ]
}

/// The value left-aligned, numbers right-aligned.
fn line(out: &mut String, cells: &[String; 9], widths: &[usize; 9]) {
    for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
        let sep = if i == 0 { "" } else { "  " };
        let _ = match i {
            0 => write!(out, "{sep}{cell:<w$}"),
            _ => write!(out, "{sep}{cell:>w$}"),
        };
    }
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    out.push('\n');
}

fn percent(rate: Option<f64>) -> String {
    rate.map_or("-".into(), |r| format!("{:.1}%", r * 100.0))
}

fn millis(ms: Option<u64>) -> String {
    ms.map_or("-".into(), |ms| format!("{ms}ms"))
}
