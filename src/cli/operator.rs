//! # The operator: one sealed store, reached directly or through a running veil.
//!
//! The CLI's side of the operator boundary. [`Operator::open`] opens the store under
//! `<data>/sealed/` when it can; when a running `veil run` holds it (redb's exclusive lock), it
//! goes through that instance's admin API ([`crate::admin::AdminClient`]) with the admin token.
//! Each typed method (unseal, forget, forget a user, purge, compact, rewrap) does the same
//! thing either way and answers in the same shape, so the commands in `super::seal` print
//! without asking which it was. Never prints anything itself.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use http::{Method, StatusCode};

use super::seal::StoreDirs;
use crate::admin::{AdminClient, AdminToken, exchange_to_json, percent_encode};
use crate::exchange::{Exchange, ExchangeId};
use crate::keys::{Keyring, pseudonymize_user};
use crate::seal::{ForgetError, SealOptions, SealStore};

/// Who is acting, for the audit trail: `cli:<unix user>`.
pub(super) fn actor() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

/// The sealed store, local or behind a running veil's admin API.
pub(super) enum Operator {
    /// Opened here (no veil holds it).
    Local(SealStore),
    /// Held by a running veil; reached through its admin API.
    Remote(AdminClient),
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
    /// `destroyed_before` (earlier requests) and before `not_reached` (never sent).
    fn from_remote(
        status: StatusCode,
        v: &serde_json::Value,
        not_reached: Vec<String>,
        mut destroyed_before: Vec<String>,
    ) -> Self {
        destroyed_before.extend(id_list(&v["destroyed"]));
        let mut not_destroyed = id_list(&v["not_destroyed"]);
        not_destroyed.extend(not_reached);
        Failure {
            unknown: Vec::new(),
            destroyed: destroyed_before,
            pending: id_list(&v["pending"]),
            not_destroyed,
            error: format!(
                "admin API: {status}: {}",
                v["error"].as_str().unwrap_or("unknown error")
            ),
        }
    }
}

/// One unsealed exchange: decoded here, or the admin API's JSON view of it.
pub(super) enum Unsealed {
    /// Unsealed from the local store.
    Local(Box<Exchange>),
    /// `GET /v1/exchanges/{id}`'s body ([`exchange_to_json`] on the server).
    Remote(serde_json::Value),
}

impl Unsealed {
    /// The JSON view (identical either way).
    pub(super) fn json(&self) -> serde_json::Value {
        match self {
            Unsealed::Local(ex) => exchange_to_json(ex),
            Unsealed::Remote(v) => v.clone(),
        }
    }

    /// Writes the captured request and response bodies as they crossed the wire, each
    /// followed by a newline.
    pub(super) fn write_raw(&self, out: &mut impl Write) -> std::io::Result<()> {
        match self {
            Unsealed::Local(ex) => {
                out.write_all(&ex.request_body.bytes())?;
                out.write_all(b"\n")?;
                out.write_all(&ex.response_body.bytes())?;
                out.write_all(b"\n")?;
                out.flush()
            }
            Unsealed::Remote(v) => {
                for which in ["request_body", "response_body"] {
                    out.write_all(&super::seal::raw_from_json(&v[which]))?;
                    out.write_all(b"\n")?;
                }
                Ok(())
            }
        }
    }
}

impl Operator {
    /// Opens the store in `dirs.data`, or, when a running veil holds it, a client of that
    /// veil's admin API. Errors say what to do (pass `--admin`, provide the token).
    pub(super) fn open(dirs: &StoreDirs) -> anyhow::Result<Self> {
        let keyring = Keyring::load(&dirs.keys).context("cannot load the master keys")?;
        match SealStore::open(
            &dirs.data,
            keyring,
            SealOptions {
                keys_dir: Some(dirs.keys.clone()),
                ..Default::default()
            },
        ) {
            Ok(s) => Ok(Operator::Local(s)),
            Err(e) if e.is_locked() => {
                let addr = dirs.admin.ok_or_else(|| {
                    anyhow!(
                        "{e}; to act through that veil, pass --admin ADDR or set admin_listen in the config"
                    )
                })?;
                let token = AdminToken::load(&dirs.keys).with_context(|| {
                    format!("{e}; and no admin token to reach it at {addr} (set VEIL_ADMIN_TOKEN or use the keys dir of that veil)")
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
            Operator::Remote(c) => Ok(Unsealed::Remote(remote_ok(
                c,
                Method::GET,
                &format!("/v1/exchanges/{id}?reason={}", percent_encode(reason)),
            )?)),
        }
    }

    /// Forgets `ids`: `Ok(Ok(per ID in order, forgotten or unknown))`, or `Ok(Err)` with what
    /// was and was not destroyed. Remotely one request per ID: on a failure, the ones before
    /// it are destroyed and the ones after it were never sent.
    #[allow(clippy::type_complexity)]
    pub(super) fn forget(
        &self,
        ids: &[ExchangeId],
        reason: &str,
    ) -> anyhow::Result<Result<Vec<(String, bool)>, Failure>> {
        match self {
            Operator::Local(store) => Ok(match store.forget(ids, &actor(), reason) {
                Ok(out) => Ok(out
                    .into_iter()
                    .map(|o| (o.id.to_string(), o.forgotten))
                    .collect()),
                Err(e) => Err(Failure::from_forget(&e)),
            }),
            Operator::Remote(c) => {
                let mut out = Vec::new();
                let mut done = Vec::new();
                let mut unknown = Vec::new();
                for (i, id) in ids.iter().enumerate() {
                    let sent = remote(
                        c,
                        Method::DELETE,
                        &format!("/v1/exchanges/{id}?reason={}", percent_encode(reason)),
                    );
                    let (status, v) = match sent {
                        Ok(x) => x,
                        Err(e) => {
                            return Ok(Err(Failure {
                                unknown,
                                destroyed: done,
                                pending: Vec::new(),
                                not_destroyed: strings(&ids[i + 1..]),
                                error: format!(
                                    "{e:#}; the outcome for {id} is unknown (check receipts.jsonl)"
                                ),
                            }));
                        }
                    };
                    match status {
                        StatusCode::OK => {
                            done.push(id.to_string());
                            out.push((id.to_string(), true));
                        }
                        StatusCode::NOT_FOUND => {
                            unknown.push(id.to_string());
                            out.push((id.to_string(), false));
                        }
                        s => {
                            let mut f = Failure::from_remote(s, &v, strings(&ids[i + 1..]), done);
                            f.unknown = unknown;
                            return Ok(Err(f));
                        }
                    }
                }
                Ok(Ok(out))
            }
        }
    }

    /// Forgets every exchange of the raw user ID `user` (pseudonymized with the store's
    /// keyring, locally or by the running veil): the pseudonym, and the IDs destroyed or what
    /// was and was not destroyed.
    #[allow(clippy::type_complexity)]
    pub(super) fn forget_user(
        &self,
        user: &str,
        reason: &str,
    ) -> anyhow::Result<(String, Result<Vec<String>, Failure>)> {
        match self {
            Operator::Local(store) => {
                let p = pseudonymize_user(&store.keyring(), user);
                let r = store
                    .forget_user(&p, &actor(), reason)
                    .map(|ids| strings(&ids))
                    .map_err(|e| Failure::from_forget(&e));
                Ok((p.into_string(), r))
            }
            Operator::Remote(c) => {
                let (status, v) = remote(
                    c,
                    Method::DELETE,
                    &format!(
                        "/v1/users/{}/exchanges?reason={}",
                        percent_encode(user),
                        percent_encode(reason)
                    ),
                )?;
                let p = v["user"].as_str().unwrap_or("?").to_string();
                if !status.is_success() {
                    return Ok((
                        p,
                        Err(Failure::from_remote(status, &v, Vec::new(), Vec::new())),
                    ));
                }
                Ok((p, Ok(id_list(&v["forgotten"]))))
            }
        }
    }

    /// Purges every exchange older than `older`: the IDs destroyed, or what was and was not.
    pub(super) fn purge(&self, older: Duration) -> anyhow::Result<Result<Vec<String>, Failure>> {
        match self {
            Operator::Local(store) => Ok(store
                .purge(older, &actor())
                .map(|ids| strings(&ids))
                .map_err(|e| Failure::from_forget(&e))),
            Operator::Remote(c) => {
                let (status, v) = remote(
                    c,
                    Method::POST,
                    &format!("/v1/purge?older_than={}ms", older.as_millis()),
                )?;
                if !status.is_success() {
                    return Ok(Err(Failure::from_remote(
                        status,
                        &v,
                        Vec::new(),
                        Vec::new(),
                    )));
                }
                Ok(Ok(id_list(&v["ids"])))
            }
        }
    }

    /// One compaction pass; the admin API's `POST /v1/compact` document either way.
    pub(super) fn compact(&self) -> anyhow::Result<serde_json::Value> {
        match self {
            Operator::Local(store) => {
                let s = store.compact().map_err(|e| anyhow!(e))?;
                Ok(serde_json::json!({
                    "segments_removed": s.segments_removed,
                    "frames_moved": s.frames_moved,
                    "bytes_reclaimed": s.bytes_reclaimed,
                }))
            }
            Operator::Remote(c) => remote_ok(c, Method::POST, "/v1/compact"),
        }
    }

    /// Re-wraps every data key under the newest master key; how many were.
    pub(super) fn rewrap(&self) -> anyhow::Result<usize> {
        match self {
            Operator::Local(store) => store.rewrap(&actor()).map_err(|e| anyhow!(e)),
            Operator::Remote(c) => {
                let v = remote_ok(c, Method::POST, "/v1/keys/rewrap")?;
                Ok(v["rewrapped"].as_u64().unwrap_or(0) as usize)
            }
        }
    }
}

/// An admin client acting as this CLI user.
pub(super) fn client(addr: SocketAddr, token: AdminToken) -> AdminClient {
    AdminClient {
        addr,
        token,
        actor: actor(),
    }
}

fn remote(
    client: &AdminClient,
    method: Method,
    path: &str,
) -> anyhow::Result<(StatusCode, serde_json::Value)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let (status, v) = rt
        .block_on(client.request(method, path))
        .map_err(|e| anyhow!(e))?;
    if status == StatusCode::UNAUTHORIZED {
        bail!(
            "the admin API at {} refused the token (check VEIL_ADMIN_TOKEN / admin.token)",
            client.addr
        );
    }
    Ok((status, v))
}

/// [`remote`], with a non-2xx answer as an error.
pub(super) fn remote_ok(
    client: &AdminClient,
    method: Method,
    path: &str,
) -> anyhow::Result<serde_json::Value> {
    let (status, v) = remote(client, method, path)?;
    if !status.is_success() {
        bail!(
            "admin API: {status}: {}",
            v["error"].as_str().unwrap_or("unknown error")
        );
    }
    Ok(v)
}

fn id_list(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn strings(ids: &[ExchangeId]) -> Vec<String> {
    ids.iter().map(ToString::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::seal::tests::dirs;
    use crate::seal::tests::openai_chat;

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
            let json = op.unseal(a.id, "test").unwrap().json();
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
            let forgot = op.forget(&[a.id, old.id], "test").unwrap().ok().unwrap();
            (json, raw, purged, forgot)
        };
        assert_eq!(local.2, vec![old.id.to_string()]);
        assert_eq!(
            local.3,
            vec![(a.id.to_string(), true), (old.id.to_string(), false)]
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
        assert_eq!(op.unseal(a.id, "test").unwrap().json(), local.0);
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
            op.forget(&[a.id, old.id], "test").unwrap().ok().unwrap(),
            local.3
        );
        assert!(store.is_empty().unwrap());
        stop.send(()).unwrap();
        drop(rt);
    }
}
