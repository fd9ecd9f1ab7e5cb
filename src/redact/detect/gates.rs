//! The trigger pass: the windows of a text where gated patterns can match.
//!
//! Part of the redact step's detectors (`detect/`). One pass over the bytes, 32 at a time,
//! finds digits, `@` and `:` and opens windows around them ([`Windows`]); the gated pattern
//! sets run only there. Owns the window sizes and the overlap merge; never runs a regex.

use super::*;

/// Which windows a scan must compute.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Want {
    pub(super) digit: bool,
    pub(super) at: bool,
    pub(super) colon: bool,
}

/// Fewest digits in one cluster (digit runs joined by at most [`MAX_CLUSTER_GAP`] of
/// `` .-/()``) that a digit-gated match can have: IPv4 `1.2.3.4`, a national phone `01 23`, a
/// date `1/2/90` or a year all have four; cards, SSNs and NANP numbers more. Every separator a
/// digit pattern allows between two digits fits in such a gap (`) (` in `+44 (0) (20)`).
/// The exceptions: an IBAN (`GB82 WEST …`), which opens its own window at `[A-Z]{2}[0-9]{2}`;
/// and a card whose groups are joined by a tab or a no-break space (U+00A0, U+202F, U+2009),
/// whose groups are clusters of their own: every group but the last has four or more digits,
/// so each opens a window, and the last is within [`DIGIT_RIGHT`] of the one before.
pub(super) const MIN_CLUSTER_DIGITS: usize = 4;
/// Longest run of separators inside a digit cluster.
pub(super) const MAX_CLUSTER_GAP: usize = 3;
/// How far left of its qualifying cluster a digit-gated match may start. The longest label and
/// words before the digits are 44 bytes (`date of birth    was    september. 10th, 1975`:
/// label 13, spaces and verb 11, month and day 20) and 38 for `social security number: no. `;
/// the patterns bound their spaces and punctuation so this holds.
pub(super) const DIGIT_LEFT: usize = 48;
/// How far right of its cluster a digit-gated match may end (a `)`, a word edge).
pub(super) const DIGIT_RIGHT: usize = 16;
/// An IBAN match is at most 66 bytes from its first letter (`[A-Z]{2}[0-9]{2}` and 31
/// characters each after an optional space).
pub(super) const IBAN_REACH: usize = 72;
/// The longest IPv6 text form is 45 bytes.
pub(super) const COLON_PAD: usize = 48;

/// The ranges of a text where gated patterns can match, found in one pass over its bytes.
/// Each chunk of 32 bytes is reduced to a bit mask of its trigger bytes (digits, `:`, `@`) in
/// a loop the compiler vectorizes; chunks of prose give 0 and are skipped whole.
#[derive(Debug, Default)]
pub(super) struct Windows {
    pub(super) digit: Vec<Range<usize>>,
    pub(super) at: Vec<Range<usize>>,
    pub(super) colon: Vec<Range<usize>>,
}

impl Windows {
    pub(super) fn of(text: &str, want: Want) -> Windows {
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
    pub(super) fn visit(&mut self, b: &[u8], k: usize, want: Want) -> usize {
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
pub(super) fn triggers(chunk: &[u8]) -> u32 {
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
pub(super) fn swar_triggers(x: u64) -> u8 {
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
pub(super) fn cluster_end(b: &[u8], start: usize, out: Option<&mut Vec<Range<usize>>>) -> usize {
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
pub(super) fn merge(text: &str, v: &mut Vec<Range<usize>>) {
    if v.is_empty() {
        return;
    }
    v.sort_unstable_by_key(|r| r.start);
    // In place: a range that starts inside the one kept before it extends that one.
    v.dedup_by(|r, kept| {
        let overlaps = r.start <= kept.end;
        if overlaps {
            kept.end = kept.end.max(r.end);
        }
        overlaps
    });
    for w in v.iter_mut() {
        w.start = text.floor_char_boundary(w.start);
        w.end = text.ceil_char_boundary(w.end);
    }
}

/// True when the range starts and ends at word edges (Unicode letters and digits).
pub(super) fn whole_word(text: &str, r: &Range<usize>) -> bool {
    let before = text[..r.start].chars().next_back();
    let after = text[r.end..].chars().next();
    !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
        && !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
}
