//! Third-party model code carried with a fix that its release does not have yet.

pub mod quantized_gemma3;
