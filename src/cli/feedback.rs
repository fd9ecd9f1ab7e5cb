//! `veil feedback REQUEST_ID --name N (--score S | --label L) [--comment C] [--scope task]`:
//! one feedback to the running veil, through its control socket (or `--admin ADDR`), the
//! same service as `POST /veil/v1/feedback` (docs/feedback.md).

use std::process::ExitCode;

use anyhow::anyhow;

use super::operator;
use super::seal::{AdminArg, StoreDirs};
use crate::config::Config;

/// `veil feedback`.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Prints the feedback id (fb_…) on stdout. The comment is scrubbed by the rules \
                  (with the rated exchange's feature scope) before it is stored or exported; \
                  see docs/feedback.md."
)]
#[command(group(
    clap::ArgGroup::new("rating").args(["score", "label"]).required(true).multiple(true)
))]
pub struct FeedbackArgs {
    /// The rated answer's request id (its `x-veil-request-id` header).
    pub request_id: String,
    /// What was measured, e.g. `user_rating` (1-64 of A-Z a-z 0-9 _ . : -).
    #[arg(long)]
    pub name: String,
    /// A number, e.g. 1, -1 or 0.75 (at least one of --score and --label).
    #[arg(long, allow_negative_numbers = true)]
    pub score: Option<f64>,
    /// A short label, e.g. `thumbs_down` (same characters as --name).
    #[arg(long)]
    pub label: Option<String>,
    /// Free text; scrubbed by the rules before it is stored (at most 4 KiB).
    #[arg(long)]
    pub comment: Option<String>,
    /// `exchange` (this answer) or `task` (its trace or conversation).
    #[arg(long, default_value = "exchange", value_parser = ["exchange", "task"])]
    pub scope: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub admin: AdminArg,
}

/// Sends the feedback; prints its id.
pub(super) fn run(args: FeedbackArgs, config: &Config) -> anyhow::Result<ExitCode> {
    if args.score.is_some_and(|s| !s.is_finite()) {
        return Err(anyhow!("--score must be a finite number"));
    }
    let dirs = StoreDirs::from_config(config, args.admin.admin);
    let veil = operator::running(&dirs)?.ok_or_else(|| {
        anyhow!(
            "no veil is running with data dir {}; {}",
            dirs.data.display(),
            operator::start_hint(&dirs)
        )
    })?;
    let mut body = serde_json::json!({
        "request_id": args.request_id,
        "name": args.name,
        "scope": args.scope,
    });
    if let Some(s) = args.score {
        body["score"] = serde_json::Value::from(s);
    }
    if let Some(l) = args.label {
        body["label"] = serde_json::Value::from(l);
    }
    if let Some(c) = args.comment {
        body["comment"] = serde_json::Value::from(c);
    }
    let id = operator::block(veil.feedback(&body))??;
    println!("{id}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::FeedbackArgs;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: FeedbackArgs,
    }

    /// The usage error names both ways to rate, as `--help` does (a trial found it naming
    /// `--score` alone), and either one alone is enough.
    #[test]
    fn a_score_or_a_label_is_required_and_either_alone_is_enough() {
        let parse = |extra: &[&str]| {
            let mut v = vec!["veil", "0190-id", "--name", "user_rating"];
            v.extend_from_slice(extra);
            Cli::try_parse_from(v)
        };
        let err = parse(&[]).unwrap_err().to_string();
        assert!(err.contains("--score") && err.contains("--label"), "{err}");
        assert!(parse(&["--label", "bad"]).is_ok());
        assert!(parse(&["--score", "-1"]).is_ok());
        assert!(parse(&["--score", "1", "--label", "good"]).is_ok());
    }
}
