//! # JSON path selectors for field rules.
//!
//! A small, total subset of JSONPath (RFC 9535) that is enough to name fields:
//! `$`, `.name`, `['name']`, `["name"]`, `[3]`, `[*]`, `.*`, and recursive descent `..name`,
//! `..*`, `..[*]`. No filters or slices: a rules file should say *where* a field is, not
//! compute. A path is matched against the concrete path of a node while the redactor walks a
//! body, so no match can cost more than `segments × depth`.

use std::fmt;

/// Longest path accepted, in segments.
const MAX_SEGMENTS: usize = 32;

/// One step of a concrete node path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Sel {
    Name(String),
    Index(usize),
    Any,
}

/// Anything that reads as a path step: borrowed steps, or the owned steps of a walk that
/// mutates the tree (so matching needs no per-node conversion).
pub(crate) trait AsStep {
    fn as_step(&self) -> Step<'_>;
}

impl AsStep for Step<'_> {
    fn as_step(&self) -> Step<'_> {
        self.clone()
    }
}

impl Sel {
    fn matches(&self, step: Step<'_>) -> bool {
        match (self, step) {
            (Sel::Any, _) => true,
            (Sel::Name(n), Step::Key(k)) => n == k,
            (Sel::Index(i), Step::Index(j)) => *i == j,
            _ => false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Child(Sel),
    Descendant(Sel),
}

/// A compiled selector.
#[derive(Clone, PartialEq, Eq)]
pub struct JsonPath {
    text: String,
    segs: Vec<Seg>,
}

impl fmt::Debug for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JsonPath({})", self.text)
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A syntax error: byte offset into the path text and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathError {
    pub offset: usize,
    pub message: String,
}

impl JsonPath {
    /// Parses a selector.
    pub(crate) fn parse(text: &str) -> Result<JsonPath, PathError> {
        let err = |offset: usize, m: &str| PathError {
            offset,
            message: m.to_string(),
        };
        let b = text.as_bytes();
        if b.first() != Some(&b'$') {
            return Err(err(0, "a path starts with `$`"));
        }
        let mut i = 1;
        let mut segs = Vec::new();
        while i < b.len() {
            let deep = b[i..].starts_with(b"..");
            let sel;
            if b[i] == b'.' {
                i += if deep { 2 } else { 1 };
                if i < b.len() && b[i] == b'[' {
                    if !deep {
                        return Err(err(i, "`.[` is not a selector; write `[...]`"));
                    }
                    let (s, n) = bracket(text, i)?;
                    sel = s;
                    i = n;
                } else if i < b.len() && b[i] == b'*' {
                    sel = Sel::Any;
                    i += 1;
                } else {
                    let start = i;
                    while i < b.len()
                        && (b[i].is_ascii_alphanumeric()
                            || b[i] == b'_'
                            || b[i] == b'-'
                            || b[i] >= 0x80)
                    {
                        i += 1;
                    }
                    if start == i {
                        return Err(err(start, "expected a field name, `*` or `[` after `.`"));
                    }
                    sel = Sel::Name(text[start..i].to_string());
                }
            } else if b[i] == b'[' {
                let (s, n) = bracket(text, i)?;
                sel = s;
                i = n;
            } else {
                return Err(err(i, "expected `.` or `[`"));
            }
            segs.push(if deep {
                Seg::Descendant(sel)
            } else {
                Seg::Child(sel)
            });
            if segs.len() > MAX_SEGMENTS {
                return Err(err(i, "path has too many segments (limit 32)"));
            }
        }
        Ok(JsonPath {
            text: text.to_string(),
            segs,
        })
    }

    /// True when this selector names the node at `path` exactly.
    pub(crate) fn matches<S: AsStep>(&self, path: &[S]) -> bool {
        match_segs(&self.segs, path)
    }

    /// False when no node at `path` or below it can match, so a walk looking for matches
    /// need not enter it: `path` strays from the selector's leading child segments, or is
    /// longer than a selector without recursive descent. True otherwise (conservative: any
    /// `..` segment reached makes every subtree a candidate).
    pub(crate) fn may_match_within<S: AsStep>(&self, path: &[S]) -> bool {
        let mut steps = path.iter();
        for seg in &self.segs {
            match seg {
                Seg::Descendant(_) => return true,
                Seg::Child(sel) => match steps.next() {
                    None => return true,
                    Some(s) if sel.matches(s.as_step()) => {}
                    Some(_) => return false,
                },
            }
        }
        steps.next().is_none()
    }

    /// The selector as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

fn match_segs<S: AsStep>(segs: &[Seg], path: &[S]) -> bool {
    match segs.split_first() {
        None => path.is_empty(),
        Some((Seg::Child(sel), rest)) => {
            path.first().is_some_and(|s| sel.matches(s.as_step())) && match_segs(rest, &path[1..])
        }
        Some((Seg::Descendant(sel), rest)) => (0..path.len())
            .any(|i| sel.matches(path[i].as_step()) && match_segs(rest, &path[i + 1..])),
    }
}

/// Parses `[...]` at `i`; returns the selector and the index after `]`.
fn bracket(text: &str, i: usize) -> Result<(Sel, usize), PathError> {
    let err = |offset: usize, m: &str| PathError {
        offset,
        message: m.to_string(),
    };
    let b = text.as_bytes();
    let close = |from: usize| -> Result<usize, PathError> {
        if b.get(from) == Some(&b']') {
            Ok(from + 1)
        } else {
            Err(err(from, "expected `]`"))
        }
    };
    match b.get(i + 1) {
        Some(b'*') => Ok((Sel::Any, close(i + 2)?)),
        Some(q @ (b'\'' | b'"')) => {
            let start = i + 2;
            let end = text[start..]
                .find(*q as char)
                .map(|n| start + n)
                .ok_or_else(|| err(i, "unterminated quoted name"))?;
            Ok((Sel::Name(text[start..end].to_string()), close(end + 1)?))
        }
        Some(c) if c.is_ascii_digit() => {
            let start = i + 1;
            let mut j = start;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            let n = text[start..j]
                .parse()
                .map_err(|_| err(start, "index too large"))?;
            Ok((Sel::Index(n), close(j)?))
        }
        _ => Err(err(
            i + 1,
            "expected `*`, a quoted name or an index inside `[...]`",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Step::{Index as I, Key as K};

    #[test]
    fn matching_table() {
        let cases: &[(&str, &[Step<'_>], bool)] = &[
            ("$", &[], true),
            ("$.user", &[K("user")], true),
            ("$.user", &[K("users")], false),
            ("$.metadata.user_id", &[K("metadata"), K("user_id")], true),
            (
                "$.messages[*].content",
                &[K("messages"), I(3), K("content")],
                true,
            ),
            (
                "$.messages[*].content",
                &[K("messages"), I(3), K("content"), I(0)],
                false,
            ),
            (
                "$.messages[1].content",
                &[K("messages"), I(0), K("content")],
                false,
            ),
            (
                "$..text",
                &[K("messages"), I(0), K("content"), I(1), K("text")],
                true,
            ),
            ("$..text", &[K("text")], true),
            (
                "$..content[*].text",
                &[K("m"), I(0), K("content"), I(2), K("text")],
                true,
            ),
            ("$.*", &[K("anything")], true),
            ("$['odd key']", &[K("odd key")], true),
            ("$[\"x\"][0]", &[K("x"), I(0)], true),
            ("$..*", &[K("a"), K("b")], true),
            ("$..[2]", &[K("a"), I(2)], true),
        ];
        for (p, path, want) in cases {
            assert_eq!(
                JsonPath::parse(p).unwrap().matches(path),
                *want,
                "{p} vs {path:?}"
            );
        }
    }

    /// Pruning never skips a subtree holding a match: whenever a path matches, each of its
    /// prefixes may match within.
    #[test]
    fn may_match_within_prunes_only_strays() {
        let cases: &[(&str, &[Step<'_>], bool)] = &[
            ("$.user", &[], true),
            ("$.user", &[K("user")], true),
            ("$.user", &[K("messages")], false),
            ("$.user", &[K("user"), K("x")], false),
            ("$.metadata.user_id", &[K("metadata")], true),
            ("$.metadata.user_id", &[K("messages"), I(0)], false),
            ("$.messages[*].content", &[K("messages"), I(7)], true),
            ("$.messages[1].content", &[K("messages"), I(0)], false),
            ("$..text", &[K("a"), I(0), K("b")], true),
            ("$.a..text", &[K("b")], false),
            ("$.a..text", &[K("a"), K("x"), K("y")], true),
        ];
        for (p, path, want) in cases {
            let jp = JsonPath::parse(p).unwrap();
            assert_eq!(jp.may_match_within(path), *want, "{p} within {path:?}");
        }
        let path = [K("m"), I(0), K("content"), I(2), K("text")];
        for p in [
            "$..text",
            "$.m[*].content[2].text",
            "$.m..text",
            "$..content[*].text",
        ] {
            let jp = JsonPath::parse(p).unwrap();
            assert!(jp.matches(&path), "{p}");
            for n in 0..=path.len() {
                assert!(jp.may_match_within(&path[..n]), "{p} within {n} steps");
            }
        }
    }

    #[test]
    fn syntax_errors_have_offsets() {
        for (p, off) in [
            ("user", 0),
            ("$.", 2),
            ("$[", 2),
            ("$[1", 3),
            ("$['a", 1),
            ("$x", 1),
            ("$.[0]", 2),
        ] {
            assert_eq!(JsonPath::parse(p).unwrap_err().offset, off, "{p}");
        }
        let long = format!("${}", ".a".repeat(40));
        assert!(JsonPath::parse(&long).is_err());
    }
}
