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

    /// One feature vector per text, in input order (no gradients). A text cut into windows
    /// (`Overlong::Chunk`) gets the token-weighted mean of its windows' features.
    pub fn embed(&self, batch: &[&Encoded]) -> candle_core::Result<Vec<Vec<f32>>> {
        if batch.iter().all(|e| e.overflow.is_empty()) {
            return self.embed_windows(batch);
        }
        let windows: Vec<&Encoded> = batch.iter().flat_map(|e| e.windows()).collect();
        let mut vectors = self.embed_windows(&windows)?.into_iter();
        let mut out = Vec::with_capacity(batch.len());
        for e in batch {
            let parts: Vec<(Vec<f32>, usize)> = e
                .windows()
                .map(|w| (vectors.next().unwrap_or_default(), w.len()))
                .collect();
            out.push(pool_windows(&parts));
        }
        Ok(out)
    }

    fn embed_windows(&self, batch: &[&Encoded]) -> candle_core::Result<Vec<Vec<f32>>> {
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

/// The token-weighted mean of a text's window features; re-normalised to unit length when the
/// windows' features are unit vectors (sentence-transformers models normalise), so a chunked
/// text's features live where every other text's do.
pub fn pool_windows(parts: &[(Vec<f32>, usize)]) -> Vec<f32> {
    let Some((first, _)) = parts.first() else {
        return vec![];
    };
    if parts.len() == 1 {
        return first.clone();
    }
    let total: usize = parts.iter().map(|(_, n)| n).sum::<usize>().max(1);
    let mut mean = vec![0f32; first.len()];
    for (v, n) in parts {
        let w = *n as f32 / total as f32;
        mean.iter_mut().zip(v).for_each(|(m, x)| *m += w * x);
    }
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let unit = parts.iter().all(|(v, _)| (norm(v) - 1.0).abs() < 1e-3);
    let length = norm(&mean);
    if unit && length > 0.0 {
        mean.iter_mut().for_each(|m| *m /= length);
    }
    mean
}

#[cfg(test)]
mod tests {
    use super::pool_windows;

    #[test]
    fn one_window_is_kept_as_is() {
        assert_eq!(pool_windows(&[(vec![3.0, 4.0], 7)]), vec![3.0, 4.0]);
        assert!(pool_windows(&[]).is_empty());
    }

    #[test]
    fn windows_are_weighted_by_their_tokens() {
        // Not unit vectors (a decoder's hidden states): the plain weighted mean.
        let got = pool_windows(&[(vec![2.0, 0.0], 3), (vec![0.0, 4.0], 1)]);
        assert_eq!(got, vec![1.5, 1.0]);
    }

    #[test]
    fn unit_windows_give_a_unit_vector() {
        let got = pool_windows(&[(vec![1.0, 0.0], 100), (vec![0.0, 1.0], 100)]);
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert!(
            (got[0] - h).abs() < 1e-6 && (got[1] - h).abs() < 1e-6,
            "{got:?}"
        );
    }
}
