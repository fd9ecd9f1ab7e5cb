//! # Erasure in the ledger: forget by request id or by user.
//!
//! Purges and retention reach the ledger through the sealed store, which erases the ids it
//! destroys ([`forget_ids`]); the ledger's own age bounds are the writer's.
//!
//! GDPR Art. 17 erasure as the sealed store does it, applied to the ledger: the exchange's
//! feedback rows (schema v4) and its content row are deleted and its user pseudonyms cleared (`exchanges.user` and every
//! `exchange_users` row: an erase by user finds the exchange by any identity source); the row stays, marked `forgotten`,
//! with the metadata the rollup and the bill need (model, tokens, cost, status), which holds no
//! personal data once the pseudonym is gone.
//!
//! A record can still be on its way when its exchange is forgotten (in the pipeline, the
//! exporter's batch, the ledger's queue): the erase finds no row, and the row would land
//! later with its content and pseudonym. So every erase also leaves a tombstone in
//! `forgotten` (`request` + request id, or `user` + pseudonym, with the erase time), and the
//! writer lands a record that matches one already erased: no content, no pseudonym, marked
//! `forgotten` (for a user: the exchanges that started before the erase; later ones are new
//! data). Tombstones are swept after [`TOMBSTONE_TTL`], far longer than a record can be in
//! flight, so the pseudonym does not outlive the erase by more than that.
//!
//! Deleted bytes must not survive in the file: every connection runs with `secure_delete`
//! (SQLite overwrites deleted content with zeros), and after the erase the WAL, which still
//! holds the pages as they were written, is checkpointed into the database and truncated to
//! zero bytes. If a reader (a long `veil sql`) keeps the checkpoint from finishing within
//! [`WIPE_WAIT`], the erase still succeeds and [`Erased::wal_wiped`] says the WAL was not yet
//! truncated; the writer's next bounds check truncates it.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, params};

use super::{LedgerError, schema};
use crate::keys::UserPseudonym;

/// How long an erase retries the WAL checkpoint while a reader holds old pages.
pub const WIPE_WAIT: Duration = Duration::from_secs(2);

/// How long a tombstone is kept: a record reaches the ledger within seconds of its exchange
/// (minutes when the disk stalls), never a day later.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(86_400);

/// What an erase leaves behind for records still in flight.
enum Tombstone<'a> {
    Requests(&'a [String]),
    User(&'a UserPseudonym),
}

/// What an erase removed from the ledger, for the receipt.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Erased {
    /// Exchange rows newly marked forgotten (user pseudonym cleared).
    pub rows: u64,
    /// Content rows deleted.
    pub content: u64,
    /// `exchange_users` rows deleted: the pseudonyms identity sources named besides the
    /// winner (`exchanges.user`, cleared with the row).
    pub pseudonyms: u64,
    /// `feedback` rows deleted (schema version 4): those rating a forgotten exchange, and
    /// for `--user` those carrying the user's pseudonym.
    pub feedback: u64,
    /// Request ids of the rows erased (for `--user`, the exchanges the ledger knew of).
    pub request_ids: Vec<String>,
    /// The WAL was checkpointed and truncated, so no old page remains in it.
    pub wal_wiped: bool,
    /// There was no ledger file (nothing to erase).
    pub no_ledger: bool,
}

/// Forgets exchanges by request id.
///
/// # Errors
/// [`LedgerError`] when the ledger cannot be opened or written (locked past
/// [`schema::BUSY_TIMEOUT`], disk full).
pub fn forget_ids(path: &Path, ids: &[String]) -> Result<Erased, LedgerError> {
    erase(
        path,
        Tombstone::Requests(ids),
        |_| Ok(()),
        |conn, ()| {
            let mut found = Vec::new();
            let mut q = conn.prepare_cached("SELECT id FROM exchanges WHERE request_id = ?1")?;
            for id in ids {
                if let Some(rowid) = q.query_row([id], |r| r.get::<_, i64>(0)).optional()? {
                    found.push((rowid, id.clone()));
                }
            }
            Ok(found)
        },
    )
}

/// Forgets every exchange of user pseudonym `user`.
///
/// Finds the exchanges whose winning identity (`exchanges.user`) or any other identity
/// source (`exchange_users`, schema version 3) named `user`. `exchanges.user` has no index
/// (schema version 5 dropped it: it cost every exchange a write to a random page, and an erase
/// is rare), so the rows are found by a scan, made before the erase takes the write lock
/// (`user_scan`): the writer is not held up for its length. Inside the write transaction
/// only the rows added since (a range of row ids) are scanned again (`user_rows`).
///
/// # Errors
/// As [`forget_ids`].
pub fn forget_user(path: &Path, user: &UserPseudonym) -> Result<Erased, LedgerError> {
    erase(
        path,
        Tombstone::User(user),
        |conn| user_scan(conn, user),
        |conn, scan| user_rows(conn, user, scan),
    )
}

/// What [`user_scan`] found in its snapshot: the largest row id then, and the rows of the
/// user up to it.
#[derive(Debug)]
pub(super) struct UserScan {
    upto: i64,
    rows: Vec<i64>,
}

/// Scans `exchanges` for rows whose `user` is `user`, in a read transaction of its own.
pub(super) fn user_scan(conn: &Connection, user: &UserPseudonym) -> rusqlite::Result<UserScan> {
    let tx = conn.unchecked_transaction()?;
    let upto: i64 = tx.query_row("SELECT coalesce(max(id), 0) FROM exchanges", [], |r| {
        r.get(0)
    })?;
    let rows = tx
        .prepare("SELECT id FROM exchanges WHERE user = ?1 AND id <= ?2")?
        .query_map(params![user.as_str(), upto], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<i64>>>()?;
    tx.finish()?;
    Ok(UserScan { upto, rows })
}

/// Inside the erase's write transaction: the rows of `scan` that still carry `user` (an erase
/// in between may have cleared some), the rows added since the scan (row ids only grow:
/// `AUTOINCREMENT`), and those where another identity source named `user`; as
/// `(row id, request id)`, each once.
pub(super) fn user_rows(
    conn: &Connection,
    user: &UserPseudonym,
    scan: UserScan,
) -> rusqlite::Result<Vec<(i64, String)>> {
    let mut found = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut again =
        conn.prepare_cached("SELECT request_id FROM exchanges WHERE id = ?1 AND user = ?2")?;
    for id in scan.rows {
        if let Some(request_id) = again
            .query_row(params![id, user.as_str()], |r| r.get::<_, String>(0))
            .optional()?
            && seen.insert(id)
        {
            found.push((id, request_id));
        }
    }
    let mut sql = String::from("SELECT id, request_id FROM exchanges WHERE id > ?2 AND user = ?1");
    if version(conn)? >= 3 {
        sql.push_str(
            " UNION SELECT e.id, e.request_id FROM exchange_users u
                   JOIN exchanges e ON e.id = u.exchange WHERE u.user = ?1",
        );
    }
    let mut q = conn.prepare_cached(&sql)?;
    let more = q.query_map(params![user.as_str(), scan.upto], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
    })?;
    for row in more {
        let (id, request_id) = row?;
        if seen.insert(id) {
            found.push((id, request_id));
        }
    }
    Ok(found)
}

/// True when the ledger at `path` holds a tombstone of an erase by user `user` (within
/// [`TOMBSTONE_TTL`]): the user was forgotten recently. False without a ledger, or before
/// schema version 2.
///
/// # Errors
/// As [`schema::open_read_only`], except a missing file.
pub fn user_tombstoned(path: &Path, user: &UserPseudonym) -> Result<bool, LedgerError> {
    if !path.is_file() {
        return Ok(false);
    }
    let conn = schema::open_read_only(path)?;
    if version(&conn)? < 2 {
        return Ok(false);
    }
    Ok(conn
        .query_row(
            "SELECT 1 FROM forgotten WHERE kind = 'user' AND key = ?1",
            [user.as_str()],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// The file's schema version (`PRAGMA user_version`): an eraser never migrates, so a file
/// no veil has opened since an upgrade may still be at an older one.
fn version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
}

/// Runs one erase: `before` reads what it can ahead of the write lock, then `select` finds
/// `(rowid, request_id)` pairs inside the write transaction,
/// then their content goes and their pseudonym is cleared, and the tombstone is written in the
/// same transaction; then the WAL is wiped.
fn erase<B>(
    path: &Path,
    tombstone: Tombstone<'_>,
    before: impl FnOnce(&Connection) -> rusqlite::Result<B>,
    select: impl FnOnce(&Connection, B) -> rusqlite::Result<Vec<(i64, String)>>,
) -> Result<Erased, LedgerError> {
    let Some(mut conn) = schema::open_eraser(path)? else {
        return Ok(Erased {
            no_ledger: true,
            wal_wiped: true,
            ..Erased::default()
        });
    };
    let mut erased = Erased::default();
    let ahead = before(&conn)?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let version = version(&tx)?;
        let found = select(&tx, ahead)?;
        let mut del = tx.prepare_cached("DELETE FROM content WHERE exchange = ?1")?;
        // Every pseudonym of the exchange goes, not only the one asked for.
        let mut del_users = (version >= 3)
            .then(|| tx.prepare_cached("DELETE FROM exchange_users WHERE exchange = ?1"))
            .transpose()?;
        // The ids that can fetch the exchange back from the provider go too: the conversation
        // (`conv_…`), and since version 6 the route and the response id
        // (`/v1/threads/thread_…`, `resp_…`).
        let mut upd = tx.prepare_cached(if version >= 6 {
            "UPDATE exchanges SET user = NULL, conversation = NULL, route = NULL,
                                  response_id = NULL, forgotten = 1
             WHERE id = ?1 AND forgotten = 0"
        } else {
            "UPDATE exchanges SET user = NULL, conversation = NULL, forgotten = 1
             WHERE id = ?1 AND forgotten = 0"
        })?;
        for (rowid, request_id) in found {
            erased.content += del.execute([rowid])? as u64;
            erased.rows += upd.execute(params![rowid])? as u64;
            if let Some(d) = del_users.as_mut() {
                erased.pseudonyms += d.execute([rowid])? as u64;
            }
            erased.request_ids.push(request_id);
        }
        // Feedback is about the exchange and names its user: it goes whole, not kept marked
        // like the exchange row (its comment and label are the app's words about it).
        if version >= 4 {
            let mut del_fb = tx.prepare_cached("DELETE FROM feedback WHERE request_id = ?1")?;
            let ids: Vec<&str> = match &tombstone {
                Tombstone::Requests(ids) => ids.iter().map(String::as_str).collect(),
                Tombstone::User(_) => erased.request_ids.iter().map(String::as_str).collect(),
            };
            for id in ids {
                erased.feedback += del_fb.execute([id])? as u64;
            }
            if let Tombstone::User(user) = &tombstone {
                erased.feedback +=
                    tx.execute("DELETE FROM feedback WHERE user = ?1", [user.as_str()])? as u64;
            }
        }
        // A version 1 file has no tombstone table; no veil writes to one (a running veil
        // upgrades its ledger at start), so no record can be in flight towards it.
        if version >= 2 {
            let at = super::row::iso_utc(std::time::SystemTime::now());
            let mut put = tx.prepare_cached(
                "INSERT OR REPLACE INTO forgotten (kind, key, at) VALUES (?1, ?2, ?3)",
            )?;
            match tombstone {
                Tombstone::Requests(ids) => {
                    for id in ids {
                        put.execute(params!["request", id, at])?;
                    }
                }
                Tombstone::User(user) => {
                    put.execute(params!["user", user.as_str(), at])?;
                }
            }
        }
    }
    tx.commit()?;
    erased.wal_wiped = wipe_wal(&conn);
    Ok(erased)
}

/// Checkpoints the WAL into the database and truncates it, retrying while readers hold
/// pages, up to [`WIPE_WAIT`]. Returns whether it completed.
pub fn wipe_wal(conn: &Connection) -> bool {
    let until = Instant::now() + WIPE_WAIT;
    loop {
        // Row: (busy, frames in the WAL, frames checkpointed); busy = 0 when it completed.
        let busy = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap_or(1);
        if busy == 0 {
            return true;
        }
        if Instant::now() >= until {
            tracing::warn!("ledger WAL still in use by a reader: truncated at the next check");
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
