//! One interface over the model families sw2s runs as its strong model: the project's own
//! trainable BERT and MPNet (mean pooling, what `full` jobs fine-tune), encoders run by
//! candle-transformers (DistilBERT, XLM-RoBERTa, ModernBERT) and quantized decoder LMs
//! (last-token hidden state); the last two serve `head` jobs only. Everything above the model layer holds an
//! `Arc<Backbone>` and asks it for features.

use candle_core::Device;

use super::bert::Bert;
use super::ct_encoder::CtEncoder;
use super::decoder::DecoderLm;
use super::encoder::{embed_batch, Encoded};

pub enum Backbone {
    Bert(Bert),
    /// An encoder from candle-transformers.
    Library(CtEncoder),
    Decoder(DecoderLm),
}

impl From<Bert> for Backbone {
    fn from(bert: Bert) -> Self {
        Self::Bert(bert)
    }
}

impl Backbone {
    /// One feature vector per text, in input order (no gradients).
    pub fn embed(&self, batch: &[&Encoded], device: &Device) -> candle_core::Result<Vec<Vec<f32>>> {
        match self {
            Self::Bert(bert) => embed_batch(bert, batch, device),
            Self::Library(encoder) => encoder.embed(batch, device),
            Self::Decoder(lm) => lm.embed(batch, device),
        }
    }

    pub fn num_layers(&self) -> usize {
        match self {
            Self::Bert(bert) => bert.num_layers(),
            Self::Library(encoder) => encoder.layers,
            Self::Decoder(lm) => lm.layers,
        }
    }

    /// The trainable encoder, for `full` jobs; None for quantized decoders.
    pub fn as_bert(&self) -> Option<&Bert> {
        match self {
            Self::Bert(bert) => Some(bert),
            Self::Library(_) | Self::Decoder(_) => None,
        }
    }
}
