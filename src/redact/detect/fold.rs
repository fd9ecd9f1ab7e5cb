//! Disguises folded away before the detectors look: invisible characters inside a value and
//! fullwidth forms of ASCII.
//!
//! A value can be written so that a reader (and the model) sees it unchanged while a pattern
//! over the bytes does not: a zero-width space inside an API key (`sk-proj-ab\u{200B}cd…`
//! kept most of the key readable past the mask), a soft hyphen inside an email, a card number
//! or an `＠` in fullwidth forms (U+FF01..U+FF5E, what East Asian input methods type). When a
//! text holds any of these, the detectors also scan its *skeleton*, and each span found there
//! is mapped back to the original bytes, so the mask covers the disguised value whole.
//!
//! What is folded (Unicode 15; the removed set is the Default_Ignorable_Code_Point property
//! of `DerivedCoreProperties.txt`, characters a renderer shows as nothing):
//!
//! - removed: every default-ignorable code point: U+00AD soft hyphen, U+034F, U+061C,
//!   U+115F-1160, U+17B4-17B5, U+180B-180F, U+200B-200F (zero width space, joiners, marks),
//!   U+202A-202E and U+2066-2069 (bidi controls), U+2060-206F (word joiner, invisible
//!   operators), U+3164, U+FE00-FE0F (variation selectors), U+FEFF, U+FFA0, U+1BCA0-1BCA3,
//!   U+1D173-1D17A, U+E0000-E0FFF outside the tags below;
//! - tag characters U+E0020..=U+E007E become the ASCII they shadow (U+0020..=U+007E): text
//!   written in them is invisible to a reader but not to a model ("ASCII smuggling");
//! - U+FF01..=U+FF5E (fullwidth `！`..`～`) become U+0021..=U+007E (what NFKC does);
//! - U+3000 ideographic space becomes a space; U+2010-2013 and U+2212 (hyphens, dashes,
//!   minus) become `-`.
//!
//! The skeleton is scanned *as well as* the text, not instead of it (see
//! [`super::Scanner::find_within`]): removing a character can also glue a value to its
//! neighbour (`Here` U+200B `sk-proj-…` reads `Heresk-proj-…`), which the text itself still
//! shows apart. Nothing else changes: the skeleton is only scanned, never emitted.

/// A text's skeleton and where each of its bytes came from.
pub(super) struct Folded {
    /// The text with disguises folded away.
    pub(super) text: String,
    /// `(skeleton offset, original offset)` at the start and after every folded character:
    /// from a mark to the next, skeleton and original advance together. Sparse, so a long
    /// text with one zero-width space costs one mark, not a word per byte.
    marks: Vec<(u32, u32)>,
}

/// What a character becomes in the skeleton.
enum Fold {
    Keep,
    Drop,
    Ascii(u8),
}

fn fold(c: char) -> Fold {
    match c {
        // The ranges map one to one onto ASCII; each subtraction stays in 0x20..=0x7E, so
        // the cast keeps every bit.
        '\u{FF01}'..='\u{FF5E}' => Fold::Ascii((c as u32 - 0xFEE0) as u8),
        '\u{E0020}'..='\u{E007E}' => Fold::Ascii((c as u32 - 0xE0000) as u8),
        '\u{3000}' => Fold::Ascii(b' '),
        '\u{2010}'..='\u{2013}' | '\u{2212}' => Fold::Ascii(b'-'),
        '\u{00AD}'
        | '\u{034F}'
        | '\u{061C}'
        | '\u{115F}'..='\u{1160}'
        | '\u{17B4}'..='\u{17B5}'
        | '\u{180B}'..='\u{180F}'
        | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}'
        | '\u{3164}'
        | '\u{FE00}'..='\u{FE0F}'
        | '\u{FEFF}'
        | '\u{FFA0}'
        | '\u{1BCA0}'..='\u{1BCA3}'
        | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0000}'..='\u{E0FFF}' => Fold::Drop,
        _ => Fold::Keep,
    }
}

impl Folded {
    /// True when `text` holds anything to fold (ASCII text is told apart in one vectorized
    /// pass, the common case).
    pub(super) fn needed(text: &str) -> bool {
        !text.is_ascii()
            && u32::try_from(text.len()).is_ok()
            && text.chars().any(|c| !matches!(fold(c), Fold::Keep))
    }

    /// The skeleton of `text` (call when [`Folded::needed`]).
    pub(super) fn of(text: &str) -> Folded {
        // `needed` checked that offsets fit in u32; a text too long for that is not folded.
        let at32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let mut out = String::with_capacity(text.len());
        let mut marks = vec![(0, 0)];
        for (at, c) in text.char_indices() {
            match fold(c) {
                Fold::Keep => {
                    out.push(c);
                    continue;
                }
                Fold::Drop => {}
                Fold::Ascii(b) => out.push(char::from(b)),
            }
            marks.push((at32(out.len()), at32(at + c.len_utf8())));
        }
        Folded { text: out, marks }
    }

    /// `text` with each `%XX` that encodes printable ASCII decoded (RFC 3986 §2.1), mapped
    /// back like a skeleton; `None` when nothing is encoded (or the text is too long to map).
    pub(super) fn percent_decoded(text: &str) -> Option<Folded> {
        let b = text.as_bytes();
        u32::try_from(b.len()).ok()?;
        let hex = |i: usize| b.get(i).and_then(|&c| char::from(c).to_digit(16));
        let mut out = String::with_capacity(text.len());
        let mut marks = vec![(0, 0)];
        let mut copied = 0;
        let mut i = 0;
        while let Some(p) = text[i..].find('%').map(|p| i + p) {
            i = p + 1;
            let Some(c) = hex(p + 1)
                .zip(hex(p + 2))
                .and_then(|(h, l)| char::from_u32(h * 16 + l))
                .filter(char::is_ascii_graphic)
            else {
                continue;
            };
            out.push_str(&text[copied..p]);
            out.push(c);
            copied = p + 3;
            i = copied;
            // Offsets fit: the text's length was checked above.
            marks.push((out.len() as u32, copied as u32));
        }
        if marks.len() == 1 {
            return None;
        }
        out.push_str(&text[copied..]);
        Some(Folded { text: out, marks })
    }

    /// The original offset of skeleton offset `i`: where the character at `i` starts (after
    /// any removed characters before it), or the original's end for the skeleton's end.
    fn origin(&self, i: usize) -> usize {
        // The last mark at or before `i` (marks with the same skeleton offset: the last).
        let k = self.marks.partition_point(|&(s, _)| s as usize <= i) - 1;
        let (s, o) = self.marks[k];
        o as usize + (i - s as usize)
    }

    /// Maps a span of the skeleton back to the original text: from the start of its first
    /// character to the start of the character after it, so invisible characters inside the
    /// span (or right after it) are covered too. Both ends are character boundaries of the
    /// original when they are character boundaries of the skeleton.
    pub(super) fn original(&self, start: usize, end: usize) -> (usize, usize) {
        (self.origin(start), self.origin(end))
    }

    /// [`Folded::original`] over every match found in the skeleton.
    pub(super) fn map_back(&self, found: &mut [super::Found]) {
        for f in found {
            (f.start, f.end) = self.original(f.start, f.end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_and_plain_unicode_are_not_folded() {
        assert!(!Folded::needed("sk-proj-abc def"));
        assert!(!Folded::needed("Łukasz Jähn, 東京都"));
    }

    #[test]
    fn invisible_characters_are_removed_and_spans_map_back_over_them() {
        let text = "key sk-ab\u{200B}cd\u{00AD}ef end";
        assert!(Folded::needed(text));
        let f = Folded::of(text);
        assert_eq!(f.text, "key sk-abcdef end");
        let s = f.text.find("sk-").unwrap();
        let e = s + "sk-abcdef".len();
        let (os, oe) = f.original(s, e);
        assert_eq!(&text[os..oe], "sk-ab\u{200B}cd\u{00AD}ef");
    }

    #[test]
    fn fullwidth_forms_become_ascii() {
        let text = "mail ｊｏｅ＠ｅｘａｍｐｌｅ．ｃｏｍ　４１１１";
        assert!(Folded::needed(text));
        let f = Folded::of(text);
        assert_eq!(f.text, "mail joe@example.com 4111");
        let s = f.text.find("joe").unwrap();
        let (os, oe) = f.original(s, s + "joe@example.com".len());
        assert_eq!(&text[os..oe], "ｊｏｅ＠ｅｘａｍｐｌｅ．ｃｏｍ");
        // The end of the text maps to the end of the original.
        assert_eq!(f.original(0, f.text.len()), (0, text.len()));
    }

    #[test]
    fn kept_multibyte_characters_map_byte_for_byte() {
        let text = "é\u{200B}é";
        let f = Folded::of(text);
        assert_eq!(f.text, "éé");
        // The second é is bytes 5..7 of the original (the zero-width space is 2..5).
        assert_eq!(f.original(2, 4), (5, 7));
        assert_eq!(&text[5..7], "é");
    }

    #[test]
    fn tags_bidi_marks_and_dashes_fold_too() {
        let text = "k\u{E0073}\u{E006B}\u{E002D}x \u{200E}a\u{202E}b 4111\u{2013}1111\u{2212}2";
        let f = Folded::of(text);
        assert_eq!(f.text, "ksk-x ab 4111-1111-2");
        let s = f.text.find("sk-").unwrap();
        let (os, oe) = f.original(s, s + 3);
        assert_eq!(&text[os..oe], "\u{E0073}\u{E006B}\u{E002D}");
    }

    #[test]
    fn percent_escapes_of_printable_ascii_decode_and_map_back() {
        let text = "/k/sk%2Dproj-ab%5Fc?x=%41%20%zz%";
        let f = Folded::percent_decoded(text).unwrap();
        assert_eq!(f.text, "/k/sk-proj-ab_c?x=A%20%zz%");
        let s = f.text.find("sk-").unwrap();
        let e = s + "sk-proj-ab_c".len();
        assert_eq!(f.original(s, e), (3, 3 + "sk%2Dproj-ab%5Fc".len()));
        assert!(Folded::percent_decoded("/v1/chat?a=%20").is_none());
    }
}
