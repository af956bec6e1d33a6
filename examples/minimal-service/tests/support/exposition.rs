//! Reading the Prometheus text exposition for the metric tests: families with their type,
//! help text, label sets and samples; the comparison with the chassis's metric catalogue; and
//! `promtool check metrics`.

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::process::{Command, Stdio};

use chassis_core::metric_catalogue as names;

/// One scraped metric family: its `# TYPE`, `# HELP` and the label sets of its samples (the
/// `le` of histogram buckets left out).
#[derive(Debug, Default)]
pub struct Family {
    pub kind: Option<String>,
    pub help: Option<String>,
    pub series: Vec<BTreeMap<String, String>>,
    /// Every sample as written: its name (`_bucket`, `_sum`, `_count` included), all its
    /// labels (`le` included) and its value.
    pub samples: Vec<(String, BTreeMap<String, String>, String)>,
}

/// Parses the text exposition into families, folding `_bucket`/`_sum`/`_count` into their
/// histogram.
pub fn parse(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut histograms = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            if kind == "histogram" {
                histograms.insert(name.to_owned());
            }
            families.entry(name.to_owned()).or_default().kind = Some(kind.to_owned());
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            families.entry(name.to_owned()).or_default().help = Some(help.to_owned());
        } else if !line.is_empty() && !line.starts_with('#') {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.strip_suffix('}').expect("labels")),
                None => (series, ""),
            };
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|base| histograms.contains(*base))
                })
                .unwrap_or(name);
            let all_labels = parse_labels(labels);
            let labels = all_labels
                .iter()
                .filter(|(k, _)| *k != "le")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let family = families.entry(family.to_owned()).or_default();
            family.series.push(labels);
            family
                .samples
                .push((name.to_owned(), all_labels, value.to_owned()));
        }
    }
    families
}

/// `a="x",b="y"` into pairs (values in the exposition's escaping: `\\`, `\"`, `\n`).
pub fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").expect("label");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().expect("closing quote") {
                (_, '\\') => match chars.next().expect("escape").1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.to_owned(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    labels
}

/// The exposition's spelling of a label name: dots become underscores.
pub fn exposed(label: &str) -> String {
    label.replace('.', "_")
}

/// Compares the scrape with the catalogue; returns every disagreement.
pub fn disagreements(families: &BTreeMap<String, Family>) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, family) in families {
        let Some(metric) = names::find(name) else {
            problems.push(format!("{name}: emitted but not in the catalogue"));
            continue;
        };
        if family.kind.as_deref() != Some(metric.kind.as_str()) {
            problems.push(format!(
                "{name}: emitted as {:?}, catalogued as {}",
                family.kind,
                metric.kind.as_str()
            ));
        }
        if family.help.as_deref() != Some(metric.description) {
            problems.push(format!("{name}: HELP {:?}", family.help));
        }
        let catalogued: BTreeMap<String, _> =
            metric.labels.iter().map(|l| (exposed(l.name), l)).collect();
        let mut seen_labels = BTreeSet::new();
        for series in &family.series {
            for (key, value) in series {
                seen_labels.insert(key.clone());
                match catalogued.get(key) {
                    None => problems.push(format!("{name}: label {key} not in the catalogue")),
                    Some(label) => {
                        if let Some(values) = label.values
                            && !values.contains(&value.as_str())
                        {
                            problems.push(format!(
                                "{name}: {key}=\"{value}\" not among the catalogued {values:?}"
                            ));
                        }
                    }
                }
            }
        }
        for key in catalogued.keys() {
            if !seen_labels.contains(key) {
                problems.push(format!(
                    "{name}: catalogued label {key} on no emitted series"
                ));
            }
        }
    }
    for metric in names::ALL {
        match families.get(metric.name) {
            Some(family) if !family.series.is_empty() => {}
            _ => problems.push(format!("{}: catalogued but never emitted", metric.name)),
        }
    }
    problems
}

/// `promtool check metrics` on `text`: its findings (empty when clean). Fails the test when
/// promtool is missing, saying how to get it.
pub fn promtool_findings(text: &str) -> String {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => panic!(
            "promtool is needed to check the exposition ({e}); install it with \
             `apt-get install prometheus` (Debian's package ships promtool; .ci/run installs it)"
        ),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        findings.trim().to_owned()
    } else {
        format!("exit {}: {findings}", out.status)
    }
}
