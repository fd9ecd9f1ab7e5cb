pub mod chromium;
pub mod harness;
pub mod mock_llm;
pub mod otlp;
pub mod process;
