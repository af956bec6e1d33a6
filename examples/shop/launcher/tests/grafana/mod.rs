//! The Grafana dashboards of `examples/deploy/grafana`, read the way Grafana reads them: every
//! panel (rows' nested panels included) and every query, and a small PromQL reader that names
//! the metrics and labels a query uses, so the tests can check them against the chassis's
//! metric catalogue.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// `examples/deploy/grafana`.
pub fn grafana_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana")
}

/// One dashboard file, parsed.
#[derive(Debug)]
pub struct Dashboard {
    /// The file name (`shop-services.json`).
    pub file: String,
    /// The whole JSON model.
    pub json: Value,
}

/// One query of a panel.
#[derive(Debug, Clone)]
pub struct Query {
    /// The dashboard's file name.
    pub dashboard: String,
    /// The panel's title.
    pub panel: String,
    /// The target's `refId` (`A`, `B`, …).
    pub ref_id: String,
    /// The target's datasource uid (the panel's when the target names none).
    pub datasource: Option<String>,
    /// The PromQL expression, as written (template variables unexpanded).
    pub expr: String,
}

/// Every `*.json` under `grafana/dashboards`, sorted by name; panics naming a file that does
/// not parse.
pub fn dashboards() -> Vec<Dashboard> {
    let dir = grafana_dir().join("dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let json: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: invalid JSON: {e}", path.display()));
            Dashboard {
                file: path.file_name().unwrap().to_string_lossy().into_owned(),
                json,
            }
        })
        .collect()
}

impl Dashboard {
    /// Every panel that is not a row, rows' collapsed panels included.
    pub fn panels(&self) -> Vec<&Value> {
        fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
            for p in panels.as_array().into_iter().flatten() {
                if p["type"] == "row" {
                    walk(&p["panels"], out);
                } else {
                    out.push(p);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.json["panels"], &mut out);
        out
    }

    /// Every query of every panel.
    pub fn queries(&self) -> Vec<Query> {
        let mut out = Vec::new();
        for p in self.panels() {
            let panel_ds = p["datasource"]["uid"].as_str();
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push(Query {
                    dashboard: self.file.clone(),
                    panel: p["title"].as_str().unwrap_or_default().to_owned(),
                    ref_id: t["refId"].as_str().unwrap_or_default().to_owned(),
                    datasource: t["datasource"]["uid"]
                        .as_str()
                        .or(panel_ds)
                        .map(str::to_owned),
                    expr: t["expr"].as_str().unwrap_or_default().to_owned(),
                });
            }
        }
        out
    }
}

/// What a PromQL expression refers to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Refs {
    /// Series names (`http_server_request_duration_seconds_bucket`).
    pub metrics: BTreeSet<String>,
    /// `(series, label)` for each label matcher of a selector (`{job=~"…", outcome="ok"}`).
    pub matchers: BTreeSet<(String, String)>,
    /// Labels of `by`, `without`, `on`, `ignoring`, `group_left`, `group_right`.
    pub grouping: BTreeSet<String>,
    /// Labels a `label_replace` creates (its second argument).
    pub created: BTreeSet<String>,
    /// Labels a `label_replace` reads (its fourth argument).
    pub read: BTreeSet<String>,
}

const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "rate",
    "irate",
    "increase",
    "histogram_quantile",
    "label_replace",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
];

/// The metrics and labels `expr` uses. Enough PromQL for dashboards: selectors with matchers,
/// aggregations with grouping clauses, vector matching, `label_replace`; template variables
/// (`$service`, `$__rate_interval`) may stay in.
pub fn refs(expr: &str) -> Refs {
    let mut refs = Refs::default();
    // label_replace(v, "dst", "replacement", "src", "regex"): its string arguments are labels.
    let mut rest = expr;
    while let Some(i) = rest.find("label_replace(") {
        rest = &rest[i + "label_replace(".len()..];
        // The vector's own matchers come first; the call's last four strings are dst,
        // replacement, src and regex.
        let call = quoted(&rest[..matching_paren(rest)]);
        let n = call.len();
        assert!(n >= 4, "label_replace without its four strings: {expr}");
        refs.created.insert(call[n - 4].clone());
        refs.read.insert(call[n - 2].clone());
    }
    // Blank out string literals and template variables, keeping positions.
    let mut plain = String::with_capacity(expr.len());
    let mut in_string = false;
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '"' {
            in_string = !in_string;
            plain.push(' ');
        } else if in_string {
            plain.push(' ');
        } else if c == '$' {
            plain.push(' ');
            while chars
                .peek()
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
            {
                chars.next();
                plain.push(' ');
            }
        } else {
            plain.push(c);
        }
    }
    let bytes = plain.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            let word = &plain[start..i];
            let after = plain[i..].trim_start();
            if KEYWORDS.contains(&word) {
                if [
                    "by",
                    "without",
                    "on",
                    "ignoring",
                    "group_left",
                    "group_right",
                ]
                .contains(&word)
                    && after.starts_with('(')
                {
                    let open = plain.len() - after.len();
                    let close = open + plain[open..].find(')').unwrap();
                    for label in plain[open + 1..close].split(',') {
                        let label = label.trim();
                        if !label.is_empty() {
                            refs.grouping.insert(label.to_owned());
                        }
                    }
                    i = close + 1;
                }
                continue;
            }
            refs.metrics.insert(word.to_owned());
            if after.starts_with('{') {
                let open = plain.len() - after.len();
                let close = open + plain[open..].find('}').unwrap();
                for matcher in plain[open + 1..close].split(',') {
                    let label = matcher
                        .split(['=', '!', '~'])
                        .next()
                        .unwrap_or_default()
                        .trim();
                    if !label.is_empty() {
                        refs.matchers.insert((word.to_owned(), label.to_owned()));
                    }
                }
                i = close + 1;
            }
        } else if c.is_ascii_digit() {
            // A number or a duration (`0.95`, `5m`): not a name.
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    refs
}

/// The string literals of `s`, in order.
fn quoted(s: &str) -> Vec<String> {
    s.split('"')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, v)| v.to_owned())
        .collect()
}

/// The index of the `)` closing the call whose arguments `s` starts with.
fn matching_paren(s: &str) -> usize {
    let mut depth = 1;
    let mut in_string = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => in_string = !in_string,
            '(' if !in_string => depth += 1,
            ')' if !in_string => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced parentheses: {s}")
}
