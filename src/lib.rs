//! # veil: a privacy-enforcing log redaction proxy for LLM traffic
//!
//! ## Layout
//! ```text
//! app ──CONNECT / gateway / absolute-form──▶ proxy ──▶ upstream LLM provider
//!                                              │ (tee, bounded, off the hot path)
//!                                              ▼
//!                                          Exchange ──▶ redact ──▶ Record ──▶ export (OTLP)
//!                                              └────────────────────────────▶ seal (encrypted store)
//! ```
//! - [`proxy`]: the hot path. Listener, CONNECT and tunnels, TLS interception with minted
//!   leaves, the upstream client, the tee that captures bodies. Knows nothing of rules, OTLP or
//!   crypto beyond fingerprinting credentials.
//! - [`exchange`]: the [`Exchange`](exchange::Exchange) handed from the proxy to everything
//!   else, bounded body decoding, and the vocabulary every step shares: which headers are
//!   credentials (`exchange::credentials`) and which providers veil knows
//!   (`exchange::providers`).
//! - [`record`]: the [`Record`](record::Record), one redacted ledger entry.
//! - [`keys`]: master secrets and purpose keys.
//! - [`config`]: file + flags + environment, validated once.
//! - [`counters`]: the one counter registry every step counts in, created once by `veil run`.
//! - [`cli`]: the `veil` command line.
// The other lints live in Cargo.toml `[lints]`, for every target; missing_docs only here:
// in [lints] it would also hit the benches, whose criterion_group! emits undocumented pub fns.
#![deny(missing_docs)]

// The global allocator is set here, not in main.rs, so the benches and tests that link the
// library measure and run what the binary runs. Why jemalloc: see its line in Cargo.toml.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

pub mod admin;
pub mod cli;
pub mod config;
pub mod counters;
pub mod exchange;
pub mod export;
pub mod feedback;
pub mod health;
pub mod journal;
pub mod keys;
pub mod ledger;
pub mod os;
pub mod pipeline;
pub mod proxy;
pub mod record;
pub mod redact;
pub mod seal;
pub mod server;
