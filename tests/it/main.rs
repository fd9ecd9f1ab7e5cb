//! veil's integration tests: one binary, real sockets on 127.0.0.1, real TLS.
//! The only fake is the LLM provider (`support::mock_llm`).

mod support;

mod bedrock;
mod certs;
mod cli;
mod control;
mod dashboard;
mod export;
mod feedback;
mod first_hour;
mod forget;
mod forget_spool;
// The forward-only build records nothing: its one test runs only in such a build.
#[cfg(feature = "forward-only")]
mod forward_only;
mod health;
mod hostile;
mod ledger;
mod metrics;
mod ollama;
mod prometheus;
mod proxy;
mod realtime;
mod records;
mod report_html;
mod rules_test;
mod sdk;
mod vertex;
mod websocket;
