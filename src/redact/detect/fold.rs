//! Disguises folded away before the detectors look: invisible characters inside a value and
//! fullwidth forms of ASCII.
//!
//! A value can be written so that a reader (and the model) sees it unchanged while a pattern
//! over the bytes does not: a zero-width space inside an API key (`sk-proj-ab\u{200B}cd…`
//! kept most of the key readable past the mask), a soft hyphen inside an email, a card number
//! or an `＠` in fullwidth forms (U+FF01..U+FF5E, what East Asian input methods type). When a
//! text holds any of these, the detectors scan its *skeleton* instead, and each span found is
//! mapped back to the original bytes, so the mask covers the disguised value whole.
//!
//! What is folded (Unicode 15 code charts; the invisible set is the default-ignorable
//! format characters a value can carry without changing how it reads):
//!
//! - removed: U+00AD soft hyphen, U+180E Mongolian vowel separator, U+200B zero width space,
//!   U+200C zero width non-joiner, U+200D zero width joiner, U+2060 word joiner, U+FEFF zero
//!   width no-break space;
//! - U+FF01..=U+FF5E (fullwidth `！`..`～`) become U+0021..=U+007E, the ASCII they stand for
//!   (what NFKC does to them);
//! - U+3000 ideographic space becomes a space.
//!
//! Nothing else changes: the skeleton is only scanned, never emitted.

/// A text's skeleton and where each of its bytes came from.
pub(super) struct Folded {
    /// The text with disguises folded away.
    pub(super) text: String,
    /// `origin[i]`: the byte offset in the original text of the character skeleton byte `i`
    /// belongs to (plus `i`'s offset inside that character when it was copied unchanged);
    /// `origin[text.len()]` is the original's length.
    origin: Vec<usize>,
}

/// What a character becomes in the skeleton.
enum Fold {
    Keep,
    Drop,
    Ascii(u8),
}

fn fold(c: char) -> Fold {
    match c {
        '\u{00AD}' | '\u{180E}' | '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}' => Fold::Drop,
        // The range maps one to one onto `!`..`~` (0xFF01 - 0xFEE0 = 0x21); the subtraction
        // stays in 0x21..=0x7E, so the cast keeps every bit.
        '\u{FF01}'..='\u{FF5E}' => Fold::Ascii((c as u32 - 0xFEE0) as u8),
        '\u{3000}' => Fold::Ascii(b' '),
        _ => Fold::Keep,
    }
}

impl Folded {
    /// The skeleton of `text`, or `None` when it holds nothing to fold (the common case:
    /// ASCII text is told apart in one vectorized pass).
    pub(super) fn of(text: &str) -> Option<Folded> {
        if text.is_ascii() || !text.chars().any(|c| !matches!(fold(c), Fold::Keep)) {
            return None;
        }
        let mut out = String::with_capacity(text.len());
        let mut origin = Vec::with_capacity(text.len() + 1);
        for (at, c) in text.char_indices() {
            match fold(c) {
                Fold::Keep => {
                    out.push(c);
                    origin.extend(at..at + c.len_utf8());
                }
                Fold::Drop => {}
                Fold::Ascii(b) => {
                    out.push(char::from(b));
                    origin.push(at);
                }
            }
        }
        origin.push(text.len());
        Some(Folded { text: out, origin })
    }

    /// Maps a span of the skeleton back to the original text: from the start of its first
    /// character to the start of the character after it, so invisible characters inside the
    /// span (or right after it) are covered too. Both ends are character boundaries of the
    /// original when they are character boundaries of the skeleton.
    pub(super) fn original(&self, start: usize, end: usize) -> (usize, usize) {
        (self.origin[start], self.origin[end])
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
        assert!(Folded::of("sk-proj-abc def").is_none());
        assert!(Folded::of("Łukasz Jähn, 東京都").is_none());
    }

    #[test]
    fn invisible_characters_are_removed_and_spans_map_back_over_them() {
        let text = "key sk-ab\u{200B}cd\u{00AD}ef end";
        let f = Folded::of(text).expect("has invisible characters");
        assert_eq!(f.text, "key sk-abcdef end");
        let s = f.text.find("sk-").unwrap();
        let e = s + "sk-abcdef".len();
        let (os, oe) = f.original(s, e);
        assert_eq!(&text[os..oe], "sk-ab\u{200B}cd\u{00AD}ef");
    }

    #[test]
    fn fullwidth_forms_become_ascii() {
        let text = "mail ｊｏｅ＠ｅｘａｍｐｌｅ．ｃｏｍ　４１１１";
        let f = Folded::of(text).expect("has fullwidth forms");
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
        let f = Folded::of(text).unwrap();
        assert_eq!(f.text, "éé");
        // The second é is bytes 5..7 of the original (the zero-width space is 2..5).
        assert_eq!(f.original(2, 4), (5, 7));
        assert_eq!(&text[5..7], "é");
    }
}
