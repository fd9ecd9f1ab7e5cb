//! # Headers: a message's header fields as recorded, packed.
//!
//! The proxy copies every intercepted request's and response's header fields into the
//! recording on the forwarding threads, and the pipeline frees them on another. As a
//! `Vec<(String, String)>` that was two allocations per field (~40 per exchange, each freed
//! on a thread other than the one that made it, an allocator's slow path); packed, it is two per
//! list: one buffer of text and one of offsets (veil#18).

use std::fmt;

use serde::de::{Deserialize, Deserializer};
use serde::ser::{Serialize, SerializeSeq, Serializer};

/// Header fields in wire order: names as the proxy wrote them (lowercase), values as text
/// (lossy for non-UTF-8 bytes). Iterates as `(name, value)` string pairs; serializes as a
/// sequence of `[name, value]` pairs, the shape a `Vec<(String, String)>` has.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    /// Every name and value, back to back.
    text: String,
    /// Per field, where its name ends and where its value ends in `text` (byte offsets; each
    /// field starts where the one before ended).
    ends: Vec<(usize, usize)>,
}

impl Headers {
    /// No fields.
    pub fn new() -> Self {
        Self::default()
    }

    /// No fields, with room for `fields` fields of `bytes` bytes of names and values in all.
    pub fn with_capacity(fields: usize, bytes: usize) -> Self {
        Headers {
            text: String::with_capacity(bytes),
            ends: Vec::with_capacity(fields),
        }
    }

    /// Appends a field.
    pub fn push(&mut self, name: &str, value: &str) {
        self.text.push_str(name);
        let name_end = self.text.len();
        self.text.push_str(value);
        self.ends.push((name_end, self.text.len()));
    }

    /// The fields in order, as `(name, value)`.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            headers: self,
            next: 0,
        }
    }

    /// How many fields.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there is no field.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Keeps only the fields for which `keep(name, value)` is true, in order.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &str) -> bool) {
        let kept: Headers = self.iter().filter(|(k, v)| keep(k, v)).collect();
        *self = kept;
    }

    /// The value of the first field named exactly `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// The field at `index`.
    fn field(&self, index: usize) -> (&str, &str) {
        let start = match index {
            0 => 0,
            i => self.ends[i - 1].1,
        };
        let (name_end, value_end) = self.ends[index];
        (&self.text[start..name_end], &self.text[name_end..value_end])
    }
}

/// The fields of a [`Headers`], in order.
#[derive(Debug, Clone)]
pub struct Iter<'a> {
    headers: &'a Headers,
    next: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.headers.len() {
            return None;
        }
        let field = self.headers.field(self.next);
        self.next += 1;
        Some(field)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.headers.len() - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a Headers {
    type Item = (&'a str, &'a str);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl<N: AsRef<str>, V: AsRef<str>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(fields: I) -> Self {
        let mut headers = Headers::new();
        headers.extend(fields);
        headers
    }
}

impl From<Vec<(String, String)>> for Headers {
    fn from(fields: Vec<(String, String)>) -> Self {
        fields.into_iter().collect()
    }
}

impl<N: AsRef<str>, V: AsRef<str>> Extend<(N, V)> for Headers {
    fn extend<I: IntoIterator<Item = (N, V)>>(&mut self, fields: I) {
        for (name, value) in fields {
            self.push(name.as_ref(), value.as_ref());
        }
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for Headers {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        for field in self {
            seq.serialize_element(&field)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let pairs = Vec::<(String, String)>::deserialize(deserializer)?;
        Ok(pairs.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_come_back_in_order_with_empty_names_and_values_kept_apart() {
        let fields = [
            ("content-type", "application/json"),
            ("x-empty", ""),
            ("", "odd"),
            ("x-dup", "1"),
            ("x-dup", "2"),
            ("x-utf8", "naïve ✓"),
        ];
        let h: Headers = fields.iter().copied().collect();
        assert_eq!(h.len(), fields.len());
        assert_eq!(h.iter().collect::<Vec<_>>(), fields);
        assert_eq!(h.iter().len(), fields.len());
        assert_eq!(h.get("x-dup"), Some("1"), "the first of a repeated name");
        assert_eq!(h.get("x-empty"), Some(""));
        assert_eq!(h.get("X-DUP"), None, "names match exactly");
        assert!(Headers::new().is_empty() && Headers::new().iter().next().is_none());
        let mut kept = h.clone();
        kept.retain(|k, v| k.starts_with("x-") && v != "1");
        kept.extend([("z", "last")]);
        assert_eq!(
            kept.iter().collect::<Vec<_>>(),
            [
                ("x-empty", ""),
                ("x-dup", "2"),
                ("x-utf8", "naïve ✓"),
                ("z", "last")
            ]
        );
    }

    #[test]
    fn serializes_as_the_pairs_a_vec_of_tuples_does_and_back() {
        let pairs = vec![
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "\"q\"".to_string()),
        ];
        let h: Headers = pairs.iter().map(|(k, v)| (k, v)).collect();
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, serde_json::to_string(&pairs).unwrap());
        assert_eq!(serde_json::from_str::<Headers>(&json).unwrap(), h);
        assert_eq!(format!("{h:?}"), r#"[("a", "1"), ("b", "\"q\"")]"#);
    }
}
