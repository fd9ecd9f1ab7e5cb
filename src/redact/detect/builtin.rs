//! The built-in detectors: patterns, validators, triggers, in priority order.
//!
//! Part of the redact step's detectors (`detect/`). Owns the table [`BUILTINS`] and what each
//! entry promises the prefilter (its [`Trigger`]); [`build`](super::build) compiles the table,
//! [`gates`](super::gates) and [`literals`](super::literals) rely on the triggers. Data and
//! small predicates only: never scans, never compiles a regex.

use super::*;

/// What every match of a built-in detector contains, for the prefilter. Each variant is a
/// *necessary* condition (see [`Windows`] and the literal pass in [`Scanner::find`]); the
/// test `gated_scan_equals_exhaustive_scan` checks it against an unfiltered scan.
#[derive(Clone, Copy, Debug)]
pub(super) enum Trigger {
    /// A cluster of at least [`MIN_CLUSTER_DIGITS`] digits, or an IBAN's `[A-Z]{2}[0-9]{2}`.
    Digit,
    /// An `@`.
    At,
    /// A `:` followed by a hex digit or another `:`.
    Colon,
    /// Every match *starts* with one of these literals, or at most `.1` bytes before one.
    Literal(&'static [&'static str], usize),
    /// No patterns: the detector is code ([`Code`]) that finds its own anchors (names,
    /// street addresses), given the whole text.
    Code(Code),
}

/// How a [`Code`] detector is asked to search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// With its prefilter: only where its anchors (a capitalized word, a street-type word,
    /// ...) occur. What [`Scanner::find`] uses.
    Gated,
    /// Without: every position the detector could start at is tried. The reference
    /// [`Scanner::find_exhaustive`] uses, which the gated mode must equal (tests, fuzzing).
    Exhaustive,
}

/// A detector written as code rather than as patterns: pushes the byte ranges to mask in
/// `text` (any order, may overlap; the scanner resolves overlaps) and charges its work to
/// `meter` (about one unit per byte looked at, one per candidate), stopping with `Err` when
/// the budget runs out.
pub(crate) type Code = fn(
    text: &str,
    mode: Mode,
    out: &mut Vec<Range<usize>>,
    meter: &mut Meter,
) -> Result<(), Exceeded>;

/// Digit groups with no prefix (ES `612 345 678`, IT `312 345 6789`): a phone number only
/// near a region hint. At most [`crate::redact::phone::UNPREFIXED_MAX_LEN`] bytes long.
pub(crate) const UNPREFIXED_PHONE: &str =
    r"(?-u:\b)[1-9][0-9]{1,3}(?:[ .\-][0-9]{2,4}){2,3}(?-u:\b)";

/// One built-in detector: patterns, validator, and which part of a match to mask.
#[derive(Debug)]
pub(crate) struct Builtin {
    /// Name in rules files (`email`).
    pub key: &'static str,
    /// Label in masks and counts (`EMAIL`).
    pub label: &'static str,
    pub(super) patterns: &'static [Pat],
    pub(super) trigger: Trigger,
}

/// One pattern of a built-in detector.
#[derive(Debug)]
pub(super) struct Pat {
    pub(super) re: &'static str,
    pub(super) check: Option<Check>,
    /// Mask capture group 1 instead of the whole match (context words stay readable).
    pub(super) group: bool,
    /// A closing line the match extends to when one is reachable (PEM blocks).
    pub(super) footer: Option<Footer>,
    /// The bytes of the run every match starts with, when an attempt may scan that run
    /// whole before failing (see [`Scanner::find_literals`]). Only for patterns where a
    /// failed attempt at `x` implies one at every later start in the run.
    pub(super) lead: Option<fn(u8) -> bool>,
    /// Where a search may resume: a necessary condition of the validator that is cheaper to
    /// test over a stretch of text than per candidate (see [`Skip`]). Gated scans only.
    pub(super) skip: Option<Skip>,
    /// After a candidate, accepted or not, the search resumes one character on (at the next
    /// literal), never past the candidate (see [`resume_at`](super::resume_at)). For
    /// patterns whose candidate can run over the start of a real match, but whose attempts
    /// read disjoint stretches, so that trying every start stays linear: a quoted password's
    /// value runs to the next quote of its kind, and a quote left open earlier on the line
    /// pairs with the opening quote of the next password, whose value the skip would hide;
    /// every attempt that reads a value has an opening quote of its own, and the value ends
    /// at the next one.
    pub(super) rescan: bool,
    /// The literals this pattern is tried at, when not its detector's
    /// ([`Trigger::Literal`]'s, with the same `back`): a pattern anchored on a word of its
    /// own (a command's name: `redis-cli`, `docker login`) is then not tried at every
    /// literal of its detector, nor the detector's other patterns at its words. Every match
    /// must start with one of them, as for the detector's.
    pub(super) literals: Option<&'static [&'static str]>,
}

/// `skip(text, at, end)`: the first position in `at..end` at which a match of the pattern
/// that lies within `at..end` could pass its validator (`end` when none can), and the bytes
/// read to learn it. Every accepted match must start at or after the returned position, so
/// searching from there finds the same accepted matches as searching from `at` (a rejected
/// short candidate only moves the search one character on). The unprefixed phone pattern
/// uses it: its validator needs a region hint nearby, and most digit groups have none.
pub(crate) type Skip = fn(text: &str, at: usize, end: usize) -> (usize, usize);

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

pub(super) const fn pat(re: &'static str, check: Check) -> Pat {
    Pat {
        re,
        check: Some(check),
        group: false,
        footer: None,
        lead: None,
        skip: None,
        rescan: false,
        literals: None,
    }
}

/// A bare shell word holding a password, as capture group 1: no blank, quote, `\` or
/// `; & | < > ( )` (the shell would end the word there, or it is an escaped quote of JSON
/// text), any length, not starting with `-` (the next option).
macro_rules! shell_word {
    () => {
        r#"([^\s"'`;&|<>()\\\-][^\s"'`;&|<>()\\]*)"#
    };
}

/// [`shell_word!`] glued to its option (`-pX`, `pass:X`): it may start with `-`. Uncaptured.
macro_rules! glued_run {
    () => {
        r#"[^\s"'`;&|<>()\\][^\s"'`;&|<>()\\]*"#
    };
}

/// [`glued_run!`] as capture group 1.
macro_rules! glued_word {
    () => {
        concat!("(", glued_run!(), ")")
    };
}

/// The text of a double-quoted password (no quote, backslash or line end). Uncaptured.
macro_rules! double_quoted_text {
    () => {
        r#"[^"\\\r\n]+"#
    };
}

/// A double-quoted password as capture group 1, the quotes JSON-escaped or not.
macro_rules! double_quoted {
    () => {
        concat!(r#"\\?"("#, double_quoted_text!(), r#")\\?""#)
    };
}

/// The key a password is assigned to: a password word (`password`, `passwd`, `passphrase`,
/// in three casings) ending a word, or followed by a suffix naming another field of the same
/// secret (`password_confirmation`, `passwordConfirm`, `Password_2`, `new_password_again`)
/// or a deployment (`REDIS_PASSWORD_PROD`, `db-password-staging`, `passwordProd`): one
/// suffix word in any ASCII case, after `_`, `-` or nothing. Uncaptured.
macro_rules! password_key {
    () => {
        concat!(
            r#"(?:[Pp]ass(?:word|wd|phrase)|PASS(?:WORD|WD|PHRASE))"#,
            r#"(?:[_-]?(?i-u:confirm(?:ation)?|again|repeat|retype|verify|verification|new|old"#,
            r#"|current|prod|production|preprod|staging|stage|stg|dev|development|test|qa|uat"#,
            r#"|sandbox|local|[0-9]{1,2}))?(?-u:\b)"#
        )
    };
}

/// A [`password_key!`] and what assigns a value to it: `:`, `=`, `=>` or `:=`, the key
/// quoted or not (JSON-escaped too: `\"password\": `), and the key may be a prompt ending
/// in its own `:` (`{"password: ": "…"}`, pexpect's and Ansible's maps from a prompt to its
/// answer) or a subscript, bare or URL-encoded (a form's `user[password]=…`,
/// `user%5Bpassword%5D=…`; `config["password"] = "…"`). Uncaptured.
macro_rules! password_assign {
    () => {
        concat!(
            password_key!(),
            r#"(?:[ \t]*:[ \t]*\\?["']|\\?["']?)(?:\]|%5[Dd])?[ \t]*(?:=>|:=|[:=])[ \t]*"#
        )
    };
}

/// Blanks between a command's words: spaces, tabs, or a line continued with `\`.
macro_rules! blanks {
    () => {
        r#"(?:[ \t]|\\\r?\n)+"#
    };
}

/// OpenSSL's password options (`-passin`, `-passout`, `-pass`, `-password`), starting a word.
macro_rules! openssl_pass {
    () => {
        concat!(r#"(?-u:\B)-pass(?:in|out|word)?"#, blanks!())
    };
}

/// `sshpass`, its other options (`-v`, `-P prompt`, `-d fd`), then `-p`; the password follows,
/// glued or after blanks.
macro_rules! sshpass_p {
    () => {
        concat!(
            r#"(?-u:\b)sshpass(?:"#,
            blanks!(),
            r#"-(?:v|[Pd](?:[ \t]*(?:"[^"\r\n]*"|'[^'\r\n]*'|[^\s"']+))))*"#,
            blanks!(),
            r#"-p(?:[ \t]|\\\r?\n)*"#
        )
    };
}

/// An argument of a MySQL client that is no option: a word not starting with `-` or a quote.
/// Words end at ASCII blanks only (not Unicode's other spaces, which no shell splits on): each
/// class is compiled into [`mysql_p!`]'s 48 repetitions, and Unicode's spaces split it into
/// many byte ranges (stop 73: 0.74 MB of automaton with them, 0.44 without).
macro_rules! mysql_word {
    () => {
        r#"[^\t\n\x0B\x0C\r ;&|\-'"][^\t\n\x0B\x0C\r ;&|]*"#
    };
}

/// One option of a MySQL client other than `-p`: `--long`, `--long=value`, `--long value`,
/// `-x value` or `-xvalue`.
macro_rules! mysql_option {
    () => {
        concat!(
            r#"(?:--[^\t\n\x0B\x0C\r ;&|]+(?:"#,
            blanks!(),
            mysql_word!(),
            r#")?|-[A-Za-oq-z](?:[^\t\n\x0B\x0C\r ;&|]+|"#,
            blanks!(),
            mysql_word!(),
            r#")?)"#
        )
    };
}

/// A MySQL or MariaDB client (`mysql`, `mysqldump`, `mariadb-dump`, `mysql.exe`, ...), its
/// options (up to 24 before and 24 after one other word among them: the database; each
/// bounded repetition is compiled into the automaton, so the bound is memory), then `-p`,
/// the password glued to it or quoted right after it. More other words (prose, another
/// command's arguments) end the command.
macro_rules! mysql_p {
    () => {
        concat!(
            r#"(?-u:\b)(?:mysql(?:dump|admin|import|check|show|slap|pump|sh|binlog)?"#,
            r#"|mariadb(?:-(?:dump|admin|import|check|show|slap|binlog))?)(?:\.exe)?"#,
            r#"(?:"#,
            blanks!(),
            mysql_option!(),
            r#"){0,24}?(?:"#,
            blanks!(),
            mysql_word!(),
            r#"(?:"#,
            blanks!(),
            mysql_option!(),
            r#"){0,24}?)?"#,
            blanks!(),
            r#"-p"#
        )
    };
}

/// The arguments of a command before the option looked for: up to 12 words (16 for curl's
/// headers and data: `command_args!(16)`), each a run of quoted strings (one line; blanks
/// and `; & |` inside them are the argument's) and bytes other than blanks, quotes and `; &
/// |`. ASCII blanks only, as in [`mysql_word!`]. Each repetition is about 4 KB of automaton
/// (stop 75). Uncaptured.
macro_rules! command_args {
    () => {
        command_args!(12)
    };
    ($n:literal) => {
        concat!(
            "(?:",
            blanks!(),
            r#"(?:"[^"\r\n]*"|'[^'\r\n]*'|[^\t\n\x0B\x0C\r ;&|"'])+){0,"#,
            stringify!($n),
            "}?"
        )
    };
}

/// A command's name: `names` starting a word, optionally `.exe`, and the closing quote of a
/// quoted program path (`"C:\Program Files\7-Zip\7z.exe" a …`). Uncaptured.
macro_rules! command {
    ($names:expr) => {
        concat!(r#"(?-u:\b)(?:"#, $names, r#")(?:\.exe|\.EXE)?["']?"#)
    };
}

/// The value of a command's password option, glued to it or after blanks, as capture group 1
/// with its quotes: double-quoted (JSON-escaped too), single-quoted, or a shell word
/// ([`shell_word!`]'s bytes). [`checksum::password_option_value`] takes the quotes off.
macro_rules! option_value {
    () => {
        concat!(r#"(?:[ \t]|\\\r?\n)*"#, option_word!())
    };
}

/// [`option_value!`]'s value alone, glued to what comes before it. Double-quoted, a
/// backslash escapes the byte after it unless that is a quote (`"CORP\alice:pw"`; `\"`
/// closes a JSON-escaped value); bare, brackets may follow its first byte (`P@ss(w0rd)`:
/// `cmd.exe` takes them; [`checksum::password_option_value`] drops closers of brackets
/// opened before the value).
macro_rules! option_word {
    () => {
        concat!(
            r#"(\\?"(?:[^"\\\r\n]|\\[^"\r\n])+\\?"|'[^'\r\n]+'"#,
            r#"|[^\s"'`;&|<>()\\\-][^\s"'`;&|<>\\]*)"#
        )
    };
}

/// SQL's blanks: spaces, tabs, line breaks.
macro_rules! sql_blanks {
    () => {
        r#"[ \t\r\n]+"#
    };
}

pub(super) const fn grp(re: &'static str, check: Option<Check>) -> Pat {
    Pat {
        re,
        check,
        group: true,
        footer: None,
        lead: None,
        skip: None,
        rescan: false,
        literals: None,
    }
}

/// [`grp`] for a quoted value that runs to the next quote of its kind: searched again from
/// every start ([`Pat::rescan`]).
pub(super) const fn quoted(re: &'static str, check: Check) -> Pat {
    Pat {
        rescan: true,
        ..grp(re, Some(check))
    }
}

/// `p`, tried at `literals` instead of its detector's ([`Pat::literals`]).
pub(super) const fn at(literals: &'static [&'static str], p: Pat) -> Pat {
    Pat {
        literals: Some(literals),
        ..p
    }
}

/// What a PEM body may hold before its END line: base64, RFC 1421 headers (`Proc-Type: 4,
/// ENCRYPTED`, `DEK-Info: AES-128-CBC,…`), line breaks, spaces (keys pasted on one line) and
/// `\` (a `\n` escaped inside a JSON string or a shell variable).
pub(super) fn pem_body(b: u8) -> bool {
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
            skip: None,
            rescan: false,
            literals: None,
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
            skip: None,
            rescan: false,
            literals: None,
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
        key: "gitlab_token",
        label: "GITLAB_TOKEN",
        // GitLab's documented token prefixes (docs.gitlab.com, "Token prefixes"): personal,
        // deploy, runner, CI/CD job, pipeline trigger, OAuth application secret, feed,
        // incoming mail, agent, SCIM and feature-flag client tokens, then at least 20 of
        // base64url. A newer token's `.01.…` routing suffix is left: the secret
        // is the part before it.
        patterns: &[pat(
            r"gl(?:pat|dt|rt|cbt|ptt|oas|ft|imt|agent|soat|ffct)-[A-Za-z0-9_\-]{20,}",
            checksum::key::<{ checksum::B64URL }, { checksum::ANY_LEN }>,
        )],
        trigger: Trigger::Literal(
            &[
                "glpat-", "gldt-", "glrt-", "glcbt-", "glptt-", "gloas-", "glft-", "glimt-",
                "glagent-", "glsoat-", "glffct-",
            ],
            0,
        ),
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
        key: "password",
        label: "PASSWORD",
        // A value assigned to a password word (`password=…`, `"passwd": "…"`, `PASSPHRASE:
        // …`, `db_password=…`, `password => '…'`, `password := "…"`, JSON escaped inside a
        // string): the word stays, the value goes. Quoted, the value runs to its closing
        // quote (any length, one line; a candidate that runs from a quote left open earlier
        // into the next password is masked with it, and the search starts again at every
        // password word: [`Pat::rescan`]); bare, it ends at whitespace, a quote, `<` `>`
        // `,` `;` `&` (a query string's next parameter) or a bracket it did not open
        // (`P@ss(w0rd)1` is one value, `f(password=hunter22)` ends before `)`), does not
        // start with a bracket (`[PASSWORD]`, `{pw}`, `(hidden)`), and is at least 6 bytes.
        // Code is not a password: [`checksum::password`] rejects type and schema words,
        // variables and calls (`password: string`, `password=os.environ[…]`, `$DB_PASSWORD`).
        // The three casings the literal pass looks for, as for `secret` and `bearer`.
        patterns: &[
            quoted(
                concat!(password_assign!(), double_quoted!()),
                checksum::password_quoted,
            ),
            quoted(
                concat!(password_assign!(), r#"'([^'\r\n]+)'"#),
                checksum::password_quoted,
            ),
            grp(
                concat!(
                    password_assign!(),
                    r#"\\?["']?([^\s"'<>(){}\[\],;&][^\s"'<>,;&]{5,})"#
                ),
                Some(checksum::password),
            ),
            // A command line's flag (`--password hunter22`, `--db-password 'a b'`): the
            // checks require `--` before the word, so prose (`the password field`) is not
            // read as one; a bare value may not start with `-` (the next flag).
            quoted(
                concat!(
                    r#"(?:[Pp]ass(?:word|wd|phrase)|PASS(?:WORD|WD|PHRASE))"#,
                    r#"[ \t]+"([^"\r\n]+)""#
                ),
                checksum::password_flag_quoted,
            ),
            quoted(
                concat!(
                    r#"(?:[Pp]ass(?:word|wd|phrase)|PASS(?:WORD|WD|PHRASE))"#,
                    r#"[ \t]+'([^'\r\n]+)'"#
                ),
                checksum::password_flag_quoted,
            ),
            // The same in a JSON string (`"cmd": "… -Password \"…\""`).
            quoted(
                concat!(
                    r#"(?:[Pp]ass(?:word|wd|phrase)|PASS(?:WORD|WD|PHRASE))"#,
                    r#"[ \t]+\\"([^"\\\r\n]+)\\""#
                ),
                checksum::password_flag_quoted,
            ),
            grp(
                concat!(
                    r#"(?:[Pp]ass(?:word|wd|phrase)|PASS(?:WORD|WD|PHRASE))"#,
                    r#"[ \t]+([^\s"'<>(){}\[\],;&\-][^\s"'<>,;&]{5,})"#
                ),
                Some(checksum::password_flag),
            ),
            // An XML element (`<password>…</password>`, `<db:Password>…`): the value runs to
            // the next tag, on one line. The pattern does not ask for that tag's `</`, the
            // check does: a failed attempt would otherwise scan to the line's end from every
            // `password>` on it, and a candidate that is read whole and rejected lets the
            // search resume past it (`resume_at`), so the scan stays linear without a bound
            // on the value's length.
            grp(
                concat!(
                    r#"(?:[Pp]ass(?:word|wd|phrase)|PASS(?:WORD|WD|PHRASE))"#,
                    r#">([^<\r\n]+)"#
                ),
                Some(checksum::password_element),
            ),
            // The short words, only as `word=value` with the word starting a token or after
            // `_` (`&pass=…`, `DB_PASS=…`, ODBC's `Pwd=…;`; not `bypass=`, `cwd=`), the value
            // as a bare one, and not a path (`PWD=/home/…` is the shell's working directory).
            grp(
                r#"(?:pass|Pass|PASS|pwd|Pwd|PWD)=([^\s"'<>(){}\[\],;&][^\s"'<>,;&]{5,})"#,
                Some(checksum::password_short_word),
            ),
            // Command lines that take a password in a form of their own: OpenSSL's `pass:`
            // source (`-passin pass:…`, `-passout`, `-pass`, `-password`;
            // openssl-passphrase-options(1)), `sshpass -p …`, and the MySQL clients' `-p…`
            // glued to its flag (`mysql -u root -phunter22`; `-p` alone prompts). Any length:
            // the option says it is a password. A bare value is a shell word, so it ends at a
            // blank, a quote or `; & | < > ( )`.
            grp(
                concat!(openssl_pass!(), "pass:", glued_word!()),
                Some(checksum::password_option),
            ),
            grp(
                concat!(
                    openssl_pass!(),
                    r#"(?:pass:\\?"|\\?"pass:)([^"\\\r\n]+)\\?""#
                ),
                Some(checksum::password_option),
            ),
            grp(
                concat!(openssl_pass!(), r#"(?:pass:'|'pass:)([^'\r\n]+)'"#),
                Some(checksum::password_option),
            ),
            grp(
                concat!(sshpass_p!(), shell_word!()),
                Some(checksum::password_option),
            ),
            grp(
                concat!(sshpass_p!(), double_quoted!()),
                Some(checksum::password_option),
            ),
            grp(
                concat!(sshpass_p!(), r#"'([^'\r\n]+)'"#),
                Some(checksum::password_option),
            ),
            // One pattern for the three forms of the MySQL value (glued word, double- or
            // single-quoted), the quotes inside its group, [`checksum::password_glued`]
            // taking them off: its option repetitions are most of the detectors' compiled
            // memory, so they are compiled once (stop 73: 2.2 MB as three patterns).
            grp(
                concat!(
                    mysql_p!(),
                    r#"(\\?""#,
                    double_quoted_text!(),
                    r#"\\?"|'[^'\r\n]+'|"#,
                    glued_run!(),
                    ")"
                ),
                Some(checksum::password_glued),
            ),
            // Other commands' password options, each pattern tried only where its command's
            // name occurs ([`at`]): the command, up to 12 arguments ([`command_args!`]), the
            // option, its value glued or after blanks ([`option_value!`]). Registry and cloud
            // logins' `-p` (`docker login -u u -p …`, `az login`, `oc login`; the literal is
            // the two words with one space), MongoDB's shells and tools, `rabbitmqadmin`,
            // PsExec: `-p`.
            at(
                &[
                    "docker login",
                    "podman login",
                    "nerdctl login",
                    "buildah login",
                    "skopeo login",
                    "oras login",
                    "helm registry login",
                    "az login",
                    "oc login",
                    "cf login",
                    "docker.exe login",
                    "podman.exe login",
                    "oc.exe login",
                    "az.exe login",
                    "mongo",
                    "rabbitmqadmin",
                    "psexec",
                    "PsExec",
                    "PSEXEC",
                ],
                grp(
                    concat!(
                        command!(concat!(
                            r#"(?:docker|podman|nerdctl|buildah|skopeo|oras|helm registry|az|oc"#,
                            r#"|cf)(?:\.exe)? login|mongo(?:sh|dump|restore|import|export|stat"#,
                            r#"|top|files)?|rabbitmqadmin|psexec(?:64)?|PsExec(?:64)?|PSEXEC(?:64)?"#
                        )),
                        command_args!(),
                        blanks!(),
                        "-p",
                        option_value!()
                    ),
                    Some(checksum::password_option_not_port),
                ),
            ),
            // Redis's clients: `-a` or `--pass`.
            at(
                &["redis-cli", "keydb-cli", "valkey-cli"],
                grp(
                    concat!(
                        command!(r#"(?:redis|keydb|valkey)-cli"#),
                        command_args!(),
                        blanks!(),
                        "(?:-a|--pass=?)",
                        option_value!()
                    ),
                    Some(checksum::password_option_value),
                ),
            ),
            // OpenLDAP's clients: `-w` (`-W` prompts).
            at(
                &["ldap"],
                grp(
                    concat!(
                        command!(concat!(
                            r#"ldap(?:search|add|modify|delete|passwd|whoami|compare|modrdn"#,
                            r#"|exop|url|vi)"#
                        )),
                        command_args!(),
                        blanks!(),
                        "-w",
                        option_value!()
                    ),
                    Some(checksum::password_option_value),
                ),
            ),
            // `ldappasswd`'s new or old password, `-s` or `-a` (`-S` and `-A` prompt). One
            // pattern, so only the first of the two is masked: a pattern each held 62 KB of
            // automaton more, past the always-on scanner's bound.
            at(
                &["ldappasswd"],
                grp(
                    concat!(
                        command!("ldappasswd"),
                        command_args!(),
                        blanks!(),
                        "-[sa]",
                        option_value!()
                    ),
                    Some(checksum::password_option_value),
                ),
            ),
            // `-P`: SQL Server's `sqlcmd`, `bcp`, `osql`; Sybase `isql`; `ipmitool`; the
            // Mosquitto clients; `zip` and `unzip`, whose flags are often combined, `-P`
            // last (`zip -rP …`, `unzip -oP …`, `zip -9erP …`).
            at(
                &[
                    "sqlcmd",
                    "SQLCMD",
                    "Sqlcmd",
                    "bcp",
                    "BCP",
                    "osql",
                    "OSQL",
                    "isql",
                    "ipmitool",
                    "mosquitto_",
                    "zip",
                    "unzip",
                ],
                grp(
                    concat!(
                        command!(concat!(
                            r#"sqlcmd|SQLCMD|Sqlcmd|bcp|BCP|osql|OSQL|isql|ipmitool"#,
                            r#"|mosquitto_(?:pub|sub|rr)|zip|unzip"#
                        )),
                        command_args!(),
                        blanks!(),
                        "-[a-z0-9]{0,4}P",
                        option_value!()
                    ),
                    Some(checksum::password_option_value),
                ),
            ),
            // 7-Zip's and RAR's `-p`, the password glued to it (`-p` alone prompts, and the
            // next word is the archive), after the command's letter (`7z a`, `rar x`: a path
            // ending in `.7z` is no command); RAR's `-hp`, which encrypts the names too.
            at(
                &["7z", "rar", "unrar"],
                grp(
                    concat!(
                        command!(r#"7z[ar]?|rar|unrar"#),
                        blanks!(),
                        r#"(?:rn|[abdehiltux])(?-u:\b)"#,
                        command_args!(),
                        blanks!(),
                        "-h?p",
                        option_word!()
                    ),
                    Some(checksum::password_glued),
                ),
            ),
            // curl's `-u user:password` (`--user`, and `-U`/`--proxy-user` for the proxy):
            // the user stays, the password goes; without `:` curl asks for it.
            at(
                &["curl"],
                grp(
                    concat!(
                        command!("curl"),
                        command_args!(16),
                        blanks!(),
                        r#"(?:-u|-U|--user|--proxy-user)(?:[ \t]|\\\r?\n|=)*"#,
                        option_word!()
                    ),
                    Some(checksum::password_after::<':'>),
                ),
            ),
            // Samba's clients' `-U user%password`.
            at(
                &["smbclient", "rpcclient", "smbcacls", "smbget", "smbtree"],
                grp(
                    concat!(
                        command!("smbclient|rpcclient|smbcacls|smbget|smbtree"),
                        command_args!(),
                        blanks!(),
                        r#"(?:-U|--user(?:name)?)(?:[ \t]|\\\r?\n|=)*"#,
                        option_word!()
                    ),
                    Some(checksum::password_after::<'%'>),
                ),
            ),
            // Java's keytool and jarsigner: `-storepass`, `-keypass` and their `-src`/`-dest`
            // forms, the password after blanks (`-storepass:env VAR` names a variable).
            at(
                &[
                    "-storepass",
                    "-keypass",
                    "-srcstorepass",
                    "-deststorepass",
                    "-srckeypass",
                    "-destkeypass",
                ],
                grp(
                    concat!(
                        r#"(?-u:\B)-(?:src|dest)?(?:store|key)pass"#,
                        blanks!(),
                        option_word!()
                    ),
                    Some(checksum::password_option_value),
                ),
            ),
            // PowerShell's `ConvertTo-SecureString "…" -AsPlainText` (its switches, and
            // `-String`, may come first): a quoted literal made into a credential.
            at(
                &[
                    "ConvertTo-SecureString",
                    "convertto-securestring",
                    "CONVERTTO-SECURESTRING",
                ],
                grp(
                    concat!(
                        r#"(?:ConvertTo-SecureString|convertto-securestring"#,
                        r#"|CONVERTTO-SECURESTRING)(?:[ \t]+-(?i-u:asplaintext|force|string))*"#,
                        r#"[ \t]+(\\?""#,
                        double_quoted_text!(),
                        r#"\\?"|'[^'\r\n]+')"#
                    ),
                    Some(checksum::password_option_value),
                ),
            ),
            // SQL: `IDENTIFIED BY '…'` (MySQL, MariaDB, Oracle; `IDENTIFIED WITH plugin BY`,
            // `BY PASSWORD '<hash>'`, Oracle's bare `IDENTIFIED BY tiger` in a statement about
            // a user: [`checksum::password_sql`]) and MySQL's `SET PASSWORD [FOR u] = '…'`
            // (or `= PASSWORD('…')`). PostgreSQL's `PASSWORD '…'` is the flag pattern above,
            // its check asking for a statement about a user.
            at(
                &["identified", "IDENTIFIED", "Identified"],
                grp(
                    concat!(
                        r#"(?-u:\b)(?:identified|IDENTIFIED|Identified)(?:"#,
                        sql_blanks!(),
                        r#"(?i-u:with)"#,
                        sql_blanks!(),
                        r#"['"`]?[A-Za-z0-9_]+['"`]?)?"#,
                        sql_blanks!(),
                        r#"(?i-u:by|as)(?:"#,
                        sql_blanks!(),
                        r#"(?i-u:password|values))?"#,
                        sql_blanks!(),
                        r#"(\\?""#,
                        double_quoted_text!(),
                        r#"\\?"|'[^'\r\n]+'|[^\s"'`;,()\\]+)"#
                    ),
                    Some(checksum::password_sql),
                ),
            ),
            at(
                &["SET PASSWORD", "set password", "Set Password"],
                grp(
                    concat!(
                        r#"(?:SET PASSWORD|set password|Set Password)(?:[ \t]+(?i-u:for)[ \t]+"#,
                        r#"[^\s=;]+)?[ \t]*=[ \t]*(?:(?i-u:(?:old_)?password)\([ \t]*)?"#,
                        r#"(\\?""#,
                        double_quoted_text!(),
                        r#"\\?"|'[^'\r\n]+')"#
                    ),
                    Some(checksum::password_option_value),
                ),
            ),
            // A URL's userinfo (RFC 3986 §3.2.1: `postgres://app:…@db`, `redis://:…@cache`):
            // the user stays, the password goes. No `[` `]` (not allowed there, and a mask
            // is one). Neither part is bounded: neither holds `/`, so an attempt ends before
            // the next `://`.
            grp(
                r#"://[^\s/:@?#"'<>]*:([^\s/@?#"'<>\[\]]+)@"#,
                Some(checksum::password_quoted),
            ),
        ],
        trigger: Trigger::Literal(
            &[
                "pass", "Pass", "PASS", "pwd", "Pwd", "PWD", "://", "-pass", "sshpass", "mysql",
                "mariadb",
            ],
            0,
        ),
    },
    Builtin {
        key: "basic_auth",
        label: "BASIC_AUTH",
        // RFC 7617 `Basic <base64(user:password)>`: the word stays, the credentials go. The
        // token must decode to printable text with a `:` ([`checksum::basic_credentials`]),
        // so prose (`Basic Instructions`) is not one. The three casings, as for `Bearer`.
        patterns: &[grp(
            r"(?:basic|Basic|BASIC)[ \t]+([A-Za-z0-9+/]{6,}={0,2})",
            Some(checksum::basic_credentials),
        )],
        trigger: Trigger::Literal(&["basic", "Basic", "BASIC"], 0),
    },
    Builtin {
        key: "base64_secret",
        label: "BASE64_SECRET",
        // A secret sent base64-encoded (a Kubernetes Secret's `data`, a config blob):
        // `c2stcHJvai1…` is `sk-proj-…`. The run starts with the encoding of a secret's prefix
        // at the start of the encoded stream (`sk-` `sk_` `gh*` `github` `glp` `AKIA` `ASIA`
        // `AIza` `xox` `-----` `eyJ`, and `{"`: encoded JSON such as a `.dockerconfigjson`),
        // and is masked whole when its decoded text holds a value
        // an always-on detector finds ([`checksum::base64_secret`]). Standard alphabet,
        // padding optional.
        patterns: &[Pat {
            re: r"(?:c2st|c2tf|Z2h|Z2l0|Z2xw|QUtJ|QVNJ|QUl6|eG94|LS0tLS1|ZXlK|eyJ)[A-Za-z0-9+/]{12,}={0,2}",
            check: Some(checksum::base64_secret),
            group: false,
            footer: None,
            lead: None,
            skip: None,
            rescan: false,
            literals: None,
        }],
        trigger: Trigger::Literal(
            &[
                "c2st", "c2tf", "Z2h", "Z2l0", "Z2xw", "QUtJ", "QVNJ", "QUl6", "eG94", "LS0tLS1",
                "ZXlK", "eyJ",
            ],
            0,
        ),
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
            skip: None,
            rescan: false,
            literals: None,
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
        // ISO/IEC 7812 PAN, 12-19 digits, optionally grouped by one separator (see
        // `checksum::card`). Not a word boundary before it but any character that is not a
        // digit (group 1 is the number): one glued to a letter or `_` is still found, and a
        // long run of digits is tried once, not at each of its digits.
        patterns: &[grp(
            r"(?:^|[^0-9])((?:[2-6][0-9]|06)(?:[ \t.\-\x{A0}\x{202F}\x{2009}]?[0-9]){10,17})",
            Some(checksum::card),
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
        // Shapes only; `redact::phone` validates each against libphonenumber's metadata for
        // the region its country code, the surrounding text or the defaults name (veil#16).
        patterns: &[
            // International: +CC (or 00CC), optional trunk (0), groups of 1-5 digits.
            pat(
                r"(?:\+|(?-u:\b)00)[1-9][0-9]{0,3}(?:[ .\-]?\(0\))?(?:[ .\-]?\(?[0-9]{1,5}\)?){1,7}",
                crate::redact::phone::intl,
            ),
            // North American: [1 ](NXX) NXX-XXXX, NXX-NXX-XXXX, NXX.NXX.XXXX, NXX NXX XXXX.
            pat(
                r"(?:(?-u:\b)1[ .\-]?)?(?:\([2-9][0-9]{2}\)[ .\-]?|(?-u:\b)[2-9][0-9]{2}[ .\-])[2-9][0-9]{2}[ .\-][0-9]{4}(?-u:\b)",
                crate::redact::phone::nanp,
            ),
            // National with trunk prefix 0 (UK, DE, FR, ...): 0AA[A] NNNN[ NNNN], dotted too.
            pat(
                r"(?:\(0[1-9][0-9]{0,4}\) ?|(?-u:\b)0[1-9][0-9]{0,4}[ /.\-])[0-9]{2,8}(?:[ .\-][0-9]{2,8}){0,4}(?-u:\b)",
                crate::redact::phone::national,
            ),
            // Unprefixed groups (ES 612 345 678, IT 312 345 6789): only near a region hint.
            Pat {
                skip: Some(crate::redact::phone::hinted_skip),
                ..pat(UNPREFIXED_PHONE, crate::redact::phone::hinted)
            },
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
    Builtin {
        key: "street_address",
        label: "STREET_ADDRESS",
        // House number, street name and type word per language (USPS Pub. 28 C1 suffixes,
        // German, French, Spanish and Italian types), unit, postal code and city: code, see
        // `address.rs`. Last, so the structured types win ties.
        patterns: &[],
        trigger: Trigger::Code(super::address::find),
    },
    Builtin {
        key: "person",
        label: "PERSON",
        // Names: a public-domain gazetteer, context cues, token shape and a precision guard
        // (see `person.rs`). Last, so every structured type wins a tie.
        patterns: &[],
        trigger: Trigger::Code(super::person::find),
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
