//! # Detectors: find PII and secrets in a text, in one scan.
//!
//! A [`Scanner`] holds every detector of one scope, compiled together:
//! - all regex detectors (built-in and custom) in **one** multi-pattern
//!   [`regex_automata::meta::Regex`], asked only *which* patterns occur in the text
//!   (`which_overlapping_matches`, a single forward pass);
//! - all dictionary words in **one** Aho-Corasick automaton (ASCII case-insensitive,
//!   leftmost-longest, whole words only);
//! - a byte-level prefilter in front of both: built-in detectors all need a digit, an `@`, a
//!   `:` followed by a hex digit, or one of a few literals (`sk-`, `ghp_`, `eyJ`, `-----BEGIN`,
//!   `bearer`, ...). Text with none of those (most prose) never reaches the regex engine.
//!
//! Only the patterns the set reported are then run on their own to get spans (text with PII is
//! the minority; text without it pays one pass). Candidates go through their validator (Luhn,
//! mod 97, ranges, edge checks), then overlaps are resolved deterministically: the longest span
//! wins, then the detector with the higher priority (lower number), then the leftmost.
//!
//! Why not one leftmost-first `find_iter` over the set? Because a candidate that fails its
//! validator (a 16-digit number failing Luhn) would hide a valid, shorter match of another
//! detector starting at the same place, and because "longest wins" needs every candidate.
//!
//! Patterns use ASCII word boundaries (`(?-u:\b)`) so the lazy DFA never has to give up on
//! non-ASCII text; letters outside ASCII are matched explicitly where they matter (emails).

use std::ops::Range;
use std::sync::Arc;

use aho_corasick::AhoCorasick;
use regex_automata::meta;
use regex_automata::{Input, MatchKind, PatternSet};

use super::checksum::{self, Check};

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

/// Where a built-in detector can possibly match, for the prefilter.
#[derive(Clone, Copy, Debug)]
enum Trigger {
    Digit,
    At,
    Colon,
    Literal(&'static [&'static str]),
}

/// One built-in detector: patterns, validator, and which part of a match to mask.
#[derive(Debug)]
pub(crate) struct Builtin {
    /// Name in rules files (`email`).
    pub key: &'static str,
    /// Label in masks and counts (`EMAIL`).
    pub label: &'static str,
    patterns: &'static [Pat],
    triggers: &'static [Trigger],
}

/// One pattern of a built-in detector.
#[derive(Debug)]
struct Pat {
    re: &'static str,
    check: Option<Check>,
    /// Mask capture group 1 instead of the whole match (context words stay readable).
    group: bool,
}

const fn pat(re: &'static str, check: Check) -> Pat {
    Pat {
        re,
        check: Some(check),
        group: false,
    }
}

const fn grp(re: &'static str, check: Option<Check>) -> Pat {
    Pat {
        re,
        check,
        group: true,
    }
}

/// Built-in detectors, in priority order (earlier wins a tie on length). Patterns follow the
/// formats' specifications (E.164, ISO 13616, ISO/IEC 7812, RFC 4291, RFC 7519, RFC 7468, the
/// vendors' documented token prefixes), not any corpus.
pub(crate) const BUILTINS: &[Builtin] = &[
    Builtin {
        key: "private_key",
        label: "PRIVATE_KEY",
        // RFC 7468 PEM (and PGP armor). A block cut before its END line is masked to the end
        // of its base64 body so a truncated key never leaks.
        patterns: &[Pat {
            re: r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----(?:[A-Za-z0-9+/=\s:,.\-\\]*?-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|[A-Za-z0-9+/=\r\n\\]*)",
            check: None,
            group: false,
        }],
        triggers: &[Trigger::Literal(&["-----BEGIN"])],
    },
    Builtin {
        key: "jwt",
        label: "JWT",
        // RFC 7519 compact JWS: base64url(header) . base64url(payload) . signature; the
        // header is a JSON object, so it starts with `eyJ` (`{"`).
        patterns: &[pat(
            r"(?-u:\b)eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*",
            checksum::secret_end,
        )],
        triggers: &[Trigger::Literal(&["eyJ"])],
    },
    Builtin {
        key: "anthropic_api_key",
        label: "ANTHROPIC_API_KEY",
        patterns: &[pat(
            r"(?-u:\b)sk-ant-[A-Za-z0-9_\-]{20,}",
            checksum::secret_end,
        )],
        triggers: &[Trigger::Literal(&["sk-ant-"])],
    },
    Builtin {
        key: "openai_api_key",
        label: "OPENAI_API_KEY",
        // `sk-`, `sk-proj-`, `sk-svcacct-`, `sk-admin-` then a long token.
        patterns: &[pat(r"(?-u:\b)sk-[A-Za-z0-9_\-]{20,}", checksum::secret_end)],
        triggers: &[Trigger::Literal(&["sk-"])],
    },
    Builtin {
        key: "github_token",
        label: "GITHUB_TOKEN",
        patterns: &[
            pat(
                r"(?-u:\b)gh[pousr]_[A-Za-z0-9]{36,255}",
                checksum::secret_end,
            ),
            pat(
                r"(?-u:\b)github_pat_[A-Za-z0-9_]{22,255}",
                checksum::secret_end,
            ),
        ],
        triggers: &[Trigger::Literal(&[
            "ghp_",
            "gho_",
            "ghu_",
            "ghs_",
            "ghr_",
            "github_pat_",
        ])],
    },
    Builtin {
        key: "slack_token",
        label: "SLACK_TOKEN",
        patterns: &[
            pat(
                r"(?-u:\b)xox[abposer]-[A-Za-z0-9\-]{10,250}",
                checksum::secret_end,
            ),
            pat(
                r"(?-u:\b)xapp-[0-9]-[A-Za-z0-9\-]{10,250}",
                checksum::secret_end,
            ),
            pat(
                r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9/_\-]{20,}",
                checksum::secret_end,
            ),
        ],
        triggers: &[Trigger::Literal(&["xox", "xapp-", "hooks.slack.com"])],
    },
    Builtin {
        key: "stripe_secret_key",
        label: "STRIPE_SECRET_KEY",
        // Secret and restricted keys, live or test, and webhook signing secrets.
        // Publishable keys (`pk_`) are public by design and left alone.
        patterns: &[
            pat(
                r"(?-u:\b)[sr]k_(?:live|test)_[A-Za-z0-9]{16,247}",
                checksum::secret_end,
            ),
            pat(r"(?-u:\b)whsec_[A-Za-z0-9]{24,}", checksum::secret_end),
        ],
        triggers: &[Trigger::Literal(&[
            "sk_live_", "sk_test_", "rk_live_", "rk_test_", "whsec_",
        ])],
    },
    Builtin {
        key: "google_api_key",
        label: "GOOGLE_API_KEY",
        patterns: &[pat(r"(?-u:\b)AIza[0-9A-Za-z_\-]{35}", checksum::secret_end)],
        triggers: &[Trigger::Literal(&["AIza"])],
    },
    Builtin {
        key: "aws_access_key_id",
        label: "AWS_ACCESS_KEY_ID",
        // Long-term (AKIA) and temporary (ASIA) access key ids, plus the bearer/CA prefixes.
        patterns: &[pat(
            r"(?-u:\b)(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?-u:\b)",
            checksum::secret_end,
        )],
        triggers: &[Trigger::Literal(&["AKIA", "ASIA", "ABIA", "ACCA"])],
    },
    Builtin {
        key: "aws_secret_access_key",
        label: "AWS_SECRET_ACCESS_KEY",
        // 40 base64 characters look like any hash, so only with a label in front
        // (`AWS_SECRET_ACCESS_KEY=`, `"SecretAccessKey": "`, `aws_secret_key: `).
        patterns: &[grp(
            r"(?i:aws.?secret.?access.?key|aws.?secret.?key|secret.?access.?key)[^A-Za-z0-9/+\n]{1,16}([A-Za-z0-9/+]{40})",
            Some(checksum::secret_end),
        )],
        triggers: &[Trigger::Literal(&["secret", "Secret", "SECRET"])],
    },
    Builtin {
        key: "bearer_token",
        label: "BEARER_TOKEN",
        // RFC 6750 `Bearer <b64token>`; the word stays, the token goes.
        patterns: &[grp(
            r"(?i:(?-u:\b)bearer)[ \t]+([A-Za-z0-9._~+/\-]{16,}=*)",
            Some(checksum::token),
        )],
        triggers: &[Trigger::Literal(&["bearer", "Bearer", "BEARER"])],
    },
    Builtin {
        key: "email",
        label: "EMAIL",
        // RFC 5322 addr-spec, practical subset, with internationalized (UTF-8) local parts and
        // domains (RFC 6531).
        patterns: &[Pat {
            re: r"[A-Za-z0-9._%+'\-\x{80}-\x{10FFFF}]+@[A-Za-z0-9\-\x{80}-\x{10FFFF}]+(?:\.[A-Za-z0-9\-\x{80}-\x{10FFFF}]+)*\.[A-Za-z\x{80}-\x{10FFFF}]{2,63}",
            check: None,
            group: false,
        }],
        triggers: &[Trigger::At],
    },
    Builtin {
        key: "iban",
        label: "IBAN",
        // ISO 13616: country, 2 check digits, BBAN; printed in groups of 4.
        patterns: &[pat(
            r"(?-u:\b)[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,31}",
            checksum::iban,
        )],
        triggers: &[Trigger::Digit],
    },
    Builtin {
        key: "credit_card",
        label: "CREDIT_CARD",
        // ISO/IEC 7812 PAN, 12-19 digits, optionally grouped by spaces or dashes.
        patterns: &[pat(
            r"(?-u:\b)(?:[2-6][0-9]|06)(?:[ \-]?[0-9]){10,17}(?-u:\b)",
            checksum::card,
        )],
        triggers: &[Trigger::Digit],
    },
    Builtin {
        key: "us_ssn",
        label: "US_SSN",
        patterns: &[
            pat(r"(?-u:\b)[0-9]{3}-[0-9]{2}-[0-9]{4}(?-u:\b)", checksum::ssn),
            pat(r"(?-u:\b)[0-9]{3} [0-9]{2} [0-9]{4}(?-u:\b)", checksum::ssn),
            // Nine bare digits only after an SSN label.
            grp(
                r"(?i:(?-u:\b)(?:ssn|social security(?: number| no\.?)?)(?-u:\b))[^A-Za-z0-9\n]{0,6}(?:(?:is|was|number|no\.?|:|#)[^A-Za-z0-9\n]{0,4})?([0-9]{9})(?-u:\b)",
                Some(checksum::ssn),
            ),
        ],
        triggers: &[Trigger::Digit],
    },
    Builtin {
        key: "phone",
        label: "PHONE",
        patterns: &[
            // E.164 international: +CC, optional trunk (0), groups of 1-5 digits.
            pat(
                r"\+[1-9][0-9]{0,3}(?:[ .\-]?\(0\))?(?:[ .\-]?\(?[0-9]{1,5}\)?){1,7}",
                checksum::phone_intl,
            ),
            // NANP national: [1 ](NXX) NXX-XXXX, NXX-NXX-XXXX, NXX.NXX.XXXX, NXX NXX XXXX.
            pat(
                r"(?:(?-u:\b)1[ .\-]?)?(?:\([2-9][0-9]{2}\)[ .\-]?|(?-u:\b)[2-9][0-9]{2}[ .\-])[2-9][0-9]{2}[ .\-][0-9]{4}(?-u:\b)",
                checksum::phone_nanp,
            ),
            // National numbers with trunk prefix 0 (UK, DE, FR, ...): 0AA[A] NNNN[ NNNN].
            pat(
                r"(?:\(0[1-9][0-9]{0,3}\) ?|(?-u:\b)0[1-9][0-9]{0,3}[ /\-])[0-9]{2,8}(?:[ \-][0-9]{2,8}){0,3}(?-u:\b)",
                checksum::phone_national,
            ),
        ],
        triggers: &[Trigger::Digit],
    },
    Builtin {
        key: "ipv6",
        label: "IPV6",
        // RFC 4291 text forms (full, compressed, IPv4-embedded); the parser decides.
        patterns: &[pat(
            r"(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9A-Fa-f]{1,4})?",
            checksum::ipv6,
        )],
        triggers: &[Trigger::Colon],
    },
    Builtin {
        key: "ipv4",
        label: "IPV4",
        patterns: &[pat(
            r"(?-u:\b)(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(?-u:\b)",
            checksum::ipv4,
        )],
        triggers: &[Trigger::Digit],
    },
    Builtin {
        key: "date_of_birth",
        label: "DATE_OF_BIRTH",
        // A date only counts as a birth date right after a label (born, DOB, date of birth).
        patterns: &[grp(
            r"(?i:(?-u:\b)(?:born(?: on)?|d\.?o\.?b\.?|date of birth|birth ?date|birthday|geboren(?: am)?|geburtsdatum)(?-u:\b))(?:[ \t]*(?:is|was|:|=))?[ \t]*((?:[0-9]{1,2}[./\-][0-9]{1,2}[./\-](?:19|20)?[0-9]{2})|(?:(?:19|20)[0-9]{2}-[0-9]{2}-[0-9]{2})|(?:(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.? [0-9]{1,2}(?:st|nd|rd|th)?,? (?:19|20)[0-9]{2})|(?:[0-9]{1,2}(?:st|nd|rd|th)?\.? (?i:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec|m\x{e4}r)[a-z]*\.?,? (?:19|20)[0-9]{2}))(?-u:\b)",
            None,
        )],
        triggers: &[Trigger::Digit],
    },
];

/// `(label, pattern)` for every built-in regex, in priority order: for baselines and tools
/// (the naive one-regex-per-detector benchmark). Validators are not included.
pub fn builtin_patterns() -> Vec<(&'static str, &'static str)> {
    BUILTINS
        .iter()
        .flat_map(|b| b.patterns.iter().map(move |p| (b.label, p.re)))
        .collect()
}

/// The built-in detector named `key` in rules files.
pub(crate) fn builtin(key: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.key == key)
}

/// Limits for user-supplied regexes: big enough for any sane detector, small enough that a
/// pathological pattern (`(a{1000}){1000}`) is a compile error, not an OOM. Matching itself
/// is linear time in regex-automata, so no pattern can hang a scan.
pub(crate) const USER_REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Longest user pattern accepted, in bytes.
pub(crate) const USER_REGEX_MAX_LEN: usize = 4096;
/// Lazy DFA cache per thread for the combined set: large enough that realistic text does
/// not thrash it (a thrashing cache makes meta fall back to the much slower PikeVM).
const SET_CACHE: usize = 8 << 20;
/// Size limit for the combined set's NFA (all built-ins take well under 1 MiB).
const SET_NFA_LIMIT: usize = 64 << 20;

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
    /// Which scan group (and prefilter condition) the pattern belongs to.
    pub gate: Gate,
}

/// The prefilter condition under which a group of patterns can match. Patterns are compiled
/// into one multi-pattern set *per gate*: one set of all ~27 built-ins makes the overlapping
/// lazy DFA explode (digit-led patterns multiply each other's states: 12 MB/s measured),
/// while per-gate sets stay small (300+ MB/s each) and most text opens at most one gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Gate {
    /// Text has an ASCII digit.
    Digit,
    /// Text has an `@`.
    At,
    /// Text has `:` followed by a hex digit or `:`.
    Colon,
    /// Text has one of the built-in literals (`sk-`, `ghp_`, `eyJ`, `-----BEGIN`, ...).
    Literal,
    /// Custom patterns: always scanned.
    Always,
}

impl Gate {
    fn of(t: &Trigger) -> Gate {
        match t {
            Trigger::Digit => Gate::Digit,
            Trigger::At => Gate::At,
            Trigger::Colon => Gate::Colon,
            Trigger::Literal(_) => Gate::Literal,
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
    /// Built-ins whose triggers feed the prefilter.
    pub builtins: Vec<&'static str>,
    /// A custom regex is present: the prefilter cannot rule text out.
    pub has_custom: bool,
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
        for p in b.patterns {
            self.patterns.push(PatternSpec {
                detector,
                regex: p.re.to_string(),
                check: p.check,
                group: p.group,
                context: Vec::new(),
                window: 0,
                user: false,
                gate: b.triggers.first().map_or(Gate::Always, Gate::of),
            });
        }
        self.builtins.push(b.key);
        detector
    }
}

/// A regex pattern ready to locate spans once the set said it occurs.
#[derive(Debug)]
struct Pattern {
    detector: usize,
    re: meta::Regex,
    check: Option<Check>,
    group: bool,
    context: Vec<String>,
    window: usize,
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
    groups: Vec<Group>,
    patterns: Vec<Pattern>,
    dict: Option<(AhoCorasick, Vec<usize>)>,
    prefilter: Prefilter,
}

/// One multi-pattern set and the patterns it stands for.
#[derive(Debug)]
struct Group {
    gate: Gate,
    set: meta::Regex,
    /// Index into `Scanner::patterns` for each pattern id of `set`.
    members: Vec<usize>,
}

/// Which gates a text opens.
#[derive(Clone, Copy, Debug, Default)]
struct Open {
    digit: bool,
    at: bool,
    colon: bool,
    literal: bool,
}

impl Open {
    fn allows(&self, g: Gate) -> bool {
        match g {
            Gate::Digit => self.digit,
            Gate::At => self.at,
            Gate::Colon => self.colon,
            Gate::Literal => self.literal,
            Gate::Always => true,
        }
    }
}

/// Cheap test that rules a text out before the regex engine runs.
#[derive(Debug)]
struct Prefilter {
    always: bool,
    bytes: [bool; 256],
    colon: bool,
    literals: Option<AhoCorasick>,
}

impl Prefilter {
    fn build(spec: &ScannerSpec) -> Prefilter {
        let mut p = Prefilter {
            always: spec.has_custom,
            bytes: [false; 256],
            colon: false,
            literals: None,
        };
        let mut lits: Vec<&str> = Vec::new();
        for key in &spec.builtins {
            let Some(b) = builtin(key) else { continue };
            for t in b.triggers {
                match t {
                    Trigger::Digit => p.bytes[b'0' as usize..=b'9' as usize].fill(true),
                    Trigger::At => p.bytes[b'@' as usize] = true,
                    Trigger::Colon => {
                        p.colon = true;
                        p.bytes[b':' as usize] = true;
                    }
                    Trigger::Literal(l) => lits.extend_from_slice(l),
                }
            }
        }
        if !lits.is_empty() {
            // Case-sensitive on purpose: it keeps the SIMD (Teddy) prefilter, 3x faster than
            // ASCII-case-insensitive search here. Literals list the casings that occur.
            // Leftmost-first (not standard) semantics: only those use the packed Teddy searcher.
            p.literals = AhoCorasick::builder()
                .match_kind(aho_corasick::MatchKind::LeftmostFirst)
                .build(&lits)
                .ok();
            if p.literals.is_none() {
                p.always = true;
            }
        }
        p
    }

    /// Which gates `text` opens (one pass over the bytes, plus the literal automaton).
    fn open(&self, text: &str) -> Open {
        if self.always {
            return Open {
                digit: true,
                at: true,
                colon: true,
                literal: true,
            };
        }
        // Separate simple passes (each vectorizes or uses memchr) beat one branchy loop.
        let b = text.as_bytes();
        let mut o = Open {
            digit: self.bytes[b'0' as usize] && b.iter().any(u8::is_ascii_digit),
            at: self.bytes[b'@' as usize] && b.contains(&b'@'),
            ..Open::default()
        };
        if self.colon {
            let mut rest = b;
            while let Some(i) = rest.iter().position(|&c| c == b':') {
                if rest
                    .get(i + 1)
                    .is_some_and(|n| *n == b':' || n.is_ascii_hexdigit())
                {
                    o.colon = true;
                    break;
                }
                rest = &rest[i + 1..];
            }
        }
        o.literal = self.literals.as_ref().is_some_and(|ac| ac.is_match(text));
        o
    }

    /// False only when no built-in regex detector can match `text`.
    #[cfg(test)]
    fn may_match(&self, text: &str) -> bool {
        let o = self.open(text);
        o.digit || o.at || o.colon || o.literal
    }
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
            let re = meta::Regex::builder()
                .syntax(regex_automata::util::syntax::Config::new().nest_limit(64))
                .configure(
                    meta::Config::new()
                        .nfa_size_limit(Some(USER_REGEX_SIZE_LIMIT * 4))
                        .hybrid_cache_capacity(USER_REGEX_SIZE_LIMIT * 2),
                )
                .build(&p.regex)
                .map_err(|e| ScanBuildError::Pattern(i, e.to_string()))?;
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
            patterns.push(Pattern {
                detector: p.detector,
                re,
                check: p.check,
                group: p.group,
                context: p.context.iter().map(|w| w.to_ascii_lowercase()).collect(),
                window: p.window,
            });
        }
        let mut gates: Vec<Gate> = spec.patterns.iter().map(|p| p.gate).collect();
        gates.sort();
        gates.dedup();
        let mut groups = Vec::with_capacity(gates.len());
        for gate in gates {
            let members: Vec<usize> = (0..spec.patterns.len())
                .filter(|&i| spec.patterns[i].gate == gate)
                .collect();
            let res: Vec<&str> = members
                .iter()
                .map(|&i| spec.patterns[i].regex.as_str())
                .collect();
            let set = meta::Regex::builder()
                .configure(
                    meta::Config::new()
                        .match_kind(MatchKind::All)
                        .nfa_size_limit(Some(SET_NFA_LIMIT))
                        .hybrid_cache_capacity(SET_CACHE),
                )
                .build_many(&res)
                .map_err(|e| ScanBuildError::Set(e.to_string()))?;
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
            groups,
            patterns,
            dict,
            prefilter: Prefilter::build(spec),
        })
    }

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

    /// Every accepted match in `text`, sorted by start, never overlapping.
    pub fn find(&self, text: &str, out: &mut Vec<Found>) {
        out.clear();
        if text.is_empty() {
            return;
        }
        if let Some((ac, owner)) = &self.dict {
            for m in ac.find_iter(text) {
                let r = m.start()..m.end();
                if whole_word(text, &r) {
                    out.push(Found {
                        start: r.start,
                        end: r.end,
                        detector: owner[m.pattern().as_usize()],
                    });
                }
            }
        }
        if !self.groups.is_empty() {
            let open = self.prefilter.open(text);
            let full = 0..text.len();
            let whole = std::slice::from_ref(&full);
            let (mut digits, mut ats, mut colons) = (None, None, None);
            for g in self.groups.iter().filter(|g| open.allows(g.gate)) {
                // Gated patterns only run near their trigger: prose in between is skipped.
                let windows: &[Range<usize>] = match g.gate {
                    Gate::Digit => digits.get_or_insert_with(|| {
                        windows(text, |c| c.is_ascii_digit(), DIGIT_PAD, DIGIT_PAD)
                    }),
                    Gate::At => {
                        ats.get_or_insert_with(|| windows(text, |c| c == b'@', AT_PAD.0, AT_PAD.1))
                    }
                    Gate::Colon => colons
                        .get_or_insert_with(|| windows(text, |c| c == b':', COLON_PAD, COLON_PAD)),
                    Gate::Literal | Gate::Always => whole,
                };
                let mut which = PatternSet::new(g.set.pattern_len());
                for w in windows {
                    g.set
                        .which_overlapping_matches(&Input::new(text).range(w.clone()), &mut which);
                }
                for pid in which.iter() {
                    self.locate(
                        &self.patterns[g.members[pid.as_usize()]],
                        text,
                        windows,
                        out,
                    );
                }
            }
        }
        resolve(&self.detectors, out);
    }

    /// Runs one pattern over `text`, validating candidates. A rejected candidate restarts the
    /// search one character later, so it cannot hide a valid match that overlaps it.
    fn locate(&self, p: &Pattern, text: &str, windows: &[Range<usize>], out: &mut Vec<Found>) {
        let mut caps = p.group.then(|| p.re.create_captures());
        for w in windows {
            let mut at = w.start;
            while at < w.end {
                let input = Input::new(text).range(at..w.end);
                let (whole, group) = match caps.as_mut() {
                    Some(c) => {
                        p.re.search_captures(&input, c);
                        (
                            c.get_match().map(|m| m.range()),
                            c.get_group(1).map(|g| g.range()),
                        )
                    }
                    None => (p.re.search(&input).map(|m| m.range()), None),
                };
                let Some(m) = whole else { break };
                let r = group.unwrap_or(m.clone());
                let ok = (r.start < r.end)
                    .then_some(r)
                    .and_then(|r| match p.check {
                        Some(check) => check(text, r),
                        None => Some(r),
                    })
                    .filter(|r| r.start < r.end && self.context_ok(p, text, r));
                match ok {
                    Some(r) => {
                        out.push(Found {
                            start: r.start,
                            end: r.end,
                            detector: p.detector,
                        });
                        at = m.end.max(m.start + 1);
                    }
                    None => at = m.start + 1,
                }
                while at < text.len() && !text.is_char_boundary(at) {
                    at += 1;
                }
            }
        }
    }

    /// Context words (custom detectors): one must appear within `window` bytes around the match.
    fn context_ok(&self, p: &Pattern, text: &str, r: &Range<usize>) -> bool {
        if p.context.is_empty() {
            return true;
        }
        let mut a = r.start.saturating_sub(p.window);
        while !text.is_char_boundary(a) {
            a -= 1;
        }
        let mut b = (r.end + p.window).min(text.len());
        while !text.is_char_boundary(b) {
            b += 1;
        }
        let around = text[a..b].to_ascii_lowercase();
        p.context.iter().any(|w| around.contains(w.as_str()))
    }
}

/// How far around a digit a digit-led match may reach (the longest label + date, `date of
/// birth is September 10, 1975`, and an IBAN's letter groups fit well inside).
const DIGIT_PAD: usize = 64;
/// An email reaches at most 64 bytes left of its `@` (RFC 5321 local-part limit) and 255 right
/// (domain limit).
const AT_PAD: (usize, usize) = (64, 255);
/// The longest IPv6 text form is 45 bytes.
const COLON_PAD: usize = 48;

/// Merged byte ranges reaching `before` bytes left and `after` bytes right of every byte
/// for which `hit` holds, snapped to char boundaries. Gated patterns search only these: a
/// match cannot lie outside them, and look-around still sees the whole text.
fn windows(text: &str, hit: impl Fn(u8) -> bool, before: usize, after: usize) -> Vec<Range<usize>> {
    let b = text.as_bytes();
    let mut out: Vec<Range<usize>> = Vec::new();
    for (i, &c) in b.iter().enumerate() {
        if !hit(c) {
            continue;
        }
        let s = i.saturating_sub(before);
        let e = (i + 1 + after).min(b.len());
        match out.last_mut() {
            Some(last) if s <= last.end => last.end = last.end.max(e),
            _ => out.push(s..e),
        }
    }
    for w in &mut out {
        while !text.is_char_boundary(w.start) {
            w.start -= 1;
        }
        while !text.is_char_boundary(w.end) {
            w.end += 1;
        }
    }
    out
}

/// True when the range starts and ends at word edges (Unicode letters and digits).
fn whole_word(text: &str, r: &Range<usize>) -> bool {
    let before = text[..r.start].chars().next_back();
    let after = text[r.end..].chars().next();
    !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
        && !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
}

/// Keeps a non-overlapping subset: longest first, then priority, then leftmost; then sorts by
/// start. Deterministic for any input order.
fn resolve(detectors: &[Detector], found: &mut Vec<Found>) {
    if found.len() < 2 {
        return;
    }
    found.sort_by_key(|f| {
        (
            std::cmp::Reverse(f.end - f.start),
            detectors[f.detector].priority,
            f.start,
            f.detector,
        )
    });
    let mut kept: Vec<Found> = Vec::with_capacity(found.len());
    for f in found.drain(..) {
        if kept.iter().all(|k| f.end <= k.start || f.start >= k.end) {
            kept.push(f);
        }
    }
    kept.sort_by_key(|f| f.start);
    *found = kept;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Scanner {
        let mut spec = ScannerSpec::default();
        for b in BUILTINS {
            spec.add_builtin(b, InlineAction::Mask);
        }
        Scanner::build(&spec).unwrap()
    }

    /// `(text, [(label, matched substring)])`.
    type Case = (&'static str, &'static [(&'static str, &'static str)]);

    fn check(scanner: &Scanner, cases: &[Case]) {
        let mut out = Vec::new();
        for (text, want) in cases {
            scanner.find(text, &mut out);
            let got: Vec<(&str, &str)> = out
                .iter()
                .map(|f| (scanner.label(f.detector), &text[f.start..f.end]))
                .collect();
            assert_eq!(&got, want, "text: {text:?}");
        }
    }

    const POSITIVES: &[Case] = &[
        (
            "mail jane.doe+tag@example.co.uk now",
            &[("EMAIL", "jane.doe+tag@example.co.uk")],
        ),
        ("luis.gieß@web.de", &[("EMAIL", "luis.gieß@web.de")]),
        (
            "call +44 20 7946 0958 today",
            &[("PHONE", "+44 20 7946 0958")],
        ),
        ("call +49 (0)30 1234567.", &[("PHONE", "+49 (0)30 1234567")]),
        ("call (415) 555-2671 or", &[("PHONE", "(415) 555-2671")]),
        ("call 1 (415) 555-2671", &[("PHONE", "1 (415) 555-2671")]),
        ("call 415.555.2671", &[("PHONE", "415.555.2671")]),
        ("Tel 030 12345678", &[("PHONE", "030 12345678")]),
        ("Tel 020 7946 0958", &[("PHONE", "020 7946 0958")]),
        ("Tel 01 23 45 67 89", &[("PHONE", "01 23 45 67 89")]),
        (
            "card 4111 1111 1111 1111.",
            &[("CREDIT_CARD", "4111 1111 1111 1111")],
        ),
        (
            "card 4111-1111-1111-1111.",
            &[("CREDIT_CARD", "4111-1111-1111-1111")],
        ),
        (
            "card 378282246310005",
            &[("CREDIT_CARD", "378282246310005")],
        ),
        (
            "card 3782 822463 10005",
            &[("CREDIT_CARD", "3782 822463 10005")],
        ),
        (
            "IBAN GB82 WEST 1234 5698 7654 32, thanks",
            &[("IBAN", "GB82 WEST 1234 5698 7654 32")],
        ),
        (
            "IBAN DE89370400440532013000",
            &[("IBAN", "DE89370400440532013000")],
        ),
        ("SSN 123-45-6789", &[("US_SSN", "123-45-6789")]),
        ("SSN: 123456789", &[("US_SSN", "123456789")]),
        ("ip=192.168.1.20 ok", &[("IPV4", "192.168.1.20")]),
        (
            "ip=2001:db8::8a2e:370:7334 ok",
            &[("IPV6", "2001:db8::8a2e:370:7334")],
        ),
        (
            "[fe80::1ff:fe23:4567:890a]:443",
            &[("IPV6", "fe80::1ff:fe23:4567:890a")],
        ),
        (
            "t=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig_-123",
            &[("JWT", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig_-123")],
        ),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJB\n-----END RSA PRIVATE KEY-----!",
            &[(
                "PRIVATE_KEY",
                "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJB\n-----END RSA PRIVATE KEY-----",
            )],
        ),
        (
            "-----BEGIN PRIVATE KEY-----\nMIIBOgIBAAJB",
            &[("PRIVATE_KEY", "-----BEGIN PRIVATE KEY-----\nMIIBOgIBAAJB")],
        ),
        (
            "key AKIAIOSFODNN7EXAMPLE.",
            &[("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")],
        ),
        (
            "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n",
            &[(
                "AWS_SECRET_ACCESS_KEY",
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            )],
        ),
        (
            "ghp_0123456789abcdefghijABCDEFGHIJ012345",
            &[("GITHUB_TOKEN", "ghp_0123456789abcdefghijABCDEFGHIJ012345")],
        ),
        (
            "github_pat_11ABCDEFG0123456789_abcdefghijklmnop",
            &[(
                "GITHUB_TOKEN",
                "github_pat_11ABCDEFG0123456789_abcdefghijklmnop",
            )],
        ),
        (
            "sk-proj-abcdefghijklmnopqrstuvwxyz012345",
            &[("OPENAI_API_KEY", "sk-proj-abcdefghijklmnopqrstuvwxyz012345")],
        ),
        (
            "sk-ant-api03-abcdefghijklmnopqrstuvwxyz-_0123AA",
            &[(
                "ANTHROPIC_API_KEY",
                "sk-ant-api03-abcdefghijklmnopqrstuvwxyz-_0123AA",
            )],
        ),
        (
            "xoxb-1234567890-1234567890123-abcdefghijABCDEFGHIJ",
            &[(
                "SLACK_TOKEN",
                "xoxb-1234567890-1234567890123-abcdefghijABCDEFGHIJ",
            )],
        ),
        (
            "sk_live_abcdefghijklmnop0123",
            &[("STRIPE_SECRET_KEY", "sk_live_abcdefghijklmnop0123")],
        ),
        (
            "AIzaSyA-abcdefghijklmnopqrstuvwxyz01234",
            &[("GOOGLE_API_KEY", "AIzaSyA-abcdefghijklmnopqrstuvwxyz01234")],
        ),
        (
            "Authorization: Bearer abc123def456ghi789jkl",
            &[("BEARER_TOKEN", "abc123def456ghi789jkl")],
        ),
        (
            "I was born on July 4, 1976 in",
            &[("DATE_OF_BIRTH", "July 4, 1976")],
        ),
        ("dob=04/23/2002.", &[("DATE_OF_BIRTH", "04/23/2002")]),
    ];

    /// Things that look like PII to a naive pattern but are not.
    const HARD_NEGATIVES: &[&str] = &[
        "request id 3f2504e0-4f89-41d3-9a0c-0305e82c3301 failed",
        "order 258-5178128-6570704 and ORD-95606371 and INV4885166594",
        "order #508410165 shipped",
        "at 2024-01-01T07:22:41Z and 2020-10-26 08:16:54,538 and 2022-02-14T07:59:33.176+00:00",
        "epoch 1701220572",
        "ledger 4111111111111112 and 5718 0592 7771 5526",
        "version 2.32.10, 11.24.5-beta.6, v7.17.24, 8.3.5554.4412, 1.2.3.4.5",
        "commit 2943221ca2b64a4146753388b8a4f8cfc86f2b01",
        "sha256 e4266dbb276348bad8db72e780a6b9b6ba8d2c6e66afe0194c294aacf4877cb1",
        "IBAN DE89370400440532013001 is wrong", // fails mod 97
        "GB00 WEST 1234 5698 7654 32",          // fails mod 97
        "time 12:30:45 and mac 00:1a:2b:3c:4d:5e and std::fmt::Display",
        "SSN 000-12-3456 invalid, 666-12-3456 invalid",
        "the bearer of bad news arrived yesterday",
        "task-management-system-design",
        "price 1.234,56 EUR and 3.14159",
        "pk_live_abcdefghijklmnop0123",
        "0.0.0.1.2",
    ];

    #[test]
    fn builtin_positives() {
        check(&all(), POSITIVES);
    }

    #[test]
    fn builtin_hard_negatives() {
        let s = all();
        let mut out = Vec::new();
        for text in HARD_NEGATIVES {
            s.find(text, &mut out);
            let got: Vec<(&str, &str)> = out
                .iter()
                .map(|f| (s.label(f.detector), &text[f.start..f.end]))
                .collect();
            assert!(got.is_empty(), "{text:?} flagged {got:?}");
        }
    }

    #[test]
    fn overlaps_resolve_longest_then_priority() {
        // The JWT is longer than nothing else; the bearer token covers the same span and
        // loses on priority.
        let s = all();
        let mut out = Vec::new();
        let text = "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl0";
        s.find(text, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(s.label(out[0].detector), "JWT");
        // Anthropic beats OpenAI on the same span.
        let text = "sk-ant-api03-abcdefghijklmnopqrstuvwxyz";
        s.find(text, &mut out);
        assert_eq!(s.label(out[0].detector), "ANTHROPIC_API_KEY");
    }

    #[test]
    fn rejected_candidate_does_not_hide_a_later_match() {
        check(
            &all(),
            &[(
                "ref 12345 4111 1111 1111 1111",
                &[("CREDIT_CARD", "4111 1111 1111 1111")],
            )],
        );
    }

    #[test]
    fn prefilter_skips_plain_prose_but_not_triggers() {
        let mut spec = ScannerSpec::default();
        for b in BUILTINS {
            spec.add_builtin(b, InlineAction::Mask);
        }
        let p = Prefilter::build(&spec);
        assert!(!p.may_match("Please summarise the meeting notes: budget is fine."));
        assert!(p.may_match("room 4"));
        assert!(p.may_match("a@b"));
        assert!(p.may_match("dead::beef"));
        assert!(p.may_match("Bearer xyz"));
    }

    #[test]
    fn dictionary_is_whole_word_and_case_insensitive() {
        let mut spec = ScannerSpec::default();
        spec.detectors.push(Detector {
            label: "CUSTOMER".into(),
            action: InlineAction::Mask,
            priority: 100,
        });
        spec.dicts.push(DictSpec {
            detector: 0,
            words: vec!["Acme Corp".into(), "Initech".into()],
        });
        let s = Scanner::build(&spec).unwrap();
        check(
            &s,
            &[
                (
                    "met ACME corp and initech.",
                    &[("CUSTOMER", "ACME corp"), ("CUSTOMER", "initech")],
                ),
                ("Initechs and xInitech", &[]),
            ],
        );
    }

    #[test]
    fn user_regex_limits() {
        let mut spec = ScannerSpec::default();
        spec.detectors.push(Detector {
            label: "X".into(),
            action: InlineAction::Mask,
            priority: 100,
        });
        let mut p = PatternSpec {
            detector: 0,
            regex: "(a{1000}){1000}".into(),
            check: None,
            group: false,
            context: vec![],
            window: 0,
            user: true,
            gate: Gate::Always,
        };
        spec.patterns.push(p.clone());
        assert!(matches!(
            Scanner::build(&spec),
            Err(ScanBuildError::Pattern(0, _))
        ));
        p.regex = "a*".into();
        spec.patterns[0] = p;
        assert!(matches!(
            Scanner::build(&spec),
            Err(ScanBuildError::Pattern(0, _))
        ));
    }
}
