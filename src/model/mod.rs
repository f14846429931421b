//! The strong model: tokenizer, candle BERT encoder, per-task heads, the batching worker,
//! model versions on disk, and fetching the default model.

pub mod bert;
pub mod encoder;
pub mod fetch;
pub mod finetune;
pub mod heads;
pub mod manifest;
pub mod testing;
pub mod worker;

pub use encoder::{Encoded, Encoder, ModelInfo, TextTokenizer};
pub use heads::Heads;
pub use worker::{BatchConfig, ModelWorker};
