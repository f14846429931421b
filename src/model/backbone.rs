//! One interface over the model families sw2s runs as its strong model: the project's own
//! BERT and MPNet (mean pooling, what `full` jobs fine-tune; served through the packed
//! inference path, trained through the candle `Bert`), encoders run by
//! candle-transformers (DistilBERT, XLM-RoBERTa, ModernBERT) and quantized decoder LMs
//! (the last token's hidden state, or the mean of the tokens'); the last two serve `head` jobs
//! only. Everything above the model layer holds an `Arc<Backbone>` and asks it for features.
//! Each model knows the device its weights live on (`device.rs`).

use candle_core::Device;

use super::bert::Bert;
use super::ct_encoder::CtEncoder;
use super::decoder::DecoderLm;
use super::encoder::Encoded;
use super::packed::PackedBert;

pub enum Backbone {
    /// The BERT family on the CPU: sw2s's packed kernels.
    Bert(PackedBert),
    /// The BERT family on another device (a GPU): candle's tensor forward, padded per batch.
    Padded(Bert, Device),
    /// An encoder from candle-transformers.
    Library(CtEncoder),
    Decoder(DecoderLm),
}

impl Backbone {
    /// Serves a loaded BERT-family model (base or fine-tuned): through the packed path on the
    /// CPU, through candle's forward on the device its weights were loaded on otherwise.
    pub fn from_bert(bert: Bert, device: &Device) -> candle_core::Result<Self> {
        if device.is_cpu() {
            Ok(Self::Bert(PackedBert::from_bert(&bert)?))
        } else {
            Ok(Self::Padded(bert, device.clone()))
        }
    }

    /// Serves fine-tuned weights (`weights`, a safetensors file) of the BERT-family model in
    /// `model_dir` (whose config.json describes them), on `device`.
    pub fn fine_tuned(
        model_dir: &std::path::Path,
        weights: &std::path::Path,
        device: &Device,
    ) -> anyhow::Result<Self> {
        let config = super::encoder::read_config(model_dir)?;
        let bert = super::encoder::load_bert(&config, weights, None, device)?;
        Ok(Self::from_bert(bert, device)?)
    }

    /// One feature vector per text, in input order (no gradients).
    pub fn embed(&self, batch: &[&Encoded]) -> candle_core::Result<Vec<Vec<f32>>> {
        match self {
            Self::Bert(bert) => bert.embed(batch),
            Self::Padded(bert, device) => super::encoder::embed_batch(bert, batch, device),
            Self::Library(encoder) => encoder.embed(batch),
            Self::Decoder(lm) => lm.embed(batch),
        }
    }

    pub fn num_layers(&self) -> usize {
        match self {
            Self::Bert(bert) => bert.num_layers(),
            Self::Padded(bert, _) => bert.num_layers(),
            Self::Library(encoder) => encoder.layers,
            Self::Decoder(lm) => lm.layers,
        }
    }
}
