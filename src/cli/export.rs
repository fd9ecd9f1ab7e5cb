//! # `veil export`: a dataset from the ledger (or, with `--rules`, from the sealed store).
//!
//! Front-end of [`crate::ledger::dataset`]: parses the filters (the `--since`/`--until`
//! syntax of `veil report`), opens the ledger read-only (works while `veil run` writes, WAL),
//! writes the lines to stdout or to `--out` (0600, through a temp file renamed into place
//! once the manifest is written, so no dataset exists without its manifest), writes the
//! manifest and registers it, and says on stderr what was written, skipped and where the
//! manifest is. A progress bar is drawn on stderr only when stderr is a terminal.
//! Exit codes: 0 written (even 0 lines), 1 the ledger or the store could not answer or the
//! output could not be written, 2 bad arguments.

use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context, anyhow};

use crate::ledger::dataset::{self, Format, Selection, Summary, manifest};
use crate::ledger::schema;

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum FormatArg {
    /// `{"messages":[…]}` per line: the OpenAI fine-tuning chat format, the answer last.
    OpenaiChat,
    /// `{"input":[…],"ideal":"…"}` per line: OpenAI evals samples, the observed answer as ideal.
    OpenaiEvals,
    /// The content as the rules emitted it plus metadata (model, feature, tokens, cost,
    /// outcome, finish reasons, feedback).
    Jsonl,
}

/// `--feedback`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum FeedbackArg {
    /// At least one entry with score > 0 or label thumbs_up, positive, good.
    Positive,
    /// At least one entry with score < 0 or label thumbs_down, negative, bad.
    Negative,
    /// At least one feedback entry.
    Any,
    /// No feedback entry.
    None,
}

/// `--outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum OutcomeArg {
    /// Complete, without an error.
    Ok,
    /// An error status, a provider error or an upstream failure.
    Error,
    /// Aborted by the client or the upstream.
    Aborted,
}

/// Arguments of `veil export`.
#[derive(Debug, Clone, clap::Args)]
pub(super) struct ExportArgs {
    /// Line format.
    #[arg(long, value_enum, default_value = "jsonl")]
    format: FormatArg,
    /// Only exchanges that started in the last DURATION (e.g. 1d, 12h).
    #[arg(long, value_name = "DURATION")]
    since: Option<String>,
    /// Only exchanges that started before TIME (RFC 3339, or a date meaning its midnight UTC).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Only exchanges tagged with this x-veil-feature.
    #[arg(long)]
    feature: Option<String>,
    /// Only exchanges that requested or were answered by this model.
    #[arg(long)]
    model: Option<String>,
    /// Only exchanges with this feedback.
    #[arg(long, value_enum)]
    feedback: Option<FeedbackArg>,
    /// Only exchanges that ended so.
    #[arg(long, value_enum)]
    outcome: Option<OutcomeArg>,
    /// Only exchanges with this finish reason (stop, length, content_filter, tool_call, ...).
    #[arg(long, value_name = "REASON")]
    finish_reason: Option<String>,
    /// Write at most N lines.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    /// Write to FILE (0600) and its manifest to FILE.manifest.json; default stdout (the
    /// manifest then goes to <data>/datasets/).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Build the dataset from the sealed exchanges instead, re-redacted with this rules file
    /// (needs the master keys; audited like unseal). Forgotten exchanges are never exported.
    #[arg(long, value_name = "FILE")]
    rules: Option<PathBuf>,
    /// Why (recorded in the audit log with --rules).
    #[arg(long, default_value = "dataset export")]
    reason: String,
    #[command(flatten)]
    admin: super::seal::AdminArg,
}

impl ExportArgs {
    /// `--admin ADDR`, for the `--rules` path.
    pub(super) fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.admin.admin
    }

    fn selection(&self) -> anyhow::Result<Selection> {
        let (since, until) =
            super::ledger::since_until(self.since.as_deref(), self.until.as_deref())?;
        Ok(Selection {
            since,
            until,
            feature: self.feature.clone(),
            model: self.model.clone(),
            feedback: self.feedback.map(|f| match f {
                FeedbackArg::Positive => dataset::FeedbackFilter::Positive,
                FeedbackArg::Negative => dataset::FeedbackFilter::Negative,
                FeedbackArg::Any => dataset::FeedbackFilter::Any,
                FeedbackArg::None => dataset::FeedbackFilter::None,
            }),
            outcome: self.outcome.map(|o| match o {
                OutcomeArg::Ok => dataset::OutcomeFilter::Ok,
                OutcomeArg::Error => dataset::OutcomeFilter::Error,
                OutcomeArg::Aborted => dataset::OutcomeFilter::Aborted,
            }),
            finish_reason: self.finish_reason.clone(),
            limit: self.limit,
        })
    }

    fn format(&self) -> Format {
        match self.format {
            FormatArg::OpenaiChat => Format::OpenAiChat,
            FormatArg::OpenaiEvals => Format::OpenAiEvals,
            FormatArg::Jsonl => Format::Jsonl,
        }
    }
}

/// Where the lines go: a temp file beside `--out` (renamed into place at the end), or stdout.
struct Output {
    out: Option<(PathBuf, PathBuf)>,
    writer: BufWriter<Box<dyn Write>>,
}

impl Output {
    fn open(out: Option<&Path>) -> anyhow::Result<Output> {
        match out {
            Some(path) => {
                let path = std::path::absolute(path)
                    .with_context(|| format!("--out {}", path.display()))?;
                let tmp = manifest::temp_beside(&path).context("--out")?;
                let file = manifest::create_private(&tmp).context("--out")?;
                Ok(Output {
                    out: Some((path, tmp)),
                    writer: BufWriter::with_capacity(1 << 16, Box::new(file)),
                })
            }
            None => Ok(Output {
                out: None,
                writer: BufWriter::with_capacity(1 << 16, Box::new(std::io::stdout())),
            }),
        }
    }

    /// The dataset path, when it is a file.
    fn path(&self) -> Option<&Path> {
        self.out.as_ref().map(|(p, _)| p.as_path())
    }

    fn abandon(self) {
        if let Some((_, tmp)) = &self.out {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// A progress bar on stderr when it is a terminal, else nothing.
fn progress_bar(len: impl FnOnce() -> Option<u64>) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar =
        indicatif::ProgressBar::with_draw_target(len(), indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} exporting {pos}/{len} exchanges {wide_bar} {per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    Some(bar)
}

/// Runs `veil export`.
pub(super) fn run_export(
    args: ExportArgs,
    dirs: &super::seal::StoreDirs,
) -> anyhow::Result<ExitCode> {
    let sel = args.selection()?;
    let format = args.format();
    if let Some(rules) = &args.rules {
        return super::export_sealed::run(&args_view(&args), &sel, format, rules, dirs);
    }
    let conn = schema::open_read_only(&super::ledger::ledger_path(&dirs.data))?;
    let bar = progress_bar(|| dataset::count(&conn, &sel).ok());
    let mut output = Output::open(args.out.as_deref())?;
    let mut tick = |n: u64| {
        if let Some(b) = &bar {
            b.set_position(n);
        }
    };
    let summary = match dataset::export(&conn, &sel, format, &mut output.writer, &mut tick) {
        Ok(s) => s,
        Err(e) => {
            output.abandon();
            return Err(anyhow!(e));
        }
    };
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let digests = summary.rules_digests.iter().cloned().collect();
    finish(
        output, &sel, format, summary, digests, None, "ledger", &dirs.data,
    )
}

/// What the `--rules` path needs of the arguments.
pub(super) struct SealedArgs {
    pub(super) out: Option<PathBuf>,
    pub(super) reason: String,
    pub(super) admin: Option<std::net::SocketAddr>,
}

fn args_view(a: &ExportArgs) -> SealedArgs {
    SealedArgs {
        out: a.out.clone(),
        reason: a.reason.clone(),
        admin: a.admin.admin,
    }
}

/// Flushes the lines, writes the manifest (and registers it), renames the dataset into
/// place, and reports on stderr.
#[allow(clippy::too_many_arguments)]
pub(super) fn finish_output(
    out: Option<&Path>,
    write: impl FnOnce(&mut dyn Write) -> anyhow::Result<Summary>,
    sel: &Selection,
    format: Format,
    digests: Vec<String>,
    rules_file: Option<&Path>,
    source: &str,
    data: &Path,
) -> anyhow::Result<ExitCode> {
    let mut output = Output::open(out)?;
    let summary = match write(&mut output.writer) {
        Ok(s) => s,
        Err(e) => {
            output.abandon();
            return Err(e);
        }
    };
    finish(
        output, sel, format, summary, digests, rules_file, source, data,
    )
}

#[allow(clippy::too_many_arguments)]
fn finish(
    mut output: Output,
    sel: &Selection,
    format: Format,
    summary: Summary,
    rules_digests: Vec<String>,
    rules_file: Option<&Path>,
    source: &str,
    data: &Path,
) -> anyhow::Result<ExitCode> {
    if let Err(e) = output.writer.flush() {
        output.abandon();
        return Err(e).context("cannot write the dataset");
    }
    if let Some((_, tmp)) = &output.out
        && let Err(e) = std::fs::File::open(tmp).and_then(|f| f.sync_all())
    {
        output.abandon();
        return Err(e).context("cannot write the dataset");
    }
    let m = manifest::Manifest {
        format: format.name().to_string(),
        source: source.to_string(),
        filters: sel.to_json(),
        rules_digests,
        rules_file: rules_file.map(|p| std::path::absolute(p).unwrap_or_else(|_| p.into())),
        count: summary.written,
        skipped: summary.skipped_json(),
        request_ids: summary.request_ids.clone(),
        created: SystemTime::now(),
        output: output.path().map(Path::to_path_buf),
    };
    // The manifest before the dataset: a dataset file never exists without the manifest
    // that lets a deletion request find it.
    let manifest_path = match manifest::write(&m, data) {
        Ok(p) => p,
        Err(e) => {
            output.abandon();
            return Err(e).context("cannot write the dataset's manifest; no dataset written");
        }
    };
    if let Some((path, tmp)) = &output.out {
        std::fs::rename(tmp, path).with_context(|| format!("--out {}", path.display()))?;
    }
    let skipped = if summary.skipped.is_empty() {
        String::new()
    } else {
        let reasons: Vec<String> = summary
            .skipped
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        format!(
            "; skipped {} that cannot form a valid {} line ({})",
            summary.skipped_total(),
            format.name(),
            reasons.join(", ")
        )
    };
    let to = output
        .path()
        .map_or("stdout".to_string(), |p| p.display().to_string());
    eprintln!(
        "veil export: wrote {} exchange(s) to {to} ({}){skipped}",
        summary.written,
        format.name()
    );
    match output.path() {
        Some(_) => eprintln!("veil export: manifest {}", manifest_path.display()),
        None => eprintln!(
            "veil export: manifest {} (stdout exports keep theirs in the data directory, so `veil forget` can find them)",
            manifest_path.display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}
