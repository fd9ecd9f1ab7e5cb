//! The six sections of the report page, each a chart and a table of its exact figures.

use std::fmt::Write as _;

use plotters::style::RGBColor;

use super::chart::{Series, color, count_tick, hbars, num_tick, vstack};
use super::shape::{compact, histogram, label, ms, or_none, pct, stack, thousands, usd, usd_tick};
use super::{BARS, Page, TOP_USERS, Td, figure, legend, note, section, table};
use crate::ledger::cards::Card;
use crate::ledger::report::ReportRow;

pub(super) fn cost_per_day(out: &mut String, page: &Page) {
    section(out, "cost-per-day", "Cost per day, by model");
    let st = stack(&page.day_model);
    if st.series.is_empty() {
        note(
            out,
            "No known cost in this period: every exchange's model is unpriced.",
        );
    } else {
        let named: Vec<(String, RGBColor)> = st
            .series
            .iter()
            .enumerate()
            .map(|(i, (m, _))| (m.clone(), color(i)))
            .collect();
        legend(out, &named);
        let labelled: Vec<(String, RGBColor)> = named.iter().map(|(m, c)| (label(m), *c)).collect();
        let tops: Vec<Vec<f64>> = st
            .tops()
            .iter()
            .map(|t| t.iter().map(|&n| n as f64 / 1e9).collect())
            .collect();
        figure(
            out,
            vstack(
                &st.days,
                &labelled,
                &tops,
                &usd_tick,
                "cost (USD), UTC days",
            ),
        );
    }
    let rows: Vec<Vec<Td>> = st
        .days
        .iter()
        .enumerate()
        .map(|(i, d)| {
            vec![
                Td::Text(d.clone()),
                Td::Num(thousands(u128::from(st.requests[i]))),
                Td::Num(usd(st.day_total(i))),
            ]
        })
        .collect();
    table(out, &["day (UTC)", "requests", "cost"], &rows);
    out.push_str("</section>\n");
}

pub(super) fn cost_by_feature(out: &mut String, page: &Page) {
    section(out, "cost-by-feature", "Cost by feature");
    let name = |r: &ReportRow| or_none(&r.group[0], "(no feature)");
    if page.features.iter().all(|r| r.cost_nusd == 0) {
        note(out, "No known cost in this period.");
    } else {
        let shown: Vec<&ReportRow> = page.features.iter().take(BARS).collect();
        let labels: Vec<String> = shown.iter().map(|r| label(&name(r))).collect();
        let series = [Series {
            name: "cost".into(),
            color: color(0),
            values: shown.iter().map(|r| r.cost_nusd as f64 / 1e9).collect(),
        }];
        figure(out, hbars(&labels, &series, &usd_tick, "cost (USD)"));
    }
    let rows: Vec<Vec<Td>> = page
        .features
        .iter()
        .map(|r| {
            vec![
                Td::Text(name(r)),
                Td::Num(thousands(u128::from(r.requests))),
                Td::Num(pct(r.error_rate)),
                Td::Num(usd(r.cost_nusd)),
                Td::Num(
                    r.cost_per_request_usd
                        .map_or("–".into(), |v| format!("${v:.6}")),
                ),
                Td::Num(thousands(u128::from(r.unpriced))),
            ]
        })
        .collect();
    table(
        out,
        &[
            "feature",
            "requests",
            "error rate",
            "cost",
            "cost per priced request",
            "unpriced",
        ],
        &rows,
    );
    out.push_str("</section>\n");
}

pub(super) fn cost_cards(out: &mut String, page: &Page) {
    section(
        out,
        "cost-cards",
        "Cost cards: the cost of one task, per feature",
    );
    out.push_str(
        "<p class=\"note\">A task is the exchanges of one trace, else of one conversation, \
         else one exchange.</p>\n",
    );
    let name = |c: &Card| or_none(&c.feature, "(no feature)");
    let shown: Vec<&Card> = page.cards.iter().take(BARS).collect();
    if shown.iter().all(|c| c.cost_p90_nusd.is_none()) {
        note(out, "No task has a known cost in this period.");
    } else {
        let labels: Vec<String> = shown.iter().map(|c| label(&name(c))).collect();
        let nusd = |v: Option<i64>| v.map_or(0.0, |n| n as f64 / 1e9);
        let series = [
            Series {
                name: "task cost p50".into(),
                color: color(0),
                values: shown.iter().map(|c| nusd(c.cost_p50_nusd)).collect(),
            },
            Series {
                name: "task cost p90".into(),
                color: color(1),
                values: shown.iter().map(|c| nusd(c.cost_p90_nusd)).collect(),
            },
        ];
        legend(
            out,
            &series
                .iter()
                .map(|s| (s.name.clone(), s.color))
                .collect::<Vec<_>>(),
        );
        figure(
            out,
            hbars(&labels, &series, &usd_tick, "cost per task (USD)"),
        );
    }
    let opt_usd = |v: Option<i64>| v.map_or("–".into(), |n| usd(i128::from(n)));
    let rows: Vec<Vec<Td>> = page
        .cards
        .iter()
        .map(|c| {
            vec![
                Td::Text(name(c)),
                Td::Num(thousands(u128::from(c.tasks))),
                Td::Num(format!("{:.2}", c.calls_per_task)),
                Td::Num(opt_usd(c.cost_p50_nusd)),
                Td::Num(opt_usd(c.cost_p90_nusd)),
                Td::Num(usd(c.cost_total_nusd)),
                Td::Num(format!("{:.0}", c.tokens_per_task)),
                Td::Num(ms(c.latency_p50_ms)),
                Td::Num(ms(c.latency_p90_ms)),
                Td::Num(pct(c.error_rate)),
                Td::Num(thousands(u128::from(c.unpriced_tasks))),
            ]
        })
        .collect();
    table(
        out,
        &[
            "feature",
            "tasks",
            "calls per task",
            "task cost p50",
            "task cost p90",
            "total cost",
            "tokens per task",
            "latency p50 (ms)",
            "latency p90 (ms)",
            "error rate",
            "unpriced tasks",
        ],
        &rows,
    );
    out.push_str("</section>\n");
}

pub(super) fn latency_by_model(out: &mut String, page: &Page) {
    section(
        out,
        "latency-by-model",
        "Latency by model (request to last byte)",
    );
    let name = |r: &ReportRow| or_none(&r.group[0], "(no model)");
    let mut by_requests: Vec<&ReportRow> = page.models.iter().collect();
    by_requests.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.group.cmp(&b.group)));
    let shown: Vec<&ReportRow> = by_requests.iter().copied().take(BARS).collect();
    let labels: Vec<String> = shown.iter().map(|r| label(&name(r))).collect();
    let pick = |f: fn(&ReportRow) -> Option<f64>| -> Vec<f64> {
        shown.iter().map(|r| f(r).unwrap_or(0.0)).collect()
    };
    let series = [
        Series {
            name: "p50".into(),
            color: color(0),
            values: pick(|r| r.duration_ms.p50),
        },
        Series {
            name: "p95".into(),
            color: color(1),
            values: pick(|r| r.duration_ms.p95),
        },
        Series {
            name: "p99".into(),
            color: color(2),
            values: pick(|r| r.duration_ms.p99),
        },
    ];
    legend(
        out,
        &series
            .iter()
            .map(|s| (s.name.clone(), s.color))
            .collect::<Vec<_>>(),
    );
    figure(out, hbars(&labels, &series, &num_tick, "duration (ms)"));
    let rows: Vec<Vec<Td>> = by_requests
        .iter()
        .map(|r| {
            vec![
                Td::Text(name(r)),
                Td::Num(thousands(u128::from(r.requests))),
                Td::Num(ms(r.duration_ms.p50)),
                Td::Num(ms(r.duration_ms.p95)),
                Td::Num(ms(r.duration_ms.p99)),
                Td::Num(ms(r.ttfc_ms.p50)),
                Td::Num(ms(r.ttfc_ms.p95)),
                Td::Num(ms(r.ttfc_ms.p99)),
            ]
        })
        .collect();
    table(
        out,
        &[
            "model",
            "requests",
            "p50 (ms)",
            "p95 (ms)",
            "p99 (ms)",
            "first chunk p50 (ms)",
            "first chunk p95 (ms)",
            "first chunk p99 (ms)",
        ],
        &rows,
    );
    out.push_str("</section>\n");
}

pub(super) fn tokens_per_request(out: &mut String, page: &Page) {
    section(
        out,
        "tokens-per-request",
        "Tokens per request (input + output)",
    );
    let bins = histogram(&page.request_tokens);
    if bins.is_empty() {
        note(out, "No exchange in this period reported token counts.");
        out.push_str("</section>\n");
        return;
    }
    let labels: Vec<String> = bins
        .iter()
        .map(|&(lo, hi, _)| format!("{}–{}", compact(lo), compact(hi)))
        .collect();
    let tops = vec![bins.iter().map(|b| b.2 as f64).collect::<Vec<f64>>()];
    figure(
        out,
        vstack(
            &labels,
            &[("requests".into(), color(0))],
            &tops,
            &count_tick,
            "requests",
        ),
    );
    let rows: Vec<Vec<Td>> = bins
        .iter()
        .map(|&(lo, hi, n)| {
            vec![
                Td::Text(format!("{} to {}", compact(lo), compact(hi))),
                Td::Num(thousands(u128::from(n))),
            ]
        })
        .collect();
    out.push_str("<p class=\"note\">Bins hold requests with low ≤ tokens &lt; high.</p>\n");
    table(out, &["tokens (low to high)", "requests"], &rows);
    out.push_str("</section>\n");
}

pub(super) fn top_users(out: &mut String, page: &Page) {
    section(out, "top-users", "Top users by cost (pseudonyms)");
    // Only pseudonyms are shown: a stored value that is not one (which veil never writes)
    // is left out rather than risk printing a raw user id.
    let (pseudonymous, other): (Vec<&ReportRow>, Vec<&ReportRow>) = page
        .users
        .iter()
        .filter(|r| r.group[0].is_some())
        .partition(|r| {
            r.group[0]
                .as_deref()
                .is_some_and(crate::keys::is_user_pseudonym)
        });
    let shown: Vec<&ReportRow> = pseudonymous.iter().copied().take(TOP_USERS).collect();
    let name = |r: &ReportRow| r.group[0].clone().unwrap_or_default();
    if shown.is_empty() {
        note(out, "No exchange in this period carried a user.");
    } else if shown.iter().all(|r| r.cost_nusd == 0) {
        note(out, "No known cost for any user in this period.");
    } else {
        let labels: Vec<String> = shown.iter().map(|r| label(&name(r))).collect();
        let series = [Series {
            name: "cost".into(),
            color: color(4),
            values: shown.iter().map(|r| r.cost_nusd as f64 / 1e9).collect(),
        }];
        figure(out, hbars(&labels, &series, &usd_tick, "cost (USD)"));
    }
    if !other.is_empty() {
        let _ = writeln!(
            out,
            "<p class=\"note\">{} user values that are not pseudonyms were left out.</p>",
            other.len()
        );
    }
    if !shown.is_empty() {
        let rows: Vec<Vec<Td>> = shown
            .iter()
            .map(|r| {
                vec![
                    Td::Text(name(r)),
                    Td::Num(thousands(u128::from(r.requests))),
                    Td::Num(usd(r.cost_nusd)),
                ]
            })
            .collect();
        table(out, &["user (pseudonym)", "requests", "cost"], &rows);
    }
    out.push_str("</section>\n");
}
