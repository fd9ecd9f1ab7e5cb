//! Building one [`Record`]: `(&Exchange, &Conversation, &CompiledRules[, Budget]) → Record`.
//!
//! Part of the record step, run by the pipeline's threads and by `veil rules test` (which
//! previews exactly this). Owns the order of redaction (content under the budget first, then
//! labels and headers outside it), the all-or-nothing rule for content, and the caps on
//! labels and tool names. Never touches threads, queues, the exporter or the store.

use std::collections::BTreeMap;

use serde_json::Value;

use super::Record;
use super::identity;
use crate::exchange::{Conversation, Exchange, Headers};
use crate::redact::{Budget, CompiledRules, Counts, ScopeKey, Target};

/// Most tool names recorded per exchange. Real requests offer a few dozen tools; the names are
/// redacted outside the content budget, so an app sending thousands must not buy unbudgeted
/// scanning with them (256 × 256 characters at most).
const MAX_TOOL_NAMES: usize = 256;

/// Shortest number (its decimal form, sign included) a request parameter's value is scanned
/// as text: the shortest a detector finds on its own is a 12-digit card number (ISO/IEC 7812);
/// bare phone numbers and SSNs need words around them that a number never has.
const MIN_SCANNED_DIGITS: usize = 12;

/// Longest label (model, feature, conversation id, error type, tool name) exported. Real ones
/// are short; a long one is an app putting content where metadata belongs.
pub(crate) const MAX_LABEL_CHARS: usize = 256;

/// Builds the redacted record of one exchange under the default redaction budget
/// ([`Budget::DEFAULT`]); see [`build_within`].
pub fn build(ex: &Exchange, conv: &Conversation, rules: &CompiledRules) -> Record {
    build_within(ex, conv, rules, Budget::DEFAULT)
}

/// Builds the redacted record of one exchange. Nothing raw leaves here: content goes through
/// the scope's rules, the user ID through the pseudonym key, headers through the allowlist.
///
/// Content (system instructions, input and output messages, free-text request parameters) is
/// redacted under `budget`. When it runs out, all of it is left out of the record, none kept
/// half redacted, and [`Record::content_dropped`] says which limit; the metadata (model,
/// tokens, cost, status, labels, headers: each bounded in size) is recorded as usual, and the
/// redaction counts then cover that metadata only.
///
/// The scope is chosen by [`scope_key`].
pub fn build_within(
    ex: &Exchange,
    conv: &Conversation,
    rules: &CompiledRules,
    budget: Budget,
) -> Record {
    let scope = rules.scope_for(&scope_key(ex, conv));

    let mut meter = budget.start();
    let mut redact = |value: Value, target: Target, counts: &mut Counts| -> Option<Value> {
        let mut value = value;
        if is_empty(&value) {
            return None;
        }
        // After an overrun every call fails at once (the meter stays exceeded).
        let found = rules
            .redact_json_within(&mut value, target, scope, &mut meter)
            .ok()?;
        counts.merge(&found);
        (!is_empty(&value)).then_some(value)
    };
    let mut input = Counts::default();
    let mut system_instructions = redact(
        conv.system_instructions_json(),
        Target::SystemInstructions,
        &mut input,
    );
    let mut input_messages = redact(
        conv.input_messages_json(),
        Target::InputMessages,
        &mut input,
    );
    let mut output = Counts::default();
    let mut output_messages = redact(
        conv.output_messages_json(),
        Target::OutputMessages,
        &mut output,
    );

    // Request parameters are not content, but stop sequences are free text, and a number
    // the app chose (`seed`) can be a card number: a long integer is scanned as its digits,
    // and dropped when a detector matches them (the attribute's type is a number, so there
    // is nothing to mask it with).
    let mut params_found = Counts::default();
    let mut request_params: BTreeMap<String, Value> = conv
        .params
        .iter()
        .filter_map(|(k, v)| {
            if let Value::Number(n) = v {
                // A float of 1e11 or more is no sampling parameter, and past 2^53 its digits
                // are rounded (a 19-digit card as `6.011000000000000e18`) so no detector can
                // check them: it is left out.
                if n.is_f64() && n.as_f64().is_some_and(|f| f.abs() >= 1e11) {
                    return None;
                }
                let digits = n.to_string();
                if digits.len() >= MIN_SCANNED_DIGITS {
                    // The detectors themselves, whatever the rules do with request fields
                    // (a profile that hashes every field would never run them here).
                    let (_, found) = rules.redact_text_within(&digits, scope, &mut meter).ok()?;
                    if found.total() > 0 {
                        params_found.merge(&found);
                        return None;
                    }
                }
                return Some((k.clone(), v.clone()));
            }
            if matches!(v, Value::Bool(_) | Value::Null) {
                return Some((k.clone(), v.clone()));
            }
            let mut v = v.clone();
            let found = rules
                .redact_json_within(&mut v, Target::Request, scope, &mut meter)
                .ok()?;
            params_found.merge(&found);
            Some((k.clone(), v))
        })
        .collect();

    let content_dropped = meter.exceeded().map(|e| e.reason());
    let mut all = Counts::default();
    if content_dropped.is_some() {
        // All or nothing: what was redacted before the budget ran out goes too, so the
        // record never holds part of the content (nor counts of what it does not hold).
        system_instructions = None;
        input_messages = None;
        output_messages = None;
        request_params.retain(|_, v| matches!(v, Value::Number(_) | Value::Bool(_) | Value::Null));
        input = Counts::default();
        output = Counts::default();
    } else {
        all.merge(&input);
        all.merge(&output);
        all.merge(&params_found);
    }

    // Label-like fields come from the app or the provider and could carry anything (an email
    // as a model alias, free text in an error code): detectors and a length cap apply. Those
    // whose values repeat across exchanges (`Repeats::Yes`: model names, the feature tag, the
    // error type) may be answered by the scope's memo of clean strings
    // ([`CompiledRules::redact_label`]); ids and tool names are scanned every time.
    #[derive(Clone, Copy)]
    enum Repeats {
        Yes,
        No,
    }
    let mut label = |s: &str, repeats: Repeats| -> String {
        // A text of at most the cap in bytes has at most the cap in characters: used as is,
        // with no copy (labels are short; this was a `String` per label per exchange).
        let capped: std::borrow::Cow<str> = if s.len() <= MAX_LABEL_CHARS {
            s.into()
        } else {
            s.chars().take(MAX_LABEL_CHARS).collect::<String>().into()
        };
        let (text, found) = match repeats {
            Repeats::Yes => rules.redact_label(&capped, scope),
            Repeats::No => rules.redact_text(&capped, scope),
        };
        all.merge(&found);
        text
    };
    let request_model = conv
        .request_model
        .as_deref()
        .map(|s| label(s, Repeats::Yes));
    let response_model = conv
        .response_model
        .as_deref()
        .map(|s| label(s, Repeats::Yes));
    let conversation_id = conv
        .conversation_id
        .as_deref()
        .map(|s| label(s, Repeats::No));
    let feature = conv.feature.as_deref().map(|s| label(s, Repeats::Yes));
    let error_type = conv.error_type.as_deref().map(|s| label(s, Repeats::Yes));
    let response_id = conv.response_id.as_deref().map(|s| label(s, Repeats::No));
    // Not through the memo: a route can hold an id (`/v1/threads/thread_…/runs`).
    let route = label(scope_route(&ex.path), Repeats::No);
    let tool_names: Vec<String> = conv
        .tool_names
        .iter()
        .take(MAX_TOOL_NAMES)
        .map(|t| label(t, Repeats::No))
        .collect();

    let user_pseudonyms = identity::user_pseudonyms(ex, conv, rules);
    let user_pseudonym = user_pseudonyms.first().cloned();

    Record {
        request_id: ex.id.to_string(),
        start: ex.started_at,
        duration: conv.timings.duration,
        time_to_first_chunk: conv.timings.time_to_first_chunk,
        trace_parent: conv.trace_parent.clone(),
        provider: conv.provider,
        operation: conv.operation,
        request_model,
        response_model,
        response_id,
        conversation_id,
        server_address: conv.server_address.clone(),
        server_port: conv.server_port,
        route,
        status: conv.status,
        error_type,
        finish_reasons: conv.finish_reasons.clone(),
        usage: conv.usage.clone(),
        stream: conv.stream,
        request_params,
        cost_usd: conv.cost_usd,
        user_pseudonym,
        user_pseudonyms,
        feature,
        api_key_fingerprint: ex.api_key_fingerprint.clone(),
        rules_digest: rules.digest().to_string(),
        redactions: all.into_map(),
        redactions_input: input.total(),
        redactions_output: output.total(),
        truncated: conv.truncated || ex.is_truncated(),
        aborted: conv.aborted || ex.outcome.is_aborted(),
        outcome: ex.outcome.kind(),
        system_instructions,
        input_messages,
        output_messages,
        tool_names,
        request_headers: rules.filter_headers(&ex.request_headers),
        response_headers: rules.filter_headers(&ex.response_headers),
        request_bytes: conv.request_bytes,
        response_bytes: conv.response_bytes,
        websocket: ex.websocket.clone(),
        content_dropped,
        parse_error: conv.parse_error.clone(),
        added_latency: (ex.timings.added_request, ex.timings.added_response),
        chunk_gaps: ex.timings.chunk_gaps.clone(),
        retry: is_retry(&ex.request_headers),
        prepared: super::Prepared::default(),
        in_flight: Default::default(),
    }
}

/// Whether the app's SDK marked the request as a retry: `x-stainless-retry-count` above 0.
/// The official OpenAI and Anthropic SDKs (Python, Node, and the ones generated by
/// Stainless) send it on every request, `0` on the first attempt.
fn is_retry(headers: &Headers) -> bool {
    headers.iter().any(|(k, v)| {
        k == "x-stainless-retry-count" && v.trim().parse::<u32>().is_ok_and(|n| n > 0)
    })
}

/// What selects the rules scope of an exchange ([`CompiledRules::scope_for`]): the host the
/// app addressed, the request path without its query, the requested model and the
/// `x-veil-feature` tag. `veil rules test` reports the scope through this same function.
pub fn scope_key<'a>(ex: &'a Exchange, conv: &'a Conversation) -> ScopeKey<'a> {
    ScopeKey {
        host: Some(&conv.server_address),
        route: Some(scope_route(&ex.path)),
        model: conv.request_model.as_deref(),
        feature: conv.feature.as_deref(),
    }
}

/// The request path without its query: the scope key's `route`.
fn scope_route(path: &str) -> &str {
    path.split('?').next().unwrap_or("/")
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}
