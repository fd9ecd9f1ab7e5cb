//! # Detectors: find PII and secrets in a text, in one scan.
//!
//! A [`Scanner`] holds every detector of one scope, compiled together. Most text is prose
//! with no PII, so the work is arranged to touch each byte of prose as few times as possible:
//!
//! 1. **Trigger pass.** One pass over the bytes, 32 at a time (a loop the compiler
//!    vectorizes), finds the bytes gated detectors need: digits, `@`, `:`. Around them it
//!    opens *windows*: a cluster of at least four digits (phones, cards, SSNs, IPs, dates),
//!    an IBAN's `[A-Z]{2}[0-9]{2}`, the address characters around an `@`, the 48 bytes around
//!    a `:` followed by a hex digit. Every gated match lies inside its trigger's window.
//! 2. **Windows.** All patterns of one gate form one multi-pattern
//!    [`regex_automata::meta::Regex`], asked only *which* patterns occur in a window
//!    (`which_overlapping_matches`, one forward pass); those are then run on their own in that
//!    window to get spans.
//! 3. **Literals.** Secrets start with a fixed prefix (`sk-`, `ghp_`, `eyJ`, `-----BEGIN`,
//!    `Bearer`, ...). One Aho-Corasick pass (SIMD Teddy) finds every occurrence, and only the
//!    detectors owning that prefix are tried there, anchored: no regex runs over the text.
//! 4. **Dictionaries**: one Aho-Corasick automaton (ASCII case-insensitive, leftmost-longest,
//!    whole words only). **Custom regexes** have no known trigger: one set over the whole text.
//! 5. **Code detectors** (`Trigger::Code`: names, street addresses) are functions that find
//!    their own anchors in the text and push spans; they take a `Mode` so the exhaustive
//!    reference can run them with no prefilter.
//!
//! Candidates go through their validator (Luhn, mod 97, ranges, edge checks), then overlaps
//! are resolved deterministically: overlapping candidates become one span covering them all
//! (no byte of any stays in the text), labelled by the longest, then the detector with the
//! higher priority (lower number), then the leftmost. [`Scanner::find_exhaustive`] runs every
//! pattern over the whole text; tests and a fuzz target check that the gated scan finds
//! exactly the same.
//!
//! Why not one leftmost-first `find_iter` over the set? Because a candidate that fails its
//! validator (a 16-digit number failing Luhn) would hide a valid, shorter match of another
//! detector starting at the same place, and because "longest wins" needs every candidate.
//!
//! ## Cost
//!
//! Linear in the text whatever the density of matches (veil#10): overlaps are merged in
//! O(m log m); a rejected candidate is retried one character later only when it is short
//! (`RESTART_SPAN`; a quoted password, whose attempts read disjoint stretches, is retried at
//! every start: `Pat::rescan`); a PEM block's END line is found by substring search with a
//! memo (`Footer`), not by a lazy regex; a failed JWT attempt skips the rest of its base64url
//! run (`Pat::lead`); a pattern whose validator needs something nearby skips to where it could
//! be (`Pat::skip`: unprefixed phone numbers and region hints). [`Scanner::find_within`] charges
//! the work to a [`Meter`] and stops, with no matches, when its budget runs out. The property test
//! `redact::tests::cost::work_per_byte_stays_flat_on_match_dense_text` and the `redact_dense`
//! fuzz target keep it so.
//!
//! A text holding invisible characters (a zero-width space inside a key) or fullwidth forms
//! (`４１１１…`, `＠`) is also scanned as its skeleton, with those folded away; the
//! skeleton's spans are mapped back to the text's bytes and resolved with the text's own
//! (`fold.rs`). ASCII text skips this in one vectorized check.
//!
//! Patterns use ASCII word boundaries (`(?-u:\b)`) so the lazy DFA never has to give up on
//! non-ASCII text; letters outside ASCII are matched explicitly where they matter (emails).
//!
//! ## Files, one stage each
//!
//! - `builtin.rs`: the built-in detectors (patterns, validators, triggers), in priority order.
//! - `build.rs`: what a scanner is built from (`ScannerSpec`, filled by the rules compiler)
//!   and `Scanner::build`.
//! - `fold.rs`: the skeleton of a disguised text and the map back to its bytes.
//! - `gates.rs`: the trigger pass (1) and its windows.
//! - `literals.rs`: the literal pass (3) and the PEM footer search.
//! - `person.rs`: the `PERSON` detector (code: gazetteer, cues, precision guard).
//! - this file: [`Scanner`]'s scans (windows, dictionaries, custom sets, validation) and the
//!   overlap resolution; `tests.rs`: their tests.
//!
//! A scanner is built once per rules compile and only read afterwards; nothing here touches
//! JSON, records, keys or I/O.

use std::ops::Range;
use std::sync::Arc;

use aho_corasick::AhoCorasick;
use regex_automata::meta;
use regex_automata::{Anchored, Input, MatchKind, PatternSet};

use super::budget::{Exceeded, Meter};
use super::checksum::{self, Check};
use fold::Folded;

mod address;
mod build;
mod builtin;
mod fold;
mod gates;
mod literals;
mod person;
#[cfg(test)]
mod tests;

pub(crate) use build::*;
pub use builtin::builtin_patterns;
pub(crate) use builtin::*;
use gates::*;
use literals::*;

/// What to put in place of a match inside a text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InlineAction {
    /// `[EMAIL]`.
    Mask,
    /// `[EMAIL:e_1f3a…]`: keyed BLAKE3, so the same value links across records.
    Pseudonymize,
    /// `[EMAIL:h_1f3a…]`: keyed BLAKE3 under the content-hash key.
    Hash,
    /// The whole field holding the match is removed.
    DropField,
}

impl InlineAction {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "mask" => InlineAction::Mask,
            "pseudonymize" => InlineAction::Pseudonymize,
            "hash" => InlineAction::Hash,
            "drop_field" => InlineAction::DropField,
            _ => return None,
        })
    }
}

/// The form of a matched value that its pseudonym or hash is computed from: the value as
/// written, or when it holds invisible characters, tag characters, Unicode dashes or
/// fullwidth forms, its skeleton (those removed or read as the ASCII they stand for, as the
/// detectors read them: `fold.rs`), so `jane＠example.com` and `jane@example.com` get one
/// pseudonym, as they are one address. Borrowed (one `is_ascii` pass) for ASCII.
pub(crate) fn canonical(value: &str) -> std::borrow::Cow<'_, str> {
    if Folded::needed(value) {
        std::borrow::Cow::Owned(Folded::of(value).text)
    } else {
        std::borrow::Cow::Borrowed(value)
    }
}

/// One accepted match: a byte range of the scanned text and its detector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    /// Start byte offset.
    pub start: usize,
    /// End byte offset (exclusive).
    pub end: usize,
    /// Index of the detector (see [`Scanner::label`]).
    pub detector: usize,
}

/// All detectors of one scope, compiled for a single scan.
#[derive(Debug)]
pub struct Scanner {
    detectors: Vec<Detector>,
    patterns: Vec<Pattern>,
    groups: Vec<Group>,
    literals: Option<Literals>,
    dict: Option<(AhoCorasick, Vec<usize>)>,
    /// Code detectors (names, addresses): `(detector, function)`.
    code: Vec<(usize, Code)>,
    /// Which trigger windows the groups need.
    want: Want,
}

/// The patterns of one gate, searched over that gate's windows.
#[derive(Debug)]
struct Group {
    gate: Gate,
    /// Multi-pattern set asked *which* members occur in a window; `None` for a single member
    /// (it is located directly).
    set: Option<meta::Regex>,
    /// Index into `Scanner::patterns` for each pattern id of `set`.
    members: Vec<usize>,
}

impl Scanner {
    /// The detector with index `i`.
    pub(crate) fn detector(&self, i: usize) -> &Detector {
        &self.detectors[i]
    }

    /// Label (`EMAIL`) of detector `i`.
    pub fn label(&self, i: usize) -> &str {
        &self.detectors[i].label
    }

    /// Number of detectors.
    pub fn len(&self) -> usize {
        self.detectors.len()
    }

    /// True when the scanner has no detector at all.
    pub fn is_empty(&self) -> bool {
        self.detectors.is_empty()
    }

    /// Heap bytes held by the compiled automata: every pattern's regex (and its footer's),
    /// the gates' pattern sets, the literal pass and the dictionary (each engine's own
    /// `memory_usage`). Not the lazy DFAs' caches, which grow per searching thread as text is
    /// scanned (`regex_automata`'s caches are bounded per regex). A scanner is built per
    /// rules scope and kept for the process's life, so this is memory veil holds from start.
    /// A built-in pattern's regex is shared by every scanner holding it and counted in each,
    /// so the sum over scanners overstates what the process holds.
    pub fn memory_usage(&self) -> usize {
        let patterns: usize = self
            .patterns
            .iter()
            .map(|p| p.re.memory_usage() + p.footer.as_ref().map_or(0, |f| f.1.memory_usage()))
            .sum();
        let sets: usize = self
            .groups
            .iter()
            .filter_map(|g| g.set.as_ref())
            .map(meta::Regex::memory_usage)
            .sum();
        patterns
            + sets
            + self.literals.as_ref().map_or(0, |l| l.ac.memory_usage())
            + self.dict.as_ref().map_or(0, |d| d.0.memory_usage())
    }

    /// Every accepted match in `text`, sorted by start, never overlapping.
    pub fn find(&self, text: &str, out: &mut Vec<Found>) {
        // An unlimited meter cannot be exceeded.
        let _ = self.find_within(text, out, &mut Meter::unlimited());
    }

    /// [`Scanner::find`], charging the work to `meter`. On `Err` the budget ran out part way
    /// and `out` is cleared: a partial list of matches must never be used to mask a text.
    pub fn find_within(
        &self,
        text: &str,
        out: &mut Vec<Found>,
        meter: &mut Meter,
    ) -> Result<(), Exceeded> {
        let mut r = self.find_gated(text, out, &mut Ctx::new(meter, true));
        if r.is_ok() && Folded::needed(text) {
            r = meter.work(text.len()).and_then(|()| {
                let f = Folded::of(text);
                let mut more = Vec::new();
                self.find_gated(&f.text, &mut more, &mut Ctx::new(meter, true))?;
                self.union(&f, out, &mut more, meter)
            });
        }
        if r.is_err() {
            out.clear();
        }
        r
    }

    fn find_gated(
        &self,
        text: &str,
        out: &mut Vec<Found>,
        cx: &mut Ctx<'_>,
    ) -> Result<(), Exceeded> {
        out.clear();
        if text.is_empty() {
            return Ok(());
        }
        self.find_dict(text, out, cx)?;
        self.find_code(text, Mode::Gated, out, cx.meter)?;
        if let Some(lits) = &self.literals {
            self.find_literals(lits, text, out, cx)?;
        }
        if !self.groups.is_empty() {
            let w = Windows::of(text, self.want);
            cx.meter.work(text.len())?;
            let full = 0..text.len();
            let whole = std::slice::from_ref(&full);
            // The sets of matched pattern ids are this thread's, one per group size: a set
            // allocated per group and scan was ~30 allocations per exchange. Exactly the
            // group's size, not larger: a search stops early once every pattern matched,
            // which it can only tell from a full set.
            WHICH.with_borrow_mut(|sets| {
                for g in &self.groups {
                    let ranges: &[Range<usize>] = match g.gate {
                        Gate::Digit => &w.digit,
                        Gate::At => &w.at,
                        Gate::Colon => &w.colon,
                        Gate::Always | Gate::Literal(..) => whole,
                    };
                    let n = g.set.as_ref().map_or(0, |s| s.pattern_len());
                    let which = match sets.iter().position(|s| s.capacity() == n) {
                        Some(i) => &mut sets[i],
                        None => {
                            sets.push(PatternSet::new(n));
                            sets.last_mut().expect("invariant: just pushed")
                        }
                    };
                    self.scan_group(g, text, ranges, which, out, cx)?;
                }
                Ok(())
            })?;
        }
        resolve(&self.detectors, out, cx.meter)
    }

    /// What [`Scanner::find`] would return with no prefilter at all: every pattern searched
    /// over the whole text. Slow; the reference the gated scan is tested (and fuzzed) against.
    #[doc(hidden)]
    pub fn find_exhaustive(&self, text: &str, out: &mut Vec<Found>) {
        self.find_all(text, out);
        if Folded::needed(text) {
            let f = Folded::of(text);
            let mut more = Vec::new();
            self.find_all(&f.text, &mut more);
            // Unlimited: cannot fail.
            let _ = self.union(&f, out, &mut more, &mut Meter::unlimited());
        }
    }

    /// [`Scanner::find`] over a URL's text and, when it holds `%XX` escapes of printable
    /// ASCII, over its decoded form too (`sk%2Dproj-…` is the same key to the server); every
    /// span in the text's offsets, resolved together.
    pub(crate) fn find_in_url(&self, text: &str, out: &mut Vec<Found>) {
        self.find(text, out);
        if let Some(f) = Folded::percent_decoded(text) {
            let mut more = Vec::new();
            self.find(&f.text, &mut more);
            // Unlimited: cannot fail.
            let _ = self.union(&f, out, &mut more, &mut Meter::unlimited());
        }
    }

    /// The matches of a text (`out`) and of its skeleton (`skeleton`, in skeleton offsets)
    /// as one resolved list in the text's offsets: a value the skeleton shows whole (a key
    /// with a zero-width space inside) and one only the text shows apart (a key after a
    /// zero-width space that the skeleton glues to the word before) are both masked.
    fn union(
        &self,
        f: &Folded,
        out: &mut Vec<Found>,
        skeleton: &mut [Found],
        meter: &mut Meter,
    ) -> Result<(), Exceeded> {
        f.map_back(skeleton);
        out.extend_from_slice(skeleton);
        resolve(&self.detectors, out, meter)
    }

    fn find_all(&self, text: &str, out: &mut Vec<Found>) {
        out.clear();
        if text.is_empty() {
            return;
        }
        let mut meter = Meter::unlimited();
        let mut cx = Ctx::new(&mut meter, false);
        // Unlimited: these cannot fail.
        let _ = self.find_dict(text, out, &mut cx);
        let _ = self.find_code(text, Mode::Exhaustive, out, cx.meter);
        for p in &self.patterns {
            let _ = self.locate(p, text, 0..text.len(), out, &mut cx);
        }
        let _ = resolve(&self.detectors, out, cx.meter);
    }

    fn find_dict(
        &self,
        text: &str,
        out: &mut Vec<Found>,
        cx: &mut Ctx<'_>,
    ) -> Result<(), Exceeded> {
        if let Some((ac, owner)) = &self.dict {
            cx.meter.work(text.len())?;
            for m in ac.find_iter(text) {
                let r = m.start()..m.end();
                cx.meter.work(1)?;
                if whole_word(text, &r) {
                    out.push(Found {
                        start: r.start,
                        end: r.end,
                        detector: owner[m.pattern().as_usize()],
                    });
                }
            }
        }
        Ok(())
    }

    /// Runs the code detectors, each over the whole text.
    fn find_code(
        &self,
        text: &str,
        mode: Mode,
        out: &mut Vec<Found>,
        meter: &mut Meter,
    ) -> Result<(), Exceeded> {
        let mut spans = Vec::new();
        for &(detector, f) in &self.code {
            spans.clear();
            f(text, mode, &mut spans, meter)?;
            out.extend(
                spans
                    .iter()
                    .filter(|r| r.start < r.end && r.end <= text.len())
                    .map(|r| Found {
                        start: r.start,
                        end: r.end,
                        detector,
                    }),
            );
        }
        Ok(())
    }

    /// Runs a gate's patterns over its windows: the set says which occur in a window, then
    /// only those are located in it. `which` is scratch of exactly the group's set's size.
    fn scan_group(
        &self,
        g: &Group,
        text: &str,
        ranges: &[Range<usize>],
        which: &mut PatternSet,
        out: &mut Vec<Found>,
        cx: &mut Ctx<'_>,
    ) -> Result<(), Exceeded> {
        let Some(set) = &g.set else {
            let p = &self.patterns[g.members[0]];
            for w in ranges {
                self.locate(p, text, w.clone(), out, cx)?;
            }
            return Ok(());
        };
        for w in ranges {
            which.clear();
            cx.meter.work(w.len())?;
            set.which_overlapping_matches(&Input::new(text).range(w.clone()), which);
            for pid in which.iter() {
                self.locate(
                    &self.patterns[g.members[pid.as_usize()]],
                    text,
                    w.clone(),
                    out,
                    cx,
                )?;
            }
        }
        Ok(())
    }

    /// The leftmost match of `p` in `input`, and the range to mask (capture group 1 or the
    /// whole), extended to its footer when one is reachable.
    ///
    /// Work charged: the bytes from the search start to the match end (or to the end of the
    /// input when nothing matched). The engine may look a little past a match end while a
    /// longer match is still possible; for every built-in that is bounded by the pattern
    /// (the footer search, which used to be the unbounded case, is charged separately).
    fn candidate(
        &self,
        p: &Pattern,
        text: &str,
        input: &Input<'_>,
        cx: &mut Ctx<'_>,
    ) -> Result<Option<Candidate>, Exceeded> {
        let from = input.start();
        let found = if p.group {
            // The match and group 1 only, in slots on the stack: a `Captures` per candidate
            // was an allocation per search (slot layout of one pattern: group 0's start and
            // end, then group 1's; `GroupInfo`'s documented mapping).
            let mut slots = [None; 4];
            p.re.search_slots(input, &mut slots).and_then(|_| {
                let span = |a: usize| Some(slots[a]?.get()..slots[a + 1]?.get());
                let m = span(0)?;
                let r = span(2).unwrap_or_else(|| m.clone());
                Some((m, r))
            })
        } else {
            p.re.search(input).map(|m| (m.range(), m.range()))
        };
        let Some((mut m, mut r)) = found else {
            // Unanchored: the engine looked at the whole input. Anchored: the caller knows
            // better (see `find_literals`).
            if input.get_anchored() == Anchored::No {
                cx.meter.work(input.end() - from + 1)?;
            }
            return Ok(None);
        };
        cx.meter.work(m.end - from + 1)?;
        if let Some((footer, re)) = &p.footer
            && let Some(end) = footer_end(footer, re, text, m.end, cx)?
        {
            let whole_masked = r == m;
            m.end = end;
            if whole_masked {
                r.end = end;
            }
        }
        Ok(Some((m, r)))
    }

    /// Validates a candidate and records it. Returns whether it was accepted.
    fn accept(
        &self,
        p: &Pattern,
        text: &str,
        r: Range<usize>,
        out: &mut Vec<Found>,
        cx: &mut Ctx<'_>,
    ) -> Result<Option<usize>, Exceeded> {
        cx.meter.work(r.len() + 1)?;
        let ok = (r.start < r.end)
            .then_some(r)
            .and_then(|r| match p.check {
                Some(check) => check(text, r),
                None => Some(r),
            })
            .filter(|r| r.start < r.end && self.context_ok(p, text, r));
        Ok(ok.map(|r| {
            out.push(Found {
                start: r.start,
                end: r.end,
                detector: p.detector,
            });
            r.end
        }))
    }

    /// Runs one pattern over window `w` of `text`, validating candidates. After an accepted
    /// candidate the search resumes at its end; after a rejected one, one character later, so
    /// that it cannot hide a valid match overlapping it (see [`resume_at`] for the limit).
    fn locate(
        &self,
        p: &Pattern,
        text: &str,
        w: Range<usize>,
        out: &mut Vec<Found>,
        cx: &mut Ctx<'_>,
    ) -> Result<(), Exceeded> {
        let mut at = w.start;
        while at < w.end {
            if cx.gated
                && let Some(skip) = p.skip
            {
                let (next, read) = skip(text, at, w.end);
                cx.meter.work(read)?;
                at = next;
                if at >= w.end {
                    break;
                }
            }
            let input = Input::new(text).range(at..w.end);
            let Some((m, r)) = self.candidate(p, text, &input, cx)? else {
                break;
            };
            let accepted = self.accept(p, text, r, out, cx)?;
            at = resume_at(text, p, &m, accepted);
        }
        Ok(())
    }

    /// Context words (custom detectors): one must appear within `window` bytes around the match.
    fn context_ok(&self, p: &Pattern, text: &str, r: &Range<usize>) -> bool {
        if p.context.is_empty() {
            return true;
        }
        let a = text.floor_char_boundary(r.start.saturating_sub(p.window));
        let b = text.ceil_char_boundary(r.end + p.window);
        let around = text[a..b].to_ascii_lowercase();
        p.context.iter().any(|w| around.contains(w.as_str()))
    }
}

/// `w` lowercased into `buf`, or `None` when it does not fit (no street word, name or list
/// word is that long). For the code detectors' word lists: no allocation.
pub(super) fn lower<'b>(w: &str, buf: &'b mut [u8; 64]) -> Option<&'b str> {
    // Nearly every word tried is ASCII: lowercase it byte for byte. `char::to_lowercase` per
    // character was the detector's largest cost on prose; non-ASCII words keep the Unicode
    // mapping (the Kelvin sign lowercases to `k`, `İ` to two characters).
    if w.is_ascii() {
        // One pass, no `memcpy` call: these words are a few bytes long.
        let b = buf.get_mut(..w.len())?;
        for (d, s) in b.iter_mut().zip(w.as_bytes()) {
            *d = s.to_ascii_lowercase();
        }
        return std::str::from_utf8(b).ok();
    }
    let mut n = 0;
    for c in w.chars().flat_map(char::to_lowercase) {
        let l = c.len_utf8();
        if n + l > buf.len() {
            return None;
        }
        c.encode_utf8(&mut buf[n..n + l]);
        n += l;
    }
    std::str::from_utf8(&buf[..n]).ok()
}

thread_local! {
    /// [`Scanner::scan_group`]'s scratch: which patterns of a group's set occur in a window,
    /// one set per group size met on this thread (a handful: the built-in gates' groups and
    /// the rules files' custom sets). One of each is enough: the only scan that nests (the
    /// always-on scan of a decoded base64 run, `checksum::base64_secret`) runs from a
    /// literal-gated pattern's check, outside this borrow; a check that scans must stay
    /// literal-gated, or this borrow panics.
    static WHICH: std::cell::RefCell<Vec<PatternSet>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Per-scan state: the meter, and the footer memo of the pattern that has one.
struct Ctx<'m> {
    meter: &'m mut Meter,
    footer: FooterMemo,
    /// A gated scan (patterns may skip ahead, see [`Skip`]); the exhaustive reference is not.
    gated: bool,
}

impl<'m> Ctx<'m> {
    fn new(meter: &'m mut Meter, gated: bool) -> Ctx<'m> {
        Ctx {
            meter,
            footer: FooterMemo::default(),
            gated,
        }
    }
}

/// A regex match and the range to mask in it (the whole match, or capture group 1).
type Candidate = (Range<usize>, Range<usize>);

/// Longest rejected candidate after which the search restarts one character later; past it
/// the search resumes at the candidate's end. Restarting inside a long rejected candidate
/// costs its length again for every restart: quadratic in the candidate (veil#10: a custom
/// `[0-9 ]+` with `validator = "luhn"` on a long run of digits; `xoxb-` repeated, when the
/// Slack pattern stopped at 250 characters and was rejected for the ones glued after it).
/// Every built-in PII candidate is shorter (the longest, an international phone number or a
/// labelled date, is under 100 bytes). Secret candidates are whole runs of their alphabet, so
/// a longer rejected one is a run that is not a token, and neither is its tail. Custom
/// patterns: a valid match overlapping a rejected candidate longer than this is not found
/// (documented in `rules/README.md`).
const RESTART_SPAN: usize = 128;

/// Where a search resumes after candidate `m`: if accepted, where the accepted value ends
/// (`accepted`: before the candidate's end when the check kept less of it, so a value the
/// pattern read past is still found: `[password=abc123][password=abc123]`; after it when the
/// check read on); one character later if rejected and short, so an overlapping valid match
/// is still found; its end if rejected and longer than [`RESTART_SPAN`]. A pattern marked
/// [`Pat::rescan`] always resumes one character later.
fn resume_at(text: &str, p: &Pattern, m: &Range<usize>, accepted: Option<usize>) -> usize {
    let at = match accepted {
        _ if p.rescan => m.start + 1,
        Some(end) => end.max(m.start + 1),
        None if m.len() > RESTART_SPAN => m.end.max(m.start + 1),
        None => m.start + 1,
    };
    text.ceil_char_boundary(at)
}

/// Merges overlapping candidates into disjoint spans, sorted by start. Candidates that
/// overlap, directly or through others, become one span covering all of them, owned by the
/// detector of the best member: the longest, then the higher priority (lower number), then
/// the leftmost. Deterministic for any input order. Touching spans (`a.end == b.start`) stay
/// apart.
///
/// The union, not the winner alone: every candidate is a value some detector judged secret
/// or personal, so no byte of one may stay in the text because another, longer one overlaps
/// it. Keeping only the longest left the rest of a partly overlapping candidate in the clear
/// (`read -p "New password: " pw; export DB_PASSWORD='Xy"9#kLm2q!'`: the candidate reading
/// from the prompt's quote into the real password's value won, and `9#kLm2q!` stayed).
///
/// O(m log m): one sort, one sweep. The first version compared each candidate with every
/// kept match: quadratic in the number of matches, seconds for a 4 MB prompt of repeated
/// email addresses (veil#10).
fn resolve(
    detectors: &[Detector],
    found: &mut Vec<Found>,
    meter: &mut Meter,
) -> Result<(), Exceeded> {
    let m = found.len();
    if m < 2 {
        return Ok(());
    }
    // A sort of m candidates: m·log2(m), and the sweep.
    let log = (usize::BITS - m.leading_zeros()) as usize;
    meter.work(m * log + m)?;
    found.sort_unstable_by_key(|f| (f.start, f.end, f.detector));
    let rank = |f: &Found| {
        (
            std::cmp::Reverse(f.end - f.start),
            detectors[f.detector].priority,
            f.start,
            f.detector,
        )
    };
    let mut kept = 0;
    let mut span = found[0];
    let mut best = found[0];
    for i in 1..m {
        let f = found[i];
        if f.start < span.end {
            span.end = span.end.max(f.end);
            if rank(&f) < rank(&best) {
                best = f;
            }
        } else {
            found[kept] = Found {
                detector: best.detector,
                ..span
            };
            kept += 1;
            span = f;
            best = f;
        }
    }
    found[kept] = Found {
        detector: best.detector,
        ..span
    };
    found.truncate(kept + 1);
    Ok(())
}
