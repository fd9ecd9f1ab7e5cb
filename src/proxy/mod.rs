//! # The proxy: the hot path.
//!
//! Listener, CONNECT and blind tunnels, TLS interception with minted leaves, the upstream
//! client, and the tee that captures both bodies. It knows nothing of rules, OTLP or crypto
//! beyond fingerprinting credentials; finished exchanges leave through a bounded queue.

pub mod mitm;
