//! # The operator: one sealed store, reached directly or through a running veil.
//!
//! The CLI's side of the operator boundary. [`Operator::open`] goes through the running veil
//! when there is one: its control socket `<data>/veil.sock` (no token, same uid), or the TCP
//! admin API named by `--admin ADDR` (a remote veil, with the admin token). With no veil
//! running it opens the store under `<data>/sealed/` itself. Either way it is
//! a [`crate::admin::AdminClient`] or the store.
//! Each typed method (unseal, forget, forget a user, purge, compact, rewrap) does the same
//! thing either way and answers in the same shape, so the commands in `super::seal` print
//! without asking which it was. Never prints anything itself.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, anyhow};

use super::seal::StoreDirs;
use crate::admin::{
    AdminClient, AdminError, AdminErrorKind, AdminToken, CompactResponse, ExchangeView,
};
use crate::exchange::{Exchange, ExchangeId};
use crate::export::erase::{Erased, Targets};
use crate::keys::{Keyring, pseudonymize_user};
use crate::seal::{ForgetError, SealOptions, SealStore};

/// Who is acting, for the audit trail: `cli:<unix user>` (`$SUDO_USER`, else `$USER`), else
/// `cli:uid=N` (a container often sets neither).
pub(super) fn actor() -> String {
    let user = std::env::var("SUDO_USER").or_else(|_| std::env::var("USER"));
    actor_of(user.ok(), rustix::process::getuid().as_raw())
}

fn actor_of(user: Option<String>, uid: u32) -> String {
    match user {
        Some(user) if !user.is_empty() => format!("cli:{user}"),
        _ => format!("cli:uid={uid}"),
    }
}

/// The sealed store, local or behind a running veil's admin API.
pub(super) enum Operator {
    /// Opened here (no veil holds it).
    Local(SealStore),
    /// Held by a running veil; reached through its admin API.
    Remote(AdminClient),
}

/// What forgetting one ID did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Forgot {
    /// Destroyed now.
    Now,
    /// Forgotten before (a receipt names it): forgetting is idempotent.
    Already,
    /// Never sealed in this store.
    Unknown,
}

/// What a destructive command did before it failed: IDs destroyed, receipted but not yet
/// shredded, and untouched (still sealed), plus IDs found unknown before the failure.
pub(super) struct Failure {
    pub(super) unknown: Vec<String>,
    pub(super) destroyed: Vec<String>,
    pub(super) pending: Vec<String>,
    pub(super) not_destroyed: Vec<String>,
    pub(super) error: String,
}

impl Failure {
    fn from_forget(e: &ForgetError) -> Self {
        Failure {
            unknown: Vec::new(),
            destroyed: strings(e.destroyed()),
            pending: strings(e.pending()),
            not_destroyed: strings(e.not_destroyed()),
            error: e.error().to_string(),
        }
    }

    /// A failed admin API answer to a destructive request: the lists it carries, after
    /// `destroyed_before` (earlier requests) and before `not_reached` (never sent). An answer
    /// without lists destroyed nothing: `asked` (the ID of a one-ID request) is then listed
    /// as not destroyed.
    fn from_remote(
        e: &AdminError,
        asked: Option<ExchangeId>,
        not_reached: Vec<String>,
        mut destroyed_before: Vec<String>,
    ) -> Self {
        let (pending, mut not_destroyed) = match e.failure() {
            Some(f) => {
                destroyed_before.extend(strings(&f.destroyed));
                (strings(&f.pending), strings(&f.not_destroyed))
            }
            None => (Vec::new(), asked.iter().map(ToString::to_string).collect()),
        };
        not_destroyed.extend(not_reached);
        Failure {
            unknown: Vec::new(),
            destroyed: destroyed_before,
            pending,
            not_destroyed,
            error: e.to_string(),
        }
    }
}

/// True when an admin error leaves a destructive request's outcome unknown: no answer, or an
/// answer this veil cannot read. (A refusal, 401 included, says what was done.)
fn outcome_unknown(e: &AdminError) -> bool {
    matches!(
        e.kind(),
        AdminErrorKind::Unreachable | AdminErrorKind::Unreadable
    )
}

/// One unsealed exchange: decoded here, or the admin API's view of it.
pub(super) enum Unsealed {
    /// Unsealed from the local store.
    Local(Box<Exchange>),
    /// `GET /v1/exchanges/{id}`'s body (built by [`ExchangeView::of`] on the server).
    Remote(Box<ExchangeView>),
}

impl Unsealed {
    /// The JSON view (identical either way).
    pub(super) fn view(&self) -> ExchangeView {
        match self {
            Unsealed::Local(ex) => ExchangeView::of(ex),
            Unsealed::Remote(v) => (**v).clone(),
        }
    }

    /// Writes the captured request and response bodies as they crossed the wire, each
    /// followed by a newline. Errors: I/O, or (remote) a `wire_base64` that is not base64.
    pub(super) fn write_raw(&self, out: &mut impl Write) -> std::io::Result<()> {
        let (request, response) = match self {
            Unsealed::Local(ex) => (
                ex.request_body.bytes().to_vec(),
                ex.response_body.bytes().to_vec(),
            ),
            Unsealed::Remote(v) => {
                let raw = |b: &crate::admin::BodyView, which: &str| {
                    b.wire_bytes().ok_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("the admin API's {which}.wire_base64 is not base64"),
                        )
                    })
                };
                (
                    raw(&v.request_body, "request_body")?,
                    raw(&v.response_body, "response_body")?,
                )
            }
        };
        for body in [request, response] {
            out.write_all(&body)?;
            out.write_all(b"\n")?;
        }
        out.flush()
    }
}

/// How to say "start one" in errors: the command line that starts a veil on these dirs.
pub(super) fn start_hint(dirs: &StoreDirs) -> String {
    format!(
        "start it with `veil run --data {} --keys {}`, or pass --admin ADDR for a remote one",
        dirs.data.display(),
        dirs.keys.display()
    )
}

/// The running veil these dirs name, if any: `--admin ADDR` (TCP, with the admin token),
/// else the control socket in the data dir when a veil answers on it. `Ok(None)`: no veil
/// runs with this data dir. An error when one seems to but cannot be reached.
pub(super) fn running(dirs: &StoreDirs) -> anyhow::Result<Option<AdminClient>> {
    if let Some(addr) = dirs.admin {
        let token = AdminToken::load(&dirs.keys).with_context(|| {
            format!(
                "--admin {addr} needs that veil's admin token (set VEIL_ADMIN_TOKEN, or pass the --keys dir holding its admin.token; the admin token is not the master key)"
            )
        })?;
        return Ok(Some(client(addr, token)));
    }
    match crate::admin::control::find(&dirs.data) {
        Ok(Some(path)) => Ok(Some(AdminClient::control(path, actor()))),
        Ok(None) => Ok(None),
        Err(e) => Err(anyhow!(
            "a veil seems to run with data dir {} but its control socket {} cannot be reached: {e}; run this command as the user veil runs as, or pass --admin ADDR",
            dirs.data.display(),
            crate::admin::socket_path(&dirs.data).display()
        )),
    }
}

impl Operator {
    /// The running veil's admin API (control socket, or `--admin`), else the store in
    /// `dirs.data` opened here. Errors say what to do (start veil, pass `--admin`, the token).
    pub(super) fn open(dirs: &StoreDirs) -> anyhow::Result<Self> {
        if let Some(c) = running(dirs)? {
            return Ok(Operator::Remote(c));
        }
        let keyring = Keyring::load(&dirs.keys).with_context(|| {
            format!(
                "no veil is running with data dir {} and the master keys cannot be loaded; {}",
                dirs.data.display(),
                start_hint(dirs)
            )
        })?;
        match SealStore::open(
            &dirs.data,
            keyring,
            SealOptions {
                keys_dir: Some(dirs.keys.clone()),
                ..Default::default()
            },
        ) {
            Ok(s) => Ok(Operator::Local(s)),
            // Held, yet no control socket answered: a veil of an older version, or one whose
            // socket was removed. Its TCP admin API, if the config names one, still works.
            Err(e) if e.is_locked() => {
                let addr = dirs.admin_listen.ok_or_else(|| {
                    anyhow!(
                        "{e}: a veil holds the store but answers on no control socket ({}); restart it, or pass --admin ADDR if it serves the admin API",
                        crate::admin::socket_path(&dirs.data).display()
                    )
                })?;
                let token = AdminToken::load(&dirs.keys).with_context(|| {
                    format!("{e}; and no admin token to reach it at {addr} (set VEIL_ADMIN_TOKEN or use the keys dir of that veil; the admin token is not the master key)")
                })?;
                Ok(Operator::Remote(client(addr, token)))
            }
            Err(e) => Err(anyhow!(e).context(format!(
                "cannot open the sealed store in {}",
                dirs.data.display()
            ))),
        }
    }

    /// Unseals `id` (audited with `reason`).
    pub(super) fn unseal(&self, id: ExchangeId, reason: &str) -> anyhow::Result<Unsealed> {
        match self {
            Operator::Local(store) => Ok(Unsealed::Local(Box::new(
                store.unseal(id, &actor(), reason).map_err(|e| anyhow!(e))?,
            ))),
            Operator::Remote(c) => Ok(Unsealed::Remote(Box::new(block(c.unseal(id, reason))??))),
        }
    }

    /// Forgets `ids`: `Ok(Ok(per ID in order, what happened))`, or `Ok(Err)` with what
    /// was and was not destroyed. Remotely one request per ID: on a failure, the ones before
    /// it are destroyed and the ones after it were never sent.
    /// Through a running veil, also what its exporter erased (summed over the requests);
    /// `None` locally: see [`Operator::erase_local`].
    #[allow(clippy::type_complexity)]
    pub(super) fn forget(
        &self,
        ids: &[ExchangeId],
        reason: &str,
    ) -> anyhow::Result<Result<(Vec<(String, Forgot)>, Option<Erased>), Failure>> {
        let c = match self {
            Operator::Local(store) => {
                let out = match store.forget(ids, &actor(), reason) {
                    Ok(out) => out,
                    Err(e) => return Ok(Err(Failure::from_forget(&e))),
                };
                let missed: Vec<ExchangeId> =
                    out.iter().filter(|o| !o.forgotten).map(|o| o.id).collect();
                let before = store.already_forgotten(&missed).map_err(|e| anyhow!(e))?;
                return Ok(Ok((
                    out.into_iter()
                        .map(|o| {
                            let f = match (o.forgotten, before.contains(&o.id)) {
                                (true, _) => Forgot::Now,
                                (false, true) => Forgot::Already,
                                (false, false) => Forgot::Unknown,
                            };
                            (o.id.to_string(), f)
                        })
                        .collect(),
                    None,
                )));
            }
            Operator::Remote(c) => c,
        };
        let rt = runtime()?;
        let mut out = Vec::new();
        let mut done = Vec::new();
        let mut unknown = Vec::new();
        let mut exports: Option<Erased> = None;
        let mut add = |e: Option<Erased>| {
            if let Some(e) = e {
                exports.get_or_insert_with(Erased::default).absorb(e);
            }
        };
        for (i, id) in ids.iter().enumerate() {
            let not_reached = strings(&ids[i + 1..]);
            match rt.block_on(c.forget(*id, reason)) {
                Ok(answer) if answer.forgotten => {
                    add(answer.exports);
                    done.push(id.to_string());
                    out.push((id.to_string(), Forgot::Now));
                }
                Ok(answer) if answer.already_forgotten => {
                    add(answer.exports);
                    out.push((id.to_string(), Forgot::Already));
                }
                Ok(_) => {
                    unknown.push(id.to_string());
                    out.push((id.to_string(), Forgot::Unknown));
                }
                // Nothing done yet: the plain error ("refused the admin token") says it all.
                Err(e)
                    if e.kind() == AdminErrorKind::Unauthorized
                        && done.is_empty()
                        && unknown.is_empty() =>
                {
                    return Err(e.into());
                }
                Err(e) if outcome_unknown(&e) => {
                    return Ok(Err(Failure {
                        unknown,
                        destroyed: done,
                        pending: Vec::new(),
                        not_destroyed: not_reached,
                        error: format!(
                            "{e}; the outcome for {id} is unknown (check receipts.jsonl)"
                        ),
                    }));
                }
                Err(e) => {
                    let mut f = Failure::from_remote(&e, Some(*id), not_reached, done);
                    f.unknown = unknown;
                    return Ok(Err(f));
                }
            }
        }
        Ok(Ok((out, exports)))
    }

    /// The last step of a forget made on a store opened here (no veil runs with this data
    /// dir, so no exporter writes its spool or records files): erases `ids` and `user`'s
    /// records from `<data>/spool/` and `<data>/records/` ([`crate::export::erase`]). `None`
    /// through a running veil, whose exporter did it (its answer carries the result).
    pub(super) fn erase_local(
        &self,
        dirs: &StoreDirs,
        ids: Vec<String>,
        user: Option<String>,
    ) -> Option<Erased> {
        match self {
            Operator::Local(_) => Some(crate::export::erase::erase_dir(
                &dirs.data,
                &Targets::new(ids, user),
                dirs.collector,
            )),
            Operator::Remote(_) => None,
        }
    }

    /// Forgets every exchange of the raw user ID `user` (pseudonymized with the store's
    /// keyring, locally or by the running veil): the pseudonym, and the IDs destroyed (with
    /// whether none were because the user was forgotten before) or what was and was not
    /// destroyed. The pseudonym is `?` when a failed remote answer did not carry it.
    #[allow(clippy::type_complexity)]
    pub(super) fn forget_user(
        &self,
        user: &str,
        reason: &str,
    ) -> anyhow::Result<(String, Result<(Vec<String>, bool, Option<Erased>), Failure>)> {
        match self {
            Operator::Local(store) => {
                let p = pseudonymize_user(&store.keyring(), user);
                // Asked before the forget, which leaves a tombstone of its own.
                let already = store.user_already_forgotten(&p).map_err(|e| anyhow!(e))?;
                let r = match store.forget_user(&p, &actor(), reason) {
                    Ok(ids) if ids.is_empty() => Ok((Vec::new(), already, None)),
                    Ok(ids) => Ok((strings(&ids), false, None)),
                    Err(e) => Err(Failure::from_forget(&e)),
                };
                Ok((p.into_string(), r))
            }
            Operator::Remote(c) => match block(c.forget_user(user, reason))? {
                Ok(answer) => Ok((
                    answer.user.into_string(),
                    Ok((
                        strings(&answer.forgotten),
                        answer.already_forgotten,
                        answer.exports,
                    )),
                )),
                Err(e) if e.kind() == AdminErrorKind::Refused => {
                    let p = e
                        .failure()
                        .and_then(|f| f.user.as_ref())
                        .map_or_else(|| "?".to_string(), ToString::to_string);
                    Ok((
                        p,
                        Err(Failure::from_remote(&e, None, Vec::new(), Vec::new())),
                    ))
                }
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Purges every exchange older than `older`: the IDs destroyed, or what was and was not.
    pub(super) fn purge(&self, older: Duration) -> anyhow::Result<Result<Vec<String>, Failure>> {
        match self {
            Operator::Local(store) => Ok(store
                .purge(older, &actor())
                .map(|ids| strings(&ids))
                .map_err(|e| Failure::from_forget(&e))),
            Operator::Remote(c) => match block(c.purge(older))? {
                Ok(answer) => Ok(Ok(strings(&answer.ids))),
                Err(e) if e.kind() == AdminErrorKind::Refused => {
                    Ok(Err(Failure::from_remote(&e, None, Vec::new(), Vec::new())))
                }
                Err(e) => Err(e.into()),
            },
        }
    }

    /// What a purge of exchanges older than `older` would destroy now (oldest first),
    /// destroying nothing.
    pub(super) fn purge_preview(&self, older: Duration) -> anyhow::Result<Vec<String>> {
        match self {
            Operator::Local(store) => {
                let cutoff = std::time::SystemTime::now()
                    .checked_sub(older)
                    .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
                Ok(strings(&store.ids_before(cutoff).map_err(|e| anyhow!(e))?))
            }
            Operator::Remote(c) => Ok(strings(&block(c.purge_preview(older))??.ids)),
        }
    }

    /// One compaction pass; the admin API's `POST /v1/compact` document either way.
    pub(super) fn compact(&self) -> anyhow::Result<CompactResponse> {
        match self {
            Operator::Local(store) => Ok(store.compact().map_err(|e| anyhow!(e))?.into()),
            Operator::Remote(c) => Ok(block(c.compact())??),
        }
    }

    /// Re-wraps every data key under the newest master key; how many were.
    pub(super) fn rewrap(&self) -> anyhow::Result<u64> {
        match self {
            Operator::Local(store) => Ok(store.rewrap(&actor()).map_err(|e| anyhow!(e))? as u64),
            Operator::Remote(c) => Ok(block(c.rewrap())??.rewrapped),
        }
    }
}

/// An admin client acting as this CLI user.
pub(super) fn client(addr: SocketAddr, token: AdminToken) -> AdminClient {
    AdminClient::tcp(addr, token, actor())
}

/// A one-thread runtime for the CLI's blocking calls to the admin client.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")
}

/// Runs one admin client call to completion on a fresh [`runtime`].
pub(super) fn block<T>(call: impl Future<Output = T>) -> anyhow::Result<T> {
    Ok(runtime()?.block_on(call))
}

fn strings(ids: &[ExchangeId]) -> Vec<String> {
    ids.iter().map(ToString::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::seal::tests::dirs;
    use crate::seal::tests::openai_chat;

    #[test]
    fn the_audit_actor_is_the_user_else_the_uid() {
        assert_eq!(super::actor_of(Some("alice".into()), 1000), "cli:alice");
        assert_eq!(super::actor_of(None, 0), "cli:uid=0");
        assert_eq!(super::actor_of(Some(String::new()), 7), "cli:uid=7");
    }

    /// The point of [`Operator`]: the commands print the same thing whichever way the store
    /// was reached, so each typed method must answer alike locally and through the admin API.
    #[test]
    fn local_and_remote_operators_answer_alike() {
        let root = tempfile::tempdir().unwrap();
        let mut d = dirs(root.path());
        Keyring::load_or_create(&d.keys).unwrap();
        let token = AdminToken::load_or_create(&d.keys).unwrap();
        let a = openai_chat();
        let mut old = openai_chat();
        old.started_at -= Duration::from_secs(40 * 86_400);

        // Local: nothing holds the store.
        let local = {
            let store =
                SealStore::open(&d.data, Keyring::load(&d.keys).unwrap(), Default::default())
                    .unwrap();
            store.seal_blocking(&a, None).unwrap();
            store.seal_blocking(&old, None).unwrap();
            drop(store);
            let op = Operator::open(&d).unwrap();
            assert!(matches!(op, Operator::Local(_)));
            let json = op.unseal(a.id, "test").unwrap().view();
            let mut raw = Vec::new();
            op.unseal(a.id, "test")
                .unwrap()
                .write_raw(&mut raw)
                .unwrap();
            let purged = op
                .purge(Duration::from_secs(30 * 86_400))
                .unwrap()
                .ok()
                .unwrap();
            let forgot = op.forget(&[a.id, old.id], "test").unwrap().ok().unwrap().0;
            (json, raw, purged, forgot)
        };
        assert_eq!(local.2, vec![old.id.to_string()]);
        assert_eq!(
            local.3,
            vec![
                (a.id.to_string(), Forgot::Now),
                (old.id.to_string(), Forgot::Already)
            ]
        );

        // Remote: a running veil holds a second store with the same exchanges.
        d.data = root.path().join("second").join("data");
        let store = SealStore::open(
            &d.data,
            Keyring::load(&d.keys).unwrap(),
            SealOptions {
                keys_dir: Some(d.keys.clone()),
                ..Default::default()
            },
        )
        .unwrap();
        store.seal_blocking(&a, None).unwrap();
        store.seal_blocking(&old, None).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        d.admin = Some(listener.local_addr().unwrap());
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(crate::admin::serve(listener, store.clone(), token, async {
            let _ = rx.await;
        }));
        let op = Operator::open(&d).unwrap();
        assert!(matches!(op, Operator::Remote(_)));
        assert_eq!(op.unseal(a.id, "test").unwrap().view(), local.0);
        let mut raw = Vec::new();
        op.unseal(a.id, "test")
            .unwrap()
            .write_raw(&mut raw)
            .unwrap();
        assert_eq!(raw, local.1);
        assert_eq!(
            op.purge(Duration::from_secs(30 * 86_400))
                .unwrap()
                .ok()
                .unwrap(),
            local.2
        );
        assert_eq!(
            op.forget(&[a.id, old.id], "test").unwrap().ok().unwrap().0,
            local.3
        );
        assert!(store.is_empty().unwrap());
        stop.send(()).unwrap();
        drop(rt);
    }
}
