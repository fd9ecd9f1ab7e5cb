//! # Rules files: the TOML format and its compiler.
//!
//! `file → RawRules (serde, spans kept) → CompiledRules`. The raw layer only mirrors the
//! file; every check that needs meaning (actions, paths, regexes, header names) happens in
//! `compile`, which reports the first problem as `file:line:col: message (in <rule>)` using
//! the span of the offending value. The format itself is documented in `rules/README.md`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::checksum;
use super::detect::{
    self, DictSpec, InlineAction, PatternSpec, ScanBuildError, Scanner, ScannerSpec,
};
use super::jsonpath::JsonPath;
use super::{CompiledRules, FieldAction, FieldRule, Glob, Scope, ScopeMatch, Target};
use crate::exchange::credentials;
use crate::keys::Keyring;

/// The only format version this build understands.
pub const FORMAT_VERSION: i64 = 1;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawRules {
    version: Spanned<i64>,
    #[serde(default)]
    identity: RawIdentity,
    default: Option<Spanned<String>>,
    #[serde(default)]
    fields: Vec<RawField>,
    #[serde(default)]
    detectors: RawDetectors,
    #[serde(default)]
    headers: RawHeaders,
    #[serde(default)]
    scopes: Vec<RawScope>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    #[serde(default)]
    json: Vec<Spanned<String>>,
    #[serde(default)]
    headers: Vec<Spanned<String>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawField {
    path: Spanned<String>,
    action: Spanned<String>,
    on: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RawDetectors {
    /// `None` (not written) at the top level means every built-in.
    #[serde(default)]
    builtin: Option<Vec<Spanned<String>>>,
    action: Option<Spanned<String>>,
    #[serde(default)]
    actions: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    regex: Vec<RawRegex>,
    #[serde(default)]
    dictionary: Vec<RawDict>,
}

/// Context window of a custom detector when the file gives none, in bytes on each side.
const DEFAULT_CONTEXT_WINDOW: usize = 32;
/// Largest context window: each candidate reads this many bytes on each side, so an unbounded
/// one made match-dense text cost candidates x text (veil#10). A context word is a label
/// near its value; 1 KiB is a paragraph.
const MAX_CONTEXT_WINDOW: usize = 1024;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawRegex {
    name: Spanned<String>,
    pattern: Spanned<String>,
    validator: Option<Spanned<String>>,
    #[serde(default)]
    context: Vec<String>,
    window: Option<Spanned<usize>>,
    action: Option<Spanned<String>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawDict {
    name: Spanned<String>,
    #[serde(default)]
    words: Vec<String>,
    file: Option<Spanned<String>>,
    action: Option<Spanned<String>>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RawHeaders {
    #[serde(default)]
    allow: Vec<Spanned<String>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawScope {
    name: Spanned<String>,
    #[serde(rename = "match")]
    when: RawMatch,
    default: Option<Spanned<String>>,
    #[serde(default)]
    fields: Vec<RawField>,
    #[serde(default)]
    detectors: RawDetectors,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    host: Option<Spanned<String>>,
    route: Option<Spanned<String>>,
    model: Option<Spanned<String>>,
    feature: Option<Spanned<String>>,
}

/// Why a rules file was refused: where (file, line, column), which rule, and what is wrong.
///
/// `Display` prints `file:line:col: message (in rule)`; the wording is for people, not for
/// parsing. Use the accessors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesError {
    file: String,
    line: usize,
    column: usize,
    rule: Option<String>,
    message: String,
}

impl RulesError {
    /// The file (or `<string>` for [`CompiledRules::from_str`]).
    pub fn file(&self) -> &str {
        &self.file
    }
    /// 1-based line of the offending value (0 when the file could not be read).
    pub fn line(&self) -> usize {
        self.line
    }
    /// 1-based column, in characters.
    pub fn column(&self) -> usize {
        self.column
    }
    /// The rule at fault, e.g. `fields[2]` or `detectors.regex "EMPLOYEE_ID"`.
    pub fn rule(&self) -> Option<&str> {
        self.rule.as_deref()
    }
    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
    pub(crate) fn io(file: &str, e: &std::io::Error) -> RulesError {
        RulesError {
            file: file.into(),
            line: 0,
            column: 0,
            rule: None,
            message: e.to_string(),
        }
    }
}

impl std::fmt::Display for RulesError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)?;
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )?;
        }
        if let Some(r) = &self.rule {
            write!(f, " (in {r})")?;
        }
        Ok(())
    }
}

impl std::error::Error for RulesError {}

/// Error factory bound to one file's text.
struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn at(
        &self,
        span: Range<usize>,
        rule: Option<String>,
        message: impl Into<String>,
    ) -> RulesError {
        let off = span.start.min(self.text.len());
        let before = &self.text[..self.text.floor_char_boundary(off)];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        RulesError {
            file: self.file.into(),
            line,
            column,
            rule,
            message: message.into(),
        }
    }
}

fn field_action(ctx: &Ctx<'_>, s: &Spanned<String>, rule: &str) -> Result<FieldAction, RulesError> {
    FieldAction::parse(s.get_ref()).ok_or_else(|| {
        ctx.at(
            s.span(),
            Some(rule.into()),
            format!(
                "unknown action {:?}; expected keep, drop, scrub, hash, pseudonymize or encrypt",
                s.get_ref()
            ),
        )
    })
}

fn inline_action(
    ctx: &Ctx<'_>,
    s: &Spanned<String>,
    rule: &str,
) -> Result<InlineAction, RulesError> {
    InlineAction::parse(s.get_ref()).ok_or_else(|| {
        ctx.at(
            s.span(),
            Some(rule.into()),
            format!(
                "unknown detector action {:?}; expected mask, pseudonymize, hash or drop_field",
                s.get_ref()
            ),
        )
    })
}

fn path(ctx: &Ctx<'_>, s: &Spanned<String>, rule: &str) -> Result<JsonPath, RulesError> {
    JsonPath::parse(s.get_ref()).map_err(|e| {
        // +1: the opening quote of the TOML string.
        let start = s.span().start + 1 + e.offset;
        ctx.at(
            start..start,
            Some(rule.into()),
            format!("bad JSON path {:?}: {}", s.get_ref(), e.message),
        )
    })
}

fn fields(ctx: &Ctx<'_>, raw: &[RawField], prefix: &str) -> Result<Vec<FieldRule>, RulesError> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, f) in raw.iter().enumerate() {
        let rule = format!("{prefix}fields[{i}] {:?}", f.path.get_ref());
        let targets = match &f.on {
            None => Target::ALL_BITS,
            Some(list) => {
                let mut bits = 0;
                for t in list {
                    bits |= Target::bits_by_name(t.get_ref()).ok_or_else(|| {
                        ctx.at(
                            t.span(),
                            Some(rule.clone()),
                            format!(
                                "unknown target {:?}; expected request, response, input_messages, output_messages, system_instructions, messages or all",
                                t.get_ref()
                            ),
                        )
                    })?;
                }
                bits
            }
        };
        out.push(FieldRule {
            path: path(ctx, &f.path, &rule)?,
            action: field_action(ctx, &f.action, &rule)?,
            targets,
        });
    }
    Ok(out)
}

/// Where each user pattern / dictionary came from, to map scanner errors back to the file.
struct Origins {
    patterns: Vec<Option<(Range<usize>, String)>>,
    dicts: Vec<(Range<usize>, String)>,
}

/// Built-in detectors no rules file can turn off: secrets and credentials.
const ALWAYS_ON: &[&str] = &[
    "private_key",
    "jwt",
    "anthropic_api_key",
    "openai_api_key",
    "github_token",
    "gitlab_token",
    "slack_token",
    "stripe_secret_key",
    "google_api_key",
    "aws_access_key_id",
    "aws_secret_access_key",
    "bearer_token",
    "password",
    "basic_auth",
    "base64_secret",
];

/// The always-on detectors as one scanner, built on first use.
pub(super) fn secrets() -> &'static Scanner {
    static SECRETS: std::sync::LazyLock<Scanner> = std::sync::LazyLock::new(|| {
        let mut spec = ScannerSpec::default();
        for b in detect::BUILTINS
            .iter()
            .filter(|b| ALWAYS_ON.contains(&b.key))
        {
            spec.add_builtin(b, InlineAction::Mask);
        }
        Scanner::build(&spec).expect("invariant: the built-in secret detectors compile")
    });
    &SECRETS
}

/// Whether an always-on (secret or credential) detector finds a value in `text` (the
/// decoded text of a base64 run: `checksum::base64_secret`).
pub(crate) fn holds_secret(text: &str) -> bool {
    let mut found = Vec::new();
    secrets().find(text, &mut found);
    !found.is_empty()
}

/// `text` with every value an always-on (secret or credential) detector finds replaced by
/// `[LABEL]`; borrowed when there is none. For text that is kept outside the rules' reach,
/// where no credential may stay: the request path of a sealed exchange (a key sent inside the
/// URL path, `/v1/keys/sk-proj-…/usage`). Percent-encoded text is scanned decoded as well
/// (`sk%2Dproj-…` is the same key to the server), and a match there masks the encoded bytes.
pub(crate) fn mask_secrets(text: &str) -> std::borrow::Cow<'_, str> {
    let mut found = Vec::new();
    secrets().find_in_url(text, &mut found);
    if found.is_empty() {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for f in &found {
        out.push_str(&text[last..f.start]);
        out.push('[');
        out.push_str(secrets().label(f.detector));
        out.push(']');
        last = f.end;
    }
    out.push_str(&text[last..]);
    std::borrow::Cow::Owned(out)
}

fn detectors(
    ctx: &Ctx<'_>,
    layers: &[(&RawDetectors, &str)],
    base_dir: Option<&Path>,
    digest: &mut blake3::Hasher,
) -> Result<Scanner, RulesError> {
    let mut spec = ScannerSpec::default();
    let mut origins = Origins {
        patterns: Vec::new(),
        dicts: Vec::new(),
    };
    // Default inline action: last layer that sets one.
    let mut default = InlineAction::Mask;
    let mut actions: BTreeMap<String, InlineAction> = BTreeMap::new();
    // Secrets and credentials are masked by every rules file: "no credential leaves" is a
    // promise of veil, not an option of the profile. A top level without a `builtin` list
    // gets every built-in, so a minimal file (`version = 1`) scrubs like the default profile.
    let mut builtins: Vec<&'static detect::Builtin> = detect::BUILTINS
        .iter()
        .filter(|b| ALWAYS_ON.contains(&b.key))
        .collect();
    if layers.first().is_some_and(|(raw, _)| raw.builtin.is_none()) {
        for x in detect::BUILTINS {
            if !builtins.iter().any(|y| y.key == x.key) {
                builtins.push(x);
            }
        }
    }
    for (raw, prefix) in layers {
        if let Some(a) = &raw.action {
            default = inline_action(ctx, a, &format!("{prefix}detectors.action"))?;
        }
        for (name, a) in &raw.actions {
            let rule = format!("{prefix}detectors.actions.{name}");
            actions.insert(name.clone(), inline_action(ctx, a, &rule)?);
        }
        for b in raw.builtin.iter().flatten() {
            let rule = format!("{prefix}detectors.builtin");
            if b.get_ref() == "all" {
                for x in detect::BUILTINS {
                    if !builtins.iter().any(|y| y.key == x.key) {
                        builtins.push(x);
                    }
                }
                continue;
            }
            let x = detect::builtin(b.get_ref()).ok_or_else(|| {
                let names: Vec<&str> = detect::BUILTINS.iter().map(|b| b.key).collect();
                ctx.at(
                    b.span(),
                    Some(rule.clone()),
                    format!(
                        "unknown built-in detector {:?}; known: all, {}",
                        b.get_ref(),
                        names.join(", ")
                    ),
                )
            })?;
            if !builtins.iter().any(|y| y.key == x.key) {
                builtins.push(x);
            }
        }
    }
    // Keep the built-in priority order whatever order the file lists them in.
    builtins.sort_by_key(|b| detect::BUILTINS.iter().position(|x| x.key == b.key));
    for b in builtins {
        let action = actions.get(b.key).copied().unwrap_or(default);
        let before = spec.patterns.len();
        spec.add_builtin(b, action);
        origins
            .patterns
            .resize(spec.patterns.len().max(before), None);
    }
    let mut priority = detect::BUILTINS.len() as u32;
    for (raw, prefix) in layers {
        for r in &raw.regex {
            let rule = format!("{prefix}detectors.regex {:?}", r.name.get_ref());
            let label = label(ctx, &r.name, &rule)?;
            let action = match &r.action {
                Some(a) => inline_action(ctx, a, &rule)?,
                None => actions
                    .get(label.to_ascii_lowercase().as_str())
                    .copied()
                    .unwrap_or(default),
            };
            let check = match &r.validator {
                None => None,
                Some(v) => Some(checksum::by_name(v.get_ref()).ok_or_else(|| {
                    ctx.at(
                        v.span(),
                        Some(rule.clone()),
                        format!(
                            "unknown validator {:?}; expected one of {}",
                            v.get_ref(),
                            checksum::VALIDATOR_NAMES
                        ),
                    )
                })?),
            };
            let window = match &r.window {
                None => DEFAULT_CONTEXT_WINDOW,
                Some(w) if *w.get_ref() <= MAX_CONTEXT_WINDOW => *w.get_ref(),
                Some(w) => {
                    return Err(ctx.at(
                        w.span(),
                        Some(rule.clone()),
                        format!(
                            "window is {} bytes; at most {MAX_CONTEXT_WINDOW} (every candidate \
                             reads this much text on each side)",
                            w.get_ref()
                        ),
                    ));
                }
            };
            let detector = spec.detectors.len();
            spec.detectors.push(detect::Detector {
                label: label.into(),
                action,
                priority,
            });
            priority += 1;
            spec.patterns.push(PatternSpec {
                detector,
                regex: r.pattern.get_ref().clone(),
                check,
                group: false,
                context: r.context.clone(),
                window,
                user: true,
                gate: detect::Gate::Always,
                footer: None,
                lead: None,
                skip: None,
                rescan: false,
            });
            origins.patterns.push(Some((r.pattern.span(), rule)));
        }
        for d in &raw.dictionary {
            let rule = format!("{prefix}detectors.dictionary {:?}", d.name.get_ref());
            let label = label(ctx, &d.name, &rule)?;
            let action = match &d.action {
                Some(a) => inline_action(ctx, a, &rule)?,
                None => default,
            };
            let mut words = d.words.clone();
            if let Some(f) = &d.file {
                let p = Path::new(f.get_ref());
                let p = match base_dir {
                    Some(dir) if p.is_relative() => dir.join(p),
                    _ => p.to_path_buf(),
                };
                let text = std::fs::read_to_string(&p).map_err(|e| {
                    ctx.at(
                        f.span(),
                        Some(rule.clone()),
                        format!("cannot read {}: {e}", p.display()),
                    )
                })?;
                digest.update(b"\0dictionary\0");
                digest.update(text.as_bytes());
                words.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(String::from),
                );
            }
            if words.iter().all(|w| w.trim().is_empty()) {
                return Err(ctx.at(
                    d.name.span(),
                    Some(rule),
                    "dictionary has no words (give `words` or `file`)",
                ));
            }
            let detector = spec.detectors.len();
            spec.detectors.push(detect::Detector {
                label: label.into(),
                action,
                priority,
            });
            priority += 1;
            spec.dicts.push(DictSpec { detector, words });
            origins.dicts.push((d.name.span(), rule));
        }
    }
    Scanner::build(&spec).map_err(|e| match e {
        ScanBuildError::Pattern(i, m) => match origins.patterns.get(i).cloned().flatten() {
            Some((span, rule)) => ctx.at(span, Some(rule), format!("bad regex: {m}")),
            None => ctx.at(
                0..0,
                None,
                format!("internal: built-in pattern failed: {m}"),
            ),
        },
        ScanBuildError::Dict(i, m) => {
            let (span, rule) = origins
                .dicts
                .get(i)
                .cloned()
                .unwrap_or((0..0, "detectors.dictionary".into()));
            ctx.at(span, Some(rule), format!("bad dictionary: {m}"))
        }
        ScanBuildError::Set(m) => ctx.at(0..0, None, format!("detectors too large together: {m}")),
    })
}

fn label(ctx: &Ctx<'_>, name: &Spanned<String>, rule: &str) -> Result<String, RulesError> {
    let n = name.get_ref();
    if n.is_empty() || n.len() > 64 || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(ctx.at(
            name.span(),
            Some(rule.into()),
            "detector names are 1-64 characters of A-Z, 0-9 and _",
        ));
    }
    Ok(n.to_ascii_uppercase())
}

fn glob(s: &Spanned<String>) -> Glob {
    Glob::new(s.get_ref())
}

/// Compiles rules text. `file` names it in errors; `base_dir` resolves dictionary files.
pub(crate) fn compile(
    text: &str,
    file: &str,
    base_dir: Option<&Path>,
    keys: &Keyring,
) -> Result<CompiledRules, RulesError> {
    let ctx = Ctx { file, text };
    let raw: RawRules = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        ctx.at(span, None, e.message().trim().to_string())
    })?;
    if *raw.version.get_ref() != FORMAT_VERSION {
        return Err(ctx.at(
            raw.version.span(),
            Some("version".into()),
            format!(
                "unsupported rules format version {} (this veil reads version {FORMAT_VERSION})",
                raw.version.get_ref()
            ),
        ));
    }
    let mut digest = blake3::Hasher::new();
    digest.update(b"veil rules\0v1\0");
    digest.update(text.as_bytes());

    let mut identity_paths = Vec::new();
    for (i, p) in raw.identity.json.iter().enumerate() {
        identity_paths.push(path(&ctx, p, &format!("identity.json[{i}]"))?);
    }
    let identity_headers: Vec<String> = raw
        .identity
        .headers
        .iter()
        .map(|h| h.get_ref().trim().to_ascii_lowercase())
        .collect();

    let mut allow = Vec::new();
    for (i, h) in raw.headers.allow.iter().enumerate() {
        let g = glob(h).lowercase();
        // Credential headers can never be exported: naming one (or a glob that matches one) is a
        // compile error here, and `header_allowed` refuses them again at run time.
        if let Some(c) = credentials::credential_headers().find(|c| g.matches(c)) {
            return Err(ctx.at(
                h.span(),
                Some(format!("headers.allow[{i}]")),
                format!(
                    "{:?} would export the credential header {c:?}; credentials are never exported",
                    h.get_ref()
                ),
            ));
        }
        if let Some(id) = identity_headers.iter().find(|c| g.matches(c)) {
            return Err(ctx.at(
                h.span(),
                Some(format!("headers.allow[{i}]")),
                format!(
                    "{:?} would export the identity header {id:?} raw; it is pseudonymized instead",
                    h.get_ref()
                ),
            ));
        }
        allow.push(g);
    }

    let base_default = match &raw.default {
        Some(d) => field_action(&ctx, d, "default")?,
        None => FieldAction::Scrub,
    };
    let base_fields = fields(&ctx, &raw.fields, "")?;
    let base_scanner = detectors(&ctx, &[(&raw.detectors, "")], base_dir, &mut digest)?;
    let base = Scope {
        name: "default".into(),
        default: base_default,
        fields: base_fields.clone(),
        scanner: base_scanner,
        clean: Default::default(),
        slot: 0,
    };

    let mut scopes = Vec::new();
    for (i, s) in raw.scopes.iter().enumerate() {
        let prefix = format!("scopes[{i}] {:?}: ", s.name.get_ref());
        let when = ScopeMatch {
            host: s.when.host.as_ref().map(|g| glob(g).lowercase()),
            route: s.when.route.as_ref().map(glob),
            model: s.when.model.as_ref().map(glob),
            feature: s.when.feature.as_ref().map(glob),
        };
        if when.host.is_none()
            && when.route.is_none()
            && when.model.is_none()
            && when.feature.is_none()
        {
            return Err(ctx.at(
                s.name.span(),
                Some(prefix.trim_end_matches([' ', ':']).into()),
                "a scope needs at least one of match.host, match.route, match.model, match.feature",
            ));
        }
        let default = match &s.default {
            Some(d) => field_action(&ctx, d, &format!("{prefix}default"))?,
            None => base_default,
        };
        // Scope rules first, then the base rules: the first rule that names a node wins.
        let mut f = fields(&ctx, &s.fields, &prefix)?;
        f.extend(base_fields.iter().cloned());
        let scanner = detectors(
            &ctx,
            &[(&raw.detectors, ""), (&s.detectors, &prefix)],
            base_dir,
            &mut digest,
        )?;
        scopes.push((
            when,
            Scope {
                name: s.name.get_ref().clone(),
                default,
                fields: f,
                scanner,
                clean: Default::default(),
                slot: 0,
            },
        ));
    }

    let digest = digest.finalize().to_hex().as_str()[..32].to_string();
    Ok(CompiledRules::assemble(
        digest,
        identity_paths,
        identity_headers,
        allow,
        base,
        scopes,
        keys,
    ))
}
