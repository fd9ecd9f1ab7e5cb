//! # `veil export`: datasets from the ledger's redacted content.
//!
//! Reads the `exchanges` rows a [`Selection`] picks (never a forgotten one), with their
//! `content` row (the GenAI JSON the rules let out) and their `feedback` rows, and writes one
//! line per exchange in a [`Format`]: the OpenAI fine-tuning chat format, OpenAI evals
//! samples, or veil's own JSON lines with the metadata. An exchange that cannot make a valid
//! line (no content, no answer, media whose bytes veil never keeps, …) is skipped and counted
//! by [`Skip`] reason, never written half. What is written is exactly what the rules let out
//! of the ledger: nothing here reads the sealed store (`veil export --rules`, in `cli`,
//! rebuilds [`DatasetExchange`]s from it and hands them to [`line()`]).
//!
//! [`manifest`] records each export (filters, digests, the request ids included) so a later
//! `veil forget` can name the datasets that held a forgotten exchange.

pub mod manifest;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Write;
use std::str::FromStr;
use std::time::SystemTime;

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, params_from_iter};
use serde_json::{Map, Value, json};

use super::{LedgerError, row};
use crate::record::Record;

/// Feedback labels that make an entry negative (compared lower-cased). With a score below 0,
/// the one definition of "negative feedback" shared by `veil export --feedback negative` and
/// the feedback columns of `veil report` (veil#14).
pub const NEGATIVE_LABELS: [&str; 4] = ["thumbs_down", "negative", "bad", "incorrect"];

/// Feedback labels that make an entry positive (compared lower-cased). With a score above 0,
/// the one definition of "positive feedback".
pub const POSITIVE_LABELS: [&str; 4] = ["thumbs_up", "positive", "good", "correct"];

/// Whether one feedback entry is negative: `score < 0`, or a label in [`NEGATIVE_LABELS`]
/// (case-insensitive). An entry can be both positive and negative (score 1, label `bad`);
/// each filter then matches it.
pub fn is_negative(score: Option<f64>, label: Option<&str>) -> bool {
    score.is_some_and(|s| s < 0.0) || label.is_some_and(|l| in_labels(l, &NEGATIVE_LABELS))
}

/// Whether one feedback entry is positive: `score > 0`, or a label in [`POSITIVE_LABELS`]
/// (case-insensitive).
pub fn is_positive(score: Option<f64>, label: Option<&str>) -> bool {
    score.is_some_and(|s| s > 0.0) || label.is_some_and(|l| in_labels(l, &POSITIVE_LABELS))
}

fn in_labels(label: &str, labels: &[&str]) -> bool {
    labels.iter().any(|l| l.eq_ignore_ascii_case(label))
}

/// [`is_negative`] as an SQL condition over the `feedback` row aliased `f` (built from the
/// same constants; the labels are fixed ASCII words, never user input).
pub fn negative_sql() -> String {
    negative_sql_over("f.")
}

/// [`is_negative`] as an SQL condition over `feedback` columns named with `prefix` (`"f."`
/// for an alias, `""` for the bare table).
pub fn negative_sql_over(prefix: &str) -> String {
    format!(
        "({prefix}score < 0 OR lower({prefix}label) IN ({}))",
        quoted(&NEGATIVE_LABELS)
    )
}

/// [`is_positive`] as an SQL condition over the `feedback` row aliased `f`.
pub fn positive_sql() -> String {
    format!(
        "(f.score > 0 OR lower(f.label) IN ({}))",
        quoted(&POSITIVE_LABELS)
    )
}

fn quoted(labels: &[&str]) -> String {
    labels
        .iter()
        .map(|l| format!("'{l}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The shape of each output line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `{"messages":[…]}`: the OpenAI fine-tuning chat format (system, user, assistant, tool
    /// roles; assistant `tool_calls` as `{"id","type":"function","function":{"name",
    /// "arguments"}}`), the answer last.
    OpenAiChat,
    /// `{"input":[…],"ideal":"…"}`: an OpenAI evals sample, the messages before the answer
    /// and the observed answer's text as the ideal.
    OpenAiEvals,
    /// veil's own line: the content as the rules emitted it (GenAI JSON) plus the metadata
    /// and feedback.
    Jsonl,
}

impl Format {
    /// Every format, in `--help` order.
    pub const ALL: [Format; 3] = [Format::OpenAiChat, Format::OpenAiEvals, Format::Jsonl];

    /// The name on the command line and in the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Format::OpenAiChat => "openai-chat",
            Format::OpenAiEvals => "openai-evals",
            Format::Jsonl => "jsonl",
        }
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Format::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| format!("unknown format `{s}` (openai-chat, openai-evals, jsonl)"))
    }
}

/// `--feedback`: which feedback an exchange must carry (entries attached to its own request
/// id; a `scope = task` entry counts for the exchange it names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedbackFilter {
    /// At least one positive entry ([`is_positive`]).
    Positive,
    /// At least one negative entry ([`is_negative`]).
    Negative,
    /// At least one entry.
    Any,
    /// No entry.
    None,
}

impl FeedbackFilter {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            FeedbackFilter::Positive => "positive",
            FeedbackFilter::Negative => "negative",
            FeedbackFilter::Any => "any",
            FeedbackFilter::None => "none",
        }
    }

    fn sql(self) -> String {
        let sub = |cond: &str| {
            format!("EXISTS (SELECT 1 FROM feedback f WHERE f.request_id = e.request_id{cond})")
        };
        match self {
            FeedbackFilter::Positive => sub(&format!(" AND {}", positive_sql())),
            FeedbackFilter::Negative => sub(&format!(" AND {}", negative_sql())),
            FeedbackFilter::Any => sub(""),
            FeedbackFilter::None => format!("NOT {}", sub("")),
        }
    }
}

/// `--outcome`: how the exchange ended, over the ledger's `outcome` and `error_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeFilter {
    /// `outcome = complete` and no `error_type` (a 2xx answer read to its end).
    Ok,
    /// Not aborted, and `upstream_failed` or an `error_type` (an HTTP error status, the
    /// provider's error).
    Error,
    /// `client_aborted` or `upstream_aborted`.
    Aborted,
}

impl OutcomeFilter {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            OutcomeFilter::Ok => "ok",
            OutcomeFilter::Error => "error",
            OutcomeFilter::Aborted => "aborted",
        }
    }

    fn sql(self) -> &'static str {
        match self {
            OutcomeFilter::Ok => "(e.outcome = 'complete' AND e.error_type IS NULL)",
            OutcomeFilter::Error => {
                "(e.outcome NOT IN ('client_aborted', 'upstream_aborted') \
                 AND (e.outcome = 'upstream_failed' OR e.error_type IS NOT NULL))"
            }
            OutcomeFilter::Aborted => "(e.outcome IN ('client_aborted', 'upstream_aborted'))",
        }
    }
}

/// Which exchanges an export covers; every condition set must hold. Forgotten exchanges are
/// never selected.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    /// Started at or after.
    pub since: Option<SystemTime>,
    /// Started before.
    pub until: Option<SystemTime>,
    /// The `x-veil-feature` tag equals this.
    pub feature: Option<String>,
    /// The requested or the response model equals this (`gpt-4o` matches a request for
    /// `gpt-4o` answered by `gpt-4o-2024-08-06`, and a request naming the dated model).
    pub model: Option<String>,
    /// Feedback condition.
    pub feedback: Option<FeedbackFilter>,
    /// Outcome condition.
    pub outcome: Option<OutcomeFilter>,
    /// One of the exchange's finish reasons equals this (`length`, `content_filter`,
    /// `tool_call`, …).
    pub finish_reason: Option<String>,
    /// At most this many lines are written (skipped exchanges do not count).
    pub limit: Option<u64>,
}

impl Selection {
    /// The `WHERE` clause over `exchanges e` (starts with `WHERE`) and its bound values; no
    /// user input is ever interpolated.
    pub(crate) fn sql(&self) -> (String, Vec<SqlValue>) {
        let mut clauses = vec!["e.forgotten = 0".to_string()];
        let mut values = Vec::new();
        if let Some(t) = self.since {
            clauses.push("e.start >= ?".into());
            values.push(SqlValue::Text(row::iso_utc(t)));
        }
        if let Some(t) = self.until {
            clauses.push("e.start < ?".into());
            values.push(SqlValue::Text(row::iso_utc(t)));
        }
        if let Some(f) = &self.feature {
            clauses.push("e.feature = ?".into());
            values.push(SqlValue::Text(f.clone()));
        }
        if let Some(m) = &self.model {
            clauses.push("(e.request_model = ? OR e.response_model = ?)".into());
            values.push(SqlValue::Text(m.clone()));
            values.push(SqlValue::Text(m.clone()));
        }
        if let Some(f) = self.feedback {
            clauses.push(f.sql());
        }
        if let Some(o) = self.outcome {
            clauses.push(o.sql().into());
        }
        if let Some(r) = &self.finish_reason {
            // Membership in the comma-joined list, without LIKE (whose `%` and `_` a value
            // could carry).
            clauses.push("instr(',' || e.finish_reasons || ',', ',' || ? || ',') > 0".into());
            values.push(SqlValue::Text(r.clone()));
        }
        (format!("WHERE {}", clauses.join(" AND ")), values)
    }

    /// The selection as the manifest records it (times UTC, absent conditions `null`).
    pub fn to_json(&self) -> Value {
        json!({
            "since": self.since.map(row::iso_utc),
            "until": self.until.map(row::iso_utc),
            "feature": self.feature,
            "model": self.model,
            "feedback": self.feedback.map(FeedbackFilter::name),
            "outcome": self.outcome.map(OutcomeFilter::name),
            "finish_reason": self.finish_reason,
            "limit": self.limit,
        })
    }
}

/// One feedback entry as exported (the comment is the one the rules scrubbed on arrival).
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackEntry {
    /// `fb_…`.
    pub id: String,
    /// `exchange` or `task`.
    pub scope: String,
    /// When veil received it (UTC, ISO 8601).
    pub at: String,
    /// What was measured (`user_rating`).
    pub name: String,
    /// The score, when given.
    pub score: Option<f64>,
    /// The label, when given.
    pub label: Option<String>,
    /// The scrubbed comment, when given.
    pub comment: Option<String>,
}

impl FeedbackEntry {
    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "scope": self.scope,
            "at": self.at,
            "name": self.name,
            "score": self.score,
            "label": self.label,
            "comment": self.comment,
        })
    }
}

/// One exchange as the exporter sees it: the metadata of its ledger row, its content as the
/// rules emitted it (GenAI JSON), its feedback.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DatasetExchange {
    /// `x-veil-request-id`.
    pub request_id: String,
    /// Start, UTC ISO 8601.
    pub start: String,
    /// `gen_ai.provider.name`.
    pub provider: String,
    /// Requested model.
    pub request_model: Option<String>,
    /// Answering model.
    pub response_model: Option<String>,
    /// `x-veil-feature`.
    pub feature: Option<String>,
    /// Input tokens as reported.
    pub input_tokens: Option<i64>,
    /// Output tokens as reported.
    pub output_tokens: Option<i64>,
    /// Estimated cost, nano-USD; `None` when unpriced.
    pub cost_nusd: Option<i64>,
    /// `complete`, `client_aborted`, `upstream_aborted`, `upstream_failed`.
    pub outcome: String,
    /// `error.type`, when the exchange failed.
    pub error_type: Option<String>,
    /// Finish reasons, one per answer.
    pub finish_reasons: Vec<String>,
    /// Digest of the rules that produced the content.
    pub rules_digest: String,
    /// `gen_ai.system_instructions` after the rules (a parts array).
    pub system_instructions: Option<Value>,
    /// `gen_ai.input.messages` after the rules.
    pub input_messages: Option<Value>,
    /// `gen_ai.output.messages` after the rules.
    pub output_messages: Option<Value>,
    /// Its feedback, oldest first.
    pub feedback: Vec<FeedbackEntry>,
}

impl DatasetExchange {
    /// The exchange of a freshly built (redacted) record, without feedback: `veil export
    /// --rules` re-redacts sealed exchanges into records and exports them through this.
    pub fn from_record(r: &Record) -> Self {
        let int = |t: Option<u64>| t.map(row::int);
        DatasetExchange {
            request_id: r.request_id.clone(),
            start: row::iso_utc(r.start),
            provider: r.provider.as_str().to_string(),
            request_model: r.request_model.clone(),
            response_model: r.response_model.clone(),
            feature: r.feature.clone(),
            input_tokens: int(r.usage.input_tokens),
            output_tokens: int(r.usage.output_tokens),
            cost_nusd: r.cost_usd.and_then(row::nano_usd),
            outcome: r.outcome.as_str().to_string(),
            error_type: r.error_type.clone(),
            finish_reasons: r.finish_reasons.clone(),
            rules_digest: r.rules_digest.clone(),
            system_instructions: r.system_instructions.clone(),
            input_messages: r.input_messages.clone(),
            output_messages: r.output_messages.clone(),
            feedback: Vec::new(),
        }
    }
}

/// Why an exchange made no line. Counted per reason and reported (stderr, manifest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Skip {
    /// The ledger holds no content for it (the rules let none out, it aged out, or the
    /// budget dropped it).
    NoContent,
    /// No answer (no output message, e.g. a failed or aborted call, or the rules kept none).
    NoAnswer,
    /// The answer has neither text nor a tool call.
    EmptyAnswer,
    /// An image, audio, file or unknown part: veil never keeps media bytes, so the example
    /// would not be the one the model saw.
    Media,
    /// Content not in the GenAI message shape (a rule replaced a whole message, say).
    Shape,
    /// No user message before the answer (OpenAI's formats need one).
    NoPrompt,
    /// A tool result without a tool call before it, or a call never answered before the
    /// next message.
    ToolMismatch,
    /// `--rules`: the sealed store has no copy (forgotten, purged by retention, or never
    /// sealed).
    NotSealed,
}

impl Skip {
    /// The reason's name in stderr and the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Skip::NoContent => "no_content",
            Skip::NoAnswer => "no_answer",
            Skip::EmptyAnswer => "empty_answer",
            Skip::Media => "media",
            Skip::Shape => "not_genai_messages",
            Skip::NoPrompt => "no_user_message",
            Skip::ToolMismatch => "tool_call_mismatch",
            Skip::NotSealed => "not_sealed",
        }
    }
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Lines written.
    pub written: u64,
    /// Exchanges selected but skipped, by reason.
    pub skipped: BTreeMap<Skip, u64>,
    /// The request ids written, in output order.
    pub request_ids: Vec<String>,
    /// The rules digests of the content written.
    pub rules_digests: BTreeSet<String>,
}

impl Summary {
    /// Exchanges skipped, all reasons.
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }

    /// Adds one exchange's outcome: writes its line to `out` or counts the skip. Stops
    /// nothing; the caller checks the limit.
    ///
    /// # Errors
    /// The writer's error.
    pub fn add(
        &mut self,
        format: Format,
        ex: &DatasetExchange,
        out: &mut dyn Write,
    ) -> std::io::Result<()> {
        match line(format, ex) {
            Ok(l) => {
                out.write_all(l.as_bytes())?;
                out.write_all(b"\n")?;
                self.written += 1;
                self.request_ids.push(ex.request_id.clone());
                self.rules_digests.insert(ex.rules_digest.clone());
            }
            Err(s) => *self.skipped.entry(s).or_default() += 1,
        }
        Ok(())
    }

    /// The skips as `{"reason": n}`.
    pub fn skipped_json(&self) -> Value {
        Value::Object(
            self.skipped
                .iter()
                .map(|(k, v)| (k.name().to_string(), Value::from(*v)))
                .collect(),
        )
    }
}

/// Why an export stopped.
#[derive(Debug)]
pub enum ExportError {
    /// Reading the ledger failed.
    Ledger(LedgerError),
    /// Writing the output failed.
    Write(std::io::Error),
}

impl fmt::Display for ExportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExportError::Ledger(e) => write!(f, "{e}"),
            ExportError::Write(e) => write!(f, "cannot write the dataset: {e}"),
        }
    }
}

impl std::error::Error for ExportError {}

impl From<LedgerError> for ExportError {
    fn from(e: LedgerError) -> Self {
        ExportError::Ledger(e)
    }
}

/// Exchanges the selection matches (forgotten ones left out, `limit` ignored): the length of
/// the progress bar.
///
/// # Errors
/// [`LedgerError::Query`].
pub fn count(conn: &Connection, sel: &Selection) -> Result<u64, LedgerError> {
    let (clause, values) = sel.sql();
    let n: i64 = conn.query_row(
        &format!("SELECT COUNT(*) FROM exchanges e {clause}"),
        params_from_iter(values),
        |r| r.get(0),
    )?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Writes one line per selected exchange to `out`, oldest first (by `start`, then insertion
/// order), until `sel.limit` lines are written. `progress` is called with the number of
/// exchanges read so far (written or skipped).
///
/// Runs in one read transaction, so a concurrent writer (`veil run`, WAL) neither blocks it
/// nor changes what it sees part-way; an exchange forgotten after the snapshot began is still
/// written (the manifest names it, so its `forget` prints this dataset).
///
/// # Errors
/// [`ExportError`]; lines written before the error stay in `out`.
pub fn export(
    conn: &Connection,
    sel: &Selection,
    format: Format,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64),
) -> Result<Summary, ExportError> {
    let mut summary = Summary::default();
    let mut read = 0u64;
    visit::<ExportError>(conn, sel, true, &mut |ex| {
        if sel.limit.is_some_and(|l| summary.written >= l) {
            return Ok(false);
        }
        summary.add(format, &ex, out).map_err(ExportError::Write)?;
        read += 1;
        progress(read);
        Ok(true)
    })?;
    Ok(summary)
}

/// Calls `f` with each exchange the selection picks (oldest first; `sel.limit` is the
/// caller's to apply), in one read transaction, with its feedback, and with its content when
/// `with_content` (else the content fields are `None`: `--rules` takes content from the
/// sealed store). Stops when `f` answers `Ok(false)`.
///
/// # Errors
/// The ledger's error as `E`, or `f`'s.
pub fn visit<E: From<LedgerError>>(
    conn: &Connection,
    sel: &Selection,
    with_content: bool,
    f: &mut dyn FnMut(DatasetExchange) -> Result<bool, E>,
) -> Result<(), E> {
    let q = |e: rusqlite::Error| E::from(LedgerError::from(e));
    let tx = conn.unchecked_transaction().map_err(q)?;
    let (clause, values) = sel.sql();
    let content = if with_content {
        "c.system_instructions, c.input_messages, c.output_messages"
    } else {
        "NULL, NULL, NULL"
    };
    let mut stmt = tx
        .prepare(&format!(
            "SELECT e.request_id, e.start, e.provider, e.request_model, e.response_model,
                e.feature, e.input_tokens, e.output_tokens, e.cost_nusd, e.outcome,
                e.error_type, e.finish_reasons, e.rules_digest, {content}
             FROM exchanges e LEFT JOIN content c ON c.exchange = e.id
             {clause} ORDER BY e.start, e.id"
        ))
        .map_err(q)?;
    let mut fb = tx
        .prepare(
            "SELECT id, scope, at, name, score, label, comment FROM feedback
             WHERE request_id = ?1 ORDER BY at, id",
        )
        .map_err(q)?;
    let mut rows = stmt.query(params_from_iter(values)).map_err(q)?;
    while let Some(r) = rows.next().map_err(q)? {
        let ex = read_row(r, &mut fb).map_err(q)?;
        if !f(ex)? {
            break;
        }
    }
    Ok(())
}

fn read_row(
    r: &rusqlite::Row<'_>,
    fb: &mut rusqlite::Statement<'_>,
) -> rusqlite::Result<DatasetExchange> {
    let json = |i: usize| -> rusqlite::Result<Option<Value>> {
        // The writer stores JSON text; anything else is kept as the text it is (and then
        // fails the shape checks of the OpenAI formats, counted as a skip).
        Ok(r.get::<_, Option<String>>(i)?
            .map(|t| serde_json::from_str(&t).unwrap_or(Value::String(t))))
    };
    let request_id: String = r.get(0)?;
    let feedback = fb
        .query_map([&request_id], |f| {
            Ok(FeedbackEntry {
                id: f.get(0)?,
                scope: f.get(1)?,
                at: f.get(2)?,
                name: f.get(3)?,
                score: f.get(4)?,
                label: f.get(5)?,
                comment: f.get(6)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(DatasetExchange {
        request_id,
        start: r.get(1)?,
        provider: r.get(2)?,
        request_model: r.get(3)?,
        response_model: r.get(4)?,
        feature: r.get(5)?,
        input_tokens: r.get(6)?,
        output_tokens: r.get(7)?,
        cost_nusd: r.get(8)?,
        outcome: r.get(9)?,
        error_type: r.get(10)?,
        finish_reasons: r
            .get::<_, Option<String>>(11)?
            .map(|s| {
                s.split(',')
                    .filter(|p| !p.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
        rules_digest: r.get(12)?,
        system_instructions: json(13)?,
        input_messages: json(14)?,
        output_messages: json(15)?,
        feedback,
    })
}

/// The line of one exchange in `format`, without the newline.
///
/// # Errors
/// The [`Skip`] reason when it cannot make a valid line.
pub fn line(format: Format, ex: &DatasetExchange) -> Result<String, Skip> {
    if ex.input_messages.is_none()
        && ex.output_messages.is_none()
        && ex.system_instructions.is_none()
    {
        return Err(Skip::NoContent);
    }
    let v = match format {
        Format::Jsonl => jsonl(ex),
        Format::OpenAiChat => json!({"messages": openai_messages(ex)?}),
        Format::OpenAiEvals => {
            let mut messages = openai_messages(ex)?;
            let answer = messages.pop().unwrap_or(Value::Null);
            let ideal = answer.get("content").and_then(Value::as_str).unwrap_or("");
            if ideal.is_empty() {
                // An answer that is only tool calls has no text to compare against.
                return Err(Skip::EmptyAnswer);
            }
            json!({"input": messages, "ideal": ideal})
        }
    };
    Ok(v.to_string())
}

fn jsonl(ex: &DatasetExchange) -> Value {
    json!({
        "request_id": ex.request_id,
        "start": ex.start,
        "provider": ex.provider,
        "model": ex.response_model.as_ref().or(ex.request_model.as_ref()),
        "request_model": ex.request_model,
        "response_model": ex.response_model,
        "feature": ex.feature,
        "input_tokens": ex.input_tokens,
        "output_tokens": ex.output_tokens,
        "cost_usd": ex.cost_nusd.map(|n| n as f64 / 1e9),
        "outcome": ex.outcome,
        "error_type": ex.error_type,
        "finish_reasons": ex.finish_reasons,
        "rules_digest": ex.rules_digest,
        "system_instructions": ex.system_instructions,
        "input_messages": ex.input_messages,
        "output_messages": ex.output_messages,
        "feedback": ex.feedback.iter().map(FeedbackEntry::to_json).collect::<Vec<_>>(),
    })
}

/// The exchange as OpenAI chat messages: the system instructions, the input messages, and
/// the first answer (choice 0) last. Text parts of one message are joined with a newline;
/// reasoning parts are left out (the fine-tuning format has no place for them); a refusal is
/// the answer's text; tool calls become `tool_calls` (arguments as JSON text), tool results
/// `tool` messages with the `tool_call_id` they answer (ids a provider does not give, as
/// Gemini's, are made up as `call_<n>` and matched in order).
///
/// # Errors
/// The [`Skip`] reason when the messages cannot form a valid example.
pub fn openai_messages(ex: &DatasetExchange) -> Result<Vec<Value>, Skip> {
    let mut conv = Converter::default();
    if let Some(sys) = &ex.system_instructions {
        let parts = sys.as_array().ok_or(Skip::Shape)?;
        let text = conv.texts(parts, false)?;
        if !text.is_empty() {
            conv.out.push(json!({"role": "system", "content": text}));
        }
    }
    for m in ex
        .input_messages
        .as_ref()
        .map(|v| v.as_array().ok_or(Skip::Shape))
        .transpose()?
        .into_iter()
        .flatten()
    {
        conv.message(m)?;
    }
    if !conv.out.iter().any(|m| m["role"] == "user") {
        return Err(Skip::NoPrompt);
    }
    let answer = ex
        .output_messages
        .as_ref()
        .map(|v| v.as_array().ok_or(Skip::Shape))
        .transpose()?
        .and_then(|a| a.first())
        .ok_or(Skip::NoAnswer)?;
    let parts = answer
        .get("parts")
        .and_then(Value::as_array)
        .ok_or(Skip::Shape)?;
    if !conv.pending.is_empty() {
        return Err(Skip::ToolMismatch);
    }
    let m = conv.assistant(parts)?;
    if m.get("content").is_none() && m.get("tool_calls").is_none() {
        return Err(Skip::EmptyAnswer);
    }
    conv.out.push(m);
    Ok(conv.out)
}

#[derive(Default)]
struct Converter {
    out: Vec<Value>,
    /// Tool call ids of the last assistant message not yet answered, in order.
    pending: Vec<String>,
    /// Calls without a provider id so far (for `call_<n>`).
    made_up: u64,
}

impl Converter {
    /// The text of `parts` joined by newlines; `refusal` counts as text when `refusal_is_text`.
    fn texts(&self, parts: &[Value], refusal_is_text: bool) -> Result<String, Skip> {
        let mut text = Vec::new();
        for p in parts {
            match p.get("type").and_then(Value::as_str).ok_or(Skip::Shape)? {
                "text" => text.push(
                    p.get("content")
                        .and_then(Value::as_str)
                        .ok_or(Skip::Shape)?,
                ),
                "refusal" if refusal_is_text => text.push(
                    p.get("content")
                        .and_then(Value::as_str)
                        .ok_or(Skip::Shape)?,
                ),
                "reasoning" => {}
                "tool_call" | "tool_call_response" => return Err(Skip::Shape),
                _ => return Err(Skip::Media),
            }
        }
        Ok(text.join("\n"))
    }

    fn message(&mut self, m: &Value) -> Result<(), Skip> {
        let role = m.get("role").and_then(Value::as_str).ok_or(Skip::Shape)?;
        let parts = m
            .get("parts")
            .and_then(Value::as_array)
            .ok_or(Skip::Shape)?;
        if role == "assistant" {
            if !self.pending.is_empty() {
                return Err(Skip::ToolMismatch);
            }
            let a = self.assistant(parts)?;
            self.out.push(a);
            return Ok(());
        }
        // Tool results first (Anthropic sends them in a user message, OpenAI as `tool`
        // messages); the rest of the message's text after them.
        let (results, rest): (Vec<&Value>, Vec<&Value>) = parts
            .iter()
            .partition(|p| p.get("type").and_then(Value::as_str) == Some("tool_call_response"));
        for r in results {
            let id = match r.get("id").and_then(Value::as_str) {
                Some(id) => {
                    let at = self
                        .pending
                        .iter()
                        .position(|p| p == id)
                        .ok_or(Skip::ToolMismatch)?;
                    self.pending.remove(at)
                }
                None if !self.pending.is_empty() => self.pending.remove(0),
                None => return Err(Skip::ToolMismatch),
            };
            let content = match r.get("response") {
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => String::new(),
            };
            self.out
                .push(json!({"role": "tool", "tool_call_id": id, "content": content}));
        }
        let rest: Vec<Value> = rest.into_iter().cloned().collect();
        if rest.is_empty() {
            return Ok(());
        }
        if !self.pending.is_empty() {
            return Err(Skip::ToolMismatch);
        }
        let role = match role {
            "system" | "developer" => "system",
            "user" => "user",
            // A `tool` message with text parts only: the result without an id.
            "tool" => return Err(Skip::ToolMismatch),
            _ => return Err(Skip::Shape),
        };
        let text = self.texts(&rest, false)?;
        self.out.push(json!({"role": role, "content": text}));
        Ok(())
    }

    fn assistant(&mut self, parts: &[Value]) -> Result<Value, Skip> {
        let (calls, rest): (Vec<&Value>, Vec<&Value>) = parts
            .iter()
            .partition(|p| p.get("type").and_then(Value::as_str) == Some("tool_call"));
        let rest: Vec<Value> = rest.into_iter().cloned().collect();
        let text = self.texts(&rest, true)?;
        let mut m = Map::new();
        m.insert("role".into(), "assistant".into());
        if !text.is_empty() {
            m.insert("content".into(), text.into());
        }
        if !calls.is_empty() {
            let mut tool_calls = Vec::with_capacity(calls.len());
            for c in calls {
                let name = c.get("name").and_then(Value::as_str).ok_or(Skip::Shape)?;
                let id = match c.get("id").and_then(Value::as_str) {
                    Some(id) if !id.is_empty() => id.to_string(),
                    _ => {
                        self.made_up += 1;
                        format!("call_{}", self.made_up)
                    }
                };
                let arguments = match c.get("arguments") {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                    None => "{}".to_string(),
                };
                self.pending.push(id.clone());
                tool_calls.push(json!({
                    "id": id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }));
            }
            m.insert("tool_calls".into(), Value::Array(tool_calls));
        }
        Ok(Value::Object(m))
    }
}
