//! The strong model: tokenizer, candle BERT encoder, the batching worker, model versions on
//! disk (manifest, the heads' tensor file), and fetching the default model. Nothing here
//! knows about tasks or the method: the per-task heads and every kind of training live in
//! `method`.

pub mod bert;
pub mod encoder;
pub mod fetch;
pub mod manifest;
pub mod tensor_file;
pub mod testing;
pub mod worker;

pub use encoder::{Encoded, Encoder, ModelInfo, Overlong, TextTokenizer};
pub use worker::{BatchConfig, ModelWorker, WorkerError};
