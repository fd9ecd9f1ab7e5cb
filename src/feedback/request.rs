//! The feedback request body: parsed and checked field by field, without the rules or the
//! ledger (pure; the service does the rest).
//!
//! ```json
//! {"request_id": "0190…", "name": "user_rating", "score": 1, "label": "thumbs_up",
//!  "comment": "…", "scope": "exchange"}
//! ```
//!
//! Every refusal names the field and says what it must be, so an app developer can fix the
//! call from the message alone. Unknown fields are refused (a typo such as `"comments"` would
//! otherwise lose the comment silently).

use crate::exchange::ExchangeId;

/// Longest `name`, in bytes.
pub const MAX_NAME: usize = 64;
/// Longest `label`, in bytes.
pub const MAX_LABEL: usize = 64;
/// Longest `comment`, in bytes (UTF-8), before scrubbing.
pub const MAX_COMMENT: usize = 4096;

/// What is rated: the one answer, or the task (conversation or trace) it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// This exchange's answer (the default).
    #[default]
    Exchange,
    /// The task: the exchange's trace, else its conversation.
    Task,
}

impl Scope {
    /// `exchange` or `task`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Exchange => "exchange",
            Scope::Task => "task",
        }
    }
}

/// A checked feedback request. `comment` is still the app's raw text: the service scrubs it
/// before anything stores, logs or exports it.
#[derive(Clone, PartialEq)]
pub struct FeedbackRequest {
    /// The rated exchange (`x-veil-request-id`).
    pub request_id: ExchangeId,
    /// What was measured: 1 to [`MAX_NAME`] bytes of `A-Z a-z 0-9 _ . : -`.
    pub name: String,
    /// A finite number.
    pub score: Option<f64>,
    /// 1 to [`MAX_LABEL`] bytes of `A-Z a-z 0-9 _ . : -`.
    pub label: Option<String>,
    /// Raw comment, at most [`MAX_COMMENT`] bytes, no control characters but newline and tab.
    pub comment: Option<String>,
    /// `exchange` (default) or `task`.
    pub scope: Scope,
}

// Hand-written: the raw comment must not reach a log through `{:?}`.
impl std::fmt::Debug for FeedbackRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedbackRequest")
            .field("request_id", &self.request_id)
            .field("name", &self.name)
            .field("score", &self.score)
            .field("label", &self.label)
            .field("comment", &self.comment.as_ref().map(|c| c.len()))
            .field("scope", &self.scope)
            .finish()
    }
}

/// Why a body was refused (400): the field (`None`: the body as a whole) and what it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The field at fault.
    pub field: Option<&'static str>,
    /// What is wrong and what it must be.
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        field: Some(field),
        message: format!("{field}: {}", message.into()),
    }
}

const FIELDS: [&str; 6] = ["request_id", "name", "score", "label", "comment", "scope"];

/// Parses and checks a feedback body.
///
/// # Errors
/// [`Invalid`] naming the field: not a JSON object, an unknown field, `request_id` missing or
/// not a request id, `name` missing or not 1-64 bytes of `A-Z a-z 0-9 _ . : -`, `score` not a
/// number, `label` not like `name`, neither `score` nor `label`, `comment` not a string, too
/// long or with control characters, `scope` not `exchange` or `task`.
pub fn parse(body: &[u8]) -> Result<FeedbackRequest, Invalid> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| Invalid {
        field: None,
        message: format!(
            "the body is not JSON ({e}); send a JSON object such as {{\"request_id\": \"…\", \"name\": \"user_rating\", \"score\": 1}}"
        ),
    })?;
    let serde_json::Value::Object(mut map) = value else {
        return Err(Invalid {
            field: None,
            message: "the body must be a JSON object such as {\"request_id\": \"…\", \"name\": \"user_rating\", \"score\": 1}".to_string(),
        });
    };
    if let Some(unknown) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(Invalid {
            field: None,
            message: format!(
                "unknown field {:?}; the fields are {}",
                unknown.chars().take(64).collect::<String>(),
                FIELDS.join(", ")
            ),
        });
    }
    let request_id = match map.remove("request_id") {
        Some(serde_json::Value::String(s)) => s.parse::<ExchangeId>().map_err(|_| {
            invalid(
                "request_id",
                "not a veil request id; send the x-veil-request-id header of the answer you rate (a UUID such as 0190a5e2-7c4d-7b3e-9f1a-2b3c4d5e6f70)",
            )
        })?,
        Some(_) => return Err(invalid("request_id", "must be a string (the x-veil-request-id header of the rated answer)")),
        None => return Err(invalid("request_id", "is required: the x-veil-request-id header of the answer you rate")),
    };
    let name = match map.remove("name") {
        Some(serde_json::Value::String(s)) => token("name", s, MAX_NAME)?,
        Some(_) => return Err(invalid("name", "must be a string such as \"user_rating\"")),
        None => {
            return Err(invalid(
                "name",
                "is required: what was measured, such as \"user_rating\"",
            ));
        }
    };
    let score = match map.remove("score") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => match n.as_f64() {
            Some(f) if f.is_finite() => Some(f),
            _ => return Err(invalid("score", "must be a finite number")),
        },
        Some(_) => {
            return Err(invalid(
                "score",
                "must be a number such as 1, -1 or 0.75 (not a string)",
            ));
        }
    };
    let label = match map.remove("label") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(token("label", s, MAX_LABEL)?),
        Some(_) => return Err(invalid("label", "must be a string such as \"thumbs_up\"")),
    };
    if score.is_none() && label.is_none() {
        return Err(Invalid {
            field: Some("score"),
            message: "score or label: at least one is required (a number such as 1, or a short label such as \"thumbs_up\")".to_string(),
        });
    }
    let comment = match map.remove("comment") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => {
            if s.len() > MAX_COMMENT {
                return Err(invalid(
                    "comment",
                    format!("is {} bytes; at most {MAX_COMMENT}", s.len()),
                ));
            }
            if s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
                return Err(invalid(
                    "comment",
                    "holds control characters; send plain text (newlines and tabs are fine)",
                ));
            }
            (!s.trim().is_empty()).then_some(s)
        }
        Some(_) => return Err(invalid("comment", "must be a string")),
    };
    let scope = match map.remove("scope") {
        None | Some(serde_json::Value::Null) => Scope::Exchange,
        Some(serde_json::Value::String(s)) if s == "exchange" => Scope::Exchange,
        Some(serde_json::Value::String(s)) if s == "task" => Scope::Task,
        Some(_) => {
            return Err(invalid(
                "scope",
                "must be \"exchange\" (this answer, the default) or \"task\" (its trace or conversation)",
            ));
        }
    };
    Ok(FeedbackRequest {
        request_id,
        name,
        score,
        label,
        comment,
        scope,
    })
}

/// `name` and `label`: short identifiers, not free text (free text belongs in `comment`,
/// which the rules scrub), so a character set that cannot spell an email address or a
/// sentence. Digits and `-` remain, so the service also runs the detectors over them.
fn token(field: &'static str, s: String, max: usize) -> Result<String, Invalid> {
    if s.is_empty() || s.len() > max {
        return Err(invalid(
            field,
            format!("must be 1 to {max} characters, got {}", s.len()),
        ));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
    {
        return Err(invalid(
            field,
            "may hold only letters, digits and _ . : - (such as \"thumbs_up\"); put free text in comment",
        ));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0190a5e2-7c4d-7b3e-9f1a-2b3c4d5e6f70";

    fn body(v: serde_json::Value) -> Vec<u8> {
        v.to_string().into_bytes()
    }

    fn refused(v: serde_json::Value) -> Invalid {
        parse(&body(v)).expect_err("must be refused")
    }

    #[test]
    fn a_full_body_parses_with_every_field() {
        let r = parse(&body(serde_json::json!({
            "request_id": ID, "name": "user_rating", "score": -1, "label": "thumbs_down",
            "comment": "wrong\nanswer", "scope": "task"
        })))
        .unwrap();
        assert_eq!(r.request_id.to_string(), ID);
        assert_eq!(r.name, "user_rating");
        assert_eq!(r.score, Some(-1.0));
        assert_eq!(r.label.as_deref(), Some("thumbs_down"));
        assert_eq!(r.comment.as_deref(), Some("wrong\nanswer"));
        assert_eq!(r.scope, Scope::Task);
    }

    #[test]
    fn scope_defaults_to_exchange_and_a_label_alone_is_enough() {
        let r = parse(&body(
            serde_json::json!({"request_id": ID, "name": "n", "label": "ok"}),
        ))
        .unwrap();
        assert_eq!(r.scope, Scope::Exchange);
        assert_eq!(r.score, None);
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (
                serde_json::json!({"name": "n", "score": 1}),
                Some("request_id"),
            ),
            (
                serde_json::json!({"request_id": "nope", "name": "n", "score": 1}),
                Some("request_id"),
            ),
            (
                serde_json::json!({"request_id": ID, "score": 1}),
                Some("name"),
            ),
            (
                serde_json::json!({"request_id": ID, "name": "", "score": 1}),
                Some("name"),
            ),
            (
                serde_json::json!({"request_id": ID, "name": "a".repeat(65), "score": 1}),
                Some("name"),
            ),
            (
                serde_json::json!({"request_id": ID, "name": "bob@example.com", "score": 1}),
                Some("name"),
            ),
            (
                serde_json::json!({"request_id": ID, "name": "n", "score": "1"}),
                Some("score"),
            ),
            (
                serde_json::json!({"request_id": ID, "name": "n"}),
                Some("score"),
            ),
            (
                serde_json::json!({"request_id": ID, "name": "n", "label": "thumbs up"}),
                Some("label"),
            ),
            (
                serde_json::json!({"request_id": ID, "name": "n", "score": 1, "comment": 5}),
                Some("comment"),
            ),
            (
                serde_json::json!({"request_id": ID, "name": "n", "score": 1, "comment": "a\u{7}"}),
                Some("comment"),
            ),
            (
                serde_json::json!({"request_id": ID, "name": "n", "score": 1, "comment": "x".repeat(MAX_COMMENT + 1)}),
                Some("comment"),
            ),
            (
                serde_json::json!({"request_id": ID, "name": "n", "score": 1, "scope": "session"}),
                Some("scope"),
            ),
            (
                serde_json::json!({"request_id": ID, "name": "n", "score": 1, "comments": "typo"}),
                None,
            ),
            (serde_json::json!([1, 2]), None),
        ];
        for (v, field) in cases {
            let e = refused(v.clone());
            assert_eq!(e.field, field, "{v}: {}", e.message);
            if let Some(f) = field {
                assert!(e.message.contains(f), "{v}: {}", e.message);
            }
        }
    }

    #[test]
    fn a_body_that_is_not_json_says_what_to_send() {
        let e = parse(b"score=1").unwrap_err();
        assert_eq!(e.field, None);
        assert!(e.message.contains("not JSON"), "{}", e.message);
    }

    // See: veil#14
    #[test]
    fn score_1e400_is_refused_not_stored_as_infinity() {
        let e = parse(format!(r#"{{"request_id":"{ID}","name":"n","score":1e400}}"#).as_bytes())
            .unwrap_err();
        assert!(e.field.is_none() || e.field == Some("score"), "{e:?}");
    }

    #[test]
    fn debug_never_shows_the_raw_comment() {
        let r = parse(&body(serde_json::json!({
            "request_id": ID, "name": "n", "score": 1, "comment": "mail bob@example.com"
        })))
        .unwrap();
        assert!(!format!("{r:?}").contains("bob@example.com"));
    }

    #[test]
    fn a_blank_comment_is_no_comment() {
        let r = parse(&body(
            serde_json::json!({"request_id": ID, "name": "n", "score": 1, "comment": "  "}),
        ))
        .unwrap();
        assert_eq!(r.comment, None);
    }
}
