//! # Checksums and shape checks that run on detector candidates only.
//!
//! A regex finds *candidates*; the functions here decide whether a candidate really is what
//! the detector claims (a payment card passes Luhn, an IBAN passes ISO 7064 mod 97-10, an SSN
//! is not in a never-issued range, an IP address is not part of a version string). They see
//! the whole text and the candidate's byte range so they can look at the characters around
//! it, and they may shrink the range (a greedy regex can swallow a trailing group). They never
//! allocate on the common path and never panic on any input.

use std::ops::Range;

/// A candidate check: `Some(range)` (possibly narrowed) accepts, `None` rejects.
pub(crate) type Check = fn(&str, Range<usize>) -> Option<Range<usize>>;

/// The character just before byte `i` (if any).
fn prev_char(text: &str, i: usize) -> Option<char> {
    text.get(..i)?.chars().next_back()
}

/// The character at byte `i` (if any).
fn next_char(text: &str, i: usize) -> Option<char> {
    text.get(i..)?.chars().next()
}

/// What a character next to a candidate is, seen from the candidate (veil#16).
///
/// A letter or digit glues: the candidate is a piece of a longer word or number. A *joiner*
/// glues only when a letter or digit follows it on the far side: `1.2.3.4.5`, `555-0148-77`,
/// `12/34`, `v1.2` are one longer token, but `(415) 555-0148.` ends a sentence and
/// `"192.168.1.20",` ends a quote. `.`, `-`, `/` and `_` join letters and digits; `:` joins
/// only digits (`12:30:45`), so a label (`Tel:030 12345678`, `IP:10.0.0.1`) does not glue.
/// Everything else (space, `,;!?`, brackets, quotes, `«»`, newline) never glues.
#[derive(Clone, Copy)]
pub(crate) enum Side {
    Before,
    After,
}

/// True when the text continues the candidate on `side` of byte `at` (see [`Side`]):
/// a letter or digit, or a joiner with a letter or digit (a digit, for `:`) beyond it.
/// `extra` characters glue on their own (`+` before a national phone number).
pub(crate) fn glued(text: &str, at: usize, side: Side, extra: &[char]) -> bool {
    match neighbours(text, at, side) {
        (Some(c), _) if c.is_alphanumeric() || extra.contains(&c) => true,
        (Some('.' | '-' | '/' | '_'), far) => far.is_some_and(char::is_alphanumeric),
        (Some(':'), far) => far.is_some_and(|c| c.is_ascii_digit()),
        _ => false,
    }
}

/// The character next to byte `at` on `side`, and the one beyond it.
fn neighbours(text: &str, at: usize, side: Side) -> (Option<char>, Option<char>) {
    match side {
        Side::Before => {
            let mut it = text.get(..at).unwrap_or("").chars().rev();
            (it.next(), it.next())
        }
        Side::After => {
            let mut it = text.get(at..).unwrap_or("").chars();
            (it.next(), it.next())
        }
    }
}

/// True when the candidate is glued (see [`glued`]) on neither side.
pub(crate) fn apart(text: &str, r: &Range<usize>, extra: &[char]) -> bool {
    !glued(text, r.start, Side::Before, extra) && !glued(text, r.end, Side::After, extra)
}

/// True when the candidate is not glued to a letter or digit on either side.
fn isolated(text: &str, r: &Range<usize>) -> bool {
    !prev_char(text, r.start).is_some_and(char::is_alphanumeric)
        && !next_char(text, r.end).is_some_and(char::is_alphanumeric)
}

/// Luhn (mod 10) over ASCII digits, ignoring everything else.
pub(crate) fn luhn(digits: impl DoubleEndedIterator<Item = u8>) -> bool {
    let mut sum = 0u32;
    let mut n = 0usize;
    for (i, d) in digits.rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
        n += 1;
    }
    n > 0 && sum.is_multiple_of(10)
}

/// Payment card: known issuer prefix and length, card-style grouping, Luhn. Tries shorter
/// group-aligned prefixes when the greedy candidate swallowed a trailing number, or ran on
/// into more digits than a card has.
///
/// Only a digit next to the number makes it part of something longer: a letter or `_` does
/// not (`rate_limit_4111111111111111`, `pay4111111111111111` are cards), since identifiers,
/// tool-call ids and error types that embed a card number must not carry it out in clear;
/// hex letters glued to it do ([`in_hex_token`]: a UUID or a hash). A second kind of
/// separator ends the number (`4111 1111 1111 1111<TAB>123`: the next field). The separators
/// the built-in pattern allows between groups: space, tab, dash, dot, and the no-break spaces
/// word processors and locales put there (U+00A0, U+202F narrow, U+2009 thin).
pub(crate) fn card(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let s = text.get(r.clone())?;
    if prev_char(text, r.start).is_some_and(char::is_numeric) {
        return None;
    }
    let sep = s.chars().find(|c| !c.is_ascii_digit());
    // The lengths and ends of the first five digit groups within `s`: no card grouping has
    // more ([`card_grouping`]), so only a prefix of at most five groups can be a card. On the
    // stack: this runs for every card-shaped candidate (two allocations each, before).
    const MOST: usize = 5;
    let (mut lens, mut ends) = ([0; MOST], [0; MOST]);
    let (mut groups, mut start, mut stop) = (0, 0, s.len());
    for (i, c) in s.char_indices() {
        if c.is_ascii_digit() {
            continue;
        }
        if Some(c) != sep {
            stop = i;
            break;
        }
        if groups < MOST {
            (lens[groups], ends[groups]) = (i - start, i);
        }
        groups += 1;
        start = i + c.len_utf8();
    }
    if groups < MOST {
        (lens[groups], ends[groups]) = (stop - start, stop);
    }
    groups += 1;
    for k in (1..=groups.min(MOST)).rev() {
        let lens = &lens[..k];
        let end = ends[k - 1];
        let digits = &s.as_bytes()[..end];
        let n: usize = lens.iter().sum();
        let out = r.start..r.start + end;
        // More digits right after: the number goes on past what the pattern takes (19
        // digits), so this prefix is not the whole of it.
        if !card_grouping(lens)
            || !card_issuer(s.as_bytes(), n, k == 1)
            || next_char(text, out.end).is_some_and(char::is_numeric)
        {
            continue;
        }
        // A well-formed number that fails Luhn is not a card: do not look for a shorter one
        // inside it (a 4-4-4-4 reference would otherwise yield a 4-4-4 "card" 10% of the time).
        if !luhn(digits.iter().copied().filter(u8::is_ascii_digit)) {
            return None;
        }
        let own = sep.filter(|_| k > 1);
        return (!in_hex_token(text, &out) && !continues_card(text, out.start, own)).then_some(out);
    }
    None
}

/// True when the letters glued to `r` on either side are all hex digits (`abcd1234…`,
/// `…9f`): the digits are a piece of a UUID, a hash or another hex token, not a card. A
/// letter that is not a hex digit (`pay4111…`, `0x4111…`) does not make one.
fn in_hex_token(text: &str, r: &Range<usize>) -> bool {
    let b = text.as_bytes();
    let before = b[..r.start]
        .iter()
        .rev()
        .take_while(|c| c.is_ascii_alphanumeric());
    let after = b[r.end..].iter().take_while(|c| c.is_ascii_alphanumeric());
    all_hex(before) || all_hex(after)
}

/// True when `run` is not empty and every byte of it is an ASCII hex digit.
fn all_hex<'a>(run: impl Iterator<Item = &'a u8>) -> bool {
    let mut any = false;
    for c in run {
        if !c.is_ascii_hexdigit() {
            return false;
        }
        any = true;
    }
    any
}

/// True when a 4-digit group joined by a space or a dash (or by `own`, the candidate's own
/// separator) precedes `start`: the candidate is the tail of a longer card-shaped number
/// (which already failed on its own). A tab or a dot before a bare number is a field or a
/// sentence boundary, not a join.
fn continues_card(text: &str, start: usize, own: Option<char>) -> bool {
    let before = text.get(..start).unwrap_or("");
    let Some(sep) = before
        .chars()
        .next_back()
        .filter(|&c| c == ' ' || c == '-' || Some(c) == own)
    else {
        return false;
    };
    let rest = &before.as_bytes()[..before.len() - sep.len_utf8()];
    let run = rest.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    run == 4 && (rest.len() == 4 || !rest[rest.len() - 5].is_ascii_alphanumeric())
}

fn card_grouping(lens: &[usize]) -> bool {
    match lens {
        [n] => (12..=19).contains(n),
        [4, 6, 5] | [4, 6, 4] => true,
        [4, 4, 4] => true,
        [4, 4, 4, last] | [4, 4, 4, 4, last] => (1..=4).contains(last),
        _ => false,
    }
}

/// Issuer identification number ranges (ISO/IEC 7812 as published by the networks) and the
/// lengths each network issues. `bare` candidates (no separators) must be 13+ digits.
fn card_issuer(s: &[u8], n: usize, bare: bool) -> bool {
    let d = |i: usize| s.get(i).map_or(0, |b| u32::from(b.wrapping_sub(b'0')));
    let p2 = d(0) * 10 + d(1);
    let p4 = p2 * 100 + d(2) * 10 + d(3);
    // Bare 12-digit numbers only for Maestro, the one network that issues 12-digit PANs.
    let maestro = p2 == 50 || (56..=69).contains(&p2) || p4 == 604;
    if bare && n < 13 && !(n == 12 && maestro) {
        return false;
    }
    if p4 == 604 {
        return (12..=19).contains(&n); // Maestro UK (0604xx)
    }
    match d(0) {
        4 => matches!(n, 13 | 16 | 19),              // Visa
        2 => (2221..=2720).contains(&p4) && n == 16, // Mastercard 2-series
        5 => (51..=55).contains(&p2) && n == 16 || p2 == 50 || p2 >= 56, // Mastercard, Maestro
        3 => match p2 {
            34 | 37 => n == 15,                          // Amex
            30 | 36 | 38 | 39 => (14..=19).contains(&n), // Diners
            35 => (16..=19).contains(&n),                // JCB
            _ => false,
        },
        6 => (12..=19).contains(&n), // Discover, UnionPay, Maestro
        _ => false,
    }
}

/// IBAN lengths per country (SWIFT IBAN registry).
const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AD", 24),
    ("AE", 23),
    ("AL", 28),
    ("AT", 20),
    ("AZ", 28),
    ("BA", 20),
    ("BE", 16),
    ("BG", 22),
    ("BH", 22),
    ("BI", 27),
    ("BR", 29),
    ("BY", 28),
    ("CH", 21),
    ("CR", 22),
    ("CY", 28),
    ("CZ", 24),
    ("DE", 22),
    ("DJ", 27),
    ("DK", 18),
    ("DO", 28),
    ("EE", 20),
    ("EG", 29),
    ("ES", 24),
    ("FI", 18),
    ("FK", 18),
    ("FO", 18),
    ("FR", 27),
    ("GB", 22),
    ("GE", 22),
    ("GI", 23),
    ("GL", 18),
    ("GR", 27),
    ("GT", 28),
    ("HN", 28),
    ("HR", 21),
    ("HU", 28),
    ("IE", 22),
    ("IL", 23),
    ("IQ", 23),
    ("IS", 26),
    ("IT", 27),
    ("JO", 30),
    ("KW", 30),
    ("KZ", 20),
    ("LB", 28),
    ("LC", 32),
    ("LI", 21),
    ("LT", 20),
    ("LU", 20),
    ("LV", 21),
    ("LY", 25),
    ("MC", 27),
    ("MD", 24),
    ("ME", 22),
    ("MK", 19),
    ("MN", 20),
    ("MR", 27),
    ("MT", 31),
    ("MU", 30),
    ("NI", 28),
    ("NL", 18),
    ("NO", 15),
    ("OM", 23),
    ("PK", 24),
    ("PL", 28),
    ("PS", 29),
    ("PT", 25),
    ("QA", 29),
    ("RO", 24),
    ("RS", 22),
    ("RU", 33),
    ("SA", 24),
    ("SC", 31),
    ("SD", 18),
    ("SE", 24),
    ("SI", 19),
    ("SK", 24),
    ("SM", 27),
    ("SO", 23),
    ("ST", 25),
    ("SV", 28),
    ("TL", 23),
    ("TN", 24),
    ("TR", 26),
    ("UA", 29),
    ("VA", 22),
    ("VG", 24),
    ("XK", 20),
    ("YE", 30),
];

/// ISO 7064 mod 97-10 over an IBAN's alphanumerics (country and check digits moved last).
pub(crate) fn iban_mod97(chars: &[u8]) -> bool {
    if chars.len() < 5 {
        return false;
    }
    let mut rem: u32 = 0;
    for &c in chars[4..].iter().chain(&chars[..4]) {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// IBAN: the country's registered length, then mod 97. Narrows to exactly that length.
pub(crate) fn iban(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let s = text.get(r.clone())?.as_bytes();
    let country = std::str::from_utf8(s.get(..2)?).ok()?;
    let len = IBAN_LENGTHS.iter().find(|(c, _)| *c == country)?.1;
    let mut chars = Vec::with_capacity(len);
    let mut end = 0;
    for (i, &b) in s.iter().enumerate() {
        if b == b' ' {
            continue;
        }
        chars.push(b);
        if chars.len() == len {
            end = i + 1;
            break;
        }
    }
    if chars.len() != len || !iban_mod97(&chars) {
        return None;
    }
    let out = r.start..r.start + end;
    isolated(text, &out).then_some(out)
}

/// US SSN: never-issued areas (000, 666, 900-999), group 00 and serial 0000 are rejected, and
/// the number must not be one piece of a longer dashed or dotted sequence.
pub(crate) fn ssn(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let s = text.get(r.clone())?;
    let d: Vec<u8> = s.bytes().filter(u8::is_ascii_digit).collect();
    if d.len() != 9 {
        return None;
    }
    let area = &d[..3];
    if area == b"000"
        || area == b"666"
        || area[0] == b'9'
        || &d[3..5] == b"00"
        || &d[5..] == b"0000"
    {
        return None;
    }
    apart(text, &r, &[]).then_some(r)
}

/// True when the candidate continues a number to its left (`5718 0592 …`: the tail of a
/// longer digit sequence is not a phone number of its own). Digits glued to a letter or `_`
/// on their left end a name (`order A12 415-555-0148`, `x86`), not a number the candidate
/// continues, unless the word before that name holds a digit too: then all are groups of
/// one code (a parcel's tracking number, `1Z 999 AA1 01 2345 6784`).
pub(crate) fn continues_number(text: &str, start: usize) -> bool {
    let before = text.as_bytes().get(..start).unwrap_or_default();
    let [rest @ .., d, b' ' | b'-' | b'.' | b'/'] = before else {
        return false;
    };
    if !d.is_ascii_digit() {
        return false;
    }
    let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    let digits = rest.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    let rest = &rest[..rest.len() - digits];
    if !rest.last().is_some_and(word) {
        return true;
    }
    // A name: is the word before it part of the same code?
    let name = rest.iter().rev().take_while(|b| word(b)).count();
    let rest = &rest[..rest.len() - name];
    let gap = rest
        .iter()
        .rev()
        .take_while(|b| matches!(b, b' ' | b'-'))
        .count();
    let rest = &rest[..rest.len() - gap];
    gap > 0
        && rest
            .iter()
            .rev()
            .take_while(|b| word(b))
            .any(u8::is_ascii_digit)
}

/// IPv4: not a piece of a longer dotted sequence (`1.2.3.4.5`, versions `v1.2.3.4`).
pub(crate) fn ipv4(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    apart(text, &r, &[]).then_some(r)
}

/// IPv6: the candidate must parse as an address with at least two non-empty groups, and not be
/// glued to identifier characters (`std::fmt`, `a:b:c` labels, MAC addresses do not parse).
pub(crate) fn ipv6(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let s = text.get(r.clone())?;
    let s = if s.ends_with("::") {
        s
    } else {
        s.trim_end_matches(':')
    };
    let out = r.start..r.start + s.len();
    // `:` glues when a hex digit is beyond it (another group), not only a decimal one.
    let hex_colon = |at: usize, side: Side| matches!(neighbours(text, at, side), (Some(':'), Some(c)) if c.is_ascii_hexdigit());
    if !apart(text, &out, &[])
        || hex_colon(out.start, Side::Before)
        || hex_colon(out.end, Side::After)
    {
        return None;
    }
    if s.split(':').filter(|g| !g.is_empty()).count() < 2 {
        return None;
    }
    s.parse::<std::net::Ipv6Addr>().ok().map(|_| out)
}

/// Generic token behind `Bearer`: at least one digit (words are not tokens).
pub(crate) fn token(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let s = text.get(r.clone())?;
    s.bytes().any(|b| b.is_ascii_digit()).then_some(r)
}

/// Values after a password word that are code or schema, not a password: types, schema
/// words, placeholders (compared ignoring ASCII case).
const NOT_PASSWORDS: &[&str] = &[
    "string",
    "str",
    "number",
    "integer",
    "boolean",
    "required",
    "optional",
    "undefined",
    "nullable",
    "invalid",
    "missing",
    "changed",
    "secretstr",
    "password",
    "passwd",
    "passphrase",
    "******",
];

/// True when `v` is code rather than a password: a schema word, a variable (`$DB_PASSWORD`,
/// `${PASS}`), or a dotted name of letters (`self.password`, `os.environ`).
fn code_not_password(v: &str) -> bool {
    NOT_PASSWORDS.iter().any(|w| w.eq_ignore_ascii_case(v))
        || is_placeholder(v)
        || v.starts_with('$')
        || (v.contains('.')
            && v.split('.').all(|seg| {
                !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_')
            }))
}

/// True for a bracketed label: what veil writes in place of a value (`[PASSWORD]`,
/// `[EMAIL:e_1f3a…]`, `[PHONE:h_…]`) or a placeholder of the same shape (`[REDACTED]`). A
/// quoted password that veil masked is such a label; read as a password again it was masked
/// again on every pass, and the text dropped as unsettled.
fn is_placeholder(v: &str) -> bool {
    let Some(inner) = v.strip_prefix('[').and_then(|v| v.strip_suffix(']')) else {
        return false;
    };
    let (label, tag) = inner.split_once(':').unwrap_or((inner, ""));
    !label.is_empty()
        && label
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Closing brackets and a sentence's closing punctuation: what may follow a bare value.
fn closes_or_ends(b: u8) -> bool {
    matches!(b, b')' | b']' | b'}' | b'.' | b'!' | b'?' | b':')
}

/// `raw` up to a closer of a bracket opened before the value, when only closers and sentence
/// punctuation follow it (`f(password=hunter22).`, `{"pass":hunter22}`). Brackets the value
/// opens and closes stay (`P@ss(w0rd)1`), and so do an opener it never closes (`hunter22(`)
/// and a stray closer with more of the value after it (`Xk]9mQ2!z`).
fn balanced_prefix(raw: &str) -> &str {
    let b = raw.as_bytes();
    // Where the run of closers and punctuation that ends `raw` starts.
    let tail = b.len() - b.iter().rev().take_while(|&&c| closes_or_ends(c)).count();
    // Open brackets, innermost last; past this depth brackets are taken as they come.
    let mut open = [0u8; 32];
    let mut depth = 0;
    for (i, &c) in b.iter().enumerate() {
        let closes = match c {
            b'(' | b'[' | b'{' => {
                if let Some(slot) = open.get_mut(depth) {
                    *slot = c;
                    depth += 1;
                }
                continue;
            }
            b')' => b'(',
            b']' => b'[',
            b'}' => b'{',
            _ => continue,
        };
        match depth.checked_sub(1) {
            Some(top) if open[top] == closes => depth = top,
            _ if i >= tail => return &raw[..i],
            _ => {}
        }
    }
    raw
}

/// True when `s` is a call or an index of a name without digits, as code has them
/// (`getpass()`, `os.environ[…`, `Optional[str]`, `secrets.token_hex(16)`,
/// `String::new()`, `std::env::var(…`): a name of letters, `_` and `.`, its parts joined by
/// `::`, right before the first `(` or `[`, and the brackets then either left open or closed
/// with nothing after them but another call, index, member or `?`. `hunter22(`,
/// `P@ss(w0rd)1`, `Tr(0ub)4dor`, `Blue-Sky(99)` and `Hello:World(1)` are not calls, nor is
/// one capitalized word called with a number and nothing else (`Summer(2024)`,
/// `Welcome(1)`): people make passwords so, and code's calls with a number are named in
/// lower case, snake or camel case, or dotted (`token_hex(16)`, `os.urandom(32)`,
/// `CharField(128)`).
fn is_call(s: &str) -> bool {
    let Some(open) = s.find(['(', '[']) else {
        return false;
    };
    let name = &s[..open];
    let word_and_number = matches!(name.as_bytes(), [b'A'..=b'Z', rest @ ..]
        if !rest.is_empty() && rest.iter().all(u8::is_ascii_lowercase))
        && s[open..]
            .strip_prefix('(')
            .and_then(|a| a.strip_suffix(')'))
            .is_some_and(|a| !a.is_empty() && a.bytes().all(|c| c.is_ascii_digit()));
    if word_and_number {
        return false;
    }
    let named = matches!(name.bytes().next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && name.split("::").all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|c| c.is_ascii_alphabetic() || matches!(c, b'_' | b'.'))
        });
    if !named {
        return false;
    }
    let mut depth = 0usize;
    for (i, c) in s.bytes().enumerate().skip(open) {
        match c {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => continue,
        }
        if depth == 0 {
            return matches!(
                s.as_bytes().get(i + 1),
                None | Some(b'.' | b'(' | b'[' | b'?')
            );
        }
    }
    true
}

/// What a bare value does not end on: a sentence's punctuation, an opener (`hunter22(`).
const VALUE_END: [char; 7] = ['.', '!', '?', ':', '(', '[', '{'];

/// The bare value after a password word: without closers of brackets opened before it
/// ([`balanced_prefix`]) and the sentence's closing punctuation, at least 6 bytes, not
/// code ([`code_not_password`]), not a template (`%(password)s`, `#{pw}`, `%{pw}`,
/// `@(Model.Password)`) and not a call or an index of a name without digits ([`is_call`]).
pub(crate) fn password(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    bare_password(text, r, true)
}

/// [`password`], or with `calls_are_code` false a flag's value: no test for code calls (a
/// command line's flag takes no code, so `--password Welcome[42]!` is a password) and a
/// trailing `!` kept (`-AdminPassword Hunter22!`: passwords end so more often than commands).
fn bare_password(text: &str, r: Range<usize>, calls_are_code: bool) -> Option<Range<usize>> {
    let mut raw = text.get(r.clone())?;
    // Inside a JSON string the closing quote is escaped (`{\"password\":\"…\"}`): its
    // backslash is not the value's, and masking it would break the escaped JSON.
    if raw.ends_with('\\') && text[r.end..].starts_with(['"', '\'']) {
        raw = &raw[..raw.len() - 1];
    }
    // Sentence punctuation after the value is the sentence's, and so is an opener it ends on.
    let value = balanced_prefix(raw);
    let s = value.trim_end_matches(|c| VALUE_END.contains(&c) && (calls_are_code || c != '!'));
    let end = r.start + s.len();
    // veil's own pseudonym or hash of a password (`[PASSWORD:p_1f3a…]`, whatever follows
    // it): the word and the `:` are its label, the tag is no password.
    let tag = r.start.checked_sub(1).and_then(|i| text.as_bytes().get(i)) == Some(&b':')
        && raw.split_once(']').is_some_and(|(t, _)| {
            matches!(t.as_bytes(), [b'a'..=b'z', b'_', rest @ ..]
            if !rest.is_empty() && rest.iter().all(u8::is_ascii_hexdigit))
        });
    let template = ["%(", "#{", "%{", "@(", "@{"]
        .iter()
        .any(|t| s.starts_with(t));
    if s.len() < 6 || tag || template || (calls_are_code && is_call(value)) || code_not_password(s)
    {
        return None;
    }
    Some(r.start..end)
}

/// A quoted value after a password word (the quotes say where it ends, so any length and
/// any character but a line break): not code ([`code_not_password`]).
pub(crate) fn password_quoted(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let s = text.get(r.clone())?;
    (!s.trim().is_empty() && !code_not_password(s)).then_some(r)
}

/// A password given to a command-line option that takes one (OpenSSL's `pass:`, `sshpass
/// -p`, `mysql -p…`): any length, not code ([`code_not_password`]: `$SSHPASS`,
/// `[PASSWORD]`).
pub(crate) fn password_option(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    password_quoted(text, r)
}

/// `r` without the quotes around it, and whether it had them: a command option's value as
/// the patterns read it, double-quoted (`"…"`, or `\"…\"` inside a JSON string: a value
/// ending in `\"` is read as JSON-escaped), single-quoted (`'…'`, no quote of its kind inside)
/// or bare (starting with none of `"` `'` `\`). `None` when the quotes hold nothing.
fn unquote(text: &str, r: Range<usize>) -> Option<(Range<usize>, bool)> {
    let b = text.get(r.clone())?.as_bytes();
    let (open, close) = match b {
        [b'\'', ..] => (1, 1),
        [b'"', .., b'\\', b'"'] => (1, 2),
        [b'"', ..] => (1, 1),
        [b'\\', b'"', .., b'\\', b'"'] => (2, 2),
        [b'\\', ..] => (2, 1),
        _ => return Some((r, false)),
    };
    let inner = r.start + open..r.end.checked_sub(close)?;
    (inner.start < inner.end).then_some((inner, true))
}

/// The password given to a command's option (the MySQL clients' `-p…`, `redis-cli -a`,
/// `ldapsearch -w`, `sqlcmd -P`, `docker login -p`, keytool's `-storepass`; see the
/// `password` built-in): `r` is the value as the pattern read it, glued to its option or
/// after it, quoted or not, and the range kept is inside the quotes ([`unquote`]);
/// [`password_option`]'s rules. A bare word goes without closers of brackets opened before
/// it (`(sqlcmd -P x)`), and is no password when it is a port mapping (`-p3306:3306`,
/// `-p127.0.0.1:3306:3306/tcp`: a container's, on the same line) or reads as prose or a
/// placeholder rather than a password ([`option_prose`]).
pub(crate) fn password_option_value(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    password_option_value_or_port(text, r, false)
}

/// [`password_option_value`] for `-p`, which other commands use for a port: a bare value of
/// up to 5 digits is none (`mongosh or ssh -p 2222 host`, the pattern having taken `ssh`'s
/// option for the MongoDB shell's).
pub(crate) fn password_option_not_port(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    password_option_value_or_port(text, r, true)
}

fn password_option_value_or_port(text: &str, r: Range<usize>, ports: bool) -> Option<Range<usize>> {
    let bare = !matches!(text.as_bytes().get(r.start), Some(b'"' | b'\'' | b'\\'));
    let pw = password_glued(text, r)?;
    let s = &text[pw.clone()];
    let port = ports && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    (!(bare && (port || option_prose(s)))).then_some(pw)
}

/// [`password_option_value`] for a value glued to its option (the MySQL clients' `-pk`,
/// 7-Zip's `-p…`): the option says it is a password, whatever the word.
pub(crate) fn password_glued(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let (inner, quoted) = unquote(text, r)?;
    if quoted {
        return password_option(text, inner);
    }
    let s = balanced_prefix(&text[inner.clone()]);
    let inner = inner.start..inner.start + s.len();
    if s.is_empty() {
        return None;
    }
    let ports = s.split_once('/').map_or(s, |(p, proto)| {
        if proto == "tcp" || proto == "udp" {
            p
        } else {
            s
        }
    });
    let mapping = ports.contains(':')
        && ports
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b':');
    if mapping {
        return None;
    }
    password_option(text, inner)
}

/// Words a command's bare option value is not a password as: a word of up to 3 lower-case
/// letters (`mongo -p to be prompted`), a usage text's placeholder (`-storepass arg`, `-P
/// value`) or a word prose puts after an option it names (`redis-cli -a with care`, `-P
/// followed by`), a Windows variable (`%SQLPW%`) or a template (`{{ pw }}`).
fn option_prose(s: &str) -> bool {
    const PLACEHOLDERS: [&str; 20] = [
        "arg",
        "args",
        "value",
        "option",
        "options",
        "parameter",
        "flag",
        "switch",
        "with",
        "then",
        "that",
        "this",
        "from",
        "your",
        "will",
        "must",
        "when",
        "only",
        "also",
        "followed",
    ];
    let b = s.as_bytes();
    s.starts_with("{{")
        || (b.len() <= 3 && b.iter().all(u8::is_ascii_lowercase))
        || PLACEHOLDERS.iter().any(|w| s.eq_ignore_ascii_case(w))
        || (b.len() > 2 && b[0] == b'%' && b[b.len() - 1] == b'%')
}

/// The password in a command's `user<SEP>password` option value (`curl -u user:pw`, `SEP` =
/// `:`; `smbclient -U user%pw`, `SEP` = `%`): what follows the first `SEP` inside the quotes
/// ([`unquote`]), [`password_option`]'s rules. Without `SEP` the command asks for the
/// password, and there is none to mask.
pub(crate) fn password_after<const SEP: char>(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let (inner, _) = unquote(text, r)?;
    let sep = text[inner.clone()].find(SEP)?;
    let pw = inner.start + sep + SEP.len_utf8()..inner.end;
    (pw.start < pw.end)
        .then_some(pw)
        .and_then(|pw| password_option(text, pw))
}

/// How far back [`in_sql_user_statement`] reads for the statement's verb.
const SQL_STATEMENT_BACK: usize = 512;

/// Whether the SQL statement that `at` is in creates or alters a user, role, group or login
/// (`CREATE OR REPLACE USER` too) or a database link (Oracle's `CONNECT TO u IDENTIFIED BY`),
/// sets a role or a password (`SET ROLE r IDENTIFIED BY`, `SET PASSWORD`), or grants on
/// something to someone (MySQL 5's `GRANT … ON … TO … IDENTIFIED BY`): those words, any case,
/// as consecutive words (`GRANT`, `ON`, `TO` in that order) within [`SQL_STATEMENT_BACK`]
/// bytes before `at` and after the last `;` there. Bounded, so a candidate's check costs a
/// constant.
fn in_sql_user_statement(text: &str, at: usize) -> bool {
    let from = text.floor_char_boundary(at.saturating_sub(SQL_STATEMENT_BACK));
    let Some(before) = text.get(from..at) else {
        return false;
    };
    let stmt = before.rsplit(';').next().unwrap_or(before);
    let is = |w: &str, k: &[&str]| k.iter().any(|k| w.eq_ignore_ascii_case(k));
    let mut prev = "";
    // How far `GRANT … ON … TO` has got: 1 after `grant`, 2 after `on`.
    let mut grant = 0;
    for w in stmt
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
    {
        grant = match grant {
            0 if is(w, &["grant"]) => 1,
            1 if is(w, &["on"]) => 2,
            2 if is(w, &["to"]) => return true,
            g => g,
        };
        if (is(prev, &["create", "alter", "replace"]) && is(w, &["user", "role", "group", "login"]))
            || (is(prev, &["set"]) && is(w, &["password", "role"]))
            || (is(prev, &["database"]) && is(w, &["link"]))
        {
            return true;
        }
        prev = w;
    }
    false
}

/// SQL's words that may follow `IDENTIFIED BY` and are no password (MySQL's `BY RANDOM
/// PASSWORD`, Oracle's `BY VALUES '…'`).
const SQL_NOT_PASSWORDS: [&str; 3] = ["random", "password", "values"];

/// The password after SQL's `IDENTIFIED BY` (MySQL, MariaDB, Oracle: `CREATE USER … IDENTIFIED
/// BY 'pw'`, `IDENTIFIED WITH plugin BY 'pw'`, Oracle's unquoted `IDENTIFIED BY tiger`):
/// inside its quotes ([`unquote`]), [`password_option`]'s rules. A bare word must be in a
/// statement about a user ([`in_sql_user_statement`]): prose says "identified by name". A
/// quoted one need not (Oracle's `GRANT CONNECT TO u IDENTIFIED BY '…'`, `ADMINISTER KEY
/// MANAGEMENT … IDENTIFIED BY "…"`): prose that quotes a word after "identified by" loses it.
pub(crate) fn password_sql(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let (inner, quoted) = unquote(text, r.clone())?;
    if !quoted {
        let w = &text[inner.clone()];
        if SQL_NOT_PASSWORDS.iter().any(|k| w.eq_ignore_ascii_case(k))
            || !in_sql_user_statement(text, r.start)
        {
            return None;
        }
    }
    password_option(text, inner)
}

/// Where the one of `words` (any case) that ends at `end` starts.
fn word_ending_at(text: &str, end: usize, words: &[&str]) -> Option<usize> {
    let before = text.as_bytes().get(..end)?;
    words.iter().find_map(|w| {
        let start = end.checked_sub(w.len())?;
        before[start..]
            .eq_ignore_ascii_case(w.as_bytes())
            .then_some(start)
    })
}

/// Where the password word (`password`, `passwd`, `passphrase`, any case) that ends at `end`
/// starts.
fn password_word_start(text: &str, end: usize) -> Option<usize> {
    word_ending_at(text, end, &["password", "passwd", "passphrase"])
}

/// Whether the value starting at `r.start` follows a command-line flag of a password word
/// (`--password `, `--db-password "`, PowerShell's and Java tools' `-Password`,
/// `-AdminPassword`, `-password`): blanks and an opening quote before the value, and before
/// the word a run of `[A-Za-z0-9_-]` that starts with `-` and starts a token.
fn after_password_flag(text: &str, r: &Range<usize>) -> bool {
    password_flag_dashes(text, r).is_some()
}

/// [`after_password_flag`]'s flag, and how many dashes start it (1 or 2).
fn password_flag_dashes(text: &str, r: &Range<usize>) -> Option<usize> {
    let b = text.as_bytes();
    let mut i = r.start;
    if i > 0 && matches!(b[i - 1], b'"' | b'\'') {
        i -= 1;
        // A JSON string's escaped quote (`-Password \"…\"`).
        if i > 0 && b[i - 1] == b'\\' {
            i -= 1;
        }
    }
    let blanks_end = i;
    while i > 0 && matches!(b[i - 1], b' ' | b'\t') {
        i -= 1;
    }
    let word = (i < blanks_end)
        .then(|| password_word_start(text, i))
        .flatten()?;
    let mut j = word;
    while j > 0 && (b[j - 1].is_ascii_alphanumeric() || matches!(b[j - 1], b'-' | b'_')) {
        j -= 1;
    }
    let starts_token = j == 0 || !(b[j - 1].is_ascii_alphanumeric() || b[j - 1] >= 0x80);
    let flag = &text[j..word];
    (flag.starts_with('-') && starts_token).then(|| 1 + usize::from(flag.starts_with("--")))
}

/// A bare value after a password flag (`--password hunter22`): [`password`]'s rules but the
/// one for calls (a flag takes no code: `--password Welcome[42]!`), the flag's `-` or `--`
/// before the word, and no OpenSSL source (`-password env:PW`; `pass:…` is OpenSSL's pattern).
pub(crate) fn password_flag(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    // OpenSSL's `-password pass:…` is its own pattern's; `env:`, `file:`, `fd:` name a source.
    let source = ["pass:", "env:", "file:", "fd:"]
        .iter()
        .any(|p| text[r.clone()].starts_with(p));
    // A single-dash flag is also how help text and prose name a parameter (`The -Password
    // parameter accepts`, `-Password  Specifies the password`): a value of letters only
    // after one, with more words after it, is taken for prose (`-Password VMware`,
    // `-password changeme -user x` stay passwords).
    let letters = text[r.clone()].bytes().all(|b| b.is_ascii_alphabetic());
    let words_follow = text[r.end..]
        .trim_start_matches([' ', '\t'])
        .starts_with(|c: char| c.is_ascii_alphabetic());
    match password_flag_dashes(text, &r) {
        Some(2) => {}
        Some(_) if !(letters && words_follow) => {}
        _ => return None,
    }
    if source {
        return None;
    }
    bare_password(text, r, false)
}

/// A quoted value after a password flag (`--password "a b"`) or after SQL's `PASSWORD` in a
/// statement about a user (PostgreSQL's `CREATE ROLE app LOGIN PASSWORD '…'`, `ALTER USER app
/// WITH ENCRYPTED PASSWORD '…'`; [`in_sql_user_statement`]): [`password_quoted`]'s rules.
pub(crate) fn password_flag_quoted(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    if !after_password_flag(text, &r) && !in_sql_user_statement(text, r.start) {
        return None;
    }
    password_quoted(text, r)
}

/// The text of an XML element named by a password word (`<password>`, `<db_password>`,
/// `<ns:Passphrase>`; no attributes): [`password_quoted`]'s rules, the element's `<`
/// before its name, and a closing tag's `</` right after the value.
pub(crate) fn password_element(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let b = text.as_bytes();
    let word = password_word_start(text, r.start.checked_sub(1)?)?;
    let mut j = word;
    while j > 0
        && (b[j - 1].is_ascii_alphanumeric() || matches!(b[j - 1], b'-' | b'_' | b'.' | b':'))
    {
        j -= 1;
    }
    if j == 0 || b[j - 1] != b'<' || !text[r.end..].starts_with("</") {
        return None;
    }
    password_quoted(text, r)
}

/// The value of `pass=` or `pwd=` (any case): the word starts a token or follows `_`
/// (`&pass=`, `DB_PASS=`, `;Pwd=`; not `bypass=`), the value is not a path (`PWD=/home/…`,
/// `~/…`, `./…`), and [`password`]'s rules hold.
pub(crate) fn password_short_word(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let b = text.as_bytes();
    let eq = r.start.checked_sub(1)?;
    let word = word_ending_at(text, eq, &["pass", "pwd"])?;
    if word > 0 && (b[word - 1].is_ascii_alphanumeric() || b[word - 1] >= 0x80) {
        return None;
    }
    let drive = matches!(b.get(r.start..r.start + 3), Some([d, b':', b'\\' | b'/']) if d.is_ascii_alphabetic());
    if drive || matches!(b.get(r.start), Some(b'/' | b'~' | b'.')) {
        return None;
    }
    password(text, r)
}

/// Base64 (standard alphabet) decoded leniently: padding optional, a last lone character
/// ignored, trailing bits allowed. `None` for a byte outside the alphabet.
fn decode_base64(run: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::RequireNone)
            .with_decode_allow_trailing_bits(true),
    );
    let body = run.trim_end_matches('=');
    let usable = body.len() - usize::from(body.len() % 4 == 1);
    LENIENT.decode(&body.as_bytes()[..usable]).ok()
}

/// The token of `Basic <token>` (RFC 7617): it decodes to UTF-8 text with a `:` between the
/// user-id and the password and no control character.
pub(crate) fn basic_credentials(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let decoded = decode_base64(text.get(r.clone())?)?;
    let s = std::str::from_utf8(&decoded).ok()?;
    (s.contains(':') && !s.chars().any(char::is_control)).then_some(r)
}

/// A base64 run (standard alphabet, padding optional; a last lone character is ignored) whose
/// decoded text holds a value an always-on detector finds: the whole run, else `None`. The
/// decoded bytes are read as UTF-8 up to the first invalid byte. Linear in the run: one
/// decode and one scan by the always-on detectors (this one included, so a decoded text that
/// itself holds such a run is decoded too, each level 3/4 as long as the one before). That
/// work is not charged to the redaction budget. Only runs aligned on the secret's start are
/// tried: a key later in an encoded file, or encoded twice, is not found.
pub(crate) fn base64_secret(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    let decoded = decode_base64(text.get(r.clone())?)?;
    let valid = match std::str::from_utf8(&decoded) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(&decoded[..e.valid_up_to()]).ok()?,
    };
    crate::redact::rules::holds_secret(valid).then_some(r)
}

/// Token alphabets for [`key`]: which bytes belong to a format (see `rules/README.md`).
/// `[A-Za-z0-9_-]`: OpenAI, Anthropic and Google keys, JWT segments.
pub(crate) const B64URL: u8 = 0;
/// `[A-Za-z0-9]`: GitHub classic tokens, Stripe keys.
pub(crate) const ALNUM: u8 = 2;
/// `[A-Za-z0-9_]`: GitHub fine-grained tokens.
pub(crate) const ALNUM_UNDERSCORE: u8 = 3;
/// `[A-Za-z0-9-]`: Slack tokens.
pub(crate) const ALNUM_DASH: u8 = 4;
/// `[A-Z0-9]`: AWS access key ids.
pub(crate) const UPPER_DIGIT: u8 = 5;
/// `[A-Za-z0-9/_-]`: the path of a Slack webhook URL.
pub(crate) const URL_PATH: u8 = 6;
/// `[A-Za-z0-9+/=]`: base64 with padding (`whsec_` webhook secrets).
pub(crate) const B64: u8 = 7;

/// True when byte `b` belongs to alphabet `A` (one of the constants above).
pub(crate) fn in_alphabet<const A: u8>(b: u8) -> bool {
    let extra: &[u8] = match A {
        B64URL => b"_-",
        ALNUM => b"",
        ALNUM_UNDERSCORE => b"_",
        ALNUM_DASH => b"-",
        UPPER_DIGIT => return b.is_ascii_uppercase() || b.is_ascii_digit(),
        URL_PATH => b"/_-",
        B64 => b"+/=",
        _ => return false,
    };
    b.is_ascii_alphanumeric() || extra.contains(&b)
}

/// A secret token is delimited, not merely found: it may not continue a word to its left
/// (`task-management…` is not an `sk-` key) nor be followed by more of its alphabet `A`, and
/// it is at most `MAX` bytes long, prefix included. The patterns are greedy over the
/// alphabet, so a candidate is the whole run: a run longer than the format allows (300
/// characters after `ghp_`) is not a token, and neither is its tail. Anything else on either
/// side (`/`, `=`, `+`, `?`, `&`, `#`, quotes, brackets, punctuation, whitespace, non-ASCII,
/// the end of the text) ends the token, and the token is masked.
///
/// The previous check refused `/`, `+`, `=`, `_` and `-` after every token, which let
/// `https://gw.example/keys/sk-proj-…/usage` and `AKIA…/x` through in clear (veil#10).
pub(crate) fn key<const A: u8, const MAX: usize>(
    text: &str,
    r: Range<usize>,
) -> Option<Range<usize>> {
    let b = text.as_bytes();
    let glued_left = r.start > 0 && b.get(r.start - 1).is_some_and(u8::is_ascii_alphanumeric);
    // Only a bounded format can be glued on the right: an unbounded pattern is greedy over
    // its alphabet, and where it stops (after `=` padding, say) is where the token ends.
    let glued_right = MAX != ANY_LEN && b.get(r.end).is_some_and(|&c| in_alphabet::<A>(c));
    (!glued_left && !glued_right && r.len() <= MAX).then_some(r)
}

/// No length limit for [`key`].
pub(crate) const ANY_LEN: usize = usize::MAX;

/// Validator names usable by custom regex detectors in a rules file.
pub(crate) fn by_name(name: &str) -> Option<Check> {
    Some(match name {
        "luhn" => |text, r| {
            let s = text.get(r.clone())?;
            let d = s.bytes().filter(u8::is_ascii_digit);
            luhn(d).then_some(r)
        },
        "mod97" | "iban" => iban,
        "card" => card,
        "ssn" => ssn,
        "ipv4" => ipv4,
        "ipv6" => ipv6,
        _ => return None,
    })
}

/// Names accepted by [`by_name`], for error messages.
pub(crate) const VALIDATOR_NAMES: &str = "luhn, mod97, card, ssn, ipv4, ipv6";

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(f: Check, s: &str) -> bool {
        f(s, 0..s.len()) == Some(0..s.len())
    }

    #[test]
    fn luhn_table() {
        for (s, ok) in [
            ("4111111111111111", true),
            ("4111111111111112", false),
            ("79927398713", true),
            ("0", true),
            ("", false),
        ] {
            assert_eq!(luhn(s.bytes()), ok, "{s}");
        }
    }

    #[test]
    fn card_table() {
        for (s, ok) in [
            ("4111 1111 1111 1111", true),
            ("4111-1111-1111-1111", true),
            ("4111111111111111", true),
            ("3782 822463 10005", true),    // Amex 4-6-5
            ("5555555555554444", true),     // Mastercard
            ("2223003122003222", true),     // Mastercard 2-series
            ("4111 1111-1111 1111", false), // mixed separators
            ("4111111111111112", false),    // Luhn
            ("1111111111111117", false),    // no issuer starts with 1
            ("411 1111 1111 11111", false), // grouping
            ("378282246310005", true),
            ("37828224631000", false), // Amex must be 15
        ] {
            assert_eq!(whole(card, s), ok, "{s}");
        }
        // A trailing group swallowed by the regex is trimmed.
        let t = "4111 1111 1111 1111 12";
        assert_eq!(card(t, 0..t.len()), Some(0..19));
        // More groups than any card has: only the first five can make one.
        let t = "4111 1111 1111 1111 12 34 56";
        assert_eq!(card(t, 0..t.len()), Some(0..19));
        let t = "1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6";
        assert_eq!(card(t, 0..t.len()), None);
        // Other separators, one per number.
        for s in [
            "4111\t1111\t1111\t1111",
            "4111.1111.1111.1111",
            "4111\u{A0}1111\u{A0}1111\u{A0}1111",
            "4111\u{202F}1111\u{202F}1111\u{202F}1111",
            "5500.0055.5555.5559",
        ] {
            assert!(whole(card, s), "{s:?}");
        }
        assert!(!whole(card, "4111.1111 1111.1111"), "mixed separators");
        // A letter or `_` beside the number does not hide it; a digit does.
        let t = "rate_limit_4111111111111111";
        assert_eq!(card(t, 11..t.len()), Some(11..t.len()));
        let t = "pay4111111111111111x";
        assert_eq!(card(t, 3..19), Some(3..19));
        // Hex letters beside it: a piece of a UUID or a hash.
        let t = "abcd4111-1111-1111-1111-8f3c2a1b9d7e";
        assert_eq!(card(t, 4..23), None, "hex before");
        let t = "4111111111111111fe";
        assert_eq!(card(t, 0..16), None, "hex after");
        let t = "94111111111111111";
        assert_eq!(card(t, 1..t.len()), None, "digit before");
        let t = "41111111111111119";
        assert_eq!(card(t, 0..16), None, "digit after");
    }

    #[test]
    fn iban_table() {
        for (s, ok) in [
            ("GB82WEST12345698765432", true),
            ("GB82 WEST 1234 5698 7654 32", true),
            ("DE89370400440532013000", true),
            ("DE89370400440532013001", false), // mod 97
            ("GB82WEST1234569876543", false),  // short
            ("ZZ82WEST12345698765432", false), // unknown country
        ] {
            assert_eq!(whole(iban, s), ok, "{s}");
        }
        let t = "GB82WEST12345698765432X";
        assert_eq!(
            iban(t, 0..t.len()),
            None,
            "glued letter after the exact length"
        );
        let t = "GB82 WEST 1234 5698 7654 32 99";
        assert_eq!(iban(t, 0..t.len()), Some(0..27));
    }

    #[test]
    fn ssn_table() {
        for (s, ok) in [
            ("123-45-6789", true),
            ("000-12-3456", false),
            ("666-12-3456", false),
            ("912-12-3456", false),
            ("123-00-4567", false),
            ("123-45-0000", false),
        ] {
            assert_eq!(whole(ssn, s), ok, "{s}");
        }
        let t = "9-123-45-6789";
        assert_eq!(ssn(t, 2..t.len()), None);
    }

    #[test]
    fn ip_table() {
        assert!(whole(ipv4, "10.0.0.1"));
        let t = "v1.2.3.4";
        assert_eq!(ipv4(t, 1..t.len()), None);
        let t = "1.2.3.4.5";
        assert_eq!(ipv4(t, 0..7), None);
        for (s, ok) in [
            ("2001:db8::1", true),
            ("fe80::1:2:3", true),
            ("1:2:3:4:5:6:7:8", true),
            ("::1", false),
            ("12:30:45", false),
            ("00:1a:2b:3c:4d:5e", false),
            ("de::", false),
        ] {
            assert_eq!(whole(ipv6, s), ok, "{s}");
        }
    }
}
