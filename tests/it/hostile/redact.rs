//! Redaction on hostile text: match-dense prompts, secrets with neighbours, broken JSON escapes.
