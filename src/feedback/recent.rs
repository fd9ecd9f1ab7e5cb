//! The exchanges veil recorded lately, by request id: what a feedback needs of the exchange
//! it rates, before (or without) the ledger row.
//!
//! A feedback often follows its answer within milliseconds, while the exchange's record is
//! still in the pipeline, the exporter's batch or the ledger's queue: the ledger alone would
//! answer 404 for a request id veil has just issued. The pipeline inserts each exchange here
//! as soon as its record is built ([`Recent::insert`]); the ledger writer takes out those it
//! has committed ([`Recent::committed`]), whose rows answer from then on, so with a ledger the
//! map holds only the exchanges on their way to it (none at rest). [`Recent::wait_for`] lets
//! the feedback service wait, bounded, for an id whose exchange is still on its way. The map
//! is bounded ([`CAPACITY`] entries, oldest out first: without a ledger, or past a ledger
//! that dropped records); an older exchange is read from the ledger instead.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// Exchanges kept: about 250 bytes each once packed, so ~4 MiB at most.
pub const CAPACITY: usize = 16_384;

/// What feedback needs of the exchange it rates. Holds no content: the rules' scope key,
/// labels already capped by the record, a pseudonym, ids.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rated {
    /// `x-veil-request-id`.
    pub request_id: String,
    /// The scope key's host (as the app addressed it).
    pub host: Option<String>,
    /// The scope key's route (the request path without its query).
    pub route: Option<String>,
    /// The scope key's model (the requested model).
    pub model: Option<String>,
    /// The `x-veil-feature` tag (the scope key's feature).
    pub feature: Option<String>,
    /// The exchange's user pseudonym (`u_…`).
    pub user: Option<String>,
    /// The task it belongs to: `trace:<32 hex>` (the app's trace), else
    /// `conversation:<id>`, as the cost cards group exchanges.
    pub task: Option<String>,
    /// `gen_ai.response.id`.
    pub response_id: Option<String>,
    /// The trace of veil's span.
    pub trace_id: [u8; 16],
    /// veil's span id.
    pub span_id: [u8; 8],
}

impl Rated {
    /// What feedback needs of `record`: its scope key as the ledger row keeps it (the host,
    /// and the route, model and feature after the rules' detectors), so that a feedback picks
    /// the same rules scope whether the map or the row answers.
    pub fn of(record: &crate::record::Record) -> Rated {
        Packed::of_record(record).rated(&record.request_id)
    }
}

/// The cost cards' task of `record`: the app's trace first (`trace:<32 hex>`), else the
/// conversation (`conversation:<id>`).
fn task_of(record: &crate::record::Record) -> Option<String> {
    match (&record.trace_parent, &record.conversation_id) {
        (Some(tp), _) => Some(format!(
            "trace:{}",
            crate::ledger::row::hex_array::<16, 32>(&tp.trace_id).as_str()
        )),
        (None, Some(c)) => Some(format!("conversation:{c}")),
        (None, None) => None,
    }
}

/// What [`Recent::wait_for`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waited {
    /// The exchange arrived.
    Found(Box<Rated>),
    /// The ledger committed exchanges meanwhile: the one waited for may be in it now.
    Committed,
    /// Neither, by the deadline.
    TimedOut,
}

/// The bounded map (see the module docs).
#[derive(Debug, Default)]
pub struct Recent {
    inner: Mutex<Inner>,
    arrived: Condvar,
}

#[derive(Debug, Default)]
struct Inner {
    /// foldhash, not SipHash: the keys are ids veil issued, looked up by id. The key is shared
    /// with `order` (one allocation per id), the value is [`Packed`] (two): at [`CAPACITY`]
    /// the map holds ~4 MiB, where a boxed [`Rated`] and its own id strings held ~8 (heaptrack
    /// of a veil at rest after 22,000 exchanges, veil#18).
    by_id: HashMap<Arc<str>, Box<Packed>, foldhash::fast::RandomState>,
    order: VecDeque<Arc<str>>,
    /// Calls of [`Recent::committed`]: a waiter that sees it move looks in the ledger again.
    commits: u64,
    /// Callers in [`Recent::wait_for`]: only then does an insert wake anyone. std's
    /// `Condvar::notify_all` makes a `futex` system call whether or not a thread waits: 1.7 %
    /// of the pipeline thread at 8 connections (perf, veil#18), for feedback that almost never
    /// arrives before its exchange.
    waiting: usize,
}

/// How many optional text fields a [`Rated`] has after its request id.
const FIELDS: usize = 7;

/// One held exchange: a [`Rated`] without its request id (the map's key), its seven optional
/// strings in one allocation.
#[derive(Debug)]
struct Packed {
    /// `host`, `route`, `model`, `feature`, `user`, `task`, `response_id`, end to end.
    text: Box<str>,
    /// Where each field ends in `text`.
    ends: [u32; FIELDS],
    /// Bit `k` set: field `k` is `Some` (an empty string is kept apart from `None`).
    present: u8,
    trace_id: [u8; 16],
    span_id: [u8; 8],
}

/// Index of `user` among the packed fields.
const USER: usize = 4;

impl Packed {
    /// `fields` in [`Packed::text`]'s order, end to end in one allocation.
    fn pack(fields: [Option<&str>; FIELDS], trace_id: [u8; 16], span_id: [u8; 8]) -> Packed {
        let mut text = String::with_capacity(fields.iter().flatten().map(|f| f.len()).sum());
        let (mut ends, mut present) = ([0u32; FIELDS], 0u8);
        for (k, f) in fields.iter().enumerate() {
            if let Some(f) = f {
                text.push_str(f);
                present |= 1 << k;
            }
            // Saturating: a field past 4 GiB cannot come through the proxy's limits; if one
            // did, it would read back as absent (`field` checks its range), never out of bounds.
            ends[k] = u32::try_from(text.len()).unwrap_or(u32::MAX);
        }
        Packed {
            text: text.into_boxed_str(),
            ends,
            present,
            trace_id,
            span_id,
        }
    }

    /// What feedback needs of `record` (see [`Rated::of`]).
    fn of_record(record: &crate::record::Record) -> Packed {
        let p = record.prepare();
        let task = task_of(record);
        Packed::pack(
            [
                Some(&record.server_address),
                Some(&record.route),
                record.request_model.as_deref(),
                record.feature.as_deref(),
                record.user_pseudonym.as_ref().map(|u| u.as_str()),
                task.as_deref(),
                record.response_id.as_deref(),
            ],
            p.trace_id,
            p.span_id,
        )
    }

    fn of(r: &Rated) -> Packed {
        Packed::pack(
            [
                r.host.as_deref(),
                r.route.as_deref(),
                r.model.as_deref(),
                r.feature.as_deref(),
                r.user.as_deref(),
                r.task.as_deref(),
                r.response_id.as_deref(),
            ],
            r.trace_id,
            r.span_id,
        )
    }

    /// Field `k`, as it was inserted.
    fn field(&self, k: usize) -> Option<&str> {
        if self.present & (1 << k) == 0 {
            return None;
        }
        let start = if k == 0 { 0 } else { self.ends[k - 1] as usize };
        self.text.get(start..self.ends[k] as usize)
    }

    fn rated(&self, request_id: &str) -> Rated {
        let owned = |k| self.field(k).map(str::to_owned);
        Rated {
            request_id: request_id.to_owned(),
            host: owned(0),
            route: owned(1),
            model: owned(2),
            feature: owned(3),
            user: owned(USER),
            task: owned(5),
            response_id: owned(6),
            trace_id: self.trace_id,
            span_id: self.span_id,
        }
    }
}

impl Recent {
    /// Adds (or replaces) an exchange, dropping the oldest past [`CAPACITY`], and wakes the
    /// waiters.
    pub fn insert(&self, rated: Rated) {
        self.insert_packed(Arc::from(rated.request_id.as_str()), Packed::of(&rated));
    }

    /// [`Recent::insert`] of [`Rated::of`]`(record)`, packed from the record's fields without
    /// the owned copies a [`Rated`] would make (the pipeline's call, once per exchange).
    pub fn insert_of(&self, record: &crate::record::Record) {
        let packed = Packed::of_record(record);
        self.insert_packed(Arc::from(record.request_id.as_str()), packed);
    }

    fn insert_packed(&self, id: Arc<str>, packed: Packed) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.by_id.insert(id.clone(), Box::new(packed)).is_none() {
            inner.order.push_back(id);
        }
        // Past the bound in live entries; ids already committed or removed are skipped over.
        while inner.by_id.len() > CAPACITY {
            match inner.order.pop_front() {
                Some(old) => {
                    inner.by_id.remove(&old);
                }
                None => break,
            }
        }
        let wake = inner.waiting > 0;
        drop(inner);
        if wake {
            self.arrived.notify_all();
        }
    }

    /// Forgets an exchange (its feedback must not be accepted any more).
    pub fn remove(&self, request_id: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.by_id.remove(request_id).is_some() {
            inner.order.retain(|i| &**i != request_id);
        }
    }

    /// Forgets every exchange of the user with this pseudonym (`u_…`, as in [`Rated::user`]);
    /// how many were held.
    pub fn remove_user(&self, pseudonym: &str) -> usize {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let before = inner.by_id.len();
        inner.by_id.retain(|_, r| r.field(USER) != Some(pseudonym));
        let removed = before - inner.by_id.len();
        if removed > 0 {
            let Inner { by_id, order, .. } = &mut *inner;
            order.retain(|i| by_id.contains_key(i));
        }
        removed
    }

    /// The exchange with `request_id`, if held.
    pub fn get(&self, request_id: &str) -> Option<Rated> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.by_id.get(request_id).map(|r| r.rated(request_id))
    }

    /// How many ledger commits there have been so far: read it before looking for an id
    /// here and in the ledger, and pass it to [`Recent::wait_for`], so that a commit between
    /// the look and the wait is not missed.
    pub fn commits(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).commits
    }

    /// The exchange with `request_id`, waiting until `until` for it to be inserted; or
    /// [`Waited::Committed`] as soon as the ledger writer has committed since `*seen`
    /// commits (this one may be among them: look in the ledger, then wait again;
    /// `*seen` is brought up to date).
    pub fn wait_for(&self, request_id: &str, until: Instant, seen: &mut u64) -> Waited {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(r) = inner.by_id.get(request_id) {
                return Waited::Found(Box::new(r.rated(request_id)));
            }
            if inner.commits != *seen {
                *seen = inner.commits;
                return Waited::Committed;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Waited::TimedOut;
            }
            inner.waiting += 1;
            inner = self
                .arrived
                .wait_timeout(inner, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            inner.waiting -= 1;
        }
    }

    /// Takes out the exchanges the ledger has committed (their rows answer from now on), and
    /// wakes the waiters so that they look there. Called by the ledger writer after each
    /// commit, with the request ids of the group; ids not held are skipped.
    pub fn committed<'a>(&self, request_ids: impl IntoIterator<Item = &'a str>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Inner { by_id, order, .. } = &mut *inner;
        let before = by_id.len();
        for id in request_ids {
            by_id.remove(id);
        }
        if by_id.len() != before {
            // Exchanges are committed about in the order they were inserted: the ids taken
            // out are mostly at the front. One taken out from further in stays in `order`
            // until it reaches the front, or until such ids outnumber the live ones (an
            // exchange that never commits, dropped by a full ledger queue, holds the front).
            while order.front().is_some_and(|id| !by_id.contains_key(id)) {
                order.pop_front();
            }
            if order.len() > 2 * by_id.len() + 64 {
                order.retain(|id| by_id.contains_key(id));
            }
            // After a burst the table keeps the room it grew to; give it back once it is
            // mostly empty, not at every commit (each would reallocate under a steady load).
            if by_id.capacity() > 1024 && by_id.len() < by_id.capacity() / 8 {
                by_id.shrink_to(by_id.len() * 2);
                order.shrink_to(by_id.len() * 2);
            }
        }
        // Every commit, whether or not it took something out: the one waited for may have
        // left the map before it (evicted, or inserted and taken out between a feedback's
        // looks) and be in this one.
        inner.commits += 1;
        let wake = inner.waiting > 0;
        drop(inner);
        if wake {
            self.arrived.notify_all();
        }
    }

    /// How many exchanges are held.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_id
            .len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rated(id: &str) -> Rated {
        Rated {
            request_id: id.to_string(),
            ..Rated::default()
        }
    }

    #[test]
    fn the_oldest_goes_first_past_capacity() {
        let r = Recent::default();
        for i in 0..CAPACITY + 3 {
            r.insert(rated(&format!("id-{i}")));
        }
        assert_eq!(r.len(), CAPACITY);
        assert!(r.get("id-0").is_none());
        assert!(r.get("id-2").is_none());
        assert!(r.get("id-3").is_some());
        assert!(r.get(&format!("id-{}", CAPACITY + 2)).is_some());
    }

    #[test]
    fn what_goes_in_comes_back_out_field_for_field() {
        let r = Recent::default();
        let full = Rated {
            request_id: "019a-full".into(),
            host: Some("api.openai.com".into()),
            route: Some("/v1/chat/completions".into()),
            model: Some("gpt-4o-mini".into()),
            feature: Some("support-bot".into()),
            user: Some("u_abc".into()),
            task: Some("conversation:c-1".into()),
            response_id: Some("chatcmpl-1".into()),
            trace_id: [7; 16],
            span_id: [9; 8],
        };
        // Some fields empty, some absent, one with multi-byte characters.
        let sparse = Rated {
            request_id: "019a-sparse".into(),
            host: Some(String::new()),
            model: Some("modèle-ß".into()),
            user: None,
            task: Some(String::new()),
            ..Rated::default()
        };
        r.insert(full.clone());
        r.insert(sparse.clone());
        assert_eq!(r.get("019a-full"), Some(full));
        assert_eq!(r.get("019a-sparse"), Some(sparse));
        assert_eq!(r.get("019a-none"), None);
    }

    #[test]
    fn a_waiter_is_woken_by_the_insert() {
        let r = Arc::new(Recent::default());
        let r2 = r.clone();
        let t = std::thread::spawn(move || {
            r2.wait_for("late", Instant::now() + Duration::from_secs(5), &mut 0)
        });
        std::thread::sleep(Duration::from_millis(50));
        let start = Instant::now();
        r.insert(rated("late"));
        let got = t.join().unwrap();
        assert_eq!(got, Waited::Found(Box::new(rated("late"))));
        assert!(start.elapsed() < Duration::from_secs(4));
    }

    #[test]
    fn a_wait_for_an_id_that_never_comes_ends_at_its_bound() {
        let r = Recent::default();
        let start = Instant::now();
        let until = Instant::now() + Duration::from_millis(100);
        assert_eq!(r.wait_for("never", until, &mut 0), Waited::TimedOut);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(100) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }

    #[test]
    fn remove_forgets_one_exchange() {
        let r = Recent::default();
        r.insert(rated("a"));
        r.insert(rated("b"));
        r.remove("a");
        assert!(r.get("a").is_none());
        assert!(r.get("b").is_some());
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn remove_user_forgets_that_users_exchanges_only() {
        let r = Recent::default();
        for (id, user) in [
            ("a", Some("u_alice")),
            ("b", Some("u_bob")),
            ("c", Some("u_alice")),
            ("d", None),
        ] {
            r.insert(Rated {
                user: user.map(str::to_owned),
                ..rated(id)
            });
        }
        assert_eq!(r.remove_user("u_alice"), 2);
        assert!(r.get("a").is_none() && r.get("c").is_none());
        assert!(r.get("b").is_some() && r.get("d").is_some());
        assert_eq!(r.len(), 2);
        assert_eq!(r.remove_user("u_alice"), 0);
        // Eviction past capacity still goes oldest first among those held.
        for i in 0..CAPACITY - 1 {
            r.insert(rated(&format!("n-{i}")));
        }
        assert!(r.get("b").is_none(), "the oldest held goes first");
        assert!(r.get("d").is_some());
    }

    #[test]
    fn committed_exchanges_leave_and_the_room_is_given_back() {
        let r = Recent::default();
        for i in 0..CAPACITY {
            r.insert(rated(&format!("id-{i}")));
        }
        let grown = r.inner.lock().unwrap().by_id.capacity();
        // The ledger commits the first half, then all but the newest ten, in groups.
        let ids: Vec<String> = (0..CAPACITY).map(|i| format!("id-{i}")).collect();
        r.committed(ids[..CAPACITY / 2].iter().map(String::as_str));
        assert_eq!(r.len(), CAPACITY / 2);
        assert!(r.get("id-0").is_none());
        assert!(r.get(&format!("id-{}", CAPACITY / 2)).is_some());
        for group in ids[CAPACITY / 2..CAPACITY - 10].chunks(4096) {
            r.committed(group.iter().map(String::as_str));
        }
        assert_eq!(r.len(), 10);
        let inner = r.inner.lock().unwrap();
        assert_eq!(
            inner.order.len(),
            10,
            "no committed id is left in the order"
        );
        assert!(
            inner.by_id.capacity() < grown / 8,
            "{} of {grown}",
            inner.by_id.capacity()
        );
        drop(inner);
        // An id committed out of order leaves the map at once, the order when it is in front.
        r.committed(["id-16380"]);
        assert!(r.get("id-16380").is_none());
        assert!(r.get("id-16379").is_some());
        assert_eq!(r.len(), 9);
        // Unknown ids change nothing.
        r.committed(["nope"]);
        assert_eq!(r.len(), 9);
    }

    #[test]
    fn an_exchange_that_never_commits_does_not_pin_the_others_ids() {
        let r = Recent::default();
        // The first is dropped on its way to the ledger; every later one commits.
        r.insert(rated("dropped"));
        for i in 0..CAPACITY * 2 {
            let id = format!("id-{i}");
            r.insert(rated(&id));
            r.committed([id.as_str()]);
        }
        assert_eq!(r.len(), 1);
        assert!(
            r.get("dropped").is_some(),
            "live entries are evicted past CAPACITY only"
        );
        assert!(r.inner.lock().unwrap().order.len() <= 2 + 64);
        // Eviction counts live entries: the map holds CAPACITY of them.
        for i in 0..CAPACITY {
            r.insert(rated(&format!("n-{i}")));
        }
        assert_eq!(r.len(), CAPACITY);
        assert!(r.get("dropped").is_none(), "the oldest live one went first");
        assert!(r.get("n-0").is_some());
    }

    #[test]
    fn a_waiter_hears_of_a_commit_and_looks_in_the_ledger() {
        let r = Arc::new(Recent::default());
        r.insert(rated("other"));
        let r2 = r.clone();
        let mut seen = r.commits();
        let t = std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(5);
            let got = r2.wait_for("mine", until, &mut seen);
            (got, seen)
        });
        std::thread::sleep(Duration::from_millis(50));
        let start = Instant::now();
        // Any commit ends the wait at once, whether or not it took something out of the map
        // (the one waited for may have been evicted before it was committed).
        r.committed(["absent"]);
        assert_eq!(t.join().unwrap(), (Waited::Committed, 1));
        assert!(start.elapsed() < Duration::from_secs(4));
        assert!(r.get("other").is_some());
        // A commit before the wait began, after `seen` was read, ends it at once too.
        let mut seen = r.commits();
        r.committed(["other"]);
        let until = Instant::now() + Duration::from_secs(5);
        assert_eq!(r.wait_for("mine", until, &mut seen), Waited::Committed);
        assert_eq!(seen, 2);
        assert!(r.get("other").is_none());
    }
}
