//! # Redact: compiled rules turn an exchange's content into what a record may carry.
//!
//! Step 3 of the flow (`proxy → exchange → redact → {export, seal}`). This module owns the
//! rules file format (`rules/README.md`), its compiler, the detectors and the JSON walk. It
//! never touches the network, OTLP or the sealed store; it reads keys only through
//! [`Keyring`] derivations.
//!
//! ```text
//! rules.toml ──rules::compile──▶ CompiledRules ──scope_for(ScopeKey)──▶ &Scope
//!                                    │
//!            redact_json(&mut Value, Target, &Scope) ──▶ Counts (per detector)
//!            redact_text(&str, &Scope)              ──▶ (String, Counts)
//!            redact_label(&str, &Scope)             ──▶ the same, memoized when clean
//!            redact_json_within / redact_text_within (.., &mut Meter): the same under a
//!                                                      Budget, or Err(Exceeded) and nothing
//!            pseudonymize_user, header_allowed, filter_headers, find_user, find_users
//! ```
//!
//! Cost is linear in the text: one scan per string (a second only where something was
//! masked), overlap resolution in O(m log m) for m matches. A [`Budget`] bounds what one
//! exchange may spend; past it the `_within` calls return [`Exceeded`] and leave nothing
//! half redacted behind (see [`budget`]).
//!
//! A [`CompiledRules`] is immutable, `Send + Sync`, and meant to sit behind an `Arc`;
//! reloading is compiling a new one and swapping the `Arc` (the old one stays if the new file
//! fails to compile).
//!
//! ## Example
//! ```
//! use veil::keys::{Keyring, MasterKey, KeyId};
//! use veil::redact::{CompiledRules, ScopeKey, Target};
//!
//! let keys = Keyring::single(MasterKey::from_bytes(KeyId(1), [7; 32]));
//! let rules = CompiledRules::from_str(r#"
//!     version = 1
//!     default = "scrub"
//!     [identity]
//!     json = ["$.user"]
//!     [[fields]]
//!     path = "$.model"
//!     action = "keep"
//!     [detectors]
//!     builtin = ["all"]
//! "#, &keys).unwrap();
//! let scope = rules.scope_for(&ScopeKey::default());
//! let mut body = serde_json::json!({
//!     "model": "gpt-4o", "user": "alice@example.com",
//!     "messages": [{"role": "user", "content": "mail me at bob@example.com"}]
//! });
//! let counts = rules.redact_json(&mut body, Target::Request, scope);
//! assert_eq!(body["messages"][0]["content"], "mail me at [EMAIL]");
//! assert!(body["user"].as_str().unwrap().starts_with("u_"));
//! assert_eq!(counts.get("EMAIL"), 1);
//! ```

pub mod action;
pub mod budget;
pub mod checksum;
pub mod detect;
pub mod eval;
mod handle;
pub mod jsonpath;
mod memo;
mod phone;
pub mod rules;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde_json::Value;

pub use action::{DecryptError, decrypt_field};
pub use budget::{Budget, Exceeded, Meter};
pub use detect::{Found, InlineAction, Scanner};
pub use handle::{BUILTIN_DEFAULT_RULES, RulesHandle};
pub use jsonpath::JsonPath;
pub use rules::RulesError;

use action::FieldKeys;
use jsonpath::{AsStep, Step};
use memo::{Look, Outcome, ScrubMemo};

use crate::exchange::Headers;
use crate::exchange::credentials;
use crate::keys::{Keyring, UserPseudonym};

/// Which JSON document is being redacted. Field rules may be limited to some targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// The raw request body.
    Request,
    /// The raw response body (or the reassembled stream).
    Response,
    /// The normalized `gen_ai.input.messages` JSON.
    InputMessages,
    /// The normalized `gen_ai.output.messages` JSON.
    OutputMessages,
    /// The normalized `gen_ai.system_instructions` JSON.
    SystemInstructions,
}

impl Target {
    const ALL_BITS: u8 = 0b11111;

    fn bit(self) -> u8 {
        match self {
            Target::Request => 1,
            Target::Response => 2,
            Target::InputMessages => 4,
            Target::OutputMessages => 8,
            Target::SystemInstructions => 16,
        }
    }

    fn bits_by_name(s: &str) -> Option<u8> {
        Some(match s {
            "request" => 1,
            "response" => 2,
            "input_messages" => 4,
            "output_messages" => 8,
            "system_instructions" => 16,
            "messages" => 4 | 8 | 16,
            "all" => Self::ALL_BITS,
            _ => return None,
        })
    }
}

/// What a field rule (or the default) does to the node it names and everything below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldAction {
    /// Left as is.
    Keep,
    /// Removed (an array element becomes `null`, so indices keep their meaning).
    Drop,
    /// Every string runs through the detectors; matches are replaced inline.
    Scrub,
    /// Every string/number becomes `h_<32 hex>` (keyed BLAKE3).
    Hash,
    /// Every string/number becomes `p_<16 hex>` (keyed BLAKE3, pseudonym key).
    Pseudonymize,
    /// Every string/number becomes `enc:v1:<key id>:<base64url>` (AES-256-GCM).
    Encrypt,
}

impl FieldAction {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "keep" => FieldAction::Keep,
            "drop" => FieldAction::Drop,
            "scrub" => FieldAction::Scrub,
            "hash" => FieldAction::Hash,
            "pseudonymize" => FieldAction::Pseudonymize,
            "encrypt" => FieldAction::Encrypt,
            _ => return None,
        })
    }
}

/// A `*`-wildcard pattern (scope matches, header allowlist).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Glob(String);

impl Glob {
    fn new(s: &str) -> Glob {
        Glob(s.trim().to_string())
    }

    fn lowercase(self) -> Glob {
        Glob(self.0.to_ascii_lowercase())
    }

    /// Whole-string match; `*` matches any run of characters.
    fn matches(&self, s: &str) -> bool {
        let p = self.0.as_bytes();
        let t = s.as_bytes();
        // Classic two-pointer wildcard match with one backtrack point: linear-ish, no recursion.
        let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
        while j < t.len() {
            if i < p.len() && p[i] != b'*' && p[i] == t[j] {
                i += 1;
                j += 1;
            } else if i < p.len() && p[i] == b'*' {
                star = Some(i);
                mark = j;
                i += 1;
            } else if let Some(s) = star {
                i = s + 1;
                mark += 1;
                j = mark;
            } else {
                return false;
            }
        }
        p[i..].iter().all(|&c| c == b'*')
    }
}

/// One field rule: a selector, an action, and the targets it applies to.
#[derive(Clone, Debug)]
pub(crate) struct FieldRule {
    path: JsonPath,
    action: FieldAction,
    targets: u8,
}

/// When a scope applies. Every criterion set must match; unset ones match anything.
#[derive(Clone, Debug)]
pub(crate) struct ScopeMatch {
    host: Option<Glob>,
    route: Option<Glob>,
    model: Option<Glob>,
    feature: Option<Glob>,
}

impl ScopeMatch {
    fn matches(&self, key: &ScopeKey<'_>) -> bool {
        fn one(g: &Option<Glob>, v: Option<&str>, lower: bool) -> bool {
            match (g, v) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(g), Some(v)) if lower => g.matches(&v.to_ascii_lowercase()),
                (Some(g), Some(v)) => g.matches(v),
            }
        }
        one(&self.host, key.host, true)
            && one(&self.route, key.route, false)
            && one(&self.model, key.model, false)
            && one(&self.feature, key.feature, false)
    }
}

/// What selects a scope for one exchange.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScopeKey<'a> {
    /// Upstream host as the app addressed it (`api.openai.com`).
    pub host: Option<&'a str>,
    /// Request path without the query (`/v1/chat/completions`).
    pub route: Option<&'a str>,
    /// Requested model (`gpt-4o-mini`).
    pub model: Option<&'a str>,
    /// The `x-veil-feature` tag.
    pub feature: Option<&'a str>,
}

/// The rules that apply to one exchange: field rules, default, detectors.
#[derive(Debug)]
pub struct Scope {
    name: String,
    default: FieldAction,
    fields: Vec<FieldRule>,
    scanner: Scanner,
    clean: CleanMemo,
    /// This scope's place in its rules file (0 for the top level): its part of the
    /// [`ScrubMemo`]'s key, since each scope has its own detectors.
    slot: u32,
}

/// Short strings of veil's own vocabulary that this scope's detectors found nothing in: the
/// field names of the GenAI messages veil writes (`role`, `parts`, `type`, `content`), their
/// enum values (`user`, `text`, `stop`) and protocol headers' values (`application/json`).
/// They come back with every exchange, and a scan's fixed cost (the dictionary, the code
/// detectors, the gates, the pattern sets) is most of what a short string costs: ~20 such
/// scans per exchange of the load bench (stop 41). Whether the detectors find anything in a
/// text depends on the text and the scope's detectors alone, so a string found clean once is
/// clean again: the memo changes no result. Only those positions consult it, and the labels
/// of [`CompiledRules::redact_label`] (model names, feature tags, error types: a clean one is
/// written into the record as it is). Never message content, tool arguments, tool names, ids
/// or other headers, so no content stays in memory past its exchange. Only clean strings of
/// at most [`CleanMemo::MAX_LEN`] bytes are kept, at most [`CleanMemo::CAPACITY`], and a full
/// memo starts over.
#[derive(Default)]
struct CleanMemo(
    std::sync::Mutex<std::collections::HashSet<Box<str>, foldhash::fast::RandomState>>,
);

impl fmt::Debug for CleanMemo {
    /// The count only: the strings came from exchanges, and a scope's `Debug` may reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.lock().map_or(0, |m| m.len());
        write!(f, "CleanMemo({n} strings)")
    }
}

impl CleanMemo {
    /// Longest string kept, bytes.
    const MAX_LEN: usize = 64;
    /// Most strings kept; past it the memo is emptied and fills again.
    const CAPACITY: usize = 1024;

    /// Whether `s` was found clean before.
    fn knows(&self, s: &str) -> bool {
        s.len() <= Self::MAX_LEN && self.0.lock().is_ok_and(|m| m.contains(s))
    }

    /// Notes that `s` is clean.
    fn learn(&self, s: &str) {
        if s.len() > Self::MAX_LEN {
            return;
        }
        if let Ok(mut m) = self.0.lock() {
            if m.len() >= Self::CAPACITY {
                m.clear();
            }
            m.insert(s.into());
        }
    }
}

impl Scope {
    /// The scope's name (`default` for the top level of the file).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The action for content fields no rule names.
    pub fn default_action(&self) -> FieldAction {
        self.default
    }

    /// The compiled detectors.
    pub fn scanner(&self) -> &Scanner {
        &self.scanner
    }

    /// Whether the scope's [`CleanMemo`] holds `s` (tests outside this module).
    #[cfg(test)]
    pub(crate) fn remembers(&self, s: &str) -> bool {
        self.clean.knows(s)
    }
}

/// Redaction counts by detector label (`EMAIL` → 3).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    by_detector: BTreeMap<String, u64>,
}

impl Counts {
    fn add(&mut self, label: &str) {
        match self.by_detector.get_mut(label) {
            Some(n) => *n += 1,
            None => {
                self.by_detector.insert(label.to_string(), 1);
            }
        }
    }

    /// Heap bytes the counts take, roughly (the memo charges them to its bound).
    fn heap_size(&self) -> usize {
        self.by_detector.keys().map(|k| k.len() + 48).sum()
    }

    /// Count for one detector (0 when it never matched).
    pub fn get(&self, label: &str) -> u64 {
        self.by_detector.get(label).copied().unwrap_or(0)
    }

    /// Sum over detectors.
    pub fn total(&self) -> u64 {
        self.by_detector.values().sum()
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Counts) {
        for (k, v) in &other.by_detector {
            // `entry` would take the key by value: a copy of the label for every merge, even
            // of a label already counted.
            match self.by_detector.get_mut(k) {
                Some(n) => *n += v,
                None => {
                    self.by_detector.insert(k.clone(), *v);
                }
            }
        }
    }

    /// `(label, count)` pairs, sorted by label.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.by_detector.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// The map, as [`Record::redactions`](crate::record::Record::redactions) wants it.
    pub fn into_map(self) -> BTreeMap<String, u64> {
        self.by_detector
    }
}

/// A compiled rules file. Immutable, `Send + Sync`; share it behind an `Arc`.
pub struct CompiledRules {
    digest: String,
    identity_paths: Vec<JsonPath>,
    identity_headers: Vec<String>,
    header_allow: Vec<Glob>,
    base: Scope,
    scopes: Vec<(ScopeMatch, Scope)>,
    keys: FieldKeys,
    memo: ScrubMemo,
}

impl fmt::Debug for CompiledRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledRules")
            .field("digest", &self.digest)
            .field(
                "scopes",
                &self
                    .scopes
                    .iter()
                    .map(|(_, s)| s.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("keys", &"<redacted>")
            .field("memo", &self.memo)
            .finish()
    }
}

/// Units an adversary repeats to make redaction slow (veil#10): every detector's values, the
/// look-alikes its validator rejects, the prefixes of every secret, glued and separated, the
/// shapes that made some pass super-linear before veil#10 (repeated emails, PEM headers in
/// prose, `-eyJ` runs, `xoxb-` runs, colon runs), and names, street addresses and phone-region
/// hints (veil#16), passwords in their forms. Shared by the work-per-byte property test and
/// the `redact_dense` fuzz target; not an API.
#[doc(hidden)]
pub const DENSE_UNITS: &[&str] = &[
    "lorem ipsum alice@example.com sit amet ",
    "a@b.cc.-.-",
    "x.y@",
    "-----BEGIN PRIVATE KEY----- lorem ",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIB\n",
    "-----END PRIVATE KEY-----",
    "-eyJabcdefgh",
    "eyJabcdefghij.abcd.",
    "sk-",
    "sk-proj-abcdefghijklmnopqrstuvwxyz012345/",
    "sk-ant-",
    "ghp_",
    "github_pat_",
    "xoxb-",
    "xapp-1-",
    "https://hooks.slack.com/services/",
    "sk_live_",
    "whsec_",
    "AIza",
    "AKIA",
    "AKIAIOSFODNN7EXAMPLE",
    "aws_secret_access_key=",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "Bearer abc123def456ghi789jkl ",
    "bearer ",
    "4111 1111 1111 1111 ",
    "4444444444444444",
    "4444 ",
    "GB82 WEST 1234 5698 7654 32 ",
    "GB82",
    "123-45-6789",
    "SSN: 123456789 ",
    "+44 20 7946 0958 ",
    "(415) 555-2671",
    "030 12345678 ",
    "192.168.1.20",
    "1.2.3.4.",
    "2001:db8::1 ",
    "::",
    "1:2:3:",
    "born on 12/03/1990 ",
    "DOB ",
    "0",
    "-",
    "/",
    ".",
    " ",
    "\n",
    "é",
    "1 Road ",
    "12 Main Street, Leeds LS6 2AB ",
    "Lindenstraße 48, 47361 Gießen ",
    "Flat 3\n",
    "Calle Mayor 5, 3º B ",
    "Road Street Avenue ",
    "teléfono 612 345 678 ",
    "612 345 678 ",
    "Dear Priya Patel, ",
    "Mr ",
    // Passwords: assigned, quoted, after a flag, a command's option, SQL (stop 75).
    "password=hunter22 ",
    "password: '",
    "'",
    "-Password \"x\" ",
    "docker login -u ci -p ",
    "redis-cli -a $X ",
    "curl -u a:",
    "-storepass ",
    "CREATE USER x IDENTIFIED BY ",
    "ALTER ROLE x PASSWORD '",
];

/// Upper bound on scrub passes over one string (see `scrub_str`); real text needs 2 at most.
/// A string that has not settled after this many passes is dropped.
const MAX_PASSES: usize = 8;

/// Most user pseudonyms indexed for one exchange ([`CompiledRules::find_users`]). Real requests
/// name one user in two or three places; an app naming hundreds is putting data where an
/// identity belongs, and the sealed index and the ledger must not grow with it.
pub const MAX_IDENTITIES: usize = 16;

/// What happens to a node after it was visited.
#[derive(PartialEq, Eq)]
enum Fate {
    Stay,
    Drop,
}

/// Result of scrubbing one string.
#[derive(PartialEq, Eq)]
enum Scrubbed {
    Same,
    Changed(String),
    Drop,
}

impl Scrubbed {
    /// The changed text, or `original` when nothing changed.
    fn or(self, original: String) -> String {
        match self {
            Scrubbed::Changed(s) => s,
            Scrubbed::Same | Scrubbed::Drop => original,
        }
    }
}

impl CompiledRules {
    /// Loads and compiles a rules file. Dictionary files are resolved relative to it.
    pub fn load(path: &Path, keys: &Keyring) -> Result<CompiledRules, RulesError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| RulesError::io(&name, &e))?;
        rules::compile(&text, &name, path.parent(), keys)
    }

    /// Compiles rules text (dictionary `file`s resolve against the current directory).
    #[allow(clippy::should_implement_trait)] // needs keys; FromStr cannot take them
    pub fn from_str(text: &str, keys: &Keyring) -> Result<CompiledRules, RulesError> {
        rules::compile(text, "<string>", None, keys)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn assemble(
        digest: String,
        identity_paths: Vec<JsonPath>,
        identity_headers: Vec<String>,
        header_allow: Vec<Glob>,
        mut base: Scope,
        mut scopes: Vec<(ScopeMatch, Scope)>,
        keys: &Keyring,
    ) -> CompiledRules {
        base.slot = 0;
        for (slot, (_, s)) in (1..).zip(scopes.iter_mut()) {
            s.slot = slot;
        }
        CompiledRules {
            digest,
            identity_paths,
            identity_headers,
            header_allow,
            base,
            scopes,
            keys: FieldKeys::new(keys),
            memo: ScrubMemo::new(ScrubMemo::DEFAULT_BYTES),
        }
    }

    /// Bounds the memo of long texts' redactions at `bytes` (0 turns it off); the default is
    /// [`CompiledRules::DEFAULT_MEMO_BYTES`]. What the memo remembers goes with it. See
    /// `memo.rs`: an answer from the memo is what scanning the text again would give.
    pub fn set_memo_bytes(&mut self, bytes: usize) {
        self.memo = ScrubMemo::new(bytes);
    }

    /// The memo's default bound: 4 MiB.
    pub const DEFAULT_MEMO_BYTES: usize = ScrubMemo::DEFAULT_BYTES;

    /// The memo's bound in bytes (0: off).
    pub fn memo_bytes(&self) -> usize {
        self.memo.bound()
    }

    /// Texts answered from the memo so far (since these rules were compiled).
    pub fn memo_hits(&self) -> u64 {
        self.memo.hits()
    }

    /// Bytes the memo holds now, as charged to its bound.
    pub fn memo_held(&self) -> usize {
        self.memo.bytes()
    }

    /// Forgets every redaction the memo holds: a `forget` calls it, so no redacted output of
    /// a forgotten exchange stays in memory, and benchmarks, to start cold.
    pub fn clear_memo(&self) {
        self.memo.clear();
    }

    /// Empties the memo again if a forget emptied it at or after `started`, the start of the
    /// exchange just redacted (the pipeline calls this once per record); returns whether it
    /// did. An exchange already in the recording queue or on a pipeline worker when the
    /// forget ran may be one it covers (the ledger erases such a record by its tombstones,
    /// the exporter drops it): the texts it filed after the forget's clear must go too. Every
    /// exchange that started before the last forget empties the memo once more as it is
    /// built, so after a forget the memo fills again only from exchanges that started after
    /// it.
    pub fn clear_memo_if_forgotten_since(&self, started: std::time::SystemTime) -> bool {
        self.memo.clear_if_cleared_since(started)
    }

    /// Hex digest (32 digits) of the format version, the file text and any dictionary files:
    /// goes into every record as `rules_digest`.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The scope for an exchange: the first `[[scopes]]` entry (in file order) whose every
    /// `match` criterion matches, else the top level of the file.
    pub fn scope_for(&self, key: &ScopeKey<'_>) -> &Scope {
        self.scopes
            .iter()
            .find(|(m, _)| m.matches(key))
            .map_or(&self.base, |(_, s)| s)
    }

    /// The top-level scope.
    pub fn base_scope(&self) -> &Scope {
        &self.base
    }

    /// `u_<16 hex>`: keyed, stable across restarts and instances sharing the keys.
    pub fn pseudonymize_user(&self, id: &str) -> UserPseudonym {
        self.keys.user_pseudonym(id)
    }

    /// True when a header may be exported: on the allowlist and never a credential.
    pub fn header_allowed(&self, name: &str) -> bool {
        let name = name.trim();
        // Recorded names are lowercase already (the proxy writes them so): copy only when not.
        let name: std::borrow::Cow<'_, str> = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            name.to_ascii_lowercase().into()
        } else {
            name.into()
        };
        !credentials::is_credential_header(&name)
            && !self.identity_headers.iter().any(|h| *h == *name)
            && self.header_allow.iter().any(|g| g.matches(&name))
    }

    /// The allowed headers, names lowercased, values scrubbed by the base scope's detectors.
    pub fn filter_headers(&self, headers: &Headers) -> Vec<(String, String)> {
        let mut found = Vec::new();
        let mut counts = Counts::default();
        // Headers are bounded by the proxy's header limits: not metered.
        let mut meter = Meter::unlimited();
        headers
            .iter()
            .filter(|(k, _)| self.header_allowed(k))
            .filter_map(|(k, v)| {
                let vocabulary = vocabulary_header(k);
                match self.scrub_str(
                    v,
                    &self.base,
                    &mut counts,
                    &mut found,
                    &mut meter,
                    vocabulary,
                ) {
                    Ok(Scrubbed::Same) => Some((k.to_ascii_lowercase(), v.to_string())),
                    Ok(Scrubbed::Changed(s)) => Some((k.to_ascii_lowercase(), s)),
                    Ok(Scrubbed::Drop) | Err(_) => None,
                }
            })
            .collect()
    }

    /// The user's pseudonym, from the first identity header present, else the first identity
    /// JSON path holding a string or number in `request`: the first of
    /// [`CompiledRules::find_users`].
    pub fn find_user<'h>(
        &self,
        request: Option<&Value>,
        headers: impl IntoIterator<Item = (&'h str, &'h str), IntoIter: Clone>,
    ) -> Option<UserPseudonym> {
        self.find_users(request, headers).into_iter().next()
    }

    /// Every identity source's pseudonym, deduplicated, in precedence order: the identity
    /// headers (as the rules list them; the first value of each), then each identity JSON path
    /// (as listed; every string or number it matches, in document order). The first is the
    /// one that names the record's user ([`CompiledRules::find_user`]); all of them index the
    /// exchange, so `forget --user` finds it by any (veil#13: a body's `user` overridden by
    /// `x-veil-user` was not found by the body's value). At most [`MAX_IDENTITIES`] values.
    /// `headers` are `(name, value)` pairs, searched once per identity header (an iterator,
    /// so a caller can chain two lists without copying them).
    pub fn find_users<'h>(
        &self,
        request: Option<&Value>,
        headers: impl IntoIterator<Item = (&'h str, &'h str), IntoIter: Clone>,
    ) -> Vec<UserPseudonym> {
        let headers = headers.into_iter();
        let mut raw: Vec<String> = Vec::new();
        for h in &self.identity_headers {
            if let Some((_, v)) = headers.clone().find(|(k, _)| k.eq_ignore_ascii_case(h))
                && !v.trim().is_empty()
            {
                raw.push(v.trim().to_string());
            }
        }
        // In the order the rules file lists them: the first path that holds a value names the
        // user. (Walking the document once would follow its key order instead, which serde_json
        // sorts, and a `prompt_cache_key` would win over `user`.)
        if let Some(request) = request {
            let mut path = Vec::new();
            for identity in &self.identity_paths {
                find_identity(identity, request, &mut path, &mut raw);
            }
        }
        let mut out: Vec<UserPseudonym> = Vec::new();
        for v in raw {
            let p = self.pseudonymize_user(&v);
            if !out.contains(&p) {
                out.push(p);
            }
            if out.len() == MAX_IDENTITIES {
                break;
            }
        }
        out
    }

    /// Whether an identity JSON path may match the root member `key` or a node below it
    /// (`$.user` may not reach `messages`; `$.messages[0].name` and `$..user` may).
    pub fn identity_may_reach(&self, key: &str) -> bool {
        self.identity_paths
            .iter()
            .any(|p| p.may_match_within(&[Step::Key(key)]))
    }

    /// Redacts a JSON document in place under `scope` and returns what the detectors found.
    /// The document stays valid JSON; only dropped fields disappear (array elements become
    /// `null`). A dropped root becomes `null`. No cost limit: see
    /// [`CompiledRules::redact_json_within`].
    pub fn redact_json(&self, v: &mut Value, target: Target, scope: &Scope) -> Counts {
        let mut meter = Meter::unlimited();
        // An unlimited meter cannot be exceeded.
        self.redact_json_within(v, target, scope, &mut meter)
            .unwrap_or_default()
    }

    /// [`CompiledRules::redact_json`] under a budget. When `meter` runs out part way, the
    /// whole document becomes `null` and the error says which limit: a document is redacted
    /// completely or not at all, never left half redacted with raw text after the point where
    /// the scan stopped.
    pub fn redact_json_within(
        &self,
        v: &mut Value,
        target: Target,
        scope: &Scope,
        meter: &mut Meter,
    ) -> Result<Counts, Exceeded> {
        let mut counts = Counts::default();
        let mut path: Vec<OwnedStep> = Vec::new();
        let mut found = Vec::new();
        let rules: Vec<&FieldRule> = scope
            .fields
            .iter()
            .filter(|r| r.targets & target.bit() != 0)
            .collect();
        let messages = matches!(
            target,
            Target::SystemInstructions | Target::InputMessages | Target::OutputMessages
        );
        let mut w = Walk {
            rules: &rules,
            messages,
            scope,
            counts: &mut counts,
            found: &mut found,
            path: &mut path,
            meter,
        };
        match self.walk(v, &mut w) {
            Ok(Fate::Stay) => {}
            Ok(Fate::Drop) => *v = Value::Null,
            Err(e) => {
                *v = Value::Null;
                return Err(e);
            }
        }
        Ok(counts)
    }

    /// Scrubs one text with `scope`'s detectors. A `drop_field` match empties the text.
    pub fn redact_text(&self, text: &str, scope: &Scope) -> (String, Counts) {
        let mut meter = Meter::unlimited();
        // An unlimited meter cannot be exceeded.
        self.redact_text_within(text, scope, &mut meter)
            .unwrap_or_default()
    }

    /// [`CompiledRules::redact_text`] under a budget; on `Err` there is no text at all.
    pub fn redact_text_within(
        &self,
        text: &str,
        scope: &Scope,
        meter: &mut Meter,
    ) -> Result<(String, Counts), Exceeded> {
        self.scrub_text(text, scope, meter, false)
    }

    /// [`CompiledRules::redact_text`] for a label whose values repeat across exchanges: a
    /// request or response model name, a feature tag, an error type. The result is the same;
    /// the scope's memo of clean short strings may answer for a value it found clean before,
    /// and learns a clean one (at most 64 bytes). A clean label is written out as it is
    /// (the ledger's `request_model`, the span's `gen_ai.request.model`), so the memo holds
    /// nothing the records do not. Not for ids (`response_id`, a conversation id), which do not
    /// repeat, nor for anything inside the content.
    pub fn redact_label(&self, text: &str, scope: &Scope) -> (String, Counts) {
        // An unlimited meter cannot be exceeded.
        self.scrub_text(text, scope, &mut Meter::unlimited(), true)
            .unwrap_or_default()
    }

    /// One text through [`CompiledRules::scrub_str`]; `vocabulary` as there.
    fn scrub_text(
        &self,
        text: &str,
        scope: &Scope,
        meter: &mut Meter,
        vocabulary: bool,
    ) -> Result<(String, Counts), Exceeded> {
        let mut counts = Counts::default();
        let mut found = Vec::new();
        let out = match self.scrub_str(text, scope, &mut counts, &mut found, meter, vocabulary)? {
            Scrubbed::Same => text.to_string(),
            Scrubbed::Changed(s) => s,
            Scrubbed::Drop => String::new(),
        };
        Ok((out, counts))
    }

    fn walk(&self, v: &mut Value, w: &mut Walk<'_>) -> Result<Fate, Exceeded> {
        if self.identity_paths.iter().any(|p| p.matches(w.path)) {
            return Ok(self.transform(v, &|k: &FieldKeys, s: &str| k.user(s)));
        }
        let rules = w.rules;
        if let Some(rule) = rules.iter().find(|r| r.path.matches(w.path)) {
            return self.apply(rule.action, v, w);
        }
        match v {
            Value::Object(map) => {
                // Keys move into the path and back out: no copy of a key, no copy of a value.
                let old = std::mem::take(map);
                for (k, mut c) in old {
                    let key = self.scrub_key(&k, w)?;
                    if key == Scrubbed::Drop {
                        continue;
                    }
                    w.path.push(OwnedStep::Key(k));
                    let fate = self.walk(&mut c, w);
                    let Some(OwnedStep::Key(k)) = w.path.pop() else {
                        unreachable!("invariant: the walk pops the key it pushed");
                    };
                    if fate? == Fate::Stay {
                        map.insert(key.or(k), c);
                    }
                }
                Ok(Fate::Stay)
            }
            Value::Array(items) => {
                for (i, c) in items.iter_mut().enumerate() {
                    w.path.push(OwnedStep::Index(i));
                    let fate = self.walk(c, w);
                    w.path.pop();
                    if fate? == Fate::Drop {
                        *c = Value::Null;
                    }
                }
                Ok(Fate::Stay)
            }
            Value::String(_) | Value::Number(_) => self.apply(w.scope.default, v, w),
            Value::Bool(_) | Value::Null => Ok(Fate::Stay),
        }
    }

    /// Applies a field action to a whole subtree.
    fn apply(
        &self,
        action: FieldAction,
        v: &mut Value,
        w: &mut Walk<'_>,
    ) -> Result<Fate, Exceeded> {
        Ok(match action {
            FieldAction::Keep => Fate::Stay,
            FieldAction::Drop => Fate::Drop,
            FieldAction::Scrub => return self.scrub_tree(v, w, true),
            FieldAction::Hash => self.transform(v, &|k: &FieldKeys, s: &str| k.hash(s)),
            FieldAction::Pseudonymize => {
                self.transform(v, &|k: &FieldKeys, s: &str| k.tagged("p", b"field\0", s))
            }
            FieldAction::Encrypt => self.transform(v, &|k: &FieldKeys, s: &str| k.encrypt(s)),
        })
    }

    /// Scrubs every string, number and key of the subtree `v`. `at_path`: `v` is the node
    /// `w.path` names (not a node below it, which the path does not follow).
    fn scrub_tree(&self, v: &mut Value, w: &mut Walk<'_>, at_path: bool) -> Result<Fate, Exceeded> {
        let vocabulary = at_path && w.messages && genai_value(w.path);
        Ok(match v {
            Value::String(s) => {
                match self.scrub_str(s, w.scope, w.counts, w.found, w.meter, vocabulary)? {
                    Scrubbed::Same => Fate::Stay,
                    Scrubbed::Changed(n) => {
                        *s = n;
                        Fate::Stay
                    }
                    Scrubbed::Drop => Fate::Drop,
                }
            }
            Value::Number(n) => {
                let text = n.to_string();
                match self.scrub_str(&text, w.scope, w.counts, w.found, w.meter, false)? {
                    Scrubbed::Same => Fate::Stay,
                    Scrubbed::Changed(n) => {
                        *v = Value::String(n);
                        Fate::Stay
                    }
                    Scrubbed::Drop => Fate::Drop,
                }
            }
            Value::Object(map) => {
                let old = std::mem::take(map);
                for (k, mut c) in old {
                    // Below the path: a key here is content (`{"Alice Johnson": …}`).
                    let key = self.scrub_str(&k, w.scope, w.counts, w.found, w.meter, false)?;
                    if key != Scrubbed::Drop && self.scrub_tree(&mut c, w, false)? == Fate::Stay {
                        map.insert(key.or(k), c);
                    }
                }
                Fate::Stay
            }
            Value::Array(items) => {
                for c in items.iter_mut() {
                    if self.scrub_tree(c, w, false)? == Fate::Drop {
                        *c = Value::Null;
                    }
                }
                Fate::Stay
            }
            Value::Bool(_) | Value::Null => Fate::Stay,
        })
    }

    /// Replaces every string and number leaf with `f(leaf)`, and every object key below the
    /// node with `f(key)`: inside a hashed or encrypted subtree (tool arguments, tool results)
    /// a key is content too (`{"Alice Johnson": {...}}`). `f` is deterministic per input for
    /// hash and pseudonym, so distinct keys stay distinct.
    fn transform(&self, v: &mut Value, f: &dyn Fn(&FieldKeys, &str) -> String) -> Fate {
        match v {
            Value::String(s) => *s = f(&self.keys, s),
            Value::Number(n) => *v = Value::String(f(&self.keys, &n.to_string())),
            Value::Object(map) => {
                let old = std::mem::take(map);
                for (k, mut c) in old {
                    let key = f(&self.keys, &k);
                    self.transform(&mut c, f);
                    map.insert(key, c);
                }
            }
            Value::Array(items) => {
                for c in items.iter_mut() {
                    self.transform(c, f);
                }
            }
            Value::Bool(_) | Value::Null => {}
        }
        Fate::Stay
    }

    /// Scrubs a key of the object at `w.path`. Object keys can carry PII too
    /// (`{"bob@example.com": …}`): they are scrubbed by the detectors whatever the field
    /// action. `Drop` drops the entry.
    fn scrub_key(&self, k: &str, w: &mut Walk<'_>) -> Result<Scrubbed, Exceeded> {
        let vocabulary = w.messages && genai_object(w.path);
        self.scrub_str(k, w.scope, w.counts, w.found, w.meter, vocabulary)
    }

    /// Scrubs until nothing matches any more (at most [`MAX_PASSES`] passes). One pass is not
    /// always enough: validators look at neighbours, and masking a match can turn a glued,
    /// rejected neighbour into a clean one (`(415) 555-2671(415) 555-2671`). Running to the
    /// fixpoint makes redaction idempotent; the extra pass costs only for strings that matched.
    ///
    /// The string is charged to the meter's byte budget once, before the first pass: the later
    /// passes rescan text that was already paid for (they cost work, not budget bytes).
    ///
    /// `vocabulary`: `s` is one of veil's own field names or enum values, or a protocol
    /// header's value ([`vocabulary_header`]), never content: the scope's [`CleanMemo`] may
    /// answer for it, and learns it when it is clean.
    ///
    /// A text of [`ScrubMemo::MIN_LEN`] bytes or more that was scrubbed before under this
    /// scope is answered by the memo (`memo.rs`), with the same counts; it is still charged
    /// to the byte budget, so the budget's outcome does not depend on what the memo holds.
    fn scrub_str(
        &self,
        s: &str,
        scope: &Scope,
        counts: &mut Counts,
        found: &mut Vec<Found>,
        meter: &mut Meter,
        vocabulary: bool,
    ) -> Result<Scrubbed, Exceeded> {
        meter.scan(s.len())?;
        match self.memo.look(scope.slot, s) {
            Look::Pass => self.scrub_scanned(s, scope, counts, found, meter, vocabulary),
            Look::Hit(e) => {
                found.clear();
                counts.merge(&e.counts);
                Ok(match &e.outcome {
                    Outcome::Same => Scrubbed::Same,
                    Outcome::Changed(t) => Scrubbed::Changed(t.to_string()),
                    Outcome::Drop => Scrubbed::Drop,
                })
            }
            Look::Learn(key) => {
                let mut mine = Counts::default();
                let r = self.scrub_scanned(s, scope, &mut mine, found, meter, vocabulary)?;
                let outcome = match &r {
                    Scrubbed::Same => Outcome::Same,
                    Scrubbed::Changed(t) => Outcome::Changed(t.as_str().into()),
                    Scrubbed::Drop => Outcome::Drop,
                };
                counts.merge(&mine);
                self.memo.learn(key, outcome, mine);
                Ok(r)
            }
        }
    }

    /// [`CompiledRules::scrub_str`] after the byte budget was charged, without the memo.
    fn scrub_scanned(
        &self,
        s: &str,
        scope: &Scope,
        counts: &mut Counts,
        found: &mut Vec<Found>,
        meter: &mut Meter,
        vocabulary: bool,
    ) -> Result<Scrubbed, Exceeded> {
        if vocabulary && scope.clean.knows(s) {
            found.clear();
            return Ok(Scrubbed::Same);
        }
        let mut current = match self.scrub_once(s, scope, counts, found, meter)? {
            Scrubbed::Changed(c) => c,
            Scrubbed::Same => {
                if vocabulary {
                    scope.clean.learn(s);
                }
                return Ok(Scrubbed::Same);
            }
            Scrubbed::Drop => return Ok(Scrubbed::Drop),
        };
        for _ in 1..MAX_PASSES {
            match self.scrub_once(&current, scope, counts, found, meter)? {
                Scrubbed::Same => return Ok(Scrubbed::Changed(current)),
                Scrubbed::Changed(c) => current = c,
                Scrubbed::Drop => return Ok(Scrubbed::Drop),
            }
        }
        // Still changing: a long chain of glued look-alikes, each unmasking the next (only
        // adversarial input does this; the fuzzer found one). Drop the field rather than emit
        // text whose redaction has not settled.
        Ok(Scrubbed::Drop)
    }

    fn scrub_once(
        &self,
        s: &str,
        scope: &Scope,
        counts: &mut Counts,
        found: &mut Vec<Found>,
        meter: &mut Meter,
    ) -> Result<Scrubbed, Exceeded> {
        scope.scanner.find_within(s, found, meter)?;
        if found.is_empty() {
            return Ok(Scrubbed::Same);
        }
        // Building the output is one more pass over the text.
        meter.work(s.len())?;
        let mut out = String::with_capacity(s.len());
        let mut last = 0;
        for f in found.iter() {
            let d = scope.scanner.detector(f.detector);
            counts.add(&d.label);
            out.push_str(&s[last..f.start]);
            let value = &s[f.start..f.end];
            // What a pseudonym or hash is computed from: one value, one result, however it
            // was disguised.
            let value = || detect::canonical(value);
            match d.action {
                InlineAction::DropField => return Ok(Scrubbed::Drop),
                InlineAction::Mask => {
                    out.push('[');
                    out.push_str(&d.label);
                    out.push(']');
                }
                InlineAction::Pseudonymize => {
                    let c = d
                        .label
                        .chars()
                        .next()
                        .filter(char::is_ascii_alphabetic)
                        .unwrap_or('p')
                        .to_ascii_lowercase();
                    let mut domain = d.label.as_bytes().to_vec();
                    domain.push(0);
                    let p = self.keys.tagged(&c.to_string(), &domain, &value());
                    out.push_str(&format!("[{}:{p}]", d.label));
                }
                InlineAction::Hash => {
                    let mut domain = d.label.as_bytes().to_vec();
                    domain.push(0);
                    out.push_str(&format!(
                        "[{}:{}]",
                        d.label,
                        self.keys.hash_short(&domain, &value())
                    ));
                }
            }
            last = f.end;
        }
        out.push_str(&s[last..]);
        Ok(Scrubbed::Changed(out))
    }
}

/// Whether `path`, in a GenAI messages tree, names a message (`[i]`) or one of its parts
/// (`[i].parts[j]`): objects whose keys veil's own model writes (`role`, `parts`,
/// `finish_reason`; `type`, `content`, `arguments`, ...), not the app. Keys deeper down (tool
/// arguments, tool results) are the app's content.
fn genai_object(path: &[OwnedStep]) -> bool {
    match path {
        [OwnedStep::Index(_)] => true,
        [OwnedStep::Index(_), OwnedStep::Key(p), OwnedStep::Index(_)] => p == "parts",
        _ => false,
    }
}

/// Whether `path`, in a GenAI messages tree, names a field that holds one of a few enum
/// values (`role`, `finish_reason`; a part's `type`, `modality`, `mime_type`): the
/// semantic conventions' vocabulary, not content.
fn genai_value(path: &[OwnedStep]) -> bool {
    let Some((OwnedStep::Key(k), parent)) = path.split_last() else {
        return false;
    };
    match k.as_str() {
        "role" | "finish_reason" => matches!(parent, [OwnedStep::Index(_)]),
        "type" | "modality" | "mime_type" => genai_object(parent),
        _ => false,
    }
}

/// Whether an allowed header's value is protocol vocabulary (a media type, an encoding, an
/// API version or beta flag, the SDK's own `x-stainless-*` description of itself), which the
/// scope's [`CleanMemo`] may remember, rather than something that can name a person.
fn vocabulary_header(name: &str) -> bool {
    const NAMES: &[&str] = &[
        "content-type",
        "content-encoding",
        "accept",
        "accept-encoding",
        "openai-version",
        "openai-beta",
        "anthropic-version",
        "anthropic-beta",
    ];
    NAMES.iter().any(|n| name.eq_ignore_ascii_case(n))
        || name
            .as_bytes()
            .get(..12)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"x-stainless-"))
}

/// A step of the current path, owned so the tree can be mutated while walking.
enum OwnedStep {
    Key(String),
    Index(usize),
}

impl AsStep for OwnedStep {
    fn as_step(&self) -> Step<'_> {
        match self {
            OwnedStep::Key(k) => Step::Key(k),
            OwnedStep::Index(i) => Step::Index(*i),
        }
    }
}

/// State of one `redact_json` walk.
struct Walk<'a> {
    rules: &'a [&'a FieldRule],
    /// A GenAI messages tree (`Target::SystemInstructions`, `InputMessages`, `OutputMessages`),
    /// whose structure is veil's own: its field names and enum values may use the scope's
    /// [`CleanMemo`].
    messages: bool,
    scope: &'a Scope,
    counts: &'a mut Counts,
    found: &'a mut Vec<Found>,
    path: &'a mut Vec<OwnedStep>,
    meter: &'a mut Meter,
}

/// The first string or number under `identity` in `v` (depth first), into `hit`.
fn find_identity<'a>(
    identity: &JsonPath,
    v: &'a Value,
    path: &mut Vec<Step<'a>>,
    hits: &mut Vec<String>,
) {
    // Bounded: a request with thousands of matching leaves must not buy unbounded hashing.
    // Pruned: only subtrees the path can reach are walked (`$.user` reads one key of the
    // root, not every message).
    if hits.len() >= 4 * MAX_IDENTITIES || !identity.may_match_within(path) {
        return;
    }
    if identity.matches(path) {
        match v {
            Value::String(s) if !s.is_empty() => hits.push(s.clone()),
            Value::Number(n) => hits.push(n.to_string()),
            _ => {}
        }
        return;
    }
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                path.push(Step::Key(k));
                find_identity(identity, c, path, hits);
                path.pop();
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                path.push(Step::Index(i));
                find_identity(identity, c, path, hits);
                path.pop();
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
