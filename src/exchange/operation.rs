//! What kind of call an exchange was: `gen_ai.operation.name` as an enum.
//!
//! Part of the exchange step. [`detect`](super::provider::detect) names the operation from
//! the path; the [`Conversation`](super::Conversation) and the
//! [`Record`](crate::record::Record) carry it; the exporter and the ledger write
//! [`Operation::as_str`]. An enum rather than a `String` so a typo cannot become a new metric
//! series, and the wire names live in one `match` (rejected: string constants, which still
//! let any `String` through).

use std::fmt;

/// `gen_ai.operation.name`, the values veil can produce (OpenTelemetry GenAI semantic
/// conventions, registry `gen_ai.operation.name`; see `shared/otel-genai.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// `chat`: OpenAI chat completions and Responses, Anthropic messages.
    Chat,
    /// `text_completion`: OpenAI legacy completions.
    TextCompletion,
    /// `embeddings`: OpenAI and Gemini embeddings.
    Embeddings,
    /// `generate_content`: Gemini `generateContent` / `streamGenerateContent`.
    GenerateContent,
    /// `unknown`: the exchange was not understood (opaque).
    Unknown,
}

impl Operation {
    /// Every variant, in declaration order.
    pub const ALL: [Operation; 5] = [
        Operation::Chat,
        Operation::TextCompletion,
        Operation::Embeddings,
        Operation::GenerateContent,
        Operation::Unknown,
    ];

    /// The wire name, as written to `gen_ai.operation.name`, the span name and the ledger's
    /// `operation` column.
    pub const fn as_str(self) -> &'static str {
        match self {
            Operation::Chat => "chat",
            Operation::TextCompletion => "text_completion",
            Operation::Embeddings => "embeddings",
            Operation::GenerateContent => "generate_content",
            Operation::Unknown => super::model::UNKNOWN,
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_the_semconv_values_and_distinct() {
        let names: Vec<&str> = Operation::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(
            names,
            [
                "chat",
                "text_completion",
                "embeddings",
                "generate_content",
                "unknown"
            ]
        );
        assert_eq!(Operation::GenerateContent.to_string(), "generate_content");
    }
}
