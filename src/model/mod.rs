//! The strong model: tokenizers, the model families (the project's trainable BERT, quantized
//! decoder LMs, packed or through candle-transformers) behind one `Backbone`, the batching worker, model
//! versions on disk (manifest, the heads' tensor file), and the catalogue of fetchable models. Nothing here
//! knows about tasks or the method: the per-task heads and every kind of training live in
//! `method`.

pub mod backbone;
pub mod bert;
pub mod catalogue;
pub mod ct_encoder;
pub mod decoder;
pub mod device;
pub mod encoder;
pub mod fast_math;
pub mod fetch;
pub mod gguf_tokenizer;
pub mod manifest;
pub mod packed;
pub mod packed_decoder;
pub mod tensor_file;
pub mod testing;
pub mod train_ops;
pub mod vendored;
pub mod worker;

pub use backbone::Backbone;
pub use device::ComputeDevice;
pub use encoder::{Encoded, Encoder, ModelInfo, Overlong, TextTokenizer};
pub use packed_decoder::DecoderPooling;
pub use worker::{BatchConfig, ModelWorker, WorkerError};
