//! Compiling detectors: `ScannerSpec → Scanner`.
//!
//! Part of the redact step's detectors (`detect/`). Owns the source types the rules compiler
//! fills ([`ScannerSpec`], [`PatternSpec`], [`DictSpec`], [`Detector`]), the gates patterns are
//! grouped by ([`Gate`]), the limits on user regexes, and [`Scanner::build`]. Runs once per
//! rules compile, never per exchange.

use super::*;

/// Limits for user-supplied regexes: big enough for any sane detector, small enough that a
/// pathological pattern (`(a{1000}){1000}`) is a compile error, not an OOM. Matching itself
/// is linear time in regex-automata, so no pattern can hang a scan.
pub(crate) const USER_REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Longest user pattern accepted, in bytes.
pub(crate) const USER_REGEX_MAX_LEN: usize = 4096;
/// Lazy DFA cache per thread for the combined set: large enough that realistic text does
/// not thrash it (a thrashing cache makes meta fall back to the much slower PikeVM).
pub(super) const SET_CACHE: usize = 8 << 20;
/// Size limit for the combined set's NFA (all built-ins take well under 1 MiB).
pub(super) const SET_NFA_LIMIT: usize = 64 << 20;

/// One detector of a scanner.
#[derive(Clone, Debug)]
pub(crate) struct Detector {
    /// Label used in masks and counts.
    pub label: Arc<str>,
    /// What a match becomes.
    pub action: InlineAction,
    /// Lower wins a tie on length.
    pub priority: u32,
}

/// Source of one regex pattern, before compilation.
#[derive(Clone, Debug)]
pub(crate) struct PatternSpec {
    pub detector: usize,
    pub regex: String,
    pub check: Option<Check>,
    pub group: bool,
    pub context: Vec<String>,
    pub window: usize,
    pub user: bool,
    /// Which prefilter condition the pattern runs under.
    pub gate: Gate,
    /// A closing line the match extends to (built-ins only).
    pub footer: Option<Footer>,
    /// The leading run a failed attempt may have scanned (built-ins only, see [`Pat`]).
    pub lead: Option<fn(u8) -> bool>,
    /// Where a gated search may resume (built-ins only, see [`Skip`]).
    pub skip: Option<Skip>,
    /// Search again one character after every candidate (built-ins only, see [`Pat::rescan`]).
    pub rescan: bool,
}

/// The prefilter condition under which a pattern can match, and so how it is searched:
/// - `Digit`, `At`, `Colon`: one multi-pattern set per gate, run only over windows around the
///   trigger. One set of all ~27 built-ins made the overlapping lazy DFA explode (digit-led
///   patterns multiply each other's states: 12 MB/s measured); per-gate sets stay small.
/// - `Literal`: no set; each pattern is tried, anchored, where one of its literals occurs.
/// - `Always` (custom patterns): one set over the whole text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Gate {
    /// A cluster of digits or an IBAN prefix (see [`Windows`]).
    Digit,
    /// An `@`.
    At,
    /// A `:` followed by a hex digit or `:`.
    Colon,
    /// One of the pattern's literals (`sk-`, `ghp_`, `eyJ`, `-----BEGIN`, ...).
    Literal(&'static [&'static str], usize),
    /// Custom patterns: always scanned.
    Always,
}

impl Gate {
    /// The gate of a pattern-based trigger; `None` for a [`Trigger::Code`] detector, which
    /// has no patterns.
    fn of(t: Trigger) -> Option<Gate> {
        match t {
            Trigger::Digit => Some(Gate::Digit),
            Trigger::At => Some(Gate::At),
            Trigger::Colon => Some(Gate::Colon),
            Trigger::Literal(words, back) => Some(Gate::Literal(words, back)),
            Trigger::Code(_) => None,
        }
    }

    /// Groups that share one set; literal patterns need none.
    fn set_key(self) -> Option<u8> {
        match self {
            Gate::Digit => Some(0),
            Gate::At => Some(1),
            Gate::Colon => Some(2),
            Gate::Always => Some(3),
            Gate::Literal(..) => None,
        }
    }
}

/// Source of one dictionary, before compilation.
#[derive(Clone, Debug)]
pub(crate) struct DictSpec {
    pub detector: usize,
    pub words: Vec<String>,
}

/// Everything a scanner is built from.
#[derive(Clone, Debug, Default)]
pub(crate) struct ScannerSpec {
    pub detectors: Vec<Detector>,
    pub patterns: Vec<PatternSpec>,
    pub dicts: Vec<DictSpec>,
    /// Code detectors: `(detector, function)`.
    pub code: Vec<(usize, Code)>,
}

impl ScannerSpec {
    /// Adds built-in `b` as detector with `action` and returns its index.
    pub fn add_builtin(&mut self, b: &'static Builtin, action: InlineAction) -> usize {
        let priority = BUILTINS.iter().position(|x| x.key == b.key).unwrap_or(0) as u32;
        let detector = self.detectors.len();
        self.detectors.push(Detector {
            label: b.label.into(),
            action,
            priority,
        });
        if b.key == "phone" {
            // Load the numbering metadata now, at rules compile, not in the first exchange.
            crate::redact::phone::warm();
        }
        let Some(gate) = Gate::of(b.trigger) else {
            if let Trigger::Code(f) = b.trigger {
                self.code.push((detector, f));
            }
            return detector;
        };
        for p in b.patterns {
            let gate = match (gate, p.literals) {
                (Gate::Literal(_, back), Some(own)) => Gate::Literal(own, back),
                (_, own) => {
                    debug_assert!(own.is_none(), "{}: own literals need a literal gate", b.key);
                    gate
                }
            };
            self.patterns.push(PatternSpec {
                detector,
                regex: p.re.to_string(),
                check: p.check,
                group: p.group,
                context: Vec::new(),
                window: 0,
                user: false,
                gate,
                footer: p.footer,
                lead: p.lead,
                skip: p.skip,
                rescan: p.rescan,
            });
        }
        detector
    }
}

/// One detector pattern's regex, as every scanner compiles it. Errors are
/// [`regex_error`]'s line.
fn compile_pattern(regex: &str, onepass: bool) -> Result<meta::Regex, String> {
    meta::Regex::builder()
        .syntax(regex_automata::util::syntax::Config::new().nest_limit(64))
        .configure(
            meta::Config::new()
                .nfa_size_limit(Some(USER_REGEX_SIZE_LIMIT * 4))
                .hybrid_cache_capacity(USER_REGEX_SIZE_LIMIT * 2)
                .onepass(onepass),
        )
        .build(regex)
        .map_err(|e| regex_error(&e))
}

/// Most built-in patterns [`shared_builtin`] keeps (the shipped detectors have about 200; a
/// pattern past the bound is compiled for its scanner alone).
const SHARED_BUILTINS: usize = 1024;

/// A built-in pattern's regex, compiled once per process and shared by every scanner that
/// holds it: each rules scope's, the always-on secret detectors' (`rules::secrets`, built at
/// the first exchange, 1.4 MB of automata of its own before), and those of rules reloaded
/// on SIGHUP. The pattern's lazy DFA caches are shared too (the regex's own pool, one cache
/// per thread using it). User patterns are not shared: a rules file's regexes are freed with
/// its scanners.
fn shared_builtin(regex: &str, onepass: bool) -> Result<Arc<meta::Regex>, String> {
    type Compiled = std::collections::HashMap<(String, bool), Arc<meta::Regex>>;
    static COMPILED: std::sync::LazyLock<std::sync::Mutex<Compiled>> =
        std::sync::LazyLock::new(Default::default);
    let key = (regex.to_string(), onepass);
    if let Some(re) = COMPILED.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(Arc::clone(re));
    }
    // Compiled outside the lock (milliseconds); a scanner built at the same time on another
    // thread may compile it too, and the first one kept wins.
    let re = Arc::new(compile_pattern(regex, onepass)?);
    let mut compiled = COMPILED.lock().unwrap_or_else(|e| e.into_inner());
    if compiled.len() >= SHARED_BUILTINS && !compiled.contains_key(&key) {
        return Ok(re);
    }
    Ok(Arc::clone(compiled.entry(key).or_insert(re)))
}

/// A regex pattern ready to locate spans.
#[derive(Debug)]
pub(super) struct Pattern {
    pub(super) detector: usize,
    /// Shared between scanners for a built-in pattern ([`shared_builtin`]).
    pub(super) re: Arc<meta::Regex>,
    pub(super) check: Option<Check>,
    pub(super) group: bool,
    pub(super) context: Vec<String>,
    pub(super) window: usize,
    /// The compiled footer regex and the body bytes (see [`Footer`]).
    pub(super) footer: Option<(Footer, meta::Regex)>,
    /// See [`Pat::lead`].
    pub(super) lead: Option<fn(u8) -> bool>,
    /// See [`Pat::skip`].
    pub(super) skip: Option<Skip>,
    /// See [`Pat::rescan`].
    pub(super) rescan: bool,
}

/// Why a scanner could not be built. Carries the index of the offending pattern or dictionary.
#[derive(Debug)]
pub(crate) enum ScanBuildError {
    /// Pattern `usize` (index into `ScannerSpec::patterns`) failed.
    Pattern(usize, String),
    /// Dictionary (index into `ScannerSpec::dicts`) failed.
    Dict(usize, String),
    /// The combined set failed (too large).
    Set(String),
}

impl Scanner {
    /// Compiles a spec. Errors name the pattern or dictionary at fault.
    pub(crate) fn build(spec: &ScannerSpec) -> Result<Scanner, ScanBuildError> {
        let mut patterns = Vec::with_capacity(spec.patterns.len());
        for (i, p) in spec.patterns.iter().enumerate() {
            if p.user && p.regex.len() > USER_REGEX_MAX_LEN {
                return Err(ScanBuildError::Pattern(
                    i,
                    format!(
                        "pattern is {} bytes long (limit {USER_REGEX_MAX_LEN})",
                        p.regex.len()
                    ),
                ));
            }
            // A literal-gated pattern is tried anchored and reports few candidates: the
            // one-pass DFA made their capture spans no faster (stop 75, dense password text)
            // and held 0.2 MB among them.
            let onepass = !matches!(p.gate, Gate::Literal(..));
            let re = if p.user {
                compile_pattern(&p.regex, onepass).map(Arc::new)
            } else {
                shared_builtin(&p.regex, onepass)
            }
            .map_err(|e| ScanBuildError::Pattern(i, e))?;
            if p.user {
                // Bounded separately and more tightly than built-ins.
                regex::RegexBuilder::new(&p.regex)
                    .size_limit(USER_REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| ScanBuildError::Pattern(i, e.to_string()))?;
                if re.is_match("") {
                    return Err(ScanBuildError::Pattern(
                        i,
                        "pattern matches the empty string".into(),
                    ));
                }
            }
            let footer = match p.footer {
                Some(f) => Some((
                    f,
                    meta::Regex::new(f.re)
                        .map_err(|e| ScanBuildError::Pattern(i, e.to_string()))?,
                )),
                None => None,
            };
            patterns.push(Pattern {
                detector: p.detector,
                re,
                check: p.check,
                group: p.group,
                context: p.context.iter().map(|w| w.to_ascii_lowercase()).collect(),
                window: p.window,
                footer,
                lead: p.lead,
                skip: p.skip,
                rescan: p.rescan,
            });
        }
        let mut keys: Vec<u8> = spec
            .patterns
            .iter()
            .filter_map(|p| p.gate.set_key())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let mut groups = Vec::with_capacity(keys.len());
        let mut want = Want::default();
        for key in keys {
            let members: Vec<usize> = (0..spec.patterns.len())
                .filter(|&i| spec.patterns[i].gate.set_key() == Some(key))
                .collect();
            let gate = spec.patterns[members[0]].gate;
            match gate {
                Gate::Digit => want.digit = true,
                Gate::At => want.at = true,
                Gate::Colon => want.colon = true,
                Gate::Literal(..) | Gate::Always => {}
            }
            let set = if members.len() == 1 {
                None
            } else {
                let res: Vec<&str> = members
                    .iter()
                    .map(|&i| spec.patterns[i].regex.as_str())
                    .collect();
                Some(
                    meta::Regex::builder()
                        .configure(
                            meta::Config::new()
                                .match_kind(MatchKind::All)
                                .nfa_size_limit(Some(SET_NFA_LIMIT))
                                .hybrid_cache_capacity(SET_CACHE),
                        )
                        .build_many(&res)
                        .map_err(|e| ScanBuildError::Set(e.to_string()))?,
                )
            };
            groups.push(Group { gate, set, members });
        }
        let dict = if spec.dicts.is_empty() {
            None
        } else {
            let mut words = Vec::new();
            let mut owner = Vec::new();
            for d in &spec.dicts {
                for w in &d.words {
                    let w = w.trim();
                    if !w.is_empty() {
                        words.push(w.to_string());
                        owner.push(d.detector);
                    }
                }
            }
            let ac = AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .match_kind(aho_corasick::MatchKind::LeftmostLongest)
                .build(&words)
                .map_err(|e| ScanBuildError::Dict(0, e.to_string()))?;
            Some((ac, owner))
        };
        Ok(Scanner {
            detectors: spec.detectors.clone(),
            patterns,
            groups,
            literals: build_literals(spec)?,
            dict,
            code: spec.code.clone(),
            want,
        })
    }
}

/// What is wrong with a pattern, in one line: regex-syntax's own reason (`unclosed group`,
/// `repetition quantifier expects a valid decimal`), not the builder's "error parsing pattern
/// 0", or the size limit it would exceed.
fn regex_error(e: &meta::BuildError) -> String {
    if let Some(syntax) = e.syntax_error() {
        // regex-syntax prints a picture of the pattern and a caret, then `error: <reason>`.
        let text = syntax.to_string();
        let reason = text
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("error: "))
            .map(str::to_string);
        return reason.unwrap_or(text);
    }
    if e.size_limit().is_some() {
        // The builder's own limit is a multiple of the one user patterns are held to (the
        // `regex` crate's check in `Scanner::build`): name that one, as rules/README.md does.
        return format!(
            "the compiled pattern exceeds the size limit ({} MiB): simplify it (fewer or smaller repetitions)",
            USER_REGEX_SIZE_LIMIT >> 20
        );
    }
    e.to_string()
}
