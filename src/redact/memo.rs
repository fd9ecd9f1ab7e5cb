//! # The scrub memo: a long text's redaction, remembered by a keyed digest of the text.
//!
//! Part of the redact step. LLM traffic repeats itself: every request of a feature carries
//! the same system prompt, and a chat or an agent sends its whole conversation again with
//! each turn, so turn *n* re-sends the *n − 1* turns veil already redacted. Redaction is a
//! pure function of the text and the scope (masks are labels, pseudonyms and hashes are keyed
//! and deterministic; nothing is numbered per exchange), so a text redacted once need not be
//! scanned again: [`ScrubMemo`] remembers, for texts of at least [`ScrubMemo::MIN_LEN`]
//! bytes, what scrubbing gave (the same text, a changed text, or "drop the field") and what
//! the detectors counted, and answers for it the next time. The answer is what a fresh scan
//! gives, byte for byte, counts included (`redact::tests::memo`).
//!
//! ## What it holds, and what it does not
//! - **No raw text.** A text is known by a keyed digest (SipHash-2-4 with 128 bits below
//!   4 KiB, BLAKE3 with 256 above) under keys drawn at random when the memo is made and never
//!   written anywhere, so the memo cannot be searched for a guessed value, in memory or in a
//!   core dump.
//! - **Redacted output**: what the record carries anyway (the ledger's content, the OTLP
//!   body). `forget` empties the memo (the `on_forget` hook of `veil run`), like the feedback
//!   service's recent exchanges, so no output of a forgotten exchange outlives it in memory;
//!   an exchange that started before the forget empties it again when it is built
//!   ([`ScrubMemo::clear_if_cleared_since`]), since it may be one the forget covered.
//! - **Bounded in bytes** ([`ScrubMemo::new`], `redaction_memo` in veil.toml, 4 MiB by
//!   default, 0 turns it off): two generations of half the bound each. A full current
//!   generation becomes the old one and the old one is dropped; a text found in the old one
//!   moves to the current one. So what is used within a generation stays, and a stream of
//!   texts never seen again (most answers) cannot grow it.
//!
//! ## Cost
//! A text seen for the first time costs one 64-bit keyed hash (foldhash, ~30 GB/s) and a set
//! insert: nothing is digested or stored for a text that never comes back. The second time it
//! is seen it is scrubbed, digested and stored; from the third on the digest is all it costs
//! (~0.35 ns per byte; a scan costs 1.5 to several ns per byte, more on text dense with
//! capitals and digits). The fast hash only says where to look: an answer is used only when
//! the digests agree, so a collision of the fast hash (chance, or crafted by someone who could
//! learn its seed) is a miss, never a wrong answer. The check must be a keyed PRF, not a
//! second fast hash: "unchanged" means "keep this text", so answering it for a different text
//! would write that text out unredacted. Which PRF was measured: BLAKE3 alone does ~1 GB/s on
//! texts under 1 KiB, which on the load bench's conversations (`LOAD_HISTORY=8`) cost about
//! what the scans it saved did; SipHash-2-4 does ~2.8 GB/s there (ring's GMAC and RustCrypto's
//! POLYVAL ~1.9).
//!
//! Owns: the memo's maps and its bound. Never logs, and its `Debug` shows counts only.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use siphasher::sip128::{Hasher128, SipHasher24};

use super::Counts;

/// Room one remembered text takes beside its output and counts (its keys, the map's slot,
/// the `Arc`), charged to the bound.
const ENTRY_OVERHEAD: usize = 112;

/// From this length on a text's check is BLAKE3 (its chunks hash in parallel, ~6 GB/s at
/// 16 KiB), below it SipHash-2-4 (~2.8 GB/s; BLAKE3 does ~1 GB/s on a single chunk).
const BLAKE3_FROM: usize = 4 << 10;

/// Room one text seen once takes (its fast hash and the set's slot), charged to the bound.
const SEEN_OVERHEAD: usize = 24;

/// What scrubbing a text gave, as remembered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Nothing to mask.
    Same,
    /// The redacted text.
    Changed(Box<str>),
    /// A `drop_field` detector matched: the field goes.
    Drop,
}

/// One remembered text: its digest (the check), what scrubbing gave and what it counted.
pub(super) struct Entry {
    digest: [u8; 32],
    pub(super) outcome: Outcome,
    pub(super) counts: Counts,
}

/// What [`ScrubMemo::look`] found for a text.
pub(super) enum Look {
    /// The memo is off, the text is short or seen for the first time (now noted): scrub it,
    /// remember nothing.
    Pass,
    /// Seen before but not remembered: scrub it and [`ScrubMemo::learn`] the outcome.
    Learn(Key),
    /// The remembered answer.
    Hit(Arc<Entry>),
}

/// Where a text is filed: its fast hash and its digest.
pub(super) struct Key {
    fast: u64,
    digest: [u8; 32],
}

/// The memo of one compiled rules file (every scope: the scope is part of the key).
pub(super) struct ScrubMemo {
    /// Most bytes held (both generations); 0: off.
    bound: usize,
    /// The BLAKE3 key, random per memo.
    key: [u8; 32],
    /// The SipHash key, random per memo.
    sip_key: [u8; 16],
    /// The fast hash's seed, random per memo.
    fast: foldhash::fast::RandomState,
    maps: Mutex<Generations>,
    hits: AtomicU64,
}

#[derive(Default)]
struct Generations {
    current: Generation,
    old: Generation,
    /// When a forget last emptied the memo ([`ScrubMemo::clear`]): an exchange that started
    /// before it may be one it forgot ([`ScrubMemo::clear_if_cleared_since`]).
    cleared_at: Option<SystemTime>,
}

#[derive(Default)]
struct Generation {
    seen: HashSet<u64, foldhash::fast::RandomState>,
    known: HashMap<u64, Arc<Entry>, foldhash::fast::RandomState>,
    bytes: usize,
}

impl fmt::Debug for ScrubMemo {
    /// Sizes and counters only: never a digest or an output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (known, bytes) = self.maps.lock().map_or((0, 0), |g| {
            (
                g.current.known.len() + g.old.known.len(),
                g.current.bytes + g.old.bytes,
            )
        });
        write!(
            f,
            "ScrubMemo({known} texts, {bytes} of {} bytes, {} hits)",
            self.bound,
            self.hits.load(Ordering::Relaxed)
        )
    }
}

impl ScrubMemo {
    /// Shortest text remembered, bytes. Shorter texts cost less to scan than to look up
    /// and digest (model names and other short labels have [`super::CleanMemo`]).
    pub(super) const MIN_LEN: usize = 128;

    /// The default bound, bytes: a few dozen system prompts and the recent turns of the
    /// conversations in flight.
    pub(super) const DEFAULT_BYTES: usize = 4 << 20;

    /// A memo holding at most `bound` bytes (0: off, [`ScrubMemo::look`] always passes).
    pub(super) fn new(bound: usize) -> Self {
        ScrubMemo {
            bound,
            key: rand::random(),
            sip_key: rand::random(),
            fast: foldhash::fast::RandomState::default(),
            maps: Mutex::default(),
            hits: AtomicU64::new(0),
        }
    }

    /// The bound in bytes (0: off).
    pub(super) fn bound(&self) -> usize {
        self.bound
    }

    /// Looks `text` up under scope `slot`.
    pub(super) fn look(&self, slot: u32, text: &str) -> Look {
        if self.bound == 0 || text.len() < Self::MIN_LEN {
            return Look::Pass;
        }
        let fast = self.fast.hash_one((slot, text));
        let candidate = {
            let Ok(mut g) = self.maps.lock() else {
                return Look::Pass;
            };
            if let Some(e) = g.current.known.get(&fast) {
                Some(e.clone())
            } else if let Some(e) = g.old.known.remove(&fast) {
                // Used again: it moves to the current generation (charged there).
                let size = entry_size(&e);
                g.old.bytes = g.old.bytes.saturating_sub(size);
                self.file(&mut g, fast, e.clone(), size);
                Some(e)
            } else if g.current.seen.contains(&fast) || g.old.seen.contains(&fast) {
                None
            } else {
                g.current.seen.insert(fast);
                g.current.bytes += SEEN_OVERHEAD;
                self.rotate_if_full(&mut g);
                return Look::Pass;
            }
        };
        // The digest is computed outside the lock: it is the expensive part.
        let digest = self.digest(slot, text);
        match candidate {
            Some(e) if e.digest == digest => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Look::Hit(e)
            }
            // A fast-hash collision (or a text seen before): scrub it and file the outcome.
            _ => Look::Learn(Key { fast, digest }),
        }
    }

    /// Remembers what scrubbing the text filed under `key` gave. An output larger than an
    /// eighth of the bound is not kept (it would evict too much).
    pub(super) fn learn(&self, key: Key, outcome: Outcome, counts: Counts) {
        let e = Arc::new(Entry {
            digest: key.digest,
            outcome,
            counts,
        });
        let size = entry_size(&e);
        if size > self.bound / 8 {
            return;
        }
        if let Ok(mut g) = self.maps.lock() {
            self.file(&mut g, key.fast, e, size);
        }
    }

    /// Empties the memo (`forget`, tests) and notes when, in the same critical section as
    /// the clear, so a text filed after it is seen by [`ScrubMemo::clear_if_cleared_since`].
    pub(super) fn clear(&self) {
        if let Ok(mut g) = self.maps.lock() {
            *g = Generations {
                cleared_at: Some(SystemTime::now()),
                ..Generations::default()
            };
        }
    }

    /// Empties the memo again, without noting a new clear, if it was cleared at or after
    /// `started` (an exchange's start): that exchange may be one the clear's forget covered,
    /// and what it filed while it was being redacted must not outlive it. Whether it did.
    pub(super) fn clear_if_cleared_since(&self, started: SystemTime) -> bool {
        if self.bound == 0 {
            // Off: nothing is ever filed, and no lock per exchange.
            return false;
        }
        let Ok(mut g) = self.maps.lock() else {
            return false;
        };
        match g.cleared_at {
            Some(at) if at >= started => {
                g.current = Generation::default();
                g.old = Generation::default();
                true
            }
            _ => false,
        }
    }

    /// Answers given from the memo so far.
    pub(super) fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Bytes held now, as charged to the bound.
    pub(super) fn bytes(&self) -> usize {
        self.maps
            .lock()
            .map_or(0, |g| g.current.bytes + g.old.bytes)
    }

    /// Every remembered output (tests: they must hold no raw value).
    #[cfg(test)]
    pub(super) fn outputs(&self) -> Vec<String> {
        let g = self.maps.lock().unwrap();
        g.current
            .known
            .values()
            .chain(g.old.known.values())
            .filter_map(|e| match &e.outcome {
                Outcome::Changed(s) => Some(s.to_string()),
                Outcome::Same | Outcome::Drop => None,
            })
            .collect()
    }

    /// The check of `text` under scope `slot`: keyed SipHash-2-4 (128 bits) below
    /// [`BLAKE3_FROM`] bytes, keyed BLAKE3 (256 bits) from there, whichever is faster at that
    /// length. Both are PRFs under a key no one else has, so two texts share a digest only by
    /// a chance of 2^-128 or less; the length picks the function, so the two never meet.
    fn digest(&self, slot: u32, text: &str) -> [u8; 32] {
        if text.len() >= BLAKE3_FROM {
            let mut h = blake3::Hasher::new_keyed(&self.key);
            h.update(&slot.to_le_bytes());
            h.update(text.as_bytes());
            return *h.finalize().as_bytes();
        }
        let mut h = SipHasher24::new_with_key(&self.sip_key);
        h.write(&slot.to_le_bytes());
        h.write(text.as_bytes());
        let mut out = [0; 32];
        out[..16].copy_from_slice(&h.finish128().as_bytes());
        out
    }

    fn file(&self, g: &mut Generations, fast: u64, e: Arc<Entry>, size: usize) {
        if let Some(before) = g.current.known.insert(fast, e) {
            g.current.bytes = g.current.bytes.saturating_sub(entry_size(&before));
        }
        g.current.bytes += size;
        self.rotate_if_full(g);
    }

    /// A full current generation becomes the old one; the old one is dropped.
    fn rotate_if_full(&self, g: &mut Generations) {
        if g.current.bytes > self.bound / 2 {
            g.old = std::mem::take(&mut g.current);
        }
    }
}

/// What an entry is charged: its output, its counts' labels and the fixed overhead.
fn entry_size(e: &Entry) -> usize {
    let output = match &e.outcome {
        Outcome::Changed(s) => s.len(),
        Outcome::Same | Outcome::Drop => 0,
    };
    ENTRY_OVERHEAD + output + e.counts.heap_size()
}
