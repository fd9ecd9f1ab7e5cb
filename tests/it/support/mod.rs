pub mod harness;
pub mod mock_llm;
pub mod process;
