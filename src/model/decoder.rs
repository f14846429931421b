//! Decoder LMs as strong models: quantized GGUF files (Llama family — SmolLM2 — and Gemma 3)
//! run by candle-transformers' own quantized models (Gemma 3 through a vendored copy with an
//! activation fix, see `vendored`). The features of a text are the hidden
//! state of its last token after the final norm, as in the P(IK) literature, scaled to unit
//! length like the BERT family's sentence embeddings (the vector index compares by cosine, and
//! the linear heads' AdamW settings assume features of that scale).
//!
//! Models whose F32 weights fit in `DEQUANTIZE_LIMIT_BYTES` are dequantized at load and run
//! on packed tokens (`packed_decoder.rs`: any lengths in one batch, last-token or mean
//! pooling, about 3× the speed of the path below). Larger ones stay quantized and run on
//! candle-transformers' model code: its `ModelWeights::forward` returns only the last token's
//! logits, i.e. `output · norm(h_last)`, so the model is loaded with `output.weight` replaced
//! by an F32 identity matrix, which makes that forward return `norm(h_last)` itself; it has
//! no padding mask, so texts are batched only with texts of the same token length, and it
//! offers last-token pooling only. candle's CPU quantized kernels are slow here (SmolLM2's
//! Q4_1 ran at 0.7 SciQ sentences/s on 2 cores), which is why small models are dequantized.

use std::io::Cursor;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{bail, Context};
use candle_core::quantized::gguf_file::{Content, TensorInfo};
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama;

use super::encoder::Encoded;
use super::packed_decoder::{DecoderPooling, PackedDecoder};
use super::vendored::quantized_gemma3;

/// Longest input served by default: long enough for a question with its support paragraph,
/// short enough to keep CPU latency sane (attention is quadratic).
pub const DEFAULT_MAX_TOKENS: usize = 1024;

/// Dequantize the weights when their F32 copy fits in this many bytes.
pub const DEQUANTIZE_LIMIT_BYTES: usize = 3 << 30;

enum Weights {
    Llama(quantized_llama::ModelWeights),
    Gemma3(quantized_gemma3::ModelWeights),
}

enum Runner {
    Packed(PackedDecoder),
    Candle(Mutex<Weights>),
}

/// A quantized decoder LM that embeds texts (no generation).
pub struct DecoderLm {
    runner: Runner,
    pub architecture: String,
    pub hidden: usize,
    pub layers: usize,
    pub context_length: usize,
    /// The GGUF file type, e.g. `Q4_1`, `Q4_K_M`.
    pub quantisation: String,
    /// Whether the weights were dequantized to F32 at load (see the module comment).
    pub dequantized: bool,
    pub pooling: DecoderPooling,
    device: Device,
}

/// What the GGUF header says, read without loading the weights.
pub struct GgufHeader {
    pub content: Content,
    pub architecture: String,
}

pub fn read_header(path: &Path) -> anyhow::Result<GgufHeader> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let content = Content::read(&mut file)
        .map_err(|e| anyhow::anyhow!("{} is not a readable GGUF file: {e}", path.display()))?;
    let architecture = content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .with_context(|| format!("{} names no general.architecture", path.display()))?;
    Ok(GgufHeader {
        content,
        architecture,
    })
}

pub(super) fn md_u32(ct: &Content, key: &str) -> anyhow::Result<usize> {
    ct.metadata
        .get(key)
        .and_then(|v| v.to_u32().ok())
        .map(|v| v as usize)
        .with_context(|| format!("the GGUF metadata has no {key}"))
}

pub(super) fn md_f32(ct: &Content, key: &str) -> anyhow::Result<f32> {
    ct.metadata
        .get(key)
        .and_then(|v| v.to_f32().ok())
        .with_context(|| format!("the GGUF metadata has no {key}"))
}

/// llama.cpp's `general.file_type` names.
fn file_type_name(code: Option<u32>) -> String {
    match code {
        Some(0) => "F32",
        Some(1) => "F16",
        Some(2) => "Q4_0",
        Some(3) => "Q4_1",
        Some(7) => "Q8_0",
        Some(8) => "Q5_0",
        Some(9) => "Q5_1",
        Some(10) => "Q2_K",
        Some(11) => "Q3_K_S",
        Some(12) => "Q3_K_M",
        Some(13) => "Q3_K_L",
        Some(14) => "Q4_K_S",
        Some(15) => "Q4_K_M",
        Some(16) => "Q5_K_S",
        Some(17) => "Q5_K_M",
        Some(18) => "Q6_K",
        Some(32) => "BF16",
        _ => "unknown",
    }
    .to_string()
}

impl DecoderLm {
    /// Loads the model from `path`, whose header `read_header` has read, onto `device`: small
    /// models on the CPU are dequantized (see the module comment); on a GPU every model runs
    /// quantized on candle-transformers' code, whose CUDA kernels are fast.
    pub fn load(
        path: &Path,
        header: GgufHeader,
        device: &Device,
        pooling: DecoderPooling,
    ) -> anyhow::Result<Self> {
        Self::load_within(path, header, device, pooling, DEQUANTIZE_LIMIT_BYTES)
    }

    /// `load` with the dequantization limit given (tests force the candle path with 0).
    pub fn load_within(
        path: &Path,
        header: GgufHeader,
        device: &Device,
        pooling: DecoderPooling,
        dequantize_limit: usize,
    ) -> anyhow::Result<Self> {
        let GgufHeader {
            mut content,
            architecture,
        } = header;
        let arch = architecture.as_str();
        if !matches!(arch, "llama" | "gemma3") {
            bail!(
                "{}: GGUF architecture {arch:?} is not supported (llama and gemma3 are)",
                path.display()
            );
        }
        let hidden = md_u32(&content, &format!("{arch}.embedding_length"))?;
        let layers = md_u32(&content, &format!("{arch}.block_count"))?;
        let context_length = md_u32(&content, &format!("{arch}.context_length"))?;
        let quantisation = file_type_name(
            content
                .metadata
                .get("general.file_type")
                .and_then(|v| v.to_u32().ok()),
        );
        let mut bytes =
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let f32_bytes: usize = content
            .tensor_infos
            .values()
            .map(|t| t.shape.elem_count() * 4)
            .sum();
        // The packed decoder is CPU code; elsewhere candle's quantized kernels run the model.
        let dequantized = device.is_cpu() && f32_bytes <= dequantize_limit;
        let runner = if dequantized {
            let positions = context_length.min(DEFAULT_MAX_TOKENS);
            Runner::Packed(
                PackedDecoder::from_gguf(&content, &bytes, arch, positions)
                    .with_context(|| format!("building the model from {}", path.display()))?,
            )
        } else {
            if pooling != DecoderPooling::LastToken {
                bail!(
                    "{}: {} pooling needs the model dequantized to F32 on the CPU (up to {} \
                     MiB; this one takes {} MiB, on {}); the quantized path pools by the last \
                     token only",
                    path.display(),
                    pooling.as_str(),
                    dequantize_limit >> 20,
                    f32_bytes >> 20,
                    super::device::name(device)
                );
            }
            // The identity output head goes after the file's data (see the module comment).
            let offset = bytes.len() as u64 - content.tensor_data_offset;
            bytes.reserve(hidden * hidden * 4);
            for row in 0..hidden {
                for col in 0..hidden {
                    let v: f32 = if row == col { 1.0 } else { 0.0 };
                    bytes.extend_from_slice(&v.to_le_bytes());
                }
            }
            content.tensor_infos.insert(
                "output.weight".to_string(),
                TensorInfo {
                    ggml_dtype: GgmlDType::F32,
                    shape: (hidden, hidden).into(),
                    offset,
                },
            );
            let mut reader = Cursor::new(bytes);
            let weights = match arch {
                "llama" => Weights::Llama(
                    quantized_llama::ModelWeights::from_gguf(content, &mut reader, device)
                        .with_context(|| {
                            format!("building the Llama model from {}", path.display())
                        })?,
                ),
                _ => Weights::Gemma3(
                    quantized_gemma3::ModelWeights::from_gguf(content, &mut reader, device)
                        .with_context(|| {
                            format!("building the Gemma 3 model from {}", path.display())
                        })?,
                ),
            };
            Runner::Candle(Mutex::new(weights))
        };
        Ok(Self {
            runner,
            architecture,
            hidden,
            layers,
            context_length,
            quantisation,
            dequantized,
            pooling,
            device: device.clone(),
        })
    }

    /// One feature vector per text (its pooled final hidden states), in input order.
    pub fn embed(&self, batch: &[&Encoded]) -> candle_core::Result<Vec<Vec<f32>>> {
        match &self.runner {
            Runner::Packed(model) => model.embed(batch, self.pooling),
            Runner::Candle(weights) => {
                Self::embed_candle(weights, self.hidden, batch, &self.device)
            }
        }
    }

    /// The last token's final hidden state for each text, in input order, through
    /// candle-transformers' model (texts of equal length batched together).
    fn embed_candle(
        weights: &Mutex<Weights>,
        hidden: usize,
        batch: &[&Encoded],
        device: &Device,
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        let mut out: Vec<Option<Vec<f32>>> = vec![None; batch.len()];
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by_key(|&i| batch[i].len());
        let mut weights = weights
            .lock()
            .map_err(|_| candle_core::Error::Msg("the decoder's lock was poisoned".into()))?;
        for group in order.chunk_by(|&a, &b| batch[a].len() == batch[b].len()) {
            let len = batch[group[0]].len();
            if len == 0 {
                for &i in group {
                    out[i] = Some(vec![0.0; hidden]);
                }
                continue;
            }
            let ids: Vec<u32> = group
                .iter()
                .flat_map(|&i| batch[i].ids.iter().copied())
                .collect();
            let input = Tensor::from_vec(ids, (group.len(), len), device)?;
            let hidden = match &mut *weights {
                Weights::Llama(m) => m.forward(&input, 0)?,
                Weights::Gemma3(m) => m.forward(&input, 0)?,
            };
            for (&i, mut v) in group.iter().zip(hidden.to_vec2::<f32>()?) {
                super::fast_math::unit_length(&mut v);
                out[i] = Some(v);
            }
        }
        // Each forward keeps a KV cache for generation; embedding never reuses it.
        if let Weights::Llama(m) = &mut *weights {
            m.clear_kv_cache();
        }
        out.into_iter()
            .map(|v| v.ok_or_else(|| candle_core::Error::Msg("a text was not embedded".into())))
            .collect()
    }
}
