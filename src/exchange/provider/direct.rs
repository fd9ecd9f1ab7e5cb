//! # Reading the fields a dialect needs straight from the JSON text.
//!
//! The dialect modules read `serde_json::Value` trees. For the most common exchange, a Chat
//! Completions request and response, building the trees was the largest step of the parse:
//! every key and string allocated and inserted into a map, the content copied twice (into the
//! tree, then out of it). The pieces here let a dialect read an object's fields as they are
//! parsed instead: the fields it reads borrowed from the text where they have no escapes, every
//! other field parsed as a `Value` and dropped (or kept, where the dialect keeps it: a
//! request's members other than its messages).
//!
//! What makes the two readings agree (`provider/tests.rs` tests them against each other):
//! - every byte is validated by the same serde_json parser, to the same depth (the object
//!   visitors here count towards its recursion limit as the tree's maps do), and fields the
//!   dialect does not read are parsed as the trees parse them (`Value`), not skipped
//!   (serde_json's skipping accepts numbers out of range and nesting past the limit, which the
//!   tree refuses);
//! - a key given twice: the last one wins, as in the tree's map;
//! - a field of a type the reader does not expect (a number where text is read, an array
//!   where an object is) is an error, and the caller then takes the tree path, which decides
//!   what such a field means. So does anything serde_json refuses, lone surrogate escapes
//!   included (the tree path repairs them, `exchange::json`).
//!
//! Owns: nothing but parsing. Never logs; errors are serde_json's (kind and position only).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

/// An object key, borrowed from the text unless it has escapes (then decoded, owned).
pub(super) struct Key<'de>(pub(super) Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor).map(Key)
    }
}

/// A field read as text: a JSON string (borrowed unless it has escapes) or `null` (`None`).
/// Any other type is an error: the caller falls back to the tree.
#[derive(Default)]
pub(super) struct Text<'de>(pub(super) Option<Cow<'de, str>>);

impl<'de> Text<'de> {
    /// The text, borrowed.
    pub(super) fn get(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_option(OptionalStr).map(Text)
    }
}

/// A field that is most often a string (a message's `content`): the string borrowed from the
/// text unless it has escapes, each element of an array read as `T` (`Value` by default: the
/// array as the tree would parse it), any other JSON value parsed as a `Value`.
pub(super) enum TextOr<'de, T = Value> {
    /// A JSON string.
    Text(Cow<'de, str>),
    /// A JSON array, each element read as `T`.
    List(Vec<T>),
    /// Any other value (an object, a number, `null`), parsed as a `Value`.
    Tree(Value),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for TextOr<'de, T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextOrVisitor(std::marker::PhantomData))
    }
}

struct TextOrVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for TextOrVisitor<T> {
    type Value = TextOr<'de, T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(TextOr::Text(Cow::Borrowed(s)))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(TextOr::Text(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
        Ok(TextOr::Text(Cow::Owned(s)))
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
        Ok(TextOr::Tree(Value::Bool(b)))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
        Ok(TextOr::Tree(Value::from(n)))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        Ok(TextOr::Tree(Value::from(n)))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
        Ok(TextOr::Tree(Value::from(n)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(TextOr::Tree(Value::Null))
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(TextOr::Tree(Value::Null))
    }

    // Arrays and objects are read inside the same parser: the same validation and the same
    // recursion limit as the tree's.
    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Vec::<T>::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(TextOr::List)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Value::deserialize(de::value::MapAccessDeserializer::new(map)).map(TextOr::Tree)
    }
}

struct StrVisitor;

impl<'de> Visitor<'de> for StrVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s.to_owned()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s))
    }
}

struct OptionalStr;

impl<'de> Visitor<'de> for OptionalStr {
    type Value = Option<Cow<'de, str>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(StrVisitor).map(Some)
    }
}

/// Visits the members of an object in order: `field(key, map)` reads the value of a key it
/// knows (with `map.next_value`) and returns `true`; for any other key it returns `false`,
/// and the value is parsed as a `Value` and dropped, so it is validated as the tree would
/// validate it.
pub(super) fn members<'de, A: MapAccess<'de>>(
    mut map: A,
    mut field: impl FnMut(&str, &mut A) -> Result<bool, A::Error>,
) -> Result<(), A::Error> {
    while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
        if !field(&key, &mut map)? {
            map.next_value::<Value>()?;
        }
    }
    Ok(())
}

/// A request read as its `messages` (each as `M`) and every other member kept as a tree, in
/// the tree's map (the last of a key given twice wins), for the dialect's functions that read
/// parameters, tools and the rules' identity paths from a tree.
pub(super) struct Request<M> {
    /// `null` reads as absent, as the tree's `as_array` does.
    pub(super) messages: Option<Vec<M>>,
    /// Every member but `messages`.
    pub(super) rest: Map<String, Value>,
}

impl<'de, M: Deserialize<'de>> Deserialize<'de> for Request<M> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<M>(std::marker::PhantomData<M>);
        impl<'de, M: Deserialize<'de>> Visitor<'de> for V<M> {
            type Value = Request<M>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a request object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Request<M>, A::Error> {
                let mut out = Request {
                    messages: None,
                    rest: Map::new(),
                };
                members(map, |key, map| {
                    if key == "messages" {
                        out.messages = map.next_value()?;
                    } else {
                        out.rest.insert(key.to_string(), map.next_value()?);
                    }
                    Ok(true)
                })?;
                Ok(out)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Implements `Deserialize` for `$ty<'de>`, a `Default` struct read from a JSON object:
/// `|$out, $key, $map| $body` is the [`members`] callback, with `$out` the struct being
/// filled. Anything but an object is an error (`deserialize_map`). The form
/// `object!($ty, $what, [field, …])` reads each member named like one of those fields into
/// it, and parses any other as a tree and drops it.
macro_rules! object {
    ($ty:ident, $what:literal, [$($field:ident),+ $(,)?]) => {
        $crate::exchange::provider::direct::object!($ty, $what, |out, key, map| {
            match key {
                $(stringify!($field) => out.$field = map.next_value()?,)+
                _ => return Ok(false),
            }
            Ok(true)
        });
    };
    ($ty:ident, $what:literal, |$out:ident, $key:ident, $map:ident| $body:block) => {
        impl<'de> serde::Deserialize<'de> for $ty<'de> {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = $ty<'de>;

                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str($what)
                    }

                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        map: A,
                    ) -> Result<$ty<'de>, A::Error> {
                        let mut $out = $ty::default();
                        $crate::exchange::provider::direct::members(map, |$key, $map| $body)?;
                        Ok($out)
                    }
                }
                d.deserialize_map(V)
            }
        }
    };
}
pub(super) use object;
