//! The shipped dashboard and alert rules (veil#15), checked without Prometheus: every metric
//! they read is one veil exports, counters are read through `rate`/`increase` and gauges never
//! are, quantiles aggregate buckets by `le`, and the dashboard has the issue's rows and its
//! datasource as a variable. `tests/it/prometheus.rs` runs every expression on a real
//! Prometheus; these run everywhere, in a second, so a renamed metric fails `cargo test`.

use std::collections::BTreeSet;

use crate::support::dashboard::{
    Kind, MetricRef, alert_rules, alerts_text, dashboard, grouping_labels, known_metrics,
    label_variables, metric_refs, panels, queries, substitute,
};

/// Functions that turn a counter into a rate.
const RATES: &[&str] = &["rate", "irate", "increase"];

/// Checks one metric reference against the exported names and kinds; `None` when fine.
fn check_ref(r: &MetricRef) -> Option<String> {
    let known = known_metrics();
    let (base, kind) = match known.get(&r.name) {
        Some(kind) => (r.name.as_str(), *kind),
        None => {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| r.name.strip_suffix(s));
            match base.and_then(|b| known.get(b).map(|k| (b, *k))) {
                Some((b, Kind::Histogram)) => (b, Kind::Histogram),
                _ => return Some(format!("{} is not a metric veil exports", r.name)),
            }
        }
    };
    let within = r.within.as_deref().unwrap_or("(top level)");
    let rated = RATES.contains(&within);
    match kind {
        Kind::Histogram if base == r.name => Some(format!(
            "{} is a histogram: read its _bucket, _sum or _count series",
            r.name
        )),
        Kind::Counter | Kind::Histogram if !rated => Some(format!(
            "{} is a counter, read directly inside {within}: use rate() or increase()",
            r.name
        )),
        Kind::Gauge if rated => Some(format!(
            "{} is a gauge: {within}() of a gauge is meaningless",
            r.name
        )),
        _ => None,
    }
}

/// Problems of one expression: unknown functions, unknown metrics, wrong kind use, quantiles
/// not aggregated by `le`.
fn problems(expr: &str) -> Vec<String> {
    let refs = match metric_refs(expr) {
        Ok(refs) => refs,
        Err(e) => return vec![e],
    };
    let mut out: Vec<String> = refs.iter().filter_map(check_ref).collect();
    if refs.is_empty() {
        out.push("reads no metric".into());
    }
    if expr.contains("histogram_quantile") {
        // Each quantile over `sum by (le, ...)` of bucket rates: without `le` in the grouping
        // the buckets are summed away and the quantile is NaN.
        for part in expr.split("histogram_quantile(").skip(1) {
            let grouped_by_le = part
                .split_once("by (")
                .map(|(_, rest)| rest.split(')').next().unwrap_or_default())
                .is_some_and(|labels| labels.split(',').any(|l| l.trim() == "le"));
            if !grouped_by_le || !part.contains("_bucket") {
                out.push("histogram_quantile not over sum by (le, ...) of _bucket rates".into());
            }
        }
    }
    out
}

#[test]
fn every_dashboard_expression_reads_only_metrics_veil_exports_each_the_right_way() {
    let d = dashboard();
    let qs = queries(&d);
    assert!(
        qs.len() >= 30,
        "the dashboard lost its queries: {}",
        qs.len()
    );
    let mut bad = Vec::new();
    for q in &qs {
        if let Err(e) = substitute(&q.expr) {
            bad.push(format!("{}: {e}", q.name));
        }
        for p in problems(&q.expr) {
            bad.push(format!("{}: {p}\n    {}", q.name, q.expr));
        }
    }
    let known = known_metrics();
    for (var, metric, _) in label_variables(&d) {
        if !known.contains_key(&metric) {
            bad.push(format!(
                "variable ${var}: {metric} is not a metric veil exports"
            ));
        }
    }
    assert!(bad.is_empty(), "dashboards/veil.json:\n{}", bad.join("\n"));
}

#[test]
fn every_alert_rule_reads_only_metrics_veil_exports_and_says_what_to_do() {
    let rules = alert_rules(&alerts_text());
    let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
    // The issue's list: drops, spool growing, collector failing, seal failures, recording
    // degraded, and the error-rate and cost-per-hour examples.
    for want in [
        "VeilRecordingDrops",
        "VeilSpoolGrowing",
        "VeilCollectorFailing",
        "VeilSealFailures",
        "VeilRecordingDegraded",
        "LLMErrorRateHigh",
        "LLMCostPerHourHigh",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let mut bad = Vec::new();
    for r in &rules {
        for key in ["for:", "severity:", "summary:", "description:"] {
            if !r.body.lines().any(|l| l.starts_with(key)) {
                bad.push(format!("{}: no {key}", r.name));
            }
        }
        for p in problems(&r.expr) {
            bad.push(format!("{}: {p}\n    {}", r.name, r.expr));
        }
    }
    assert!(bad.is_empty(), "dashboards/alerts.yml:\n{}", bad.join("\n"));
}

#[test]
fn dashboard_has_the_issues_rows_variables_and_a_datasource_variable_on_every_panel() {
    let d = dashboard();
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion {} is older than Grafana 10 reads without migration",
        d["schemaVersion"]
    );
    let rows: Vec<&str> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == "row")
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        rows,
        ["Overview", "Cost", "Performance", "Quality", "veil health"]
    );
    let vars: Vec<(&str, &str)> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        vars,
        [
            ("datasource", "datasource"),
            ("feature", "query"),
            ("model", "query")
        ]
    );
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap_or_default().to_string();
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate panel id in {title}"
        );
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
        assert!(x + w <= 24, "{title} overflows the 24-column grid");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "{title}: a fixed datasource breaks import elsewhere"
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
        }
    }
}

// The checker itself: each of its rules rejects the mistake it is for.
#[test]
fn the_checker_rejects_a_renamed_metric_a_rated_gauge_a_bare_counter_and_a_quantile_without_le() {
    assert!(problems("sum(rate(veil_requests_total[1m]))").is_empty());
    assert!(problems("sum by (le) (veil_queue_depth)").is_empty());
    let cases = [
        ("sum(rate(veil_request_total[1m]))", "not a metric"),
        ("rate(veil_queue_bytes[1m])", "gauge"),
        ("sum(veil_requests_total)", "counter"),
        (
            "histogram_quantile(0.9, sum by (gen_ai_request_model) (rate(gen_ai_client_operation_duration_seconds_bucket[1m])))",
            "sum by (le",
        ),
        (
            "histogram_quantile(0.9, rate(gen_ai_client_operation_duration_seconds[1m]))",
            "histogram",
        ),
        ("sum(ratez(veil_requests_total[1m]))", "unknown function"),
    ];
    for (expr, why) in cases {
        let p = problems(expr);
        assert!(
            p.iter().any(|m| m.contains(why)),
            "{expr}: wanted {why:?}, got {p:?}"
        );
    }
    // Labels in matchers and by-lists are not metric names.
    let refs = metric_refs(
        r#"sum by (veil_feature) (rate(veil_tokens_total{gen_ai_token_type="input",veil_feature=~"$feature"}[$__rate_interval]))"#,
    )
    .unwrap();
    assert_eq!(
        refs,
        [MetricRef {
            name: "veil_tokens_total".into(),
            within: Some("rate".into())
        }]
    );
    assert_eq!(
        substitute("rate(x{a=~\"$feature\",b=~\"${model}\"}[$__rate_interval]) [$__range]")
            .unwrap(),
        "rate(x{a=~\".*\",b=~\".*\"}[1m]) [1h]"
    );
    assert!(substitute("rate(x[$__nope])").is_err());
    assert_eq!(
        grouping_labels(
            "histogram_quantile(0.9, sum by (le, model) (rate(x[1m]))) / sum by (model, instance) (y)"
        ),
        ["model", "instance"]
    );
}
