//! # Evaluation against a labelled PII corpus (`shared/pii/dev.jsonl` format).
//!
//! Scoring rule (from the corpus README, so figures compare with other tools):
//! - a ground-truth value is **found** when one masked span fully covers it;
//! - a hard negative is **flagged** when any masked span overlaps it;
//! - throughput is MB of message text scanned per second.
//!
//! Precision is reported per detector: a masked span is a true positive when it overlaps a
//! ground-truth span of the type the detector claims.
//!
//! Used by `examples/pii_eval.rs` and by the threshold test in `redact::tests`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Found, Scope};

/// Per-type figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Spans of this type in the corpus.
    pub total: u64,
    /// Spans found (recall numerator) or flagged (for hard negatives).
    pub hit: u64,
}

impl Tally {
    /// `hit / total` (1.0 when the type is absent).
    pub fn share(&self) -> f64 {
        if self.total == 0 {
            1.0
        } else {
            self.hit as f64 / self.total as f64
        }
    }
}

/// Precision figures per detector label.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Precision {
    /// Masked spans overlapping a ground-truth span of the detector's type.
    pub true_pos: u64,
    /// Masked spans that did not.
    pub false_pos: u64,
}

impl Precision {
    /// `tp / (tp + fp)` (1.0 when the detector never fired).
    pub fn value(&self) -> f64 {
        let n = self.true_pos + self.false_pos;
        if n == 0 {
            1.0
        } else {
            self.true_pos as f64 / n as f64
        }
    }
}

/// The outcome of one evaluation run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Recall per ground-truth type.
    pub recall: BTreeMap<String, Tally>,
    /// Flagged share per hard-negative type.
    pub flagged: BTreeMap<String, Tally>,
    /// Precision per detector label.
    pub precision: BTreeMap<String, Precision>,
    /// Bytes of text scanned.
    pub bytes: u64,
    /// Time spent in the scanner.
    pub elapsed: Duration,
    /// Records read.
    pub records: u64,
    /// Lines that could not be used (bad JSON, bad spans).
    pub skipped: u64,
}

impl Report {
    /// Scanner throughput in MB/s (10^6 bytes).
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// A plain-text table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "{:<24} {:>6} {:>6} {:>8} {:>9}\n",
            "type", "total", "found", "recall", "precision"
        ));
        for (t, v) in &self.recall {
            let p = self
                .precision
                .get(t)
                .map_or("-".to_string(), |p| format!("{:.4}", p.value()));
            s.push_str(&format!(
                "{:<24} {:>6} {:>6} {:>8.4} {:>9}\n",
                t,
                v.total,
                v.hit,
                v.share(),
                p
            ));
        }
        s.push_str(&format!(
            "\n{:<24} {:>6} {:>7} {:>8}\n",
            "hard negative", "total", "flagged", "share"
        ));
        for (t, v) in &self.flagged {
            s.push_str(&format!(
                "{:<24} {:>6} {:>7} {:>8.4}\n",
                t,
                v.total,
                v.hit,
                v.share()
            ));
        }
        s.push_str(&format!(
            "\n{} records, {:.2} MB of text, {:.1} MB/s scan throughput{}\n",
            self.records,
            self.bytes as f64 / 1e6,
            self.mb_per_s(),
            if self.skipped > 0 {
                format!(", {} lines skipped", self.skipped)
            } else {
                String::new()
            }
        ));
        s
    }
}

/// The text a span's `field` names: `user` or `messages[i].content`.
fn field_text<'a>(request: &'a Value, field: &str) -> Option<&'a str> {
    if field == "user" {
        return request.get("user")?.as_str();
    }
    let i: usize = field
        .strip_prefix("messages[")?
        .strip_suffix("].content")?
        .parse()
        .ok()?;
    request.get("messages")?.get(i)?.get("content")?.as_str()
}

/// Byte offset of code point `n` in `s`.
fn byte_at(s: &str, n: usize) -> Option<usize> {
    if n == s.chars().count() {
        return Some(s.len());
    }
    s.char_indices().nth(n).map(|(b, _)| b)
}

/// Scores `scope`'s detectors on every line of a corpus in the `dev.jsonl` format.
pub fn evaluate(corpus: &str, scope: &Scope) -> Report {
    let mut r = Report::default();
    let scanner = scope.scanner();
    let mut found: Vec<Found> = Vec::new();
    for line in corpus.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(rec) = serde_json::from_str::<Value>(line) else {
            r.skipped += 1;
            continue;
        };
        r.records += 1;
        let Some(req) = rec.get("request") else {
            r.skipped += 1;
            continue;
        };
        // Scan every field once and keep its matches.
        let mut fields: BTreeMap<String, Vec<Found>> = BTreeMap::new();
        let mut names = vec!["user".to_string()];
        if let Some(msgs) = req.get("messages").and_then(Value::as_array) {
            names.extend((0..msgs.len()).map(|i| format!("messages[{i}].content")));
        }
        for name in names {
            let Some(text) = field_text(req, &name) else {
                continue;
            };
            let t = Instant::now();
            scanner.find(text, &mut found);
            r.elapsed += t.elapsed();
            r.bytes += text.len() as u64;
            fields.insert(name, found.clone());
        }
        let spans = |key: &str| -> Vec<(String, String, usize, usize)> {
            rec.get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|g| {
                    let field = g.get("field")?.as_str()?;
                    let text = field_text(req, field)?;
                    let start = byte_at(text, usize::try_from(g.get("start")?.as_u64()?).ok()?)?;
                    let end = byte_at(text, usize::try_from(g.get("end")?.as_u64()?).ok()?)?;
                    Some((
                        g.get("type")?.as_str()?.to_string(),
                        field.to_string(),
                        start,
                        end,
                    ))
                })
                .collect()
        };
        let truth = spans("ground_truth");
        for (ty, field, s, e) in &truth {
            let hit = fields
                .get(field)
                .is_some_and(|f| f.iter().any(|m| m.start <= *s && m.end >= *e));
            let t = r.recall.entry(ty.clone()).or_default();
            t.total += 1;
            t.hit += u64::from(hit);
        }
        for (ty, field, s, e) in spans("hard_negatives") {
            let hit = fields
                .get(&field)
                .is_some_and(|f| f.iter().any(|m| m.start < e && m.end > s));
            let t = r.flagged.entry(ty).or_default();
            t.total += 1;
            t.hit += u64::from(hit);
        }
        for (field, ms) in &fields {
            for m in ms {
                let label = scanner.label(m.detector);
                let tp = truth
                    .iter()
                    .any(|(ty, f, s, e)| ty == label && f == field && m.start < *e && m.end > *s);
                let p = r.precision.entry(label.to_string()).or_default();
                if tp {
                    p.true_pos += 1;
                } else {
                    p.false_pos += 1;
                }
            }
        }
    }
    r
}

/// Human-readable lines for every missed ground-truth span and flagged hard negative
/// (debugging aid for `pii_eval --misses`; prints corpus values, never run on real data).
pub fn misses(corpus: &str, scope: &Scope) -> Vec<String> {
    let scanner = scope.scanner();
    let mut out = Vec::new();
    let mut found = Vec::new();
    for line in corpus.lines() {
        let Ok(rec) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let Some(req) = rec.get("request") else {
            continue;
        };
        for (key, neg) in [("ground_truth", false), ("hard_negatives", true)] {
            for g in rec.get(key).and_then(Value::as_array).into_iter().flatten() {
                let (Some(field), Some(ty), Some(s), Some(e)) = (
                    g.get("field").and_then(Value::as_str),
                    g.get("type").and_then(Value::as_str),
                    g.get("start").and_then(Value::as_u64),
                    g.get("end").and_then(Value::as_u64),
                ) else {
                    continue;
                };
                let Some(text) = field_text(req, field) else {
                    continue;
                };
                let (Some(s), Some(e)) = (byte_at(text, s as usize), byte_at(text, e as usize))
                else {
                    continue;
                };
                scanner.find(text, &mut found);
                let bad = if neg {
                    found.iter().any(|m| m.start < e && m.end > s)
                } else {
                    !found.iter().any(|m| m.start <= s && m.end >= e)
                };
                if bad && ty != "STREET_ADDRESS" {
                    let ctx = &text[text.floor_char_boundary(s.saturating_sub(30))
                        ..text.ceil_char_boundary((e + 20).min(text.len()))];
                    let got: Vec<String> = found
                        .iter()
                        .map(|m| {
                            format!("{}={:?}", scanner.label(m.detector), &text[m.start..m.end])
                        })
                        .collect();
                    out.push(format!(
                        "{} {ty} {:?} in {ctx:?} got {got:?}",
                        if neg { "FLAGGED" } else { "MISSED" },
                        &text[s..e]
                    ));
                }
            }
        }
    }
    out
}
