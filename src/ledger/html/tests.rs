//! The HTML renderer as a pure function of a `Page`, and `gather` over a real ledger.

use std::time::{Duration, SystemTime};

use std::collections::BTreeMap;

use super::shape::{LABEL_CHARS, STACK_MODELS};
use super::*;
use crate::ledger::report::Percentiles;
use crate::ledger::row;
use crate::ledger::testing;

const SCRIPT: &str = "<script>alert(1)</script>";
const IMG: &str = "\"><img src=x onerror=alert(1)>";
const PSEUDONYM: &str = "u_0123456789abcdef";

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000)
}

fn row(group: &[Option<&str>], requests: u64, cost_nusd: i128) -> ReportRow {
    ReportRow {
        group: group.iter().map(|g| g.map(str::to_string)).collect(),
        requests,
        cost_nusd,
        cost_usd: cost_nusd as f64 / 1e9,
        duration_ms: Percentiles {
            p50: Some(120.0),
            p95: Some(300.0),
            p99: Some(450.5),
        },
        ..ReportRow::default()
    }
}

fn card(feature: Option<&str>, p50: i64, p90: i64, total: i128) -> Card {
    Card {
        feature: feature.map(str::to_string),
        tasks: 2,
        calls: 3,
        calls_per_task: 1.5,
        cost_p50_usd: Some(p50 as f64 / 1e9),
        cost_p90_usd: Some(p90 as f64 / 1e9),
        cost_p50_nusd: Some(p50),
        cost_p90_nusd: Some(p90),
        cost_total_nusd: total,
        cost_total_usd: total as f64 / 1e9,
        unpriced_tasks: 0,
        tokens_per_task: 71.0,
        latency_p50_ms: Some(10.0),
        latency_p90_ms: Some(20.0),
        error_rate: 0.0,
        share_rated: 0.0,
        mean_score: None,
        share_negative: None,
    }
}

/// A page with data in every chart; attacker strings in every field an app controls.
fn full_page() -> Page {
    let features = vec![
        row(&[Some(SCRIPT)], 2, 3_000),
        row(&[Some(IMG)], 1, 2_000),
        row(&[None], 1, 1_000),
    ];
    let total = row(&[], 4, 6_000);
    Page {
        generated: t0(),
        filter: Filter {
            since: Some(t0() - Duration::from_secs(86_400)),
            until: None,
            equals: vec![(Dim::Feature, SCRIPT.into())],
        },
        span: Some((
            "2026-11-17T11:06:40.000000Z".into(),
            "2026-11-18T11:06:40.000000Z".into(),
        )),
        day_model: vec![
            row(&[Some("2026-11-17"), Some(SCRIPT)], 2, 4_000),
            row(&[Some("2026-11-18"), Some(IMG)], 2, 2_000),
        ],
        features,
        models: vec![row(&[Some(SCRIPT)], 2, 4_000), row(&[Some(IMG)], 2, 2_000)],
        users: vec![row(&[Some(PSEUDONYM)], 4, 6_000)],
        cards: vec![
            card(Some(SCRIPT), 1_000, 2_000, 3_000),
            card(Some(IMG), 2_000, 2_000, 2_000),
        ],
        request_tokens: vec![71, 71, 8, 1_500],
        total,
    }
}

fn empty_page() -> Page {
    Page {
        generated: t0(),
        filter: Filter::default(),
        span: None,
        total: ReportRow::default(),
        day_model: Vec::new(),
        features: Vec::new(),
        models: Vec::new(),
        users: Vec::new(),
        cards: Vec::new(),
        request_tokens: Vec::new(),
    }
}

fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

// === usd ===

#[test]
fn usd_is_exact_decimal_from_nano_usd() {
    assert_eq!(usd(0), "$0.00");
    assert_eq!(usd(2_500), "$0.0000025");
    assert_eq!(usd(10), "$0.00000001");
    assert_eq!(usd(1_000_000_000), "$1.00");
    assert_eq!(usd(1_500_000_000), "$1.50");
    assert_eq!(usd(-1_500_000_000), "-$1.50");
    assert_eq!(usd(1_234_567_890_123), "$1,234.567890123");
    assert_eq!(usd(i128::from(i64::MAX)), "$9,223,372,036.854775807");
    // 0.1 + 0.2 USD: a float would print 0.30000000000000004.
    assert_eq!(usd(100_000_000 + 200_000_000), "$0.30");
    assert_eq!(0.1f64 + 0.2, 0.30000000000000004, "the float trap is real");
}

// === escaping ===

#[test]
fn escape_turns_markup_into_text() {
    assert_eq!(escape(SCRIPT), "&lt;script&gt;alert(1)&lt;/script&gt;");
    assert_eq!(escape(IMG), "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;");
    assert_eq!(escape("a'b&c"), "a&#39;b&amp;c");
    assert_eq!(escape("bell\u{7}"), "bell\u{FFFD}");
}

#[test]
fn label_cuts_long_text_and_replaces_control_characters() {
    assert_eq!(label("checkout"), "checkout");
    assert_eq!(label("a\u{1b}[2Jb"), "a\u{FFFD}[2Jb");
    let long = "é".repeat(500);
    let cut = label(&long);
    assert_eq!(cut.chars().count(), LABEL_CHARS);
    assert!(cut.ends_with('…'));
}

#[test]
fn every_attacker_string_is_escaped_in_html_and_svg() {
    let html = render(&full_page());
    for raw in [SCRIPT, IMG, "<img", "<script", "onerror=alert(1)>"] {
        assert!(!html.contains(raw), "raw {raw:?} in the page");
    }
    // Escaped, they are there: in tables and legends (ours) and in SVG text (plotters').
    let script = "&lt;script&gt;alert(1)&lt;/script&gt;";
    let img = "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;";
    assert!(count(&html, script) >= 5, "{html}");
    assert!(count(&html, img) >= 4, "{html}");
    let svgs: Vec<&str> = html.split("<svg").skip(1).collect();
    assert!(
        svgs.iter()
            .any(|s| s.split("</svg>").next().unwrap().contains(script)),
        "a chart label carries the feature name, escaped"
    );
    // The --where value in the header too.
    assert!(html.contains(&format!("feature = {script}")));
}

#[test]
fn the_page_loads_nothing_and_declares_its_policy() {
    let html = render(&full_page());
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains(&format!(
        "<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">"
    )));
    // The SVG namespace is the one URL allowed: it is a name, never fetched.
    let html = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    for remote in [
        "http:", "https:", "//", "<link", "<script", "@import", "url(",
    ] {
        assert_eq!(count(&html, remote), 0, "{remote} in the page");
    }
}

// === pseudonyms ===

#[test]
fn users_that_are_not_pseudonyms_are_never_shown() {
    let mut page = full_page();
    page.users = vec![
        row(&[Some("alice@example.com")], 3, 9_000),
        row(&[Some(PSEUDONYM)], 1, 1_000),
        row(&[None], 1, 1_000),
    ];
    let html = render(&page);
    assert!(!html.contains("alice"), "a raw user id was shown");
    assert!(html.contains(PSEUDONYM));
    assert!(html.contains("1 user values that are not pseudonyms were left out"));
}

// === shape ===

#[test]
fn a_full_page_has_six_charts_and_the_totals() {
    let html = render(&full_page());
    assert_eq!(count(&html, "<svg"), 6, "{html}");
    for id in [
        "cost-per-day",
        "cost-by-feature",
        "cost-cards",
        "latency-by-model",
        "tokens-per-request",
        "top-users",
    ] {
        assert!(html.contains(&format!("<section id=\"{id}\">")), "{id}");
    }
    assert!(html.contains("times in UTC"));
    assert!(html.contains("<b>$0.000006</b>"), "total cost tile");
    assert!(html.contains("450.5"), "p99 in the latency table");
}

#[test]
fn an_empty_ledger_is_a_valid_page_that_says_so() {
    let html = render(&empty_page());
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.trim_end().ends_with("</html>"));
    assert!(html.contains("No data: no exchange"));
    assert_eq!(count(&html, "<svg"), 0);
    assert!(html.contains("from the first exchange to 2026-11-18T11:06:40Z (now)"));
}

#[test]
fn unpriced_data_draws_no_cost_chart_but_keeps_latency_and_tokens() {
    let mut page = full_page();
    for r in page
        .day_model
        .iter_mut()
        .chain(page.features.iter_mut())
        .chain(page.users.iter_mut())
    {
        r.cost_nusd = 0;
    }
    page.cards = vec![Card {
        cost_p50_nusd: None,
        cost_p90_nusd: None,
        ..card(Some("x"), 0, 0, 0)
    }];
    let html = render(&page);
    assert!(html.contains("every exchange&#39;s model is unpriced"));
    // Latency and tokens only.
    assert_eq!(count(&html, "<svg"), 2, "{html}");
}

// === stacking ===

#[test]
fn stacked_bars_sum_to_the_day_totals_and_the_total() {
    // Three days, eleven models (three fold into "other models"), one unpriced model.
    let mut rows = Vec::new();
    let mut expected = BTreeMap::<String, i128>::new();
    for d in 0..3 {
        let day = format!("2026-11-{:02}", 10 + d);
        for m in 0..11 {
            let cost = if m == 10 { 0 } else { 1_000_003 * (m + 1) + d };
            rows.push(row(&[Some(&day), Some(&format!("model-{m}"))], 1, cost));
            *expected.entry(day.clone()).or_default() += cost;
        }
    }
    rows.push(row(&[Some("2026-11-10"), None], 2, 7));
    *expected.get_mut("2026-11-10").unwrap() += 7;
    let st = stack(&rows);
    assert_eq!(st.days, ["2026-11-10", "2026-11-11", "2026-11-12"]);
    assert_eq!(st.series.len(), STACK_MODELS + 1);
    assert_eq!(st.series.last().unwrap().0, "other models");
    assert!(
        st.series.iter().all(|(m, _)| m != "model-10"),
        "unpriced models add no segment"
    );
    assert_eq!(st.series[0].0, "model-9", "most expensive first");
    let tops = st.tops();
    for (i, day) in st.days.iter().enumerate() {
        assert_eq!(st.day_total(i), expected[day], "{day}");
        assert_eq!(
            tops.last().unwrap()[i],
            expected[day],
            "{day}: top of the bar"
        );
        for s in 1..tops.len() {
            assert!(tops[s][i] >= tops[s - 1][i], "segments only go up");
        }
    }
    assert_eq!(
        st.requests,
        [13, 11, 11],
        "eleven models a day, and two without one"
    );
    let grand: i128 = (0..3).map(|i| st.day_total(i)).sum();
    assert_eq!(grand, expected.values().sum::<i128>());
    // The page's day table shows each exact total.
    let mut page = full_page();
    page.day_model = rows;
    let html = render(&page);
    for total in expected.values() {
        assert!(html.contains(&usd(*total)), "{}", usd(*total));
    }
}

// === histogram ===

#[test]
fn histogram_bins_hold_every_request_once_on_a_1_2_5_scale() {
    let tokens = [0, 9, 10, 19, 20, 71, 71, 999, 1_000, 1_999];
    let bins = histogram(&tokens);
    assert_eq!(bins.iter().map(|b| b.2).sum::<u64>(), tokens.len() as u64);
    let at = |lo: u64| bins.iter().find(|b| b.0 == lo).unwrap();
    assert_eq!(*at(0), (0, 10, 2));
    assert_eq!(*at(10), (10, 20, 2));
    assert_eq!(*at(20), (20, 50, 1));
    assert_eq!(*at(50), (50, 100, 2));
    assert_eq!(*at(500), (500, 1_000, 1));
    assert_eq!(*at(1_000), (1_000, 2_000, 2));
    assert_eq!(
        bins.last().unwrap().1,
        2_000,
        "ends at the last non-empty bin"
    );
    // Starts at the first non-empty bin; absurd counts do not overflow.
    let bins = histogram(&[300, u64::MAX]);
    assert_eq!(bins[0], (200, 500, 1));
    assert_eq!(bins.last().unwrap().2, 1);
    assert_eq!(bins.iter().map(|b| b.2).sum::<u64>(), 2);
    assert!(histogram(&[]).is_empty());
}

// === gather over a real ledger ===

fn send(ledger: &crate::ledger::Ledger, records: Vec<crate::record::Record>) {
    let (tx, rx) = std::sync::mpsc::channel();
    ledger
        .handle()
        .send_blocking(records, Some(Box::new(move |ok| tx.send(ok).unwrap())));
    assert!(rx.recv().unwrap(), "the batch is committed");
}

#[test]
fn gather_respects_since_until_and_where() {
    let (_d, path, ledger) = testing::ledger();
    let start = t0();
    let records = (0..12u64)
        .map(|i| {
            let mut r = testing::record("x");
            r.request_id = format!("r{i}");
            r.start = start + Duration::from_secs(3600 * i);
            r.feature = Some(if i % 2 == 0 { "billing" } else { "search" }.into());
            r.cost_usd = Some(0.000_001 * (i + 1) as f64);
            r.usage.input_tokens = Some(10 * i);
            r
        })
        .collect();
    send(&ledger, records);
    let conn = crate::ledger::schema::open_read_only(&path).unwrap();
    let all = gather(&conn, &Filter::default(), start).unwrap();
    assert_eq!(all.total.requests, 12);
    assert_eq!(all.request_tokens.len(), 12);
    assert_eq!(all.features.len(), 2);
    let f = Filter {
        since: Some(start + Duration::from_secs(3600 * 2)),
        until: Some(start + Duration::from_secs(3600 * 8)),
        equals: vec![(Dim::Feature, "billing".into())],
    };
    let page = gather(&conn, &f, start).unwrap();
    // Hours 2, 4, 6 are billing and in [2 h, 8 h).
    assert_eq!(page.total.requests, 3);
    assert_eq!(page.total.cost_nusd, 3_000 + 5_000 + 7_000);
    assert_eq!(page.request_tokens.len(), 3);
    assert_eq!(page.cards.len(), 1);
    assert_eq!(page.features.len(), 1);
    let (first, last) = page.span.clone().unwrap();
    assert_eq!(first, row::iso_utc(start + Duration::from_secs(3600 * 2)));
    assert_eq!(last, row::iso_utc(start + Duration::from_secs(3600 * 6)));
    let html = render(&page);
    assert!(html.contains("$0.000015"), "the exact total");
    // A filter that matches nothing: the empty page.
    let none = Filter {
        equals: vec![(Dim::Feature, "nope".into())],
        ..Filter::default()
    };
    let page = gather(&conn, &none, start).unwrap();
    assert_eq!(page.total.requests, 0);
    assert!(render(&page).contains("No data"));
}
