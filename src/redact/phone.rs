//! # Phone numbers, validated against libphonenumber's metadata (veil#16).
//!
//! The `phone` detector's patterns only find *shapes*: `+CC` then digit groups (international,
//! also `00CC`), a North American `(NXX) NXX-XXXX`, a national number written with its trunk
//! prefix `0` (`030 12345678`, `06.12.34.56.78`, `(0)20 7946 0958`), and, only when the text
//! names a region, digit groups with no prefix (`612 345 678` near "teléfono"). Whether a
//! shape is a phone number is decided here, by Google's libphonenumber metadata (the
//! `phonenumber` crate's, metadata 9.0.x, which `build.rs` writes into statics: the fields
//! below, for every region): a number must be *valid* for a region,
//! i.e. match that region's length and number-range patterns. So a new country needs metadata,
//! which the crate ships, not a new regex.
//!
//! Which region a national number is checked against:
//! - **hints** from the text around it ([`HINT_BEFORE`] bytes before, [`HINT_AFTER`] after):
//!   a country name, a telephone word of one language ("Nummer", "numéro", "teléfono"), or an
//!   address domain (`.de`, `.co.uk`) names regions ([`HINTS`]);
//! - otherwise the **default regions**: the NANP for the North American shape, and United
//!   Kingdom, Germany, France for a trunk-prefixed one; no default for unprefixed groups, which
//!   are too much like any other number.
//!
//! A greedy pattern can swallow a number that follows (`030 1234567 2024`): trailing groups are
//! dropped until the rest is valid. The glue rule of [`checksum`](super::checksum) still
//! applies (a piece of a longer token is no phone number), and so do the hard negatives: dates,
//! times, versions, order numbers and IDs have no valid reading or a separator pattern no
//! number is written with (checked by `detect::tests`).
//!
//! Cost: a candidate that passes the shape is matched against each region's compiled patterns
//! (a few anchored regex matches per region, see [`Region`]): first the defaults, and only when
//! they do not accept it whole, the regions named by the text (one Aho-Corasick pass over
//! [`HINT_BEFORE`] + [`HINT_AFTER`] bytes); at most [`MAX_REGIONS`] named regions and
//! [`MAX_TRIMS`] trims, so a candidate costs a bounded amount. Unprefixed digit groups are
//! searched only within reach of a hint ([`hinted_skip`]): a table of numbers with no hint
//! costs one hint search, not one rejected candidate per group. The metadata is static (no
//! start-up cost, no heap); a region's patterns are compiled on its first use, the default
//! regions' by [`warm`] when a scanner with the phone detector is built, not by the first
//! exchange.

use std::ops::Range;
use std::sync::{LazyLock, OnceLock};

use aho_corasick::AhoCorasick;

use super::checksum::{Side, apart, continues_number, glued};

/// A region's id in the metadata: ISO 3166-1 alpha-2 (`DE`), `001` for non-geographic codes.
type Id = &'static str;

/// Bytes before a candidate searched for region hints.
pub(crate) const HINT_BEFORE: usize = 160;
/// Bytes after a candidate searched for region hints.
pub(crate) const HINT_AFTER: usize = 64;
/// Most regions the text around a candidate can name.
pub(crate) const MAX_REGIONS: usize = 6;
/// Most trailing groups dropped from a candidate.
pub(crate) const MAX_TRIMS: usize = 4;

/// Hint words (lowercase; matched case-insensitively in ASCII, whole words unless they start
/// with `.`) and the region each names. Country names in English and the country's language,
/// the telephone vocabulary of one language, and address domains.
pub(crate) const HINTS: &[(&str, Id)] = &[
    ("germany", "DE"),
    ("deutschland", "DE"),
    ("nummer", "DE"),
    ("telefon", "DE"),
    ("telefonnummer", "DE"),
    ("rufnummer", "DE"),
    ("handy", "DE"),
    ("mobilnummer", "DE"),
    ("festnetz", "DE"),
    (".de", "DE"),
    ("austria", "AT"),
    ("österreich", "AT"),
    (".at", "AT"),
    ("switzerland", "CH"),
    ("schweiz", "CH"),
    ("suisse", "CH"),
    ("svizzera", "CH"),
    (".ch", "CH"),
    ("france", "FR"),
    ("numéro", "FR"),
    ("téléphone", "FR"),
    ("portable", "FR"),
    ("appelez", "FR"),
    ("joindre", "FR"),
    (".fr", "FR"),
    ("belgium", "BE"),
    ("belgique", "BE"),
    ("belgië", "BE"),
    (".be", "BE"),
    ("spain", "ES"),
    ("españa", "ES"),
    ("teléfono", "ES"),
    ("móvil", "ES"),
    ("llámame", "ES"),
    ("llamar", "ES"),
    (".es", "ES"),
    ("mexico", "MX"),
    ("méxico", "MX"),
    (".mx", "MX"),
    ("italy", "IT"),
    ("italia", "IT"),
    ("telefono", "IT"),
    ("cellulare", "IT"),
    ("chiamami", "IT"),
    (".it", "IT"),
    ("netherlands", "NL"),
    ("nederland", "NL"),
    ("telefoonnummer", "NL"),
    ("mobiel", "NL"),
    (".nl", "NL"),
    ("portugal", "PT"),
    ("telemóvel", "PT"),
    (".pt", "PT"),
    ("brazil", "BR"),
    ("brasil", "BR"),
    ("celular", "BR"),
    (".br", "BR"),
    ("poland", "PL"),
    ("polska", "PL"),
    ("telefonu", "PL"),
    (".pl", "PL"),
    ("sweden", "SE"),
    ("sverige", "SE"),
    (".se", "SE"),
    ("ireland", "IE"),
    (".ie", "IE"),
    ("australia", "AU"),
    (".au", "AU"),
    ("india", "IN"),
    (".in", "IN"),
    ("japan", "JP"),
    (".jp", "JP"),
    ("united kingdom", "GB"),
    ("uk", "GB"),
    ("england", "GB"),
    ("scotland", "GB"),
    ("wales", "GB"),
    (".uk", "GB"),
    ("canada", "CA"),
    (".ca", "CA"),
    ("usa", "US"),
    ("united states", "US"),
];

/// Regions a trunk-prefixed national number is checked against when the text gives no hint.
const DEFAULT_NATIONAL: &[Id] = &["GB", "DE", "FR"];
/// Regions a North American shape is checked against when the text gives no hint.
const DEFAULT_NANP: &[Id] = &["US", "CA"];

/// Compiles the default regions' patterns now (a few ms once per process), so the first
/// exchange does not pay for it.
pub(crate) fn warm() {
    for id in DEFAULT_NATIONAL.iter().chain(DEFAULT_NANP) {
        let _ = region(id);
    }
}

/// International number (`+CC …`, `00CC …`): valid for the region its country code names.
pub(crate) fn intl(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    if glued(text, r.start, Side::Before, &['+']) {
        return None;
    }
    longest_valid(text, r, |candidate| {
        // A trunk `(0)` is written after the country code but is not dialled from abroad.
        let digits = digits(&candidate.replacen("(0)", "", 1));
        // `00` is the international call prefix of most of the world (ITU-T E.164 Annex).
        let digits = match candidate.strip_prefix("00") {
            Some(_) => &digits[2..],
            None => &digits[..],
        };
        // Country codes are 1 to 3 digits and prefix-free (ITU-T E.164), written as one group:
        // `004-9231516-…` is not `+49 231516…`.
        let rest = candidate.trim_start_matches('+');
        let rest = rest.strip_prefix("00").unwrap_or(rest);
        let first = rest.bytes().take_while(u8::is_ascii_digit).count();
        (1..=first.min(3)).any(|n| {
            digits.len() > n
                && digits[..n].parse::<u16>().is_ok_and(|cc| {
                    plans(cc).any(|i| compiled(i).is_some_and(|r| r.valid(&digits[n..])))
                })
        })
    })
}

/// North American shape (`(415) 555-0148`): valid in a hinted region or in the NANP.
pub(crate) fn nanp(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    national_in(text, r, DEFAULT_NANP, Plan::Nanp)
}

/// National number with a trunk prefix `0`: valid in a hinted region or a default one.
pub(crate) fn national(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    national_in(text, r, DEFAULT_NATIONAL, Plan::Trunk)
}

/// Digit groups with no prefix: only in a region the text names whose national numbers are
/// written without a trunk prefix (Spain, Italy, Portugal, ...). Where the metadata has a
/// prefix (`0` in Germany), a national number is written with it, so unprefixed digits there
/// are something else.
pub(crate) fn hinted(text: &str, r: Range<usize>) -> Option<Range<usize>> {
    if text.get(r.clone())?.starts_with('0') {
        return None;
    }
    national_in(text, r, &[], Plan::Unprefixed)
}

/// How a national candidate is written, from the pattern that found it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// `(NXX) NXX-XXXX`, with or without the NANP's `1`.
    Nanp,
    /// With a trunk prefix (`0…`), which must be the region's.
    Trunk,
    /// Digit groups with no prefix: only regions that have none.
    Unprefixed,
}

fn national_in(text: &str, r: Range<usize>, defaults: &[Id], plan: Plan) -> Option<Range<usize>> {
    if glued(text, r.start, Side::Before, &['+'])
        || continues_number(text, r.start)
        || date_or_address(text.get(r.clone())?)
    {
        return None;
    }
    let prefixed = plan == Plan::Trunk;
    let valid_in = |regions: &[Id], candidate: &str| {
        let digits = digits(candidate);
        regions
            .iter()
            .any(|&id| region(id).is_some_and(|r| r.valid_national(&digits, prefixed)))
    };
    // The defaults first: most numbers are valid there whole, and that needs no search for
    // hints. Otherwise the regions the text names join them (a hinted region may accept more
    // of the candidate than a default did).
    let found = longest_valid(text, r.clone(), |c| valid_in(defaults, c));
    let whole = text[r.clone()].trim_end_matches(|c: char| !c.is_ascii_digit() && c != ')');
    if found.as_ref().is_some_and(|f| f.len() == whole.len()) {
        return found;
    }
    let mut regions = hints(text, &r);
    if plan == Plan::Unprefixed {
        regions.retain(|&id| meta(id).is_some_and(|m| m.national_prefix.is_none()));
    }
    if regions.iter().all(|id| defaults.contains(id)) {
        return found;
    }
    for d in defaults {
        if !regions.contains(d) {
            regions.push(*d);
        }
    }
    longest_valid(text, r, |c| valid_in(&regions, c))
}

/// ASCII digits of `s`.
fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// One region's numbering plan from the metadata, with its patterns compiled once.
///
/// Why not `phonenumber::parse` and `is_valid`: every metadata pattern goes through one
/// process-wide LRU of 100 compiled regexes behind a mutex, and a handful of regions already
/// overflow it, so steady-state redaction recompiled regexes (measured: the scan fell from
/// 570 to 110 MiB/s). Here each region's patterns are compiled once, on first use, and
/// shared read-only between threads.
struct Region {
    /// National (trunk) prefix for parsing, anchored at the start (`0`); `None` when the
    /// region has none.
    prefix: Option<regex::Regex>,
    /// The general description: every valid national significant number matches it.
    general: regex::Regex,
    /// Lengths a national significant number can have.
    lengths: &'static [u16],
    /// Fixed line, mobile, toll free, premium rate, shared cost, personal, VoIP, pager, UAN,
    /// voicemail: a valid number matches one (libphonenumber's `is_valid`).
    types: Vec<(regex::Regex, &'static [u16])>,
}

impl Region {
    fn compile(m: &'static Meta) -> Option<Region> {
        let full = |p: &str| ascii(&format!("^(?:{p})$"));
        let types = m
            .types
            .iter()
            .filter_map(|t| Some((full(t.pattern)?, t.lengths)))
            .collect();
        let prefix = match m.prefix_for_parsing {
            Some(p) => Some(ascii(&format!("^(?:{p})"))?),
            None => m
                .national_prefix
                .and_then(|p| ascii(&format!("^{}", regex::escape(p)))),
        };
        Some(Region {
            prefix,
            general: full(m.general.pattern)?,
            lengths: m.general.lengths,
            types,
        })
    }

    /// A valid national significant number (the digits after the country code).
    fn valid(&self, nsn: &str) -> bool {
        let len = nsn.len() as u16;
        (self.lengths.is_empty() || self.lengths.contains(&len))
            && self.general.is_match(nsn)
            && self
                .types
                .iter()
                .any(|(re, l)| (l.is_empty() || l.contains(&len)) && re.is_match(nsn))
    }

    /// A valid number as written nationally: its trunk prefix removed when written; when
    /// `prefixed`, the region must have one and it must be written (`030 …` in Germany: a
    /// German number without its `0` is not written that way). The NANP's `1` is optional.
    fn valid_national(&self, digits: &str, prefixed: bool) -> bool {
        let stripped = self
            .prefix
            .as_ref()
            .and_then(|p| p.find(digits))
            .filter(|m| m.end() > 0)
            .is_some_and(|m| self.valid(&digits[m.end()..]));
        stripped || (!prefixed && self.valid(digits))
    }
}

/// One of the metadata's patterns, compiled for ASCII digits. It is only ever matched against
/// ASCII digits ([`digits`]), so this changes no answer; Unicode mode made `\d` match every
/// script's digits and compiled each region's dozen patterns into ~0.7 MB of automata (3.4 MB
/// for the five default regions, resident from start), ASCII into a small fraction of that.
fn ascii(pattern: &str) -> Option<regex::Regex> {
    regex::RegexBuilder::new(pattern)
        .unicode(false)
        .build()
        .ok()
}

/// One region of libphonenumber's metadata, as much of it as the checks here read; `build.rs`
/// writes every region's from the `phonenumber` crate's database into [`REGIONS`].
struct Meta {
    /// The region's id ([`Id`]).
    id: Id,
    /// The trunk prefix a national number is written with (`0`); `None` where there is none.
    national_prefix: Option<&'static str>,
    /// The pattern that strips the trunk prefix (and carrier codes) when it is not just
    /// [`Meta::national_prefix`].
    prefix_for_parsing: Option<&'static str>,
    /// The general description: every valid national significant number matches it.
    general: Desc,
    /// Fixed line, mobile, toll free, premium rate, shared cost, personal, VoIP, pager, UAN,
    /// voicemail, those the region has, in that order.
    types: &'static [Desc],
}

/// A number type's national significant numbers: its pattern (no blanks) and lengths.
struct Desc {
    pattern: &'static str,
    lengths: &'static [u16],
}

// `REGION_COUNT`, `REGIONS` (sorted by id, then country code: the non-geographic codes,
// +800, +808, +870, ..., are all `001`) and `BY_CODE` (country code, index in `REGIONS`;
// sorted by code), written by build.rs.
include!(concat!(env!("OUT_DIR"), "/phone_meta.rs"));

/// Region `id`'s metadata (for `001`, one of the non-geographic codes'; look those up by
/// code, in [`BY_CODE`]).
fn meta(id: &str) -> Option<&'static Meta> {
    Some(&REGIONS[index(id)?])
}

/// Region `id`'s index in [`REGIONS`] (for `001`, as [`meta`]).
fn index(id: &str) -> Option<usize> {
    REGIONS.binary_search_by(|m| m.id.cmp(id)).ok()
}

/// The indexes in [`REGIONS`] of country code `cc`'s plans (several for a shared code: `1`).
fn plans(cc: u16) -> impl Iterator<Item = usize> {
    let from = BY_CODE.partition_point(|&(c, _)| c < cc);
    BY_CODE[from..]
        .iter()
        .take_while(move |&&(c, _)| c == cc)
        .map(|&(_, i)| usize::from(i))
}

/// Each region's compiled plan, by index in [`REGIONS`], compiled on first use.
static COMPILED: [OnceLock<Option<Region>>; REGION_COUNT] =
    [const { OnceLock::new() }; REGION_COUNT];

/// Region `i`'s compiled plan; `None` for metadata that does not compile.
fn compiled(i: usize) -> Option<&'static Region> {
    COMPILED[i]
        .get_or_init(|| Region::compile(&REGIONS[i]))
        .as_ref()
}

/// Region `id`'s compiled plan; `None` for an unknown id or metadata that does not compile.
/// For `001`, as [`meta`].
fn region(id: &str) -> Option<&'static Region> {
    compiled(index(id)?)
}

/// The longest prefix of the candidate, ending at a digit group, that `valid` accepts and that
/// is not glued on its right. Drops at most [`MAX_TRIMS`] trailing groups.
fn longest_valid(
    text: &str,
    r: Range<usize>,
    valid: impl Fn(&str) -> bool,
) -> Option<Range<usize>> {
    let mut end = r.end;
    for _ in 0..=MAX_TRIMS {
        let s = text.get(r.start..end)?;
        let s = s.trim_end_matches(|c: char| !c.is_ascii_digit() && c != ')');
        let out = r.start..r.start + s.len();
        if s.bytes().filter(u8::is_ascii_digit).count() < 6 {
            return None;
        }
        if apart(text, &out, &['+']) && !date_or_address(s) && valid(s) {
            return Some(out);
        }
        end = r.start + s.rfind([' ', '.', '-', '/'])?;
    }
    None
}

/// True for digit groups written the way dates, times and IPv4 addresses are, not phone
/// numbers: `2024-01-31` (also followed by more groups, a time), `31.01.2024`, `01/31/24`,
/// `12:30`, `10.0.0.1`. Open numbering plans (Germany's) would accept some of them.
fn date_or_address(s: &str) -> bool {
    if s.contains(':') {
        return true;
    }
    let groups: Vec<u32> = s
        .split(|c: char| !c.is_ascii_digit())
        .filter(|g| !g.is_empty())
        .map(|g| g.parse().unwrap_or(u32::MAX))
        .collect();
    let lens: Vec<usize> = s
        .split(|c: char| !c.is_ascii_digit())
        .filter(|g| !g.is_empty())
        .map(str::len)
        .collect();
    // Separators between groups: a date is three groups, or three joined by one separator and
    // followed by another (a time: `2024-01-31 12 00`); `01 23 45 67 89` is five of one kind.
    let seps: Vec<&str> = s
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .split(|c: char| c.is_ascii_digit())
        .filter(|g| !g.is_empty())
        .collect();
    let date_like =
        lens.len() == 3 || (seps.len() >= 3 && seps[0] == seps[1] && seps[1] != seps[2]);
    if !date_like && lens.len() != 4 {
        return false;
    }
    let year = |y: u32, len: usize| len == 2 || (len == 4 && (1900..=2099).contains(&y));
    let day_month =
        |a: u32, b: u32| (1..=31).contains(&a) && (1..=31).contains(&b) && a.min(b) <= 12;
    match (groups.as_slice(), lens.as_slice()) {
        ([y, m, d, ..], [4, 2, 2, ..]) => date_like && year(*y, 4) && day_month(*m, *d),
        ([a, b, y, ..], [1 | 2, 1 | 2, yl @ (2 | 4), ..]) => {
            date_like && day_month(*a, *b) && year(*y, *yl)
        }
        (_, [1..=3, 1..=3, 1..=3, 1..=3]) => s.contains('.'),
        _ => false,
    }
}

/// One automaton over every hint word (ASCII case-insensitive; the non-ASCII letters of a
/// word match in lowercase only), built on first use.
static HINT_SEARCH: LazyLock<AhoCorasick> = LazyLock::new(|| {
    AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .build(HINTS.iter().map(|(w, _)| w))
        .expect("hint words are a small fixed set")
});

/// True when hint `word` found at `at` in `text` is a word of its own there (judged in the
/// whole text, so the edge of a search window never makes a piece of a word a hint).
fn whole_hint(text: &str, at: Range<usize>, word: &str) -> bool {
    let edge = |c: Option<char>| !c.is_some_and(char::is_alphanumeric);
    (word.starts_with('.') || edge(text[..at.start].chars().next_back()))
        && edge(text[at.end..].chars().next())
}

/// Longest match of the unprefixed pattern ([`crate::redact::detect::UNPREFIXED_PHONE`]:
/// four digits, then three groups of a separator and four digits); [`hinted_skip`] relies on
/// it, and a test checks it against the pattern.
pub(crate) const UNPREFIXED_MAX_LEN: usize = 19;

/// The hint words that name a region with no national prefix (only those make unprefixed
/// digit groups a phone number, see [`national_in`]): their automaton, and for each of its
/// patterns the index of the word in [`HINTS`].
static UNPREFIXED_HINTS: LazyLock<(AhoCorasick, Vec<usize>)> = LazyLock::new(|| {
    let index: Vec<usize> = (0..HINTS.len())
        .filter(|&i| meta(HINTS[i].1).is_some_and(|m| m.national_prefix.is_none()))
        .collect();
    // Leftmost: the search can use a prefilter, which the overlapping one cannot.
    let ac = AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .match_kind(aho_corasick::MatchKind::LeftmostLongest)
        .build(index.iter().map(|&i| HINTS[i].0))
        .expect("hint words are a small fixed set");
    (ac, index)
});

/// The unprefixed pattern's [`Skip`](crate::redact::detect::Skip): [`hinted`] accepts a
/// candidate `r` only with a hint of a region without national prefix within
/// `r.start - HINT_BEFORE .. r.end + HINT_AFTER` (give or take a character boundary), so no
/// candidate starting before `start(hint) - HINT_AFTER - UNPREFIXED_MAX_LEN` of the first
/// such hint at or after `at - HINT_BEFORE` can pass (no later hint ends before that one
/// starts), and none at all when there is no hint up to `end + HINT_AFTER`. Returns the
/// position to search from and the bytes read. On digit-dense text with no hint (a table of numbers) this turns one
/// rejected search per digit group into one pass of the hint automaton.
pub(crate) fn hinted_skip(text: &str, at: usize, end: usize) -> (usize, usize) {
    // 4 bytes of slack on each side for the character-boundary adjustments of `hints`.
    let lo = text.floor_char_boundary(at.saturating_sub(HINT_BEFORE + 4));
    let hi = text.ceil_char_boundary((end + HINT_AFTER + 4).min(text.len()));
    let (ac, index) = &*UNPREFIXED_HINTS;
    // Hint starts in order: after a piece of a longer word, one character on (a hint may
    // overlap it). The first whole hint starts no later than any other, so no whole hint
    // ends before its start: that start bounds every hint's end from below.
    let mut from = lo;
    while let Some(m) = ac.find(aho_corasick::Input::new(text).range(from..hi)) {
        let found = m.start()..m.end();
        if whole_hint(text, found.clone(), HINTS[index[m.pattern().as_usize()]].0) {
            let first = found
                .start
                .saturating_sub(HINT_AFTER + UNPREFIXED_MAX_LEN + 4);
            return (text.floor_char_boundary(first).max(at), found.end - lo);
        }
        from = text.ceil_char_boundary(found.start + 1);
    }
    (end, hi - lo)
}

/// Regions named by the text around `r`, in order of mention, at most [`MAX_REGIONS`].
fn hints(text: &str, r: &Range<usize>) -> Vec<Id> {
    let a = text.floor_char_boundary(r.start.saturating_sub(HINT_BEFORE));
    let b = text.ceil_char_boundary((r.end + HINT_AFTER).min(text.len()));
    let mut out = Vec::new();
    for m in HINT_SEARCH.find_overlapping_iter(&text[a..b]) {
        let (word, id) = HINTS[m.pattern().as_usize()];
        if whole_hint(text, a + m.start()..a + m.end(), word) && !out.contains(&id) {
            out.push(id);
            if out.len() == MAX_REGIONS {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every region of the metadata compiles in ASCII mode ([`ascii`]): a pattern that did
    /// not would leave its region unable to validate any number, silently.
    #[test]
    fn every_region_of_the_metadata_compiles() {
        for m in &REGIONS {
            let r = Region::compile(m).unwrap_or_else(|| panic!("{} does not compile", m.id));
            assert!(!r.types.is_empty(), "{} has no number types", m.id);
        }
        assert!(
            REGIONS.len() > 200,
            "only {} regions in the metadata",
            REGIONS.len()
        );
    }

    /// Every number type's example in the metadata is valid for its own region, read through
    /// the generated tables and [`Region::valid`] (libphonenumber's `is_valid`): the tables
    /// carry what the check needs, for every region, the non-geographic codes included.
    #[test]
    fn the_metadata_s_own_examples_are_valid() {
        assert!(EXAMPLES.len() > 1000, "only {} examples", EXAMPLES.len());
        for &(i, example) in EXAMPLES {
            let m = &REGIONS[usize::from(i)];
            let r = compiled(i.into()).unwrap_or_else(|| panic!("{} does not compile", m.id));
            assert!(r.valid(example), "{} {example}", m.id);
        }
        // A number of one non-geographic code is not valid under another's plan.
        let plan = |code: u16| compiled(plans(code).next().expect("a plan")).expect("compiles");
        let uifn = EXAMPLES
            .iter()
            .find(|&&(i, _)| std::ptr::eq(compiled(i.into()).unwrap(), plan(800)))
            .map(|&(_, e)| e)
            .expect("+800 has an example");
        assert!(plan(800).valid(uifn) && !plan(979).valid(uifn), "{uifn}");
    }

    /// The lookups' binary searches need `REGIONS` sorted by id and `BY_CODE` by code, and
    /// `BY_CODE` must list every region under its own code.
    #[test]
    fn the_metadata_tables_are_sorted_and_agree() {
        assert!(REGIONS.windows(2).all(|w| w[0].id <= w[1].id));
        assert!(
            REGIONS
                .windows(2)
                .all(|w| w[0].id < w[1].id || w[0].id == "001")
        );
        assert!(BY_CODE.windows(2).all(|w| w[0] <= w[1]));
        let mut listed: Vec<u16> = BY_CODE.iter().map(|&(_, i)| i).collect();
        listed.sort();
        assert!(
            listed.iter().copied().eq(0..REGIONS.len() as u16),
            "each region once"
        );
        let by_code = |code: u16| -> Vec<Id> {
            BY_CODE
                .iter()
                .filter(|&&(c, _)| c == code)
                .map(|&(_, i)| REGIONS[usize::from(i)].id)
                .collect()
        };
        assert_eq!(by_code(49), ["DE"]);
        assert_eq!(by_code(34), ["ES"]);
        // Each non-geographic code has its own plan, all under the id `001`.
        assert_eq!(by_code(800), ["001"]);
        assert_eq!(by_code(979), ["001"]);
        assert_eq!(meta("DE").map(|m| m.national_prefix), Some(Some("0")));
        assert_eq!(meta("ES").map(|m| m.national_prefix), Some(None));
        assert!(meta("XX").is_none() && region("XX").is_none());
        // Country code 1 is shared by the NANP's regions.
        let nanp = by_code(1);
        assert!(
            nanp.contains(&"US") && nanp.contains(&"CA") && nanp.len() > 10,
            "{nanp:?}"
        );
    }

    fn whole(f: fn(&str, Range<usize>) -> Option<Range<usize>>, t: &str) -> Option<&str> {
        f(t, 0..t.len()).map(|r| &t[r])
    }

    #[test]
    fn international_numbers_valid_for_their_country_code() {
        assert_eq!(whole(intl, "+44 20 7946 0958"), Some("+44 20 7946 0958"));
        assert_eq!(whole(intl, "+49 176 21706543"), Some("+49 176 21706543"));
        assert_eq!(whole(intl, "0049 30 12345678"), Some("0049 30 12345678"));
        assert_eq!(whole(intl, "+33 6 12 34 56 78"), Some("+33 6 12 34 56 78"));
        assert_eq!(
            whole(intl, "+1 303 396 7205 2021 1234"),
            Some("+1 303 396 7205"),
            "trailing groups dropped until valid"
        );
        assert_eq!(whole(intl, "+1 2"), None);
        // A non-geographic code is checked against its own plan (UIFN: 800 and 8 digits).
        assert_eq!(whole(intl, "+800 1234 5678"), Some("+800 1234 5678"));
        assert_eq!(whole(intl, "+800 1234 567"), None);
        assert_eq!(whole(intl, "+44 1234"), None, "too short for the UK");
        assert_eq!(
            whole(intl, "004-9231516-6951108"),
            None,
            "the country code is one written group"
        );
    }

    #[test]
    fn national_numbers_default_and_hinted_regions() {
        assert_eq!(whole(national, "030 12345678"), Some("030 12345678"));
        assert_eq!(whole(national, "020 7946 0958"), Some("020 7946 0958"));
        assert_eq!(whole(national, "06.12.34.56.78"), Some("06.12.34.56.78"));
        assert_eq!(whole(nanp, "(415) 555-0148"), Some("(415) 555-0148"));
        assert_eq!(
            whole(nanp, "(123) 555-0148"),
            None,
            "no NANP area code starts with 1"
        );
        assert_eq!(
            whole(hinted, "612 345 678"),
            None,
            "unprefixed groups need a hint"
        );
        // Germany writes its trunk prefix: unprefixed digits near "Nummer" are not a phone.
        let t = "Nummer 612 345 678";
        assert_eq!(hinted(t, 7..t.len()), None);
        for date in ["2024-01-31 12", "31.01.2024", "01/31/24", "10.20.30.40"] {
            assert_eq!(whole(national, date), None, "{date}");
            let t = format!("Telefon {date}");
            assert_eq!(hinted(&t, 8..t.len()), None, "{date}");
        }
        let t = "Mi teléfono: 612 345 678";
        let at = t.find('6').unwrap();
        assert_eq!(hinted(t, at..t.len()), Some(at..t.len()));
        let t = "Il mio cellulare è 312 345 6789";
        let at = t.find("312").unwrap();
        assert_eq!(hinted(t, at..t.len()), Some(at..t.len()));
    }

    #[test]
    fn unprefixed_max_len_is_the_pattern_s() {
        let hir = regex_automata::util::syntax::parse(crate::redact::detect::UNPREFIXED_PHONE)
            .expect("a built-in pattern parses");
        assert_eq!(hir.properties().maximum_len(), Some(UNPREFIXED_MAX_LEN));
    }

    #[test]
    fn the_skip_stops_short_of_every_start_a_hint_allows() {
        let t = format!("{}teléfono{}", "1 ".repeat(150), " 1".repeat(150));
        let hint = t.find("teléfono").unwrap();
        // From anywhere before the hint, the skip lands no later than the first start whose
        // hint window (HINT_AFTER after a longest candidate) reaches the hint's end.
        for at in 0..hint {
            let (next, read) = hinted_skip(&t, at, t.len());
            let end = hint + "teléfono".len();
            assert!(
                next <= at.max(end - HINT_AFTER - UNPREFIXED_MAX_LEN),
                "{at} {next}"
            );
            assert!(next >= at && read > 0);
        }
        // No hint within reach of `at..end`: the whole range is skipped.
        assert_eq!(hinted_skip(&t, 0, 100).0, 100);
        assert_eq!(hinted_skip("1 2 3", 0, 5), (5, 5));
        // A hint that overlaps a piece of a longer one is still found (`.es` in `x.españa`
        // is not a hint, `españa` is).
        let t = format!("x.españa{}", " 1".repeat(200));
        assert_eq!(hinted_skip(&t, 0, t.len()).0, 0);
        // A piece of a longer word is no hint, even cut at the edge of the reach.
        let t = format!("xitalia{}", " 1".repeat(200));
        assert_eq!(hinted_skip(&t, 200, t.len()).0, t.len());
    }

    #[test]
    fn hints_are_whole_words_in_order() {
        let t = "Telefon in Deutschland, or call the UK office: 0";
        assert_eq!(hints(t, &(t.len() - 1..t.len())), vec!["DE", "GB"]);
        assert!(hints("Ukulele lessons: 0", &(17..18)).is_empty());
        assert_eq!(hints("mail me at a@b.fr: 0", &(19..20)), vec!["FR"]);
    }
}
