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
//!
//! Candidates go through their validator (Luhn, mod 97, ranges, edge checks), then overlaps
//! are resolved deterministically: the longest span wins, then the detector with the higher
//! priority (lower number), then the leftmost. [`Scanner::find_exhaustive`] runs every pattern
//! over the whole text; tests and a fuzz target check that the gated scan finds exactly the
//! same.
//!
//! Why not one leftmost-first `find_iter` over the set? Because a candidate that fails its
//! validator (a 16-digit number failing Luhn) would hide a valid, shorter match of another
//! detector starting at the same place, and because "longest wins" needs every candidate.
//!
//! ## Cost
//!
//! Linear in the text whatever the density of matches (veil#10): overlaps are resolved in
//! O(m log m); a rejected candidate is retried one character later only when it is short
//! (`RESTART_SPAN`); a PEM block's END line is found by substring search with a memo
//! (`Footer`), not by a lazy regex; a failed JWT attempt skips the rest of its base64url run
//! (`Pat::lead`). [`Scanner::find_within`] charges the work to a [`Meter`] and stops, with no
//! matches, when its budget runs out. The property test
//! `redact::tests::cost::work_per_byte_stays_flat_on_match_dense_text` and the `redact_dense`
//! fuzz target keep it so.
//!
//! Patterns use ASCII word boundaries (`(?-u:\b)`) so the lazy DFA never has to give up on
//! non-ASCII text; letters outside ASCII are matched explicitly where they matter (emails).

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use aho_corasick::AhoCorasick;
use regex_automata::meta;
use regex_automata::{Anchored, Input, MatchKind, PatternSet};

use super::budget::{Exceeded, Meter};
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

/// What every match of a built-in detector contains, for the prefilter. Each variant is a
/// *necessary* condition (see [`Windows`] and the literal pass in [`Scanner::find`]); the
/// test `gated_scan_equals_exhaustive_scan` checks it against an unfiltered scan.
#[derive(Clone, Copy, Debug)]
enum Trigger {
    /// A cluster of at least [`MIN_CLUSTER_DIGITS`] digits, or an IBAN's `[A-Z]{2}[0-9]{2}`.
    Digit,
    /// An `@`.
    At,
    /// A `:` followed by a hex digit or another `:`.
    Colon,
    /// Every match *starts* with one of these literals, or at most `.1` bytes before one.
    Literal(&'static [&'static str], usize),
}

/// One built-in detector: patterns, validator, and which part of a match to mask.
#[derive(Debug)]
pub(crate) struct Builtin {
    /// Name in rules files (`email`).
    pub key: &'static str,
    /// Label in masks and counts (`EMAIL`).
    pub label: &'static str,
    patterns: &'static [Pat],
    trigger: Trigger,
}

/// One pattern of a built-in detector.
#[derive(Debug)]
struct Pat {
    re: &'static str,
    check: Option<Check>,
    /// Mask capture group 1 instead of the whole match (context words stay readable).
    group: bool,
    /// A closing line the match extends to when one is reachable (PEM blocks).
    footer: Option<Footer>,
    /// The bytes of the run every match starts with, when an attempt may scan that run
    /// whole before failing (see [`Scanner::find_literals`]). Only for patterns where a
    /// failed attempt at `x` implies one at every later start in the run.
    lead: Option<fn(u8) -> bool>,
}

/// A closing line a match extends to: the first occurrence of `re` after the match that is
/// reachable through `body` bytes only. Found by substring search plus a memo, never by one
/// regex with a lazy body: that regex had to scan to the first non-body byte to learn that no
/// footer follows, from every header again (quadratic on prose full of headers, veil#10).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Footer {
    /// The footer's fixed first bytes (`-----END`).
    pub lit: &'static str,
    /// The whole footer, matched anchored where `lit` occurs.
    pub re: &'static str,
    /// Bytes the text between the match and the footer may consist of.
    pub body: fn(u8) -> bool,
}

const fn pat(re: &'static str, check: Check) -> Pat {
    Pat {
        re,
        check: Some(check),
        group: false,
        footer: None,
        lead: None,
    }
}

const fn grp(re: &'static str, check: Option<Check>) -> Pat {
    Pat {
        re,
        check,
        group: true,
        footer: None,
        lead: None,
    }
}

/// What a PEM body may hold before its END line: base64, RFC 1421 headers (`Proc-Type: 4,
/// ENCRYPTED`, `DEK-Info: AES-128-CBC,…`), line breaks, spaces (keys pasted on one line) and
/// `\` (a `\n` escaped inside a JSON string or a shell variable).
fn pem_body(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b.is_ascii_whitespace() || b"+/=:,.-\\".contains(&b)
}

/// Built-in detectors, in priority order (earlier wins a tie on length). Patterns follow the
/// formats' specifications (E.164, ISO 13616, ISO/IEC 7812, RFC 4291, RFC 7519, RFC 7468, the
/// vendors' documented token prefixes), not any corpus.
///
/// Secrets end where their alphabet ends (veil#10): each token pattern is greedy over the
/// format's alphabet, and its check ([`checksum::key`]) only asks that the token is not glued
/// to a letter or digit before it, nor to more of its own alphabet after it. Whatever else
/// follows (`/`, `=`, `+`, `?`, `&`, `#`, quotes, brackets, punctuation, space, newline) ends
/// the token and the token is masked. `rules/README.md` lists each format's alphabet.
pub(crate) const BUILTINS: &[Builtin] = &[
    Builtin {
        key: "private_key",
        label: "PRIVATE_KEY",
        // RFC 7468 PEM (and PGP armor): the header, then up to the END line when one follows
        // (the footer), else to the end of the base64 body, so a truncated key never leaks.
        patterns: &[Pat {
            re: r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----[A-Za-z0-9+/=\r\n\\]*",
            check: None,
            group: false,
            footer: Some(Footer {
                lit: "-----END",
                re: r"-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----",
                body: pem_body,
            }),
            lead: None,
        }],
        trigger: Trigger::Literal(&["-----BEGIN"], 0),
    },
    Builtin {
        key: "jwt",
        label: "JWT",
        // RFC 7519 compact JWS: base64url(header) . base64url(payload) . signature; the
        // header is a JSON object, so it starts with `eyJ` (`{"`). Segments are unpadded
        // (RFC 7515 §2), so the token ends where base64url ends: a `.` or `=` after the
        // signature is the text's, not the token's.
        // A failed attempt can scan a long header: the header run is its lead (an `eyJ` later
        // in the same run has the same `.`, or lack of one, after it).
        patterns: &[Pat {
            re: r"eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*",
            check: Some(checksum::key::<{ checksum::B64URL }, { checksum::ANY_LEN }>),
            group: false,
            footer: None,
            lead: Some(checksum::in_alphabet::<{ checksum::B64URL }>),
        }],
        trigger: Trigger::Literal(&["eyJ"], 0),
    },
    Builtin {
        key: "anthropic_api_key",
        label: "ANTHROPIC_API_KEY",
        patterns: &[pat(
            r"sk-ant-[A-Za-z0-9_\-]{20,}",
            checksum::key::<{ checksum::B64URL }, { checksum::ANY_LEN }>,
        )],
        trigger: Trigger::Literal(&["sk-ant-"], 0),
    },
    Builtin {
        key: "openai_api_key",
        label: "OPENAI_API_KEY",
        // `sk-`, `sk-proj-`, `sk-svcacct-`, `sk-admin-` then a long token.
        patterns: &[pat(
            r"sk-[A-Za-z0-9_\-]{20,}",
            checksum::key::<{ checksum::B64URL }, { checksum::ANY_LEN }>,
        )],
        trigger: Trigger::Literal(&["sk-"], 0),
    },
    Builtin {
        key: "github_token",
        label: "GITHUB_TOKEN",
        patterns: &[
            pat(
                r"gh[pousr]_[A-Za-z0-9]{36,}",
                checksum::key::<{ checksum::ALNUM }, { 4 + 255 }>,
            ),
            pat(
                r"github_pat_[A-Za-z0-9_]{22,}",
                checksum::key::<{ checksum::ALNUM_UNDERSCORE }, { 11 + 255 }>,
            ),
        ],
        trigger: Trigger::Literal(&["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"], 0),
    },
    Builtin {
        key: "slack_token",
        label: "SLACK_TOKEN",
        patterns: &[
            pat(
                r"xox[abposer]-[A-Za-z0-9\-]{10,}",
                checksum::key::<{ checksum::ALNUM_DASH }, { 5 + 250 }>,
            ),
            pat(
                r"xapp-[0-9]-[A-Za-z0-9\-]{10,}",
                checksum::key::<{ checksum::ALNUM_DASH }, { 7 + 250 }>,
            ),
            pat(
                r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9/_\-]{20,}",
                checksum::key::<{ checksum::URL_PATH }, { checksum::ANY_LEN }>,
            ),
        ],
        trigger: Trigger::Literal(&["xox", "xapp-", "https://hooks.slack.com"], 0),
    },
    Builtin {
        key: "stripe_secret_key",
        label: "STRIPE_SECRET_KEY",
        // Secret and restricted keys, live or test, and webhook signing secrets (Stripe's
        // are alphanumeric; Standard Webhooks' `whsec_` secrets are base64, padding included).
        // Publishable keys (`pk_`) are public by design and left alone.
        patterns: &[
            pat(
                r"[sr]k_(?:live|test)_[A-Za-z0-9]{16,}",
                checksum::key::<{ checksum::ALNUM }, { 8 + 247 }>,
            ),
            pat(
                r"whsec_[A-Za-z0-9+/]{24,}={0,2}",
                checksum::key::<{ checksum::B64 }, { checksum::ANY_LEN }>,
            ),
        ],
        trigger: Trigger::Literal(
            &[
                // `sk_`, not `sk_live_` and `sk_test_`: fewer literals keep the SIMD search
                // fast (3x here, measured with `cargo bench --bench redact`).
                "sk_", "rk_", "whsec_",
            ],
            0,
        ),
    },
    Builtin {
        key: "google_api_key",
        label: "GOOGLE_API_KEY",
        patterns: &[pat(
            r"AIza[0-9A-Za-z_\-]{35,}",
            checksum::key::<{ checksum::B64URL }, { 4 + 35 }>,
        )],
        trigger: Trigger::Literal(&["AIza"], 0),
    },
    Builtin {
        key: "aws_access_key_id",
        label: "AWS_ACCESS_KEY_ID",
        // Long-term (AKIA) and temporary (ASIA) access key ids, plus the bearer/CA prefixes.
        patterns: &[pat(
            r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16,}",
            checksum::key::<{ checksum::UPPER_DIGIT }, { 4 + 16 }>,
        )],
        trigger: Trigger::Literal(&["AKIA", "ASIA", "ABIA", "ACCA"], 0),
    },
    Builtin {
        key: "aws_secret_access_key",
        label: "AWS_SECRET_ACCESS_KEY",
        // 40 base64 characters look like any hash, so only with a label in front
        // (`AWS_SECRET_ACCESS_KEY=`, `"SecretAccessKey": "`, `aws_secret_key: `). `secret` in
        // the three casings the literal pass looks for, so the pattern and its gate agree.
        // The key's alphabet holds `/` and `+`, so nothing after 40 of them tells where it
        // ends: after a label the whole run is masked (a longer run is still secret).
        patterns: &[grp(
            r"(?:(?i:aws).?(?:secret|Secret|SECRET).?(?i:access.?)?(?i:key)|(?:secret|Secret|SECRET).?(?i:access.?key))[^A-Za-z0-9/+\n]{1,16}([A-Za-z0-9/+]{40,})",
            None,
        )],
        trigger: Trigger::Literal(&["secret", "Secret", "SECRET"], 7),
    },
    Builtin {
        key: "bearer_token",
        label: "BEARER_TOKEN",
        // RFC 6750 `Bearer <b64token>`; the word stays, the token goes. The three casings the
        // literal pass looks for (case-insensitive SIMD search is 3x slower).
        patterns: &[grp(
            r"(?-u:\b)(?:bearer|Bearer|BEARER)[ \t]+([A-Za-z0-9._~+/\-]{16,}=*)",
            Some(checksum::token),
        )],
        trigger: Trigger::Literal(&["bearer", "Bearer", "BEARER"], 0),
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
            footer: None,
            lead: None,
        }],
        trigger: Trigger::At,
    },
    Builtin {
        key: "iban",
        label: "IBAN",
        // ISO 13616: country, 2 check digits, BBAN; printed in groups of 4.
        patterns: &[pat(
            r"(?-u:\b)[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,31}",
            checksum::iban,
        )],
        trigger: Trigger::Digit,
    },
    Builtin {
        key: "credit_card",
        label: "CREDIT_CARD",
        // ISO/IEC 7812 PAN, 12-19 digits, optionally grouped by spaces or dashes.
        patterns: &[pat(
            r"(?-u:\b)(?:[2-6][0-9]|06)(?:[ \-]?[0-9]){10,17}(?-u:\b)",
            checksum::card,
        )],
        trigger: Trigger::Digit,
    },
    Builtin {
        key: "us_ssn",
        label: "US_SSN",
        patterns: &[
            pat(r"(?-u:\b)[0-9]{3}-[0-9]{2}-[0-9]{4}(?-u:\b)", checksum::ssn),
            pat(r"(?-u:\b)[0-9]{3} [0-9]{2} [0-9]{4}(?-u:\b)", checksum::ssn),
            // Nine bare digits only after an SSN label (ASCII punctuation in between, so the
            // label is never more than 38 bytes before the digits).
            grp(
                r"(?i:(?-u:\b)(?:ssn|social security(?: number| no\.?)?)(?-u:\b))[\x00-\x09\x0B-\x2F\x3A-\x40\x5B-\x60\x7B-\x7F]{0,6}(?:(?:is|was|number|no\.?|:|#)[\x00-\x09\x0B-\x2F\x3A-\x40\x5B-\x60\x7B-\x7F]{0,4})?([0-9]{9})(?-u:\b)",
                Some(checksum::ssn),
            ),
        ],
        trigger: Trigger::Digit,
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
        trigger: Trigger::Digit,
    },
    Builtin {
        key: "ipv6",
        label: "IPV6",
        // RFC 4291 text forms (full, compressed, IPv4-embedded); the parser decides.
        patterns: &[pat(
            r"(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9A-Fa-f]{1,4})?",
            checksum::ipv6,
        )],
        trigger: Trigger::Colon,
    },
    Builtin {
        key: "ipv4",
        label: "IPV4",
        patterns: &[pat(
            r"(?-u:\b)(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(?-u:\b)",
            checksum::ipv4,
        )],
        trigger: Trigger::Digit,
    },
    Builtin {
        key: "date_of_birth",
        label: "DATE_OF_BIRTH",
        // A date only counts as a birth date right after a label (born, DOB, date of birth).
        patterns: &[grp(
            r"(?i:(?-u:\b)(?:born(?: on)?|d\.?o\.?b\.?|date of birth|birth ?date|birthday|geboren(?: am)?|geburtsdatum)(?-u:\b))(?:[ \t]{0,4}(?:is|was|:|=))?[ \t]{0,4}((?:[0-9]{1,2}[./\-][0-9]{1,2}[./\-](?:19|20)?[0-9]{2})|(?:(?:19|20)[0-9]{2}-[0-9]{2}-[0-9]{2})|(?:(?i:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]{0,7}\.? [0-9]{1,2}(?:st|nd|rd|th)?,? (?:19|20)[0-9]{2})|(?:[0-9]{1,2}(?:st|nd|rd|th)?\.? (?i:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec|m\x{e4}r)[a-z]{0,7}\.?,? (?:19|20)[0-9]{2}))(?-u:\b)",
            None,
        )],
        trigger: Trigger::Digit,
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
    /// Which prefilter condition the pattern runs under.
    pub gate: Gate,
    /// A closing line the match extends to (built-ins only).
    pub footer: Option<Footer>,
    /// The leading run a failed attempt may have scanned (built-ins only, see [`Pat`]).
    pub lead: Option<fn(u8) -> bool>,
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
    fn of(t: Trigger) -> Gate {
        match t {
            Trigger::Digit => Gate::Digit,
            Trigger::At => Gate::At,
            Trigger::Colon => Gate::Colon,
            Trigger::Literal(words, back) => Gate::Literal(words, back),
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
                gate: Gate::of(b.trigger),
                footer: p.footer,
                lead: p.lead,
            });
        }
        detector
    }
}

/// A regex pattern ready to locate spans.
#[derive(Debug)]
struct Pattern {
    detector: usize,
    re: meta::Regex,
    check: Option<Check>,
    group: bool,
    context: Vec<String>,
    window: usize,
    /// The compiled footer regex and the body bytes (see [`Footer`]).
    footer: Option<(Footer, meta::Regex)>,
    /// See [`Pat::lead`].
    lead: Option<fn(u8) -> bool>,
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
    patterns: Vec<Pattern>,
    groups: Vec<Group>,
    literals: Option<Literals>,
    dict: Option<(AhoCorasick, Vec<usize>)>,
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

/// The literal-gated patterns: one Aho-Corasick pass finds every literal; the patterns that
/// start with it are tried there, anchored.
#[derive(Debug)]
struct Literals {
    ac: AhoCorasick,
    /// For each literal: `(pattern index, back)` to try where it occurs.
    owners: Vec<Vec<(usize, usize)>>,
}

/// Which windows a scan must compute.
#[derive(Clone, Copy, Debug, Default)]
struct Want {
    digit: bool,
    at: bool,
    colon: bool,
}

/// Builds the literal pass. A literal that extends a shorter one (`sk-ant-` after `sk-`) is
/// folded into it: leftmost-first search reports one literal per position, so both detectors
/// must hang off the one that is found.
fn build_literals(spec: &ScannerSpec) -> Result<Option<Literals>, ScanBuildError> {
    let mut pairs: Vec<(&'static str, usize, usize)> = Vec::new();
    for (i, p) in spec.patterns.iter().enumerate() {
        if let Gate::Literal(words, back) = p.gate {
            pairs.extend(words.iter().map(|w| (*w, i, back)));
        }
    }
    if pairs.is_empty() {
        return Ok(None);
    }
    let words: Vec<&str> = {
        // First-seen order, i.e. detector priority: Teddy assigns buckets by pattern index,
        // and this order measured 3x faster than sorted (fewer false candidates).
        let mut w: Vec<&str> = Vec::new();
        for (lit, ..) in &pairs {
            if !w.contains(lit) {
                w.push(lit);
            }
        }
        // Keep only literals no other literal is a proper prefix of.
        w.iter()
            .copied()
            .filter(|x| !w.iter().any(|y| y.len() < x.len() && x.starts_with(y)))
            .collect()
    };
    let mut owners: Vec<Vec<(usize, usize)>> = vec![Vec::new(); words.len()];
    for (lit, pattern, back) in pairs {
        let at = words
            .iter()
            .position(|w| lit.starts_with(w))
            .expect("every literal has a kept prefix");
        if !owners[at].contains(&(pattern, back)) {
            owners[at].push((pattern, back));
        }
    }
    // Case-sensitive on purpose: it keeps the SIMD (Teddy) searcher, 3x faster than
    // ASCII-case-insensitive search here. Literals list the casings that occur.
    // Leftmost-first (not standard) semantics: only those use the packed Teddy searcher.
    let ac = AhoCorasick::builder()
        .match_kind(aho_corasick::MatchKind::LeftmostFirst)
        .build(&words)
        .map_err(|e| ScanBuildError::Set(e.to_string()))?;
    Ok(Some(Literals { ac, owners }))
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
            want,
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
        let r = self.find_gated(text, out, &mut Ctx::new(meter));
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
        if let Some(lits) = &self.literals {
            self.find_literals(lits, text, out, cx)?;
        }
        if !self.groups.is_empty() {
            let w = Windows::of(text, self.want);
            cx.meter.work(text.len())?;
            let full = 0..text.len();
            let whole = std::slice::from_ref(&full);
            for g in &self.groups {
                let ranges: &[Range<usize>] = match g.gate {
                    Gate::Digit => &w.digit,
                    Gate::At => &w.at,
                    Gate::Colon => &w.colon,
                    Gate::Always | Gate::Literal(..) => whole,
                };
                self.scan_group(g, text, ranges, out, cx)?;
            }
        }
        resolve(&self.detectors, out, cx.meter)
    }

    /// What [`Scanner::find`] would return with no prefilter at all: every pattern searched
    /// over the whole text. Slow; the reference the gated scan is tested (and fuzzed) against.
    #[doc(hidden)]
    pub fn find_exhaustive(&self, text: &str, out: &mut Vec<Found>) {
        out.clear();
        if text.is_empty() {
            return;
        }
        let mut meter = Meter::unlimited();
        let mut cx = Ctx::new(&mut meter);
        // Unlimited: these cannot fail.
        let _ = self.find_dict(text, out, &mut cx);
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

    /// The literal pass: one Aho-Corasick search finds every occurrence of every literal
    /// (overlapping ones too: it resumes one byte after each hit), and the patterns owning
    /// that literal are tried there, anchored, and up to `back` bytes before it. No regex runs
    /// over the text. After a candidate, a pattern is not tried again before where
    /// [`Scanner::locate`] would resume ([`resume_at`]), so the gated scan meets exactly the
    /// candidates of an exhaustive `locate` over the whole text.
    ///
    /// Cost stays linear because an anchored attempt that fails is short: a token pattern
    /// (prefix, then a run of its alphabet) fails only when the run is shorter than its
    /// minimum, a label pattern within its bounded label. The exception is a pattern whose
    /// attempt can run on before failing: a JWT whose header never meets its `.`. Such a
    /// pattern names its leading run ([`Pat::lead`]); a failure there means every start later
    /// in the same run fails too (the same run, then the same text after it), so the pass
    /// skips the run instead of rescanning it from every `eyJ` inside (veil#10).
    fn find_literals(
        &self,
        lits: &Literals,
        text: &str,
        out: &mut Vec<Found>,
        cx: &mut Ctx<'_>,
    ) -> Result<(), Exceeded> {
        // Per pattern: where it may start again.
        let mut resume: Vec<usize> = Vec::new();
        let mut pos = 0;
        while pos < text.len() {
            let span = aho_corasick::Input::new(text).span(pos..text.len());
            let Some(m) = lits.ac.find(span) else {
                cx.meter.work(text.len() - pos)?;
                break;
            };
            cx.meter.work(m.start() + 1 - pos)?;
            if resume.is_empty() {
                resume.resize(self.patterns.len(), 0);
            }
            for &(pi, back) in &lits.owners[m.pattern().as_usize()] {
                let p = &self.patterns[pi];
                for x in m.start().saturating_sub(back)..=m.start() {
                    if x < resume[pi] || !text.is_char_boundary(x) {
                        continue;
                    }
                    let input = Input::new(text).range(x..).anchored(Anchored::Yes);
                    match self.candidate(p, text, &input, cx)? {
                        Some((whole, r)) => {
                            let accepted = self.accept(p, text, r, out, cx)?;
                            resume[pi] = resume_at(text, &whole, accepted);
                        }
                        None => match p.lead {
                            Some(lead) => {
                                let run = text.as_bytes()[x..].iter().take_while(|&&b| lead(b));
                                let end = x + run.count();
                                cx.meter.work(end - x + 1)?;
                                resume[pi] = end.max(x + 1);
                            }
                            None => cx.meter.work(m.len())?,
                        },
                    }
                }
            }
            pos = m.start() + 1;
        }
        Ok(())
    }

    /// Runs a gate's patterns over its windows: the set says which occur in a window, then
    /// only those are located in it.
    fn scan_group(
        &self,
        g: &Group,
        text: &str,
        ranges: &[Range<usize>],
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
        let mut which = PatternSet::new(set.pattern_len());
        for w in ranges {
            which.clear();
            cx.meter.work(w.len())?;
            set.which_overlapping_matches(&Input::new(text).range(w.clone()), &mut which);
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
            let mut caps = p.re.create_captures();
            p.re.search_captures(input, &mut caps);
            caps.get_match().map(|m| {
                let m = m.range();
                let r = caps.get_group(1).map_or(m.clone(), |g| g.range());
                (m, r)
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
    ) -> Result<bool, Exceeded> {
        cx.meter.work(r.len() + 1)?;
        let ok = (r.start < r.end)
            .then_some(r)
            .and_then(|r| match p.check {
                Some(check) => check(text, r),
                None => Some(r),
            })
            .filter(|r| r.start < r.end && self.context_ok(p, text, r));
        Ok(match ok {
            Some(r) => {
                out.push(Found {
                    start: r.start,
                    end: r.end,
                    detector: p.detector,
                });
                true
            }
            None => false,
        })
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
            let input = Input::new(text).range(at..w.end);
            let Some((m, r)) = self.candidate(p, text, &input, cx)? else {
                break;
            };
            let accepted = self.accept(p, text, r, out, cx)?;
            at = resume_at(text, &m, accepted);
        }
        Ok(())
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

/// Per-scan state: the meter, and the footer memo of the pattern that has one.
struct Ctx<'m> {
    meter: &'m mut Meter,
    footer: FooterMemo,
}

impl<'m> Ctx<'m> {
    fn new(meter: &'m mut Meter) -> Ctx<'m> {
        Ctx {
            meter,
            footer: FooterMemo::default(),
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

/// Where a search resumes after candidate `m`: its end if accepted; one character later if
/// rejected and short, so an overlapping valid match is still found; its end if rejected and
/// longer than [`RESTART_SPAN`].
fn resume_at(text: &str, m: &Range<usize>, accepted: bool) -> usize {
    let mut at = if accepted || m.len() > RESTART_SPAN {
        m.end.max(m.start + 1)
    } else {
        m.start + 1
    };
    while at < text.len() && !text.is_char_boundary(at) {
        at += 1;
    }
    at
}

/// What the footer search learnt, valid for later queries that start inside it (queries come
/// in increasing order, so each byte is looked at about once per scan).
#[derive(Debug, Default)]
struct FooterMemo {
    /// `(from, dead)`: the first byte at or after `from` that a body cannot hold is `dead`.
    dead: Option<(usize, usize)>,
    /// `(from, footer)`: the first footer (start, end) at or after `from`.
    next: Option<(usize, Option<(usize, usize)>)>,
}

/// The end of the first footer after `from` that is reachable through body bytes only.
fn footer_end(
    f: &Footer,
    re: &meta::Regex,
    text: &str,
    from: usize,
    cx: &mut Ctx<'_>,
) -> Result<Option<usize>, Exceeded> {
    let memo = &mut cx.footer;
    let dead = match memo.dead {
        Some((a, d)) if a <= from && from <= d => d,
        _ => {
            let d = text.as_bytes()[from..]
                .iter()
                .position(|&b| !(f.body)(b))
                .map_or(text.len(), |i| from + i);
            cx.meter.work(d - from + 1)?;
            memo.dead = Some((from, d));
            d
        }
    };
    let next = match memo.next {
        Some((a, n)) if a <= from && n.is_none_or(|(s, _)| from <= s) => n,
        _ => {
            let mut at = from;
            let mut found = None;
            while let Some(i) = text[at..].find(f.lit) {
                let s = at + i;
                cx.meter.work(i + f.lit.len())?;
                if let Some(m) = re.search(&Input::new(text).range(s..).anchored(Anchored::Yes)) {
                    cx.meter.work(m.len())?;
                    found = Some((s, m.end()));
                    break;
                }
                at = s + 1;
            }
            if found.is_none() {
                cx.meter.work(text.len() - at + 1)?;
            }
            memo.next = Some((from, found));
            found
        }
    };
    // The footer's own bytes are body bytes, so a footer starting before `dead` ends by it.
    Ok(next.filter(|(s, _)| *s < dead).map(|(_, e)| e))
}

/// Fewest digits in one cluster (digit runs joined by at most [`MAX_CLUSTER_GAP`] of
/// `` .-/()``) that a digit-gated match can have: IPv4 `1.2.3.4`, a national phone `01 23`, a
/// date `1/2/90` or a year all have four; cards, SSNs and NANP numbers more. Every separator a
/// digit pattern allows between two digits fits in such a gap (`) (` in `+44 (0) (20)`).
/// The exception is an IBAN (`GB82 WEST …`), which opens its own window at `[A-Z]{2}[0-9]{2}`.
const MIN_CLUSTER_DIGITS: usize = 4;
/// Longest run of separators inside a digit cluster.
const MAX_CLUSTER_GAP: usize = 3;
/// How far left of its qualifying cluster a digit-gated match may start. The longest label and
/// words before the digits are 44 bytes (`date of birth    was    september. 10th, 1975`:
/// label 13, spaces and verb 11, month and day 20) and 38 for `social security number: no. `;
/// the patterns bound their spaces and punctuation so this holds.
const DIGIT_LEFT: usize = 48;
/// How far right of its cluster a digit-gated match may end (a `)`, a word edge).
const DIGIT_RIGHT: usize = 16;
/// An IBAN match is at most 66 bytes from its first letter (`[A-Z]{2}[0-9]{2}` and 31
/// characters each after an optional space).
const IBAN_REACH: usize = 72;
/// The longest IPv6 text form is 45 bytes.
const COLON_PAD: usize = 48;

/// The ranges of a text where gated patterns can match, found in one pass over its bytes.
/// Each chunk of 32 bytes is reduced to a bit mask of its trigger bytes (digits, `:`, `@`) in
/// a loop the compiler vectorizes; chunks of prose give 0 and are skipped whole.
#[derive(Debug, Default)]
struct Windows {
    digit: Vec<Range<usize>>,
    at: Vec<Range<usize>>,
    colon: Vec<Range<usize>>,
}

impl Windows {
    fn of(text: &str, want: Want) -> Windows {
        let b = text.as_bytes();
        let n = b.len();
        let mut w = Windows::default();
        let mut i = 0;
        while i < n {
            let end = (i + 32).min(n);
            let mut mask = triggers(&b[i..end]);
            let mut next = end;
            while mask != 0 {
                let k = i + mask.trailing_zeros() as usize;
                let resume = w.visit(b, k, want);
                if resume >= end {
                    next = resume;
                    break;
                }
                mask &= u32::MAX << (resume - i);
            }
            i = next;
        }
        for v in [&mut w.digit, &mut w.at, &mut w.colon] {
            merge(text, v);
        }
        w
    }

    /// Handles the trigger byte at `k`; returns where the scan resumes.
    fn visit(&mut self, b: &[u8], k: usize, want: Want) -> usize {
        let n = b.len();
        match b[k] {
            b'0'..=b'9' => {
                let end = cluster_end(b, k, want.digit.then_some(&mut self.digit));
                if want.digit
                    && k >= 2
                    && b[k - 1].is_ascii_uppercase()
                    && b[k - 2].is_ascii_uppercase()
                    && b.get(k + 1).is_some_and(u8::is_ascii_digit)
                {
                    self.digit.push(k - 2..(k - 2 + IBAN_REACH).min(n));
                }
                end
            }
            b'@' if want.at => {
                // The email pattern is unbounded on both sides: the window is the run of
                // address characters around the `@`, however long.
                let local =
                    |c: &&u8| c.is_ascii_alphanumeric() || b"._%+'-".contains(c) || **c >= 0x80;
                let domain =
                    |c: &&u8| c.is_ascii_alphanumeric() || b".-".contains(c) || **c >= 0x80;
                let s = k - b[..k].iter().rev().take_while(local).count();
                let e = k + 1 + b[k + 1..].iter().take_while(domain).count();
                self.at.push(s..e);
                k + 1
            }
            b':' if want.colon
                && b.get(k + 1)
                    .is_some_and(|c| *c == b':' || c.is_ascii_hexdigit()) =>
            {
                self.colon
                    .push(k.saturating_sub(COLON_PAD)..(k + 1 + COLON_PAD).min(n));
                k + 1
            }
            _ => k + 1,
        }
    }
}

/// Bit `k` set when byte `k` of the chunk (at most 32 bytes) is a digit, `:` (0x3A, right
/// after `9`) or `@`. Most chunks of prose have none: a loop the compiler vectorizes says so
/// first; only the others pay for the bit mask (SWAR, 8 bytes at a time).
fn triggers(chunk: &[u8]) -> u32 {
    let mut any = false;
    for &c in chunk {
        any |= (c.wrapping_sub(b'0') < 11) | (c == b'@');
    }
    if !any {
        return 0;
    }
    let mut m = 0u32;
    for (k, part) in chunk.chunks(8).enumerate() {
        let mut word = [0u8; 8];
        word[..part.len()].copy_from_slice(part);
        m |= u32::from(swar_triggers(u64::from_le_bytes(word))) << (8 * k);
    }
    m
}

/// [`triggers`] for 8 bytes: bit `k` of the result for byte `k` of `x` (little endian).
fn swar_triggers(x: u64) -> u8 {
    const LO: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const HI: u64 = 0x8080_8080_8080_8080;
    const fn splat(b: u8) -> u64 {
        u64::from_ne_bytes([b; 8])
    }
    // High bits cleared first, so no per-byte addition below carries into its neighbour.
    let y = x & LO;
    let ge_0 = y + splat(0x80 - b'0'); // high bit set when byte >= '0'
    let ge_semi = y + splat(0x80 - b';'); // ... when byte >= ';'
    let digit_or_colon = ge_0 & !ge_semi;
    let z = y ^ splat(b'@');
    let at = !((z + LO) | z); // high bit set when the byte is '@'
    let hits = (digit_or_colon | at) & !x & HI;
    // Gather the eight high bits into one byte (the multiply moves byte i's bit to bit 56 + i
    // without collisions).
    ((hits >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56) as u8
}

/// End of the digit cluster starting at `start`; pushes its window into `out` when it has
/// enough digits.
fn cluster_end(b: &[u8], start: usize, out: Option<&mut Vec<Range<usize>>>) -> usize {
    let n = b.len();
    let mut j = start;
    let mut digits = 0;
    loop {
        while j < n && b[j].is_ascii_digit() {
            digits += 1;
            j += 1;
        }
        let mut g = j;
        while g < n
            && g - j < MAX_CLUSTER_GAP
            && matches!(b[g], b' ' | b'.' | b'-' | b'/' | b'(' | b')')
        {
            g += 1;
        }
        if g > j && b.get(g).is_some_and(u8::is_ascii_digit) {
            j = g;
        } else {
            break;
        }
    }
    if let Some(out) = out
        && digits >= MIN_CLUSTER_DIGITS
    {
        out.push(start.saturating_sub(DIGIT_LEFT)..(j + DIGIT_RIGHT).min(n));
    }
    j
}

/// Sorts and merges ranges, snapped outwards to char boundaries.
fn merge(text: &str, v: &mut Vec<Range<usize>>) {
    if v.is_empty() {
        return;
    }
    v.sort_unstable_by_key(|r| r.start);
    let mut out: Vec<Range<usize>> = Vec::with_capacity(v.len());
    for r in v.drain(..) {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
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
    *v = out;
}

/// True when the range starts and ends at word edges (Unicode letters and digits).
fn whole_word(text: &str, r: &Range<usize>) -> bool {
    let before = text[..r.start].chars().next_back();
    let after = text[r.end..].chars().next();
    !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
        && !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
}

/// Up to this many candidates, [`resolve`] compares each with the kept ones directly.
const SMALL_RESOLVE: usize = 32;

/// Keeps a non-overlapping subset: longest first, then priority, then leftmost; then sorts by
/// start. Deterministic for any input order.
///
/// O(m log m): the kept matches are disjoint, so among those starting before a candidate's
/// end only the last one can overlap it, and an ordered map finds that one. The first version
/// compared each candidate with every kept match: quadratic in the number of matches, seconds
/// for a 4 MB prompt of repeated email addresses (veil#10).
fn resolve(
    detectors: &[Detector],
    found: &mut Vec<Found>,
    meter: &mut Meter,
) -> Result<(), Exceeded> {
    let m = found.len();
    if m < 2 {
        return Ok(());
    }
    // A sort and m probes of a map holding at most m entries: m·log2(m) each.
    let log = (usize::BITS - m.leading_zeros()) as usize;
    meter.work(2 * m * log)?;
    found.sort_unstable_by_key(|f| {
        (
            std::cmp::Reverse(f.end - f.start),
            detectors[f.detector].priority,
            f.start,
            f.detector,
        )
    });
    if m <= SMALL_RESOLVE {
        // Few matches (the common case: a chat message holds a handful): comparing with each
        // kept one costs at most SMALL_RESOLVE² comparisons and allocates nothing.
        let mut kept = 0;
        for i in 0..m {
            let f = found[i];
            if found[..kept]
                .iter()
                .all(|k| f.end <= k.start || f.start >= k.end)
            {
                found[kept] = f;
                kept += 1;
            }
        }
        found.truncate(kept);
        found.sort_unstable_by_key(|f| f.start);
        return Ok(());
    }
    // start -> (end, detector) of the kept matches.
    let mut kept: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
    for f in found.drain(..) {
        let overlaps = kept
            .range(..f.end)
            .next_back()
            .is_some_and(|(_, &(end, _))| end > f.start);
        if !overlaps {
            kept.insert(f.start, (f.end, f.detector));
        }
    }
    found.extend(kept.into_iter().map(|(start, (end, detector))| Found {
        start,
        end,
        detector,
    }));
    Ok(())
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
    fn windows_open_only_at_triggers() {
        let all = Want {
            digit: true,
            at: true,
            colon: true,
        };
        let w = |t: &str| Windows::of(t, all);
        let prose = "Please summarise the meeting notes: budget is fine, see step 3 of 5.";
        let o = w(prose);
        assert!(
            o.digit.is_empty() && o.at.is_empty() && o.colon.is_empty(),
            "{o:?}"
        );
        // Four digits in one cluster, separators included.
        assert_eq!(w("room 4711").digit, vec![0..9]);
        assert_eq!(w("x 1.2.3.4").digit, vec![0..9]);
        assert!(w("call (415) 555").digit.len() == 1);
        assert!(w("v 1.2 and 3.4").digit.is_empty());
        // An IBAN prefix opens a window even with few digits.
        assert_eq!(w("GB82 WEST").digit, vec![0..9]);
        assert!(w("xy82").digit.is_empty());
        assert_eq!(w("a@b").at, vec![0..3]);
        assert_eq!(w("dead::beef").colon, vec![0..10]);
        assert!(w("Note: see").colon.is_empty());
        // Only wanted gates are computed.
        let o = Windows::of("a@b 4711", Want::default());
        assert!(o.digit.is_empty() && o.at.is_empty());
        // Windows are snapped to char boundaries.
        let t = format!("{}4711", "é".repeat(40));
        let o = w(&t);
        assert!(t.is_char_boundary(o.digit[0].start) && o.digit[0].end == t.len());
    }

    /// Pieces the differential test glues together: values of every detector, their labels,
    /// separators and digits in odd places, prose, non-ASCII.
    const PIECES: &[&str] = &[
        "jane.doe@example.com",
        "+44 20 7946 0958",
        "+49 (0)30 1234567",
        "(415) 555-2671",
        "1 (415) 555-2671",
        "030 12345678",
        "01 23 45 67 89",
        "4111 1111 1111 1111",
        "378282246310005",
        "GB82 WEST 1234 5698 7654 32",
        "DE89370400440532013000",
        "123-45-6789",
        "SSN: ",
        "social security number is ",
        "192.168.1.20",
        "1.2.3.4",
        "2001:db8::8a2e:370:7334",
        "fe80::1",
        "date of birth: ",
        "born on ",
        "DOB ",
        "September 10th, 1975",
        "10 Sep 1975",
        "12/03/1990",
        "1975-09-10",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig",
        "sk-ant-api03-abcdefghijklmnopqrstuvwxyz",
        "sk-proj-abcdefghijklmnopqrstuvwxyz012345",
        "ghp_0123456789abcdefghijABCDEFGHIJ012345",
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnop",
        "xoxb-1234567890-abcdefghij",
        "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXXXXXXXXXX",
        "sk_live_abcdefghijklmnop0123",
        "whsec_abcdefghijklmnopqrstuvwxyz01",
        "AIzaSyA-abcdefghijklmnopqrstuvwxyz0123",
        "AKIAIOSFODNN7EXAMPLE",
        "aws_secret_access_key=",
        "AWS secret key: ",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "Bearer ",
        "BEarer ",
        "bearer abc123def456ghi789jkl",
        "sEcReT_access_key=",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJB",
        "\n-----END RSA PRIVATE KEY-----",
        "the",
        "customer",
        "invoice",
        "version 3.1",
        "step 2",
        " ",
        " ",
        " ",
        "-",
        ".",
        "/",
        "(",
        ")",
        "+",
        ":",
        "::",
        "@",
        "0",
        "7",
        "42",
        "555",
        "2024",
        "19",
        "é",
        "ß",
        "日本",
        "\n",
        "\t",
        "AB",
        "12",
        "x",
        "_",
    ];

    #[test]
    fn gated_scan_equals_exhaustive_scan() {
        let s = all();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut found = 0;
        for _ in 0..4000 {
            let mut t = String::new();
            for _ in 0..(1 + next() % 12) {
                t.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
                if next() % 3 == 0 {
                    t.push(' ');
                }
            }
            s.find(&t, &mut a);
            s.find_exhaustive(&t, &mut b);
            assert_eq!(a, b, "text: {t:?}");
            found += a.len();
        }
        assert!(found > 1000, "the generator should hit detectors ({found})");
        // Found by the `scan_gates` fuzz target: a JWT whose payload holds another `eyJ`.
        // The literal pass must not start a second match of a pattern inside its first.
        let jwt = "exp: eyJhbGciOiJIUzUxMiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIzNDE1MTc1MjUiLCJuYW1lIjoiRWxpemFiZXRoIiwiIzNDE1MTc1MjUiLCJuYW1lIjoiRWxpemFiZXRoIiwiaWF0IjoxNzMzOTE1NzQ3fQ.cqZpyFZlFaiKE5-3iFnNu6pZJBjqTq2oiaWF0IjoxNzMzOTE1NzQ3fQ.cqZpyFZlFaiKE5-3iFnNu6pZJBjqTq2oIhICq3";
        s.find(jwt, &mut a);
        s.find_exhaustive(jwt, &mut b);
        assert_eq!((a.len(), a[0].start), (1, 5));
        assert_eq!(a, b);
        for (text, _) in POSITIVES {
            s.find(text, &mut a);
            s.find_exhaustive(text, &mut b);
            assert_eq!(a, b, "text: {text:?}");
        }
    }

    #[test]
    fn trigger_mask_matches_a_byte_loop() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..=32 {
            for _ in 0..2000 {
                let chunk: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        // Bias towards the interesting bytes and their neighbours.
                        match x % 4 {
                            0 => b"/0189:;?@A\x7f"[(x >> 8) as usize % 11],
                            1 => 0x80 | (x >> 8) as u8,
                            _ => (x >> 8) as u8,
                        }
                    })
                    .collect();
                let want = chunk.iter().enumerate().fold(0u32, |m, (k, &c)| {
                    m | (u32::from(c.is_ascii_digit() || c == b':' || c == b'@') << k)
                });
                assert_eq!(triggers(&chunk), want, "{chunk:?}");
            }
        }
    }

    #[test]
    fn literal_prefixes_fold_into_the_shorter_literal() {
        let s = all();
        let lits = s.literals.as_ref().unwrap();
        let n = lits.ac.patterns_len();
        assert_eq!(n, lits.owners.len());
        // `sk-ant-` hangs off `sk-`, so Anthropic and OpenAI keys both get tried.
        let m = lits.ac.find("sk-ant-").unwrap();
        assert_eq!(m.end() - m.start(), 3);
        assert!(lits.owners[m.pattern().as_usize()].len() >= 2);
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
            footer: None,
            lead: None,
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

    // === secrets end where the secret ends (veil#10) ===

    /// One valid token per secret pattern: (label, text before it, the token, the neighbours
    /// that belong to the format's alphabet and so extend the token, fixed length: a longer
    /// run of the alphabet is another thing, not this token).
    const SECRETS: &[(&str, &str, &str, &str, bool)] = &[
        (
            "PRIVATE_KEY",
            "",
            "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeK\n-----END RSA PRIVATE KEY-----",
            "",
            false,
        ),
        (
            "JWT",
            "",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "-_",
            false,
        ),
        (
            "ANTHROPIC_API_KEY",
            "",
            "sk-ant-api03-abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789_-abcdefghijklmnopqrstuvwxyzAA",
            "-_",
            false,
        ),
        (
            "OPENAI_API_KEY",
            "",
            "sk-proj-abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV",
            "-_",
            false,
        ),
        (
            "GITHUB_TOKEN",
            "",
            "ghp_0123456789abcdefghijABCDEFGHIJ012345",
            "",
            false,
        ),
        (
            "GITHUB_TOKEN",
            "",
            "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
            "_",
            false,
        ),
        (
            "SLACK_TOKEN",
            "",
            "xoxb-1234567890-1234567890123-abcdefghijABCDEFGHIJ",
            "-",
            false,
        ),
        (
            "SLACK_TOKEN",
            "",
            "xapp-1-A0123456789-1234567890123-abcdef0123456789",
            "-",
            false,
        ),
        (
            "SLACK_TOKEN",
            "",
            "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
            "/_-",
            false,
        ),
        (
            "STRIPE_SECRET_KEY",
            "",
            "sk_live_abcdefghijklmnop0123ABCD",
            "",
            false,
        ),
        (
            "STRIPE_SECRET_KEY",
            "",
            "whsec_abcdefghijklmnopqrstuvwxyz012345",
            "+/=",
            false,
        ),
        (
            "GOOGLE_API_KEY",
            "",
            "AIzaSyA-abcdefghijklmnopqrstuvwxyz01234",
            "-_",
            true,
        ),
        ("AWS_ACCESS_KEY_ID", "", "AKIAIOSFODNN7EXAMPLE", "", true),
        (
            "AWS_SECRET_ACCESS_KEY",
            "aws_secret_access_key=",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "/+",
            false,
        ),
        (
            "BEARER_TOKEN",
            "Authorization: Bearer ",
            "abc123def456ghi789jkl",
            "-._~+/=",
            false,
        ),
    ];

    /// Characters that may follow or precede a token: everything the issue lists (`/`, `=`,
    /// `+`, `?`, `&`, `#`, quotes, punctuation, brackets, whitespace, newline), the ASCII
    /// punctuation left over, `-` and `_` (in some alphabets), non-ASCII, and nothing at all.
    const NEIGHBOURS: &[&str] = &[
        "", "/", "=", "+", "?", "&", "#", "\"", "'", "`", ".", ",", ";", ":", "!", "(", ")", "[",
        "]", "{", "}", "<", ">", "|", "\\", "*", "%", "@", "~", "$", "^", " ", "\t", "\n", "\r\n",
        "-", "_", "é", "日",
    ];

    /// Both engines, and that they agree.
    fn both(s: &Scanner, text: &str) -> Vec<(String, Range<usize>)> {
        let (mut gated, mut all) = (Vec::new(), Vec::new());
        s.find(text, &mut gated);
        s.find_exhaustive(text, &mut all);
        assert_eq!(gated, all, "gated and exhaustive scans differ on {text:?}");
        gated
            .iter()
            .map(|f| (s.label(f.detector).to_string(), f.start..f.end))
            .collect()
    }

    // See: veil#10
    #[test]
    fn every_secret_is_masked_whatever_follows_or_precedes_it() {
        let s = all();
        let mut checked = 0;
        for &(label, label_text, token, alphabet, fixed) in SECRETS {
            for &n in NEIGHBOURS {
                let joins = n.len() == 1 && alphabet.contains(n);
                // After the token.
                let text = format!("{label_text}{token}{n}");
                let at = label_text.len()..label_text.len() + token.len();
                let got = both(&s, &text);
                let hit = got.iter().find(|(l, _)| l == label);
                match (joins, fixed) {
                    (false, _) => assert!(
                        hit.is_some_and(|(_, r)| *r == at),
                        "{label} followed by {n:?}: want exactly {at:?}, got {got:?} in {text:?}"
                    ),
                    (true, false) => assert!(
                        hit.is_some_and(|(_, r)| r.start == at.start && r.end >= at.end),
                        "{label} followed by {n:?} (its alphabet): want it covered, got {got:?}"
                    ),
                    // A fixed-length token glued to more of its alphabet is a longer run.
                    (true, true) => assert!(hit.is_none(), "{label}+{n:?}: {got:?}"),
                }
                // Before it (before its label, for the labelled formats). `_` is a word
                // character: `x_Bearer` is not the word Bearer.
                if n == "_" && label == "BEARER_TOKEN" {
                    continue;
                }
                let text = format!("{n}{label_text}{token} tail");
                let at = n.len() + label_text.len()..n.len() + label_text.len() + token.len();
                let got = both(&s, &text);
                assert!(
                    got.iter().any(|(l, r)| l == label && *r == at),
                    "{label} preceded by {n:?}: want exactly {at:?}, got {got:?}"
                );
                // Both sides at once, inside a sentence and inside a URL.
                for (pre, post) in [("see ", " now"), ("https://gw.example/k/", "/usage?x=1")] {
                    let text = format!("{pre}{n}{label_text}{token}{n}{post}");
                    let start = pre.len() + n.len() + label_text.len();
                    let got = both(&s, &text);
                    assert!(
                        got.iter().any(|(l, r)| l == label
                            && r.start == start
                            && r.end >= start + token.len())
                            || (joins && fixed),
                        "{label} between {n:?}s in {text:?}: got {got:?}"
                    );
                }
                checked += 1;
            }
        }
        assert_eq!(checked, SECRETS.len() * NEIGHBOURS.len() - 1);
        // Every secret built-in has a row.
        for b in BUILTINS
            .iter()
            .filter(|b| matches!(b.trigger, Trigger::Literal(..)))
        {
            assert!(
                SECRETS.iter().any(|(l, ..)| *l == b.label),
                "{} has no row",
                b.label
            );
        }
    }

    // See: veil#10
    #[test]
    fn sk_proj_key_in_a_url_path_followed_by_slash_is_masked() {
        let key = format!(
            "sk-proj-{}",
            "aB3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6kM9nP2rS5uV8"
        );
        assert_eq!(key.len(), 8 + 48);
        let text = format!("GET https://gw.example/keys/{key}/usage HTTP/1.1");
        let start = text.find("sk-").unwrap();
        let got = both(&all(), &text);
        assert_eq!(
            got,
            vec![("OPENAI_API_KEY".to_string(), start..start + key.len())]
        );
    }

    // See: veil#10
    #[test]
    fn akia_followed_by_slash_is_masked() {
        let got = both(&all(), "AKIAIOSFODNN7EXAMPLE/x");
        assert_eq!(got, vec![("AWS_ACCESS_KEY_ID".to_string(), 0..20)]);
    }

    #[test]
    fn tokens_glued_to_a_word_or_too_long_are_not_tokens() {
        let s = all();
        for text in [
            "xsk-proj-abcdefghijklmnopqrstuvwxyz012345",
            "task-management-system-design-and-more",
            "AKIAIOSFODNN7EXAMPLEX",
            "XAKIAIOSFODNN7EXAMPLE",
            "AIzaSyA-abcdefghijklmnopqrstuvwxyz012345",
            "aeyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig",
        ] {
            assert_eq!(both(&s, text), vec![], "{text}");
        }
        // 255 is GitHub's longest token body; a longer run is not one.
        let long = format!("ghp_{}", "a".repeat(256));
        assert_eq!(both(&s, &long), vec![]);
        let ok = format!("ghp_{}", "a".repeat(255));
        assert_eq!(both(&s, &ok).len(), 1);
    }

    // === PEM blocks: the footer found without a lazy regex (veil#10) ===

    #[test]
    fn pem_block_extends_to_its_footer_only_through_body_bytes() {
        let s = all();
        let head = "-----BEGIN PRIVATE KEY-----";
        let foot = "-----END PRIVATE KEY-----";
        // Across lines, spaces, escaped newlines and RFC 1421 headers.
        for body in [
            "\nMIIBOg+/=\n",
            " MIIB OgIB ",
            "\\nMIIB\\n",
            "\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,3F17\n\nMIIB\n",
        ] {
            let text = format!("x {head}{body}{foot} y");
            let got = both(&s, &text);
            assert_eq!(
                got,
                vec![("PRIVATE_KEY".to_string(), 2..text.len() - 2)],
                "{body:?}"
            );
        }
        // A byte no body holds (`!`) stops the block: masked to the end of its base64.
        let text = format!("{head}\nMIIB\n! {foot}");
        let end = head.len() + "\nMIIB\n".len();
        assert_eq!(both(&s, &text), vec![("PRIVATE_KEY".to_string(), 0..end)]);
        // The first PRIVATE footer counts, not a PUBLIC one before it.
        let text = format!("{head}\nAB\n-----END PUBLIC KEY-----\nCD\n{foot}!");
        assert_eq!(
            both(&s, &text),
            vec![("PRIVATE_KEY".to_string(), 0..text.len() - 1)]
        );
        // Many headers in prose and one footer far away: each header is its own block up to
        // the footer... the first one covers everything, including the later headers.
        let text = format!("{}{foot}", format!("{head} lorem ipsum ").repeat(50));
        assert_eq!(
            both(&s, &text),
            vec![("PRIVATE_KEY".to_string(), 0..text.len())]
        );
        // Headers in prose with a non-body byte after each: each masks only itself.
        let text = format!("{head} lorem ipsum! ").repeat(50);
        let got = both(&s, &text);
        assert_eq!(got.len(), 50);
        assert!(got.iter().all(|(_, r)| r.len() == head.len()), "{got:?}");
    }

    // === cost: linear in the text, whatever the density of matches (veil#10) ===

    /// The first `resolve`: every candidate against every kept match.
    fn resolve_quadratic(detectors: &[Detector], found: &mut Vec<Found>) {
        found.sort_by_key(|f| {
            (
                std::cmp::Reverse(f.end - f.start),
                detectors[f.detector].priority,
                f.start,
                f.detector,
            )
        });
        let mut kept: Vec<Found> = Vec::new();
        for f in found.drain(..) {
            if kept.iter().all(|k| f.end <= k.start || f.start >= k.end) {
                kept.push(f);
            }
        }
        kept.sort_by_key(|f| f.start);
        *found = kept;
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        #[test]
        fn resolve_keeps_what_the_quadratic_version_kept(
            spans in proptest::collection::vec((0usize..200, 1usize..30, 0usize..3), 0..120)
        ) {
            let detectors: Vec<Detector> = (0..3)
                .map(|i| Detector {
                    label: format!("D{i}").into(),
                    action: InlineAction::Mask,
                    priority: 2 - i as u32,
                })
                .collect();
            let found: Vec<Found> = spans
                .iter()
                .map(|&(start, len, detector)| Found { start, end: start + len, detector })
                .collect();
            let (mut fast, mut slow) = (found.clone(), found);
            resolve(&detectors, &mut fast, &mut Meter::unlimited()).unwrap();
            resolve_quadratic(&detectors, &mut slow);
            proptest::prop_assert_eq!(fast, slow);
        }
    }

    // See: veil#10
    #[test]
    fn a_long_rejected_custom_candidate_is_not_rescanned_from_every_character() {
        let mut spec = ScannerSpec::default();
        spec.detectors.push(Detector {
            label: "CARDISH".into(),
            action: InlineAction::Mask,
            priority: 100,
        });
        spec.patterns.push(PatternSpec {
            detector: 0,
            regex: "[0-9][0-9 ]+[0-9]".into(),
            check: checksum::by_name("luhn"),
            group: false,
            context: vec![],
            window: 0,
            user: true,
            gate: Gate::Always,
            footer: None,
            lead: None,
        });
        let s = Scanner::build(&spec).unwrap();
        let mut per_byte = Vec::new();
        for n in [4_000usize, 32_000] {
            // Zeros then a one: every suffix has a Luhn sum of 1, so every candidate fails.
            let text = format!("{}1", "0".repeat(n - 1));
            let mut meter = Meter::unlimited();
            let mut out = Vec::new();
            s.find_within(&text, &mut out, &mut meter).unwrap();
            per_byte.push(meter.work_done() as f64 / n as f64);
        }
        // Restarting one character after each rejection costs n/2 units per byte: 2 000 and
        // 16 000 here.
        assert!(per_byte[1] < 10.0, "{per_byte:?}");
        assert!(per_byte[1] < per_byte[0] * 1.5, "{per_byte:?}");
    }
}
