//! The shipped Grafana dashboard (`dashboards/veil.json`) and alert rules
//! (`dashboards/alerts.yml`) as data: their PromQL expressions, Grafana's variables replaced by
//! values Prometheus accepts, the metric names each expression reads, and the names veil exports
//! (the contract of veil#15), so a renamed metric fails a test instead of a panel going blank.
//!
//! The PromQL reading here is a small tokenizer, not a parser: enough to find metric names (bare
//! identifiers outside label matchers, ranges, strings and `by (...)` lists) and the function
//! that directly encloses each one. Why not a PromQL crate: none is in Cargo.toml, and the
//! real-Prometheus test (`tests/it/prometheus.rs`) is the full check of every expression.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// What kind of series a Prometheus metric name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `_total`: only goes up; read through `rate`/`increase`.
    Counter,
    /// Goes up and down; read as is (never `rate`d).
    Gauge,
    /// `_bucket`/`_sum`/`_count` series, each a counter.
    Histogram,
}

/// The per-exchange families `/metrics` renders beside the registry
/// (`veil::counters::series::SERIES`), with their kinds, plus the rules info gauge.
pub fn exchange_families() -> Vec<(String, Kind)> {
    use veil::counters::series::{SERIES, SeriesKind};
    let mut out: Vec<(String, Kind)> = SERIES
        .iter()
        .map(|d| match d.kind {
            SeriesKind::Histogram(_) => (d.prometheus.to_string(), Kind::Histogram),
            SeriesKind::Counter => (format!("{}_total", d.prometheus), Kind::Counter),
        })
        .collect();
    // `veil_rules_info{rules_digest="..."} 1`: rendered by counters::exposition itself.
    out.push(("veil_rules_info".to_string(), Kind::Gauge));
    out
}

/// The Prometheus name of a registry entry: dots become underscores, counters get `_total`
/// (the translation `/metrics` applies; docs/metrics.md).
pub fn prometheus_name(desc: &veil::counters::MetricDesc) -> (String, Kind) {
    let base = desc.name.replace('.', "_");
    match desc.kind {
        veil::counters::MetricKind::Counter => (format!("{base}_total"), Kind::Counter),
        veil::counters::MetricKind::Gauge => (base, Kind::Gauge),
    }
}

/// Every metric name veil exports on `/metrics`, with its kind: the registry's entries
/// (translated) and the per-exchange families.
pub fn known_metrics() -> BTreeMap<String, Kind> {
    let mut out = BTreeMap::new();
    for (desc, _) in veil::counters::Counters::default().snapshot() {
        let (name, kind) = prometheus_name(desc);
        out.insert(name, kind);
    }
    for (name, kind) in exchange_families() {
        out.insert(name, kind);
    }
    out
}

fn repo_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// `dashboards/veil.json`, parsed.
pub fn dashboard() -> serde_json::Value {
    let path = repo_file("dashboards/veil.json");
    let text = std::fs::read_to_string(&path).expect("dashboards/veil.json");
    serde_json::from_str(&text).expect("dashboards/veil.json is JSON")
}

/// `dashboards/alerts.yml` as text.
pub fn alerts_text() -> String {
    std::fs::read_to_string(repo_file("dashboards/alerts.yml")).expect("dashboards/alerts.yml")
}

/// The absolute path of `dashboards/alerts.yml` (Prometheus loads it in the acceptance test).
pub fn alerts_path() -> PathBuf {
    repo_file("dashboards/alerts.yml")
}

/// One PromQL expression of the dashboard, named for failure messages.
#[derive(Debug, Clone)]
pub struct Query {
    /// `"Row / Panel title / refId"`.
    pub name: String,
    /// The expression as written in the dashboard (Grafana variables and all).
    pub expr: String,
}

/// Every panel of the dashboard, rows' nested panels (collapsed rows) included, in order.
pub fn panels(d: &serde_json::Value) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        out.push(p.clone());
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner.iter().cloned());
        }
    }
    out
}

/// Every target expression of the dashboard, named `Row / Panel / refId`.
pub fn queries(d: &serde_json::Value) -> Vec<Query> {
    let mut out = Vec::new();
    let mut row = String::new();
    for p in panels(d) {
        if p["type"] == "row" {
            row = p["title"].as_str().unwrap_or_default().to_string();
            continue;
        }
        let title = p["title"].as_str().unwrap_or_default();
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(Query {
                name: format!("{row} / {title} / {}", t["refId"].as_str().unwrap_or("?")),
                expr: t["expr"].as_str().unwrap_or_default().to_string(),
            });
        }
    }
    out
}

/// The dashboard's `label_values(METRIC, LABEL)` query variables: `(variable, metric, label)`.
pub fn label_variables(d: &serde_json::Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for v in d["templating"]["list"].as_array().expect("templating.list") {
        if v["type"] != "query" {
            continue;
        }
        let name = v["name"].as_str().unwrap_or_default().to_string();
        let q = v["query"]["query"]
            .as_str()
            .or_else(|| v["query"].as_str())
            .unwrap_or_default();
        let args = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {name}: not label_values(METRIC, LABEL): {q}"));
        let (metric, label) = args
            .split_once(',')
            .unwrap_or_else(|| panic!("variable {name}: {q}"));
        out.push((name, metric.trim().to_string(), label.trim().to_string()));
    }
    out
}

/// `expr` with Grafana's variables replaced by what Prometheus accepts: `$feature`/`$model`
/// (and `${...}`) by `.*` (the dashboard's "All"), `$__rate_interval` and `$__interval` by
/// `1m`, `$__range` by `1h`. An unknown variable is an error naming it.
pub fn substitute(expr: &str) -> Result<String, String> {
    const VALUES: &[(&str, &str)] = &[
        ("__rate_interval", "1m"),
        ("__interval", "1m"),
        ("__range", "1h"),
        ("feature", ".*"),
        ("model", ".*"),
    ];
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced
                .find('}')
                .ok_or_else(|| format!("unclosed ${{ in {expr}"))?;
            (&braced[..end], end + 2)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        let value = VALUES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| format!("unknown variable ${name} in {expr}"))?;
        out.push_str(value);
        rest = &after[len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A metric name in an expression and the function that directly encloses it (`rate` in
/// `sum(rate(x[5m]))`; `sum` in `sum by (i) (x)`; `None` at the top level or in bare parens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricRef {
    /// The series name as written, e.g. `veil_requests_total` or `..._bucket`.
    pub name: String,
    /// The innermost enclosing function or aggregation.
    pub within: Option<String>,
}

/// PromQL functions and aggregations the dashboard and alerts may use.
pub const FUNCTIONS: &[&str] = &[
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "topk",
    "bottomk",
    "sort",
    "sort_desc",
    "rate",
    "irate",
    "increase",
    "deriv",
    "delta",
    "histogram_quantile",
    "vector",
    "clamp_min",
    "max_over_time",
    "avg_over_time",
];

const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];

/// The metric names `expr` reads, each with its enclosing function; an error for an unknown
/// function or unbalanced brackets.
pub fn metric_refs(expr: &str) -> Result<Vec<MetricRef>, String> {
    // Each open paren: the function it calls (None for bare parens), and whether it holds a
    // label list (`by (...)`), whose identifiers are labels, not metrics.
    let mut stack: Vec<(Option<String>, bool)> = Vec::new();
    let mut out = Vec::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    // The last identifier before an aggregation's `by (...)` list, for the paren after it.
    let mut pending_aggr: Option<String> = None;
    let mut last_ident: Option<String> = None;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                let q = c;
                i += 1;
                while i < chars.len() && chars[i] != q {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                last_ident = None;
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                i += 1;
                while i < chars.len() && chars[i] != close {
                    if chars[i] == '"' {
                        i += 1;
                        while i < chars.len() && chars[i] != '"' {
                            if chars[i] == '\\' {
                                i += 1;
                            }
                            i += 1;
                        }
                    }
                    i += 1;
                }
                if i >= chars.len() {
                    return Err(format!("unclosed {c} in {expr}"));
                }
                i += 1;
            }
            '(' => {
                let entry = match last_ident.take() {
                    Some(g) if GROUPING.contains(&g.as_str()) => (Some(g), true),
                    Some(f) => (Some(f), false),
                    None => (pending_aggr.take(), false),
                };
                stack.push(entry);
                i += 1;
            }
            ')' => {
                let (_, labels) = stack
                    .pop()
                    .ok_or_else(|| format!("unbalanced ) in {expr}"))?;
                // `sum by (le) (...)`: the paren after the list belongs to the aggregation
                // named before the list, still pending; any other paren ends that.
                if !labels {
                    pending_aggr = None;
                }
                last_ident = None;
                i += 1;
            }
            c if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                // A number, with an exponent (1e-9) or a duration suffix.
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric()
                        || chars[i] == '.'
                        || ((chars[i] == '-' || chars[i] == '+')
                            && matches!(chars[i - 1], 'e' | 'E')))
                {
                    i += 1;
                }
                last_ident = None;
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let called = chars.get(j) == Some(&'(');
                let in_labels = stack.last().is_some_and(|(_, labels)| *labels);
                if in_labels {
                    last_ident = None;
                } else if called {
                    if !FUNCTIONS.contains(&word.as_str()) && !GROUPING.contains(&word.as_str()) {
                        return Err(format!("unknown function {word}() in {expr}"));
                    }
                    last_ident = Some(word);
                } else if GROUPING.contains(&word.as_str()) {
                    last_ident = Some(word);
                } else if FUNCTIONS.contains(&word.as_str()) {
                    // `sum by (x) (...)`: remembered for the paren after the list.
                    pending_aggr = Some(word);
                    last_ident = None;
                } else if KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                    last_ident = None;
                } else {
                    let within = stack.last().and_then(|(f, _)| f.clone());
                    out.push(MetricRef { name: word, within });
                    last_ident = None;
                }
            }
            c if c.is_whitespace() => i += 1,
            _ => {
                last_ident = None;
                i += 1;
            }
        }
    }
    if !stack.is_empty() {
        return Err(format!("unclosed ( in {expr}"));
    }
    Ok(out)
}

/// One alerting rule of `dashboards/alerts.yml`: its name and the YAML lines of its body.
#[derive(Debug, Clone)]
pub struct AlertRule {
    /// `alert:` value.
    pub name: String,
    /// `expr:` value, folded blocks (`>-`) joined with spaces.
    pub expr: String,
    /// The rule's lines, for the presence of `for:`, `severity:`, `summary:`, `description:`.
    pub body: String,
}

/// The rules of `dashboards/alerts.yml`, read line by line (the file is ours and simple; no
/// YAML crate is in Cargo.toml, and `promtool check rules` validates the YAML itself in CI).
pub fn alert_rules(text: &str) -> Vec<AlertRule> {
    let mut rules: Vec<AlertRule> = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            rules.push(AlertRule {
                name: name.trim().to_string(),
                expr: String::new(),
                body: String::new(),
            });
        } else if let Some(rule) = rules.last_mut() {
            if trimmed.starts_with("- name:") {
                // The next group: its lines belong to no rule until its first `- alert:`.
                rules.push(AlertRule {
                    name: String::new(),
                    expr: String::new(),
                    body: String::new(),
                });
            } else if let Some(value) = trimmed.strip_prefix("expr:") {
                let value = value.trim();
                if value == ">-" || value == ">" || value == "|" || value == "|-" {
                    let indent = line.len() - trimmed.len();
                    let mut parts = Vec::new();
                    while i + 1 < lines.len() {
                        let next = lines[i + 1];
                        let next_indent = next.len() - next.trim_start().len();
                        if next.trim().is_empty() || next_indent <= indent {
                            break;
                        }
                        parts.push(next.trim());
                        i += 1;
                    }
                    rule.expr = parts.join(" ");
                } else {
                    rule.expr = value.to_string();
                }
            }
            if let Some(rule) = rules.last_mut() {
                rule.body.push_str(trimmed);
                rule.body.push('\n');
            }
        }
        i += 1;
    }
    rules.retain(|r| !r.name.is_empty());
    rules
}

/// The labels of every `by (...)` list in `expr`, `le` left out (quantiles consume it), in
/// order of appearance, each once.
pub fn grouping_labels(expr: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("by (") {
        let after = &rest[at + 4..];
        let list = after.split(')').next().unwrap_or_default();
        for label in list.split(',').map(str::trim) {
            if !label.is_empty() && label != "le" && !out.iter().any(|l| l == label) {
                out.push(label.to_string());
            }
        }
        rest = after;
    }
    out
}
