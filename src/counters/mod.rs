//! # Counters: the one registry of the numbers veil keeps about itself.
//!
//! A leaf module with no dependencies inside veil (`docs/architecture.md`; `tests/architecture.rs`
//! checks), so every step can count with the same types without importing the others.
//!
//! [`Counters`] is the registry: created once by `veil run` (`src/server.rs`) and handed as
//! `Arc<Counters>` to the proxy (through its recording queue), the pipeline, the exporter, the
//! ledger, the sealed store and the recording [`Health`](crate::health::Health). No component
//! creates its own; a test or bench that runs one component alone hands it
//! `Arc::default()`. It is grouped by the step that counts (`counters.proxy.connections`,
//! `counters.ledger.rows`), and [`Counters::visit`] enumerates every number with its
//! [`MetricDesc`]: stable name, kind, unit and help. The fields and that enumeration come from
//! one list (`registry.rs`, through the `registry!` macro), so a number cannot be added without
//! being enumerated, hence exported: the OTLP metrics request reads the enumeration, and so will
//! Prometheus `/metrics` (veil#15).
//!
//! ## Names and labels
//! Names are OpenTelemetry-style, dotted, lower case (`veil.exchanges.dropped`), with a UCUM
//! unit (`{exchange}`, `By`, `1`). A Prometheus exporter translates them the usual way: dots to
//! underscores, `_total` after a counter, the unit in the name where it is one
//! (`veil_exchanges_dropped_total`, `veil_spool_bytes`). One name may be split by one label:
//! several fields then share the name (and its kind, unit and help) and each carries its own
//! value of the same label key, e.g. `veil.exchanges.dropped` with `veil.drop.reason =
//! recording_queue_full` (`queue.dropped_full`) … `ledger_write_failed` (`ledger.dropped`). An
//! encoder turns such a group into one metric with one point per label value; a name is either
//! always labelled or never (`registry_is_well_formed` checks).
//!
//! Beside the fixed entries, [`Counters::series`] holds the per-exchange series whose label
//! values come from traffic (the GenAI histograms, requests by model and feature, cost,
//! tokens): [`series`] says how their cardinality is bounded. Not here: rate limits of log
//! lines ([`LogEvery`], kept by whoever logs).

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonic counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one and returns the new value.
    pub fn inc(&self) -> u64 {
        self.add(1)
    }

    /// Adds `n` and returns the new value (wrapping after 2^64, which no process reaches).
    pub fn add(&self, n: u64) -> u64 {
        self.0.fetch_add(n, Ordering::Relaxed).wrapping_add(n)
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (a queue's or the spool's size).
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Subtracts `n`, saturating at zero.
    pub fn sub(&self, n: u64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What kind of number a registry entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up: a [`Counter`]. An OTLP monotonic cumulative sum; `_total` in Prometheus.
    Counter,
    /// Goes up and down: a [`Gauge`]. An OTLP gauge.
    Gauge,
}

/// The description of one registry entry, the same for the life of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricDesc {
    /// Stable metric name, e.g. `veil.exchanges.dropped`; shared by the entries of a labelled
    /// metric.
    pub name: &'static str,
    /// Counter or gauge.
    pub kind: MetricKind,
    /// UCUM unit: `{exchange}` (a count of exchanges), `By` (bytes), `1` (a flag).
    pub unit: &'static str,
    /// One sentence for operators.
    pub help: &'static str,
    /// `(key, value)` when the name is split by a label, e.g. `("veil.drop.reason",
    /// "export_queue_full")`.
    pub label: Option<(&'static str, &'static str)>,
    /// Where the number lives in [`Counters`], e.g. `pipeline.export_dropped` (for docs and
    /// test messages; never exported).
    pub field: &'static str,
}

/// Defines the registry's sections and [`Counters`] from one list, with the enumeration
/// beside the fields, so neither can be changed without the other. Each entry:
///
/// ```text
/// /// docs (who counts, when)
/// field: Counter | Gauge => "metric.name" ["label.key" = "value"]?, "unit", HELP;
/// ```
macro_rules! registry {
    ($(
        $(#[$sdoc:meta])*
        $section:ident: $Section:ident {
            $(
                $(#[$fdoc:meta])*
                $field:ident: $Kind:ident => $name:literal
                    $([$lkey:literal = $lval:literal])?, $unit:literal, $help:expr;
            )+
        }
    )+) => {
        $(
            $(#[$sdoc])*
            #[derive(Debug, Default)]
            pub struct $Section {
                $( $(#[$fdoc])* pub $field: $Kind, )+
            }

            impl $Section {
                /// This section's entries, in field order.
                pub const METRICS: &'static [MetricDesc] = &[
                    $( MetricDesc {
                        name: $name,
                        kind: MetricKind::$Kind,
                        unit: $unit,
                        help: $help,
                        label: registry!(@label $($lkey, $lval)?),
                        field: concat!(stringify!($section), ".", stringify!($field)),
                    }, )+
                ];

                fn visit(&self, f: &mut dyn FnMut(&'static MetricDesc, u64)) {
                    // Both arrays come from the same field list: same length, same order.
                    let values = [$( self.$field.get() ),+];
                    for (desc, v) in Self::METRICS.iter().zip(values) {
                        f(desc, v);
                    }
                }

                #[cfg(test)]
                fn add_to_each(&self, next: &mut dyn FnMut() -> u64) {
                    $( self.$field.add(next()); )+
                }
            }
        )+

        /// The registry: every counter and gauge of veil, one section per step. Created once
        /// (`veil run`) and shared as `Arc<Counters>`; `Default` is all zeros.
        #[derive(Debug, Default)]
        pub struct Counters {
            $( $(#[$sdoc])* pub $section: $Section, )+
            /// The per-exchange series (GenAI histograms, requests, cost, tokens), keyed by
            /// attributes that come from traffic: [`crate::counters::series`].
            pub series: super::series::Series,
        }

        impl Counters {
            /// Calls `f` once per entry, with its description and current value, in a fixed
            /// order (section by section, field by field); the entries of a labelled name may
            /// be apart. Each value is one relaxed load: the whole is not a consistent snapshot
            /// (a drop may land between two reads), which no reader needs.
            pub fn visit(&self, f: &mut dyn FnMut(&'static MetricDesc, u64)) {
                $( self.$section.visit(f); )+
            }

            /// Adds a distinct value to every entry (1, 2, 3, … in [`Counters::visit`] order),
            /// so a test can tell each entry's value from the others'.
            #[cfg(test)]
            pub(crate) fn fill_distinct(&self) {
                let mut n = 0;
                let mut next = || {
                    n += 1;
                    n
                };
                $( self.$section.add_to_each(&mut next); )+
            }
        }
    };
    (@label) => { None };
    (@label $k:literal, $v:literal) => { Some(($k, $v)) };
}

pub mod exposition;
mod registry;
pub mod series;

pub use registry::*;

impl Counters {
    /// Every entry with its current value, in [`Counters::visit`] order.
    pub fn snapshot(&self) -> Vec<(&'static MetricDesc, u64)> {
        let mut out = Vec::new();
        self.visit(&mut |d, v| out.push((d, v)));
        out
    }

    /// The current value of the entry named `name` with label value `label` (`None` for an
    /// unlabelled name); `None` when there is no such entry.
    pub fn get(&self, name: &str, label: Option<&str>) -> Option<u64> {
        let mut found = None;
        self.visit(&mut |d, v| {
            if d.name == name && d.label.map(|(_, l)| l) == label {
                found = Some(v);
            }
        });
        found
    }
}

/// Rate limit for a log line about a repeated event (drops, failures): the first occurrence
/// is logged at once, later ones at most once per `every`, with the count since the last line,
/// so a stuck consumer cannot flood the log and an operator still sees every loss summed up.
#[derive(Debug)]
pub struct LogEvery {
    every_ms: u64,
    /// Milliseconds since `epoch` of the last line (`u64::MAX`: never logged).
    last: AtomicU64,
    /// Occurrences not yet reported in a line.
    unreported: AtomicU64,
    epoch: std::time::Instant,
}

impl Default for LogEvery {
    /// At most one line per 10 s.
    fn default() -> Self {
        LogEvery::new(std::time::Duration::from_secs(10))
    }
}

impl LogEvery {
    /// At most one line per `every`.
    pub fn new(every: std::time::Duration) -> Self {
        LogEvery {
            every_ms: every.as_millis().try_into().unwrap_or(u64::MAX),
            last: AtomicU64::new(u64::MAX),
            unreported: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
        }
    }

    /// Notes one occurrence; returns `Some(n)` when the caller should log now, `n` being the
    /// occurrences since the previous line (this one included).
    pub fn hit(&self) -> Option<u64> {
        self.hit_n(1)
    }

    /// [`LogEvery::hit`] for `n` occurrences at once (e.g. a group of records refused
    /// together): the count since the previous line includes all `n`.
    pub fn hit_n(&self, n: u64) -> Option<u64> {
        self.unreported.fetch_add(n, Ordering::Relaxed);
        let now = self
            .epoch
            .elapsed()
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX - 1);
        let last = self.last.load(Ordering::Relaxed);
        let due = last == u64::MAX || now.saturating_sub(last) >= self.every_ms;
        if due
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.unreported.swap(0, Ordering::Relaxed));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn counters_and_gauges() {
        let c = Counter::default();
        assert_eq!(c.inc(), 1);
        assert_eq!(c.add(2), 3);
        assert_eq!(c.get(), 3);
        let g = Gauge::default();
        g.add(5);
        g.sub(7);
        assert_eq!(g.get(), 0, "saturates");
    }

    /// Names are unique per label value; a labelled name is labelled in every entry, with one
    /// key, and its entries agree on kind, unit and help (an encoder makes one metric of them).
    #[test]
    fn registry_is_well_formed() {
        let all = Counters::default().snapshot();
        assert!(all.len() >= 30, "{} entries", all.len());
        let mut seen = std::collections::BTreeMap::new();
        for (d, v) in &all {
            assert_eq!(*v, 0, "{}: a fresh registry is zero", d.field);
            assert!(
                d.name.starts_with("veil.")
                    && d.name
                        .split('.')
                        .all(|p| !p.is_empty()
                            && p.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')),
                "{}: {} is not a dotted lower-case veil.* name",
                d.field,
                d.name
            );
            assert!(!d.unit.is_empty() && d.help.ends_with('.'), "{}", d.field);
            let first = *seen.entry(d.name).or_insert(*d);
            assert_eq!(
                (first.kind, first.unit, first.help, first.label.map(|l| l.0)),
                (d.kind, d.unit, d.help, d.label.map(|l| l.0)),
                "{} and {} share {} but not its shape",
                first.field,
                d.field,
                d.name
            );
        }
        let mut keys: Vec<_> = all.iter().map(|(d, _)| (d.name, d.label)).collect();
        keys.sort();
        let n = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), n, "a (name, label) pair is listed twice");
        let mut fields: Vec<_> = all.iter().map(|(d, _)| d.field).collect();
        fields.sort();
        fields.dedup();
        assert_eq!(fields.len(), n);
    }

    /// Each value is reported under its own field's description, not a neighbour's.
    #[test]
    fn each_field_is_reported_under_its_own_name_and_label() {
        let c = Counters::default();
        c.ledger.dropped.add(35);
        c.queue.bytes.set(7);
        c.proxy.timed_out.inc();
        let nonzero: Vec<_> = c
            .snapshot()
            .into_iter()
            .filter(|(_, v)| *v != 0)
            .map(|(d, v)| (d.field, d.name, d.label.map(|l| l.1), v))
            .collect();
        assert_eq!(
            nonzero,
            [
                ("proxy.timed_out", "veil.proxy.errors", Some("timed_out"), 1),
                ("queue.bytes", "veil.queue.bytes", None, 7),
                (
                    "ledger.dropped",
                    "veil.exchanges.dropped",
                    Some("ledger_write_failed"),
                    35
                ),
            ]
        );
        assert_eq!(
            c.get("veil.exchanges.dropped", Some("ledger_write_failed")),
            Some(35)
        );
        assert_eq!(c.get("veil.exchanges.dropped", None), None, "labelled");
        assert_eq!(c.get("veil.queue.bytes", None), Some(7));
    }

    /// `docs/metrics.md` is the operator's list: every entry is on it, under its name, with
    /// its field (and label value).
    #[test]
    fn docs_metrics_md_lists_every_entry() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md");
        let doc = std::fs::read_to_string(path).expect("docs/metrics.md");
        for (d, _) in Counters::default().snapshot() {
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` |", d.name)))
                .unwrap_or_else(|| panic!("docs/metrics.md has no row for {}", d.name));
            let field = match d.label {
                Some((key, value)) => {
                    assert!(row.contains(&format!("`{key}`")), "{row}");
                    format!("`{value}` (`{}`)", d.field)
                }
                None => format!("(`{}`)", d.field),
            };
            assert!(row.contains(&field), "{} is not listed: {row}", d.field);
            assert!(row.contains(d.help), "{}'s help differs: {row}", d.name);
        }
    }

    #[test]
    fn fill_distinct_gives_every_entry_its_own_value() {
        let c = Counters::default();
        c.fill_distinct();
        let values: Vec<u64> = c.snapshot().into_iter().map(|(_, v)| v).collect();
        let expected: Vec<u64> = (1..=values.len() as u64).collect();
        assert_eq!(values, expected);
    }

    #[test]
    fn log_every_reports_the_first_hit_then_sums_the_rest() {
        let l = LogEvery::new(Duration::from_millis(50));
        assert_eq!(l.hit(), Some(1));
        for _ in 0..99 {
            assert_eq!(l.hit(), None);
        }
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            l.hit(),
            Some(100),
            "the 99 silent ones are summed into the next line"
        );
    }
}
