//! # The ledger's schema and how a connection to it is opened.
//!
//! One place defines the tables (documented column by column in `docs/ledger.md`), the schema
//! version and the pragmas every connection sets, so the writer, the eraser and the read-only
//! query connections cannot disagree about them.
//!
//! The version lives in SQLite's own `PRAGMA user_version` and the file is marked as veil's
//! with `PRAGMA application_id` (`0x7665696c`, "veil"), the mechanism SQLite documents for
//! application file formats (<https://www.sqlite.org/pragma.html#pragma_application_id>).
//!
//! Never touched here: records, content, keys. Only files and connections.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OpenFlags};

use super::LedgerError;

/// Schema version this veil writes and reads.
pub const SCHEMA_VERSION: i64 = 6;

/// `PRAGMA application_id` of a veil ledger: the bytes `veil`.
pub const APPLICATION_ID: i64 = 0x7665_696c;

/// How long a connection waits for another one's lock before an operation fails with
/// "database is locked" (the writer, an erase and `veil sql` can meet).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Version 1. `start` is ISO 8601 UTC with microseconds and a `Z`
/// (`2026-11-29T12:00:00.123456Z`): fixed width, so text order is time order and SQLite's
/// date functions read it as it is.
const DDL_V1: &str = "
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE exchanges (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id         TEXT    NOT NULL UNIQUE,
    trace_id           TEXT,
    span_id            TEXT,
    parent_span_id     TEXT,
    start              TEXT    NOT NULL,
    provider           TEXT    NOT NULL,
    operation          TEXT    NOT NULL,
    request_model      TEXT,
    response_model     TEXT,
    user               TEXT,
    feature            TEXT,
    conversation       TEXT,
    api_key_fp         TEXT,
    status             INTEGER,
    outcome            TEXT    NOT NULL,
    error_type         TEXT,
    finish_reasons     TEXT,
    stream             INTEGER NOT NULL,
    input_tokens       INTEGER,
    output_tokens      INTEGER,
    cache_read_tokens  INTEGER,
    cache_write_tokens INTEGER,
    reasoning_tokens   INTEGER,
    cost_nusd          INTEGER,
    duration_us        INTEGER NOT NULL,
    ttfc_us            INTEGER,
    tool_calls         INTEGER,
    request_bytes      INTEGER NOT NULL,
    response_bytes     INTEGER NOT NULL,
    redactions_input   INTEGER NOT NULL,
    redactions_output  INTEGER NOT NULL,
    redactions         TEXT,
    rules_digest       TEXT    NOT NULL,
    content_dropped    TEXT,
    parse_error        TEXT,
    forgotten          INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX exchanges_start ON exchanges (start);
CREATE INDEX exchanges_user ON exchanges (user) WHERE user IS NOT NULL;

CREATE TABLE content (
    exchange            INTEGER PRIMARY KEY REFERENCES exchanges (id) ON DELETE CASCADE,
    system_instructions TEXT,
    input_messages      TEXT,
    output_messages     TEXT
);

CREATE TABLE daily (
    day                TEXT    NOT NULL,
    provider           TEXT    NOT NULL,
    model              TEXT    NOT NULL,
    feature            TEXT    NOT NULL,
    api_key_fp         TEXT    NOT NULL,
    requests           INTEGER NOT NULL,
    errors             INTEGER NOT NULL,
    input_tokens       INTEGER NOT NULL,
    output_tokens      INTEGER NOT NULL,
    cache_read_tokens  INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL,
    reasoning_tokens   INTEGER NOT NULL,
    cost_nusd          INTEGER NOT NULL,
    PRIMARY KEY (day, provider, model, feature, api_key_fp)
) WITHOUT ROWID;
";

/// Version 2 adds `forgotten`: tombstones of the erases of the last
/// [`TOMBSTONE_TTL`](super::erase::TOMBSTONE_TTL), so a record still on its way to the ledger
/// when its exchange (or its user) was forgotten lands already erased.
const DDL_V2: &str = "
CREATE TABLE forgotten (
    kind TEXT NOT NULL CHECK (kind IN ('request', 'user')),
    key  TEXT NOT NULL,
    at   TEXT NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
";

/// Version 3 adds `exchange_users`: the user pseudonyms the identity sources of the rules
/// named for an exchange besides the winner (which is `exchanges.user`, indexed by
/// `exchanges_user`), so an erase by user finds exchanges where that user was named but
/// another source won (veil#13). Winners are not repeated there: with one identity source,
/// the common case, an exchange costs no extra index insert.
const DDL_V3: &str = "
CREATE TABLE exchange_users (
    exchange INTEGER NOT NULL REFERENCES exchanges (id) ON DELETE CASCADE,
    user     TEXT    NOT NULL,
    PRIMARY KEY (user, exchange)
) WITHOUT ROWID;
CREATE INDEX exchange_users_exchange ON exchange_users (exchange);
";

/// Version 4 adds `feedback`: scores, labels and scrubbed comments apps and people attach to
/// an exchange (or to its whole task) by request id (veil#14). Not a foreign key to
/// `exchanges`: feedback can arrive before the exchange's row lands, and it is erased with
/// the exchange by request id and by user pseudonym.
const DDL_V4: &str = "
CREATE TABLE feedback (
    id         TEXT    PRIMARY KEY,
    request_id TEXT    NOT NULL,
    scope      TEXT    NOT NULL CHECK (scope IN ('exchange', 'task')),
    task       TEXT,
    at         TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    score      REAL,
    label      TEXT,
    comment    TEXT,
    user       TEXT,
    CHECK (score IS NOT NULL OR label IS NOT NULL)
) WITHOUT ROWID;
CREATE INDEX feedback_request ON feedback (request_id);
CREATE INDEX feedback_user ON feedback (user) WHERE user IS NOT NULL;
";

/// Version 5 drops `exchanges_user`, the index on `exchanges.user`: each exchange paid for it
/// with a write to a random page of the index (users do not arrive in order), about a fifth of
/// the writer's CPU per exchange (veil#12), for queries that are rare: an erase by user scans
/// instead ([`forget_user`](super::erase::forget_user), ahead of its write lock), and so does
/// `veil report --where user=…`.
const DDL_V5: &str = "DROP INDEX IF EXISTS exchanges_user;";

/// Version 6 adds to `exchanges` what feedback needs of an exchange besides what the row held:
/// `host` and `route` (with the model and the feature, the key that picks the rules scope a
/// feedback's comment is scrubbed with) and `response_id` (`gen_ai.response.id`, which the
/// feedback's OTLP event carries). With them the feedback API reads a committed exchange from
/// its row alone, and its in-memory map of recent exchanges holds only those not yet
/// committed (veil#18: the map was the largest part of a veil's heap at rest). Rows written
/// before have them NULL.
const DDL_V6: &str = "
ALTER TABLE exchanges ADD COLUMN host TEXT;
ALTER TABLE exchanges ADD COLUMN route TEXT;
ALTER TABLE exchanges ADD COLUMN response_id TEXT;
";

/// SQLite page size of a new ledger, bytes. 16 KiB rather than SQLite's 4 KiB default: a
/// typical content row (a few hundred bytes to a few KiB of redacted JSON) then fits in its
/// page without overflow pages, and an insert splits and rebalances fewer pages; the writer
/// spends about a sixth less CPU per exchange (veil#12). A ledger created with another page size
/// keeps it (SQLite changes a WAL database's page size only by a `VACUUM` outside WAL mode).
pub const PAGE_SIZE: i64 = 16 * 1024;

/// Opens (creating if needed) the ledger for writing: WAL, `synchronous = NORMAL` (a
/// committed transaction survives a killed process; a power cut may lose the last ones),
/// `secure_delete` (deleted content is overwritten, not left in free pages), incremental
/// auto-vacuum (space comes back without a full `VACUUM`).
///
/// A file that is not a database, or fails `quick_check`, is moved aside to
/// `ledger.db.corrupt-<unix seconds>` (with its `-wal`/`-shm`) and a new ledger is created;
/// the returned path names where it went. A ledger from a newer schema version, or a file
/// that is another application's SQLite database, is an error: it is never touched.
///
/// # Errors
/// [`LedgerError::Open`] (unreadable path, a directory, no permission), [`LedgerError::Newer`],
/// [`LedgerError::Foreign`].
pub fn open_writer(path: &Path) -> Result<(Connection, Option<PathBuf>), LedgerError> {
    if path.is_dir() {
        return Err(LedgerError::open(path, "it is a directory, not a file"));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::keys::create_private_dir(dir).map_err(|e| LedgerError::open(dir, e))?;
    }
    match try_open_writer(path) {
        Ok(conn) => Ok((conn, None)),
        Err(Fault::Corrupt(why)) => {
            let aside = move_aside(path)?;
            tracing::error!(
                ledger = %path.display(),
                moved_to = %aside.display(),
                reason = %why,
                "the ledger is corrupt: moved aside, starting a new one (the old file is kept \
                 for recovery with the sqlite3 shell's .recover)"
            );
            let conn = try_open_writer(path).map_err(|f| f.into_error(path))?;
            Ok((conn, Some(aside)))
        }
        Err(f) => Err(f.into_error(path)),
    }
}

/// Opens an existing ledger read-only for queries: the connection cannot write (opened
/// read-only and `query_only`), whatever SQL it is given.
///
/// # Errors
/// [`LedgerError::Missing`] when there is no ledger at `path`, [`LedgerError::Open`],
/// [`LedgerError::Newer`], [`LedgerError::Foreign`].
pub fn open_read_only(path: &Path) -> Result<Connection, LedgerError> {
    if !path.is_file() {
        return Err(LedgerError::Missing(path.to_path_buf()));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| LedgerError::open(path, e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .and_then(|_| conn.pragma_update(None, "query_only", true))
        .map_err(|e| LedgerError::open(path, e))?;
    check_version(&conn).map_err(|f| f.into_error(path))?;
    Ok(conn)
}

/// Opens an existing ledger for an erase (forget, purge): like the writer's connection, with
/// `secure_delete` on, but never creates or migrates. `Ok(None)` when there is no ledger.
///
/// # Errors
/// As [`open_read_only`], except a missing file.
pub fn open_eraser(path: &Path) -> Result<Option<Connection>, LedgerError> {
    if !path.is_file() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| LedgerError::open(path, e))?;
    set_pragmas(&conn).map_err(|f| f.into_error(path))?;
    check_version(&conn).map_err(|f| f.into_error(path))?;
    Ok(Some(conn))
}

/// Why an open failed, before it is tied to a path.
enum Fault {
    Corrupt(String),
    Newer(i64),
    Foreign(i64),
    Other(String),
}

impl Fault {
    fn into_error(self, path: &Path) -> LedgerError {
        match self {
            Fault::Corrupt(why) => LedgerError::open(path, format!("corrupt: {why}")),
            Fault::Newer(v) => LedgerError::Newer {
                path: path.to_path_buf(),
                found: v,
            },
            Fault::Foreign(id) => LedgerError::Foreign {
                path: path.to_path_buf(),
                application_id: id,
            },
            Fault::Other(e) => LedgerError::open(path, e),
        }
    }
}

impl From<rusqlite::Error> for Fault {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => {
                Fault::Corrupt(e.to_string())
            }
            _ => Fault::Other(e.to_string()),
        }
    }
}

fn set_pragmas(conn: &Connection) -> Result<(), Fault> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // The journal mode answers with a row; `pragma_update_and_check` reads it.
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "wal", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Fault::Other(format!(
            "the file system refused WAL (journal_mode stayed {mode})"
        )));
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "secure_delete", true)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    // A WAL left large after a burst is truncated back to this at each checkpoint.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    Ok(())
}

fn check_version(conn: &Connection) -> Result<i64, Fault> {
    let app: i64 = conn.pragma_query_value(None, "application_id", |r| r.get(0))?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if app != 0 && app != APPLICATION_ID {
        return Err(Fault::Foreign(app));
    }
    if version > SCHEMA_VERSION {
        return Err(Fault::Newer(version));
    }
    Ok(version)
}

fn try_open_writer(path: &Path) -> Result<Connection, Fault> {
    // A newer or foreign database is refused before anything about it changes: the pragmas
    // below would switch it to WAL (its header) and `make_private` would narrow its mode.
    if std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() > 0) {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        check_version(&conn)?;
    }
    make_private(path)
        .map_err(|e| Fault::Other(format!("cannot create the ledger file with mode 0600: {e}")))?;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // page_size and auto_vacuum only take effect before the first table exists, and the page
    // size only before the switch to WAL (which writes the header): in this order.
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    set_pragmas(&conn)?;
    let version = check_version(&conn)?;
    let ok: String = conn.pragma_query_value(None, "quick_check", |r| r.get(0))?;
    if ok != "ok" {
        return Err(Fault::Corrupt(ok));
    }
    if version < SCHEMA_VERSION {
        // Each step upgrades one version, in one transaction with the version bump, so a
        // crash mid-way leaves the file at the last version it fully reached.
        let tx = conn.unchecked_transaction()?;
        if version < 1 {
            tx.execute_batch(DDL_V1)?;
            tx.pragma_update(None, "application_id", APPLICATION_ID)?;
        }
        if version < 2 {
            tx.execute_batch(DDL_V2)?;
        }
        if version < 3 {
            tx.execute_batch(DDL_V3)?;
        }
        if version < 4 {
            tx.execute_batch(DDL_V4)?;
        }
        if version < 5 {
            tx.execute_batch(DDL_V5)?;
        }
        if version < 6 {
            tx.execute_batch(DDL_V6)?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
        if version > 0 {
            tracing::info!(
                ledger = %path_of(&conn),
                from = version,
                to = SCHEMA_VERSION,
                "ledger schema upgraded"
            );
        }
    }
    Ok(conn)
}

fn path_of(conn: &Connection) -> String {
    conn.path().unwrap_or("?").to_string()
}

/// Creates the file 0600 before SQLite does (SQLite would use 0644 less the umask), or
/// narrows an existing one to 0600. SQLite gives the `-wal` and `-shm` files the database
/// file's mode, so they are private too.
fn make_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    if file.metadata()?.permissions().mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

fn move_aside(path: &Path) -> Result<PathBuf, LedgerError> {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".corrupt-{secs}"));
    let aside = PathBuf::from(aside);
    std::fs::rename(path, &aside).map_err(|e| LedgerError::open(path, e))?;
    for suffix in ["-wal", "-shm"] {
        let mut from = path.as_os_str().to_owned();
        from.push(suffix);
        let mut to = aside.as_os_str().to_owned();
        to.push(suffix);
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(LedgerError::open(Path::new(&from), e)),
        }
    }
    Ok(aside)
}
