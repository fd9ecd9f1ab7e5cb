pub mod chromium;
pub mod harness;
pub mod ledger;
pub mod mock_llm;
pub mod otlp;
pub mod process;
pub mod python;
pub mod tmpfs;
