//! # `veil report`, `veil sql`, `veil tail`: the ledger's answers on the command line.
//!
//! Front-ends over [`crate::ledger`]: they open `<data>/ledger.db` read-only, run the query
//! and print data on stdout (`--format table|csv|json`) and diagnostics on stderr. Tables
//! start with a `#` line saying what they cover; every time is UTC. `veil report --format
//! html` writes the page of `ledger::html` to `--out` (required); any `--out` is written 0600
//! through a temp file and a rename. Exit codes: 0 answered, 1 the ledger could not answer
//! (missing, unreadable, query error), 2 bad arguments.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow};

use super::table::{Cell, Format, RowsFormat, TailFormat, json_rows, write_csv, write_table};
use crate::ledger::report::{Dim, Filter, Report, ReportRow, report};
use crate::ledger::{cards, html, row, schema, sql, tail};

/// Arguments of `veil report`.
#[derive(Debug, Clone, clap::Args)]
pub(super) struct ReportArgs {
    /// Group by DIM (repeatable, in order): feature, model, provider, user, key, day, hour,
    /// outcome, finish_reason. Without it, one line for everything.
    #[arg(long = "by", value_name = "DIM")]
    by: Vec<Dim>,
    /// Only exchanges that started in the last DURATION (e.g. 30d, 12h).
    #[arg(long, value_name = "DURATION")]
    since: Option<String>,
    /// Only exchanges that started before TIME (RFC 3339, e.g. 2026-11-29T00:00:00Z, or a
    /// date, 2026-11-29, meaning its midnight UTC).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Only exchanges where DIM=VALUE (repeatable; all must hold), e.g. feature=billing,
    /// model=gpt-4o, key=fp_…, user=U (a raw user id is pseudonymized with the master keys).
    #[arg(long = "where", value_name = "DIM=VALUE")]
    filters: Vec<String>,
    /// Cost cards: per feature, the unit cost of a task (exchanges grouped by trace, else
    /// conversation, else one per task).
    #[arg(long)]
    cards: bool,
    /// Output format. `html` is one self-contained page of charts (cost per day by model,
    /// cost by feature, cost cards, latency by model, tokens per request, top users) to open
    /// in any browser, offline; it needs --out and takes --since, --until, --where.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Write to FILE instead of stdout: mode 0600 (it holds spend data), replaced whole
    /// through a temp file and a rename.
    #[arg(long, value_name = "FILE")]
    out: Option<std::path::PathBuf>,
}

/// Arguments of `veil sql`.
#[derive(Debug, Clone, clap::Args)]
pub(super) struct SqlArgs {
    /// One SQL statement over the schema in docs/ledger.md. The ledger is opened read-only:
    /// statements that write are refused.
    query: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: RowsFormat,
    /// Stop the query after this long.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    timeout: String,
    /// Print at most this many rows.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    max_rows: usize,
}

/// Arguments of `veil tail`.
#[derive(Debug, Clone, clap::Args)]
pub(super) struct TailArgs {
    /// Keep running and print exchanges as they are recorded.
    #[arg(short, long)]
    follow: bool,
    /// Print the last N exchanges first (0 = none).
    #[arg(short = 'n', long, default_value_t = 10)]
    lines: usize,
    /// Read the OTLP/JSON lines files under <data>/records/ instead of the ledger (written
    /// when `records_files = true`, or when the ledger is off).
    #[arg(long)]
    records_files: bool,
    /// Output format (`json`: one object per line).
    #[arg(long, value_enum, default_value = "table")]
    format: TailFormat,
}

pub(super) fn ledger_path(data: &Path) -> std::path::PathBuf {
    data.join(crate::ledger::FILE_NAME)
}

fn parse_time(s: &str) -> anyhow::Result<SystemTime> {
    if let Some(t) = row::parse_iso(s) {
        return Ok(t);
    }
    row::parse_iso(&format!("{s}T00:00:00Z")).ok_or_else(|| {
        super::BadArgs(format!(
            "--until {s:?}: expected RFC 3339 (2026-11-29T00:00:00Z) or a date (2026-11-29)"
        ))
        .into()
    })
}

/// `--since DURATION` (before now) and `--until TIME` as times, the syntax every ledger
/// command shares (`veil report`, `veil export`).
pub(super) fn since_until(
    since: Option<&str>,
    until: Option<&str>,
) -> anyhow::Result<(Option<SystemTime>, Option<SystemTime>)> {
    let since = since
        .map(|s| {
            let d = crate::config::parse_duration(s)
                .map_err(|e| super::BadArgs(format!("--since: {e}")))?;
            Ok::<_, anyhow::Error>(
                SystemTime::now()
                    .checked_sub(d)
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            )
        })
        .transpose()?;
    let until = until.map(parse_time).transpose()?;
    Ok((since, until))
}

fn filter(args: &ReportArgs, keys: &Path) -> anyhow::Result<Filter> {
    let (since, until) = since_until(args.since.as_deref(), args.until.as_deref())?;
    let mut equals = Vec::new();
    for f in &args.filters {
        let (k, v) = f.split_once('=').ok_or_else(|| {
            super::BadArgs(format!(
                "--where {f:?}: expected DIM=VALUE, e.g. feature=billing"
            ))
        })?;
        let dim: Dim = k
            .parse()
            .map_err(|e| super::BadArgs(format!("--where: {e}")))?;
        let v = if dim == Dim::User && !crate::keys::is_user_pseudonym(v) {
            let ring = crate::keys::Keyring::load(keys).with_context(|| {
                format!("--where user={v}: a raw user id is pseudonymized with the master keys in {}; pass the pseudonym (u_…) instead if they are elsewhere", keys.display())
            })?;
            crate::keys::pseudonymize_user(&ring, v).into_string()
        } else {
            v.to_string()
        };
        equals.push((dim, v));
    }
    Ok(Filter {
        since,
        until,
        equals,
    })
}

fn covers(f: &Filter) -> String {
    let since = f.since.map_or("the first exchange".into(), row::iso_utc);
    let until = f.until.map_or("now".into(), row::iso_utc);
    let mut s = format!("from {since} to {until} (UTC)");
    for (d, v) in &f.equals {
        s.push_str(&format!(", {d}={v}"));
    }
    s
}

/// Runs `veil report`.
pub(super) fn run_report(args: ReportArgs, data: &Path, keys: &Path) -> anyhow::Result<ExitCode> {
    if args.format == Format::Html {
        return run_html(args, data, keys);
    }
    let f = filter(&args, keys)?;
    let conn = schema::open_read_only(&ledger_path(data))?;
    // With --out the answer is gathered first and written whole (0600, temp + rename): a
    // failed query leaves no half file, and spend data is never world-readable.
    let mut buf = Vec::new();
    let mut stdout;
    let out: &mut dyn Write = match &args.out {
        Some(_) => &mut buf,
        None => {
            stdout = std::io::stdout().lock();
            &mut stdout
        }
    };
    if args.cards {
        let cards = cards::cards(&conn, &f)?;
        print_cards(out, &cards, &f, args.format)?;
    } else {
        let rep = report(&conn, &args.by, &f)?;
        print_report(out, &rep, &f, args.format)?;
    }
    out.flush()?;
    if let Some(p) = &args.out {
        write_private(p, &buf)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `veil report --format html --out FILE`: the page of charts (`ledger::html`). It needs
/// `--out`: a page of spend data is a file to open in a browser, written 0600, not text for
/// a terminal; and its groupings are fixed, so `--by` and `--cards` (whose cards the page
/// has anyway) are refused rather than ignored.
fn run_html(args: ReportArgs, data: &Path, keys: &Path) -> anyhow::Result<ExitCode> {
    let Some(path) = &args.out else {
        return Err(super::BadArgs(
            "--format html writes a file: add --out FILE (e.g. --out report.html), then open it in any browser".into(),
        )
        .into());
    };
    if !args.by.is_empty() {
        return Err(super::BadArgs(
            "--by does not apply to --format html: the page has its own groupings (day × model, feature, model, user)".into(),
        )
        .into());
    }
    if args.cards {
        return Err(super::BadArgs(
            "--cards does not apply to --format html: the page includes the cost cards".into(),
        )
        .into());
    }
    let f = filter(&args, keys)?;
    let conn = schema::open_read_only(&ledger_path(data))?;
    let page = html::gather(&conn, &f, SystemTime::now())?;
    write_private(path, html::render(&page).as_bytes())?;
    eprintln!(
        "veil report: wrote {} ({} exchanges); open it in any browser (it loads nothing from the network)",
        path.display(),
        page.total.requests
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes `data` to `path` 0600, atomically ([`crate::os::replace_private`]); errors name
/// `--out` and the path.
fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    crate::os::replace_private(path, data).with_context(|| format!("--out {}", path.display()))
}

const REPORT_COLUMNS: [&str; 19] = [
    "requests",
    "errors",
    "error_rate",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cache_hit_ratio",
    "cost_usd",
    "cost_per_request_usd",
    "unpriced",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "ttfc_p50_ms",
    "ttfc_p95_ms",
    "ttfc_p99_ms",
    "share_rated",
    "mean_score",
    "share_negative",
];

fn report_cells(r: &ReportRow) -> Vec<Cell> {
    vec![
        Cell::int(r.requests),
        Cell::int(r.errors),
        Cell::real(r.error_rate, 3),
        Cell::int(r.input_tokens),
        Cell::int(r.output_tokens),
        Cell::int(r.cached_tokens),
        Cell::opt_real(r.cache_hit_ratio, 3),
        // A group where no exchange had a price has no known cost: `-`, not 0.
        if r.requests > 0 && r.unpriced == r.requests {
            Cell::Text(None)
        } else {
            Cell::usd(r.cost_usd)
        },
        Cell::opt_usd(r.cost_per_request_usd),
        Cell::int(r.unpriced),
        Cell::opt_real(r.duration_ms.p50, 1),
        Cell::opt_real(r.duration_ms.p95, 1),
        Cell::opt_real(r.duration_ms.p99, 1),
        Cell::opt_real(r.ttfc_ms.p50, 1),
        Cell::opt_real(r.ttfc_ms.p95, 1),
        Cell::opt_real(r.ttfc_ms.p99, 1),
        Cell::real(r.share_rated, 3),
        Cell::opt_real(r.mean_score, 3),
        Cell::opt_real(r.share_negative, 3),
    ]
}

fn print_report(
    out: &mut dyn Write,
    rep: &Report,
    f: &Filter,
    format: Format,
) -> anyhow::Result<()> {
    let mut header: Vec<&str> = rep.by.clone();
    header.extend(REPORT_COLUMNS);
    let rows: Vec<Vec<Cell>> = rep
        .rows
        .iter()
        .map(|r| {
            let mut cells: Vec<Cell> = r.group.iter().map(|g| Cell::opt(g.clone())).collect();
            cells.extend(report_cells(r));
            cells
        })
        .collect();
    match format {
        Format::Table => {
            writeln!(
                out,
                "# veil report{} {}: {} exchanges; durations in ms",
                if rep.by.is_empty() {
                    String::new()
                } else {
                    format!(" by {}", rep.by.join(", "))
                },
                covers(f),
                rep.total.requests
            )?;
            let mut all = rows;
            if !rep.by.is_empty() {
                let mut total: Vec<Cell> = vec![Cell::text("TOTAL")];
                total.extend((1..rep.by.len()).map(|_| Cell::text("")));
                total.extend(report_cells(&rep.total));
                all.push(total);
            } else {
                all = vec![report_cells(&rep.total)];
            }
            write_table(out, &header, &all)?;
        }
        Format::Csv => {
            if rep.by.is_empty() {
                write_csv(out, &header, &[report_cells(&rep.total)])?;
            } else {
                write_csv(out, &header, &rows)?;
            }
        }
        Format::Json => {
            let total_header: Vec<&str> = REPORT_COLUMNS.to_vec();
            let doc = serde_json::json!({
                "by": rep.by,
                "since": f.since.map(row::iso_utc),
                "until": f.until.map(row::iso_utc),
                "rows": json_rows(&header, &rows),
                "total": json_rows(&total_header, &[report_cells(&rep.total)])[0],
                "total_cost_nusd": rep.total.cost_nusd.to_string(),
            });
            serde_json::to_writer_pretty(&mut *out, &doc)?;
            writeln!(out)?;
        }
        Format::Html => unreachable!("run_html renders html"),
    }
    Ok(())
}

fn print_cards(
    out: &mut dyn Write,
    cards: &[cards::Card],
    f: &Filter,
    format: Format,
) -> anyhow::Result<()> {
    let header = [
        "feature",
        "tasks",
        "calls_per_task",
        "cost_p50_usd",
        "cost_p90_usd",
        "cost_total_usd",
        "tokens_per_task",
        "latency_p50_ms",
        "latency_p90_ms",
        "error_rate",
        "unpriced_tasks",
        "share_rated",
        "mean_score",
        "share_negative",
    ];
    let rows: Vec<Vec<Cell>> = cards
        .iter()
        .map(|c| {
            vec![
                Cell::opt(c.feature.clone()),
                Cell::int(c.tasks),
                Cell::real(c.calls_per_task, 2),
                Cell::opt_usd(c.cost_p50_usd),
                Cell::opt_usd(c.cost_p90_usd),
                Cell::usd(c.cost_total_usd),
                Cell::real(c.tokens_per_task, 0),
                Cell::opt_real(c.latency_p50_ms, 1),
                Cell::opt_real(c.latency_p90_ms, 1),
                Cell::real(c.error_rate, 3),
                Cell::int(c.unpriced_tasks),
                Cell::real(c.share_rated, 3),
                Cell::opt_real(c.mean_score, 3),
                Cell::opt_real(c.share_negative, 3),
            ]
        })
        .collect();
    match format {
        Format::Table => {
            writeln!(
                out,
                "# veil cost cards {}: a task is the exchanges of one trace, else one conversation, else one exchange",
                covers(f)
            )?;
            write_table(out, &header, &rows)?;
        }
        Format::Csv => write_csv(out, &header, &rows)?,
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, &json_rows(&header, &rows))?;
            writeln!(out)?;
        }
        Format::Html => unreachable!("run_html renders html"),
    }
    Ok(())
}

/// Runs `veil sql`.
pub(super) fn run_sql(args: SqlArgs, data: &Path) -> anyhow::Result<ExitCode> {
    let timeout: Duration =
        crate::config::parse_duration(&args.timeout).map_err(|e| anyhow!("--timeout: {e}"))?;
    let conn = schema::open_read_only(&ledger_path(data))?;
    let table = match sql::query(&conn, &args.query, timeout, args.max_rows) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("veil sql: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let header: Vec<&str> = table.columns.iter().map(String::as_str).collect();
    let rows: Vec<Vec<Cell>> = table
        .rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|v| match v {
                    serde_json::Value::Number(n) => Cell::Num(n.clone(), n.to_string()),
                    serde_json::Value::String(s) => Cell::text(s.clone()),
                    _ => Cell::Text(None),
                })
                .collect()
        })
        .collect();
    let mut out = std::io::stdout().lock();
    match args.format {
        RowsFormat::Table => write_table(&mut out, &header, &rows)?,
        RowsFormat::Csv => write_csv(&mut out, &header, &rows)?,
        RowsFormat::Json => {
            serde_json::to_writer_pretty(&mut out, &json_rows(&header, &rows))?;
            writeln!(out)?;
        }
    }
    if table.truncated {
        eprintln!(
            "veil sql: only the first {} rows printed (--max-rows)",
            args.max_rows
        );
    }
    Ok(ExitCode::SUCCESS)
}

const TAIL_POLL: Duration = Duration::from_millis(500);

/// `veil tail`'s columns: name and width (negative: right-aligned). A value wider than its
/// column pushes the rest right rather than being cut.
const TAIL_COLUMNS: &[(&str, i8)] = &[
    ("start (UTC)", 27),
    ("status", 6),
    ("outcome", 16),
    ("provider", 17),
    ("model", 28),
    ("feature", 14),
    ("user", 18),
    ("in_tok", -7),
    ("out_tok", -7),
    ("cost_usd", -10),
    ("ms", -7),
    ("ttfc_ms", -7),
    ("request_id", 0),
];

/// One line of `veil tail`'s table: `cells` laid out in [`TAIL_COLUMNS`].
fn tail_columns<S: AsRef<str>>(cells: &[S]) -> String {
    let mut line = String::new();
    for (i, (cell, (_, width))) in cells.iter().zip(TAIL_COLUMNS).enumerate() {
        let cell = cell.as_ref();
        if i > 0 {
            line.push(' ');
        }
        let w = usize::from(width.unsigned_abs());
        let pad = w.saturating_sub(cell.chars().count());
        if *width < 0 {
            line.extend(std::iter::repeat_n(' ', pad));
            line.push_str(cell);
        } else {
            line.push_str(cell);
            if i + 1 < TAIL_COLUMNS.len() {
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
    }
    line
}

/// The header line: the column names, `#` first so tools that skip comments skip it.
fn tail_header() -> String {
    let mut names: Vec<String> = TAIL_COLUMNS.iter().map(|(n, _)| n.to_string()).collect();
    names[0].insert_str(0, "# ");
    tail_columns(&names)
}

fn tail_line(r: &tail::TailRow) -> String {
    let ms = |us: i64| format!("{:.0}", us as f64 / 1000.0);
    let cost = r
        .cost_nusd
        .map_or("-".into(), |n| format!("{:.6}", n as f64 / 1e9));
    let tok = |t: Option<i64>| t.map_or("-".into(), |t| t.to_string());
    super::table::printable(&tail_columns(&[
        r.start.clone(),
        r.status.map_or("-".into(), |s| s.to_string()),
        r.outcome.clone(),
        r.provider.clone(),
        r.model.clone().unwrap_or_else(|| "-".into()),
        r.feature.clone().unwrap_or_else(|| "-".into()),
        r.user.clone().unwrap_or_else(|| "-".into()),
        tok(r.input_tokens),
        tok(r.output_tokens),
        cost,
        ms(r.duration_us),
        r.ttfc_us.map_or("-".into(), ms),
        r.request_id.clone(),
    ]))
}

/// Runs `veil tail`: the last `lines` exchanges of the ledger, then new ones with `-f`.
pub(super) fn run_tail(args: TailArgs, data: &Path) -> anyhow::Result<ExitCode> {
    if args.records_files {
        return super::tail::run_tail(
            super::tail::TailArgs {
                follow: args.follow,
                lines: args.lines,
            },
            data,
        );
    }
    let path = ledger_path(data);
    let json = args.format == TailFormat::Json;
    // Following a ledger that veil has not created yet: wait for it.
    let conn = loop {
        match schema::open_read_only(&path) {
            Ok(c) => break c,
            Err(crate::ledger::LedgerError::Missing(_)) if args.follow => {
                std::thread::sleep(TAIL_POLL)
            }
            Err(e) => {
                eprintln!("veil tail: {e}");
                return Ok(ExitCode::FAILURE);
            }
        }
    };
    let mut out = std::io::stdout().lock();
    let print =
        |out: &mut std::io::StdoutLock<'_>, rows: &[tail::TailRow]| -> std::io::Result<()> {
            for r in rows {
                if json {
                    serde_json::to_writer(&mut *out, r)?;
                    writeln!(out)?;
                } else {
                    writeln!(out, "{}", tail_line(r))?;
                }
            }
            out.flush()
        };
    if !json && writeln!(out, "{}", tail_header()).is_err() {
        return Ok(ExitCode::SUCCESS);
    }
    let first = tail::latest(&conn, args.lines)?;
    let mut last = match first.last() {
        Some(r) => r.id,
        None => conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM exchanges", [], |r| {
                r.get(0)
            })
            .map_err(crate::ledger::LedgerError::from)?,
    };
    if print(&mut out, &first).is_err() || !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        std::thread::sleep(TAIL_POLL);
        let rows = tail::after(&conn, last, 1000)?;
        if let Some(r) = rows.last() {
            last = r.id;
        }
        if print(&mut out, &rows).is_err() {
            // The reader went away (`veil tail -f | head`): stop quietly.
            return Ok(ExitCode::SUCCESS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every column of a row starts where its header's name starts, whatever the row holds
    /// (a provider name as long as `openai_compatible`), and the status column holds the HTTP
    /// status, next to the outcome.
    #[test]
    fn tail_columns_line_up_under_their_header() {
        let header = tail_header();
        let row = tail::TailRow {
            id: 1,
            start: "2026-12-06T21:00:00.123456Z".into(),
            request_id: "01a24caa-4a29-76c5-9787-aadb80af7bc0".into(),
            provider: "openai_compatible".into(),
            operation: "chat".into(),
            model: Some("gpt-4o-mini".into()),
            feature: None,
            user: Some("u_a48249f36f09157e".into()),
            status: Some(500),
            outcome: "upstream_aborted".into(),
            error_type: Some("500".into()),
            input_tokens: Some(12),
            output_tokens: None,
            cost_nusd: Some(9_000),
            duration_us: 1_500,
            ttfc_us: None,
        };
        let line = tail_line(&row);
        let starts = |s: &str| -> Vec<usize> {
            let b = s.as_bytes();
            (0..b.len())
                .filter(|&i| b[i] != b' ' && (i == 0 || b[i - 1] == b' '))
                .collect()
        };
        // The left-aligned columns (start, status, outcome, provider, model, feature, user)
        // start where their names do; the header's "start (UTC)" is two words.
        let (h, l) = (starts(&header), starts(&line));
        // The header's first column is three words: "# start (UTC)".
        assert_eq!(h[3..9], l[1..7], "\n{header}\n{line}");
        assert_eq!(header.find("request_id"), line.find(&row.request_id));
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            fields[1..4],
            ["500", "upstream_aborted", "openai_compatible"]
        );
        assert_eq!(fields[9], "0.000009");
    }
}
