//! Decoder LMs (Llama family, Gemma 3) on packed tokens, for models small enough to hold in F32.
//!
//! Why it exists: candle-transformers' quantized models return only the last token's logits
//! and have no padding mask, so `decoder.rs` could batch only texts of equal token length —
//! mostly batches of one, whose thin matrix multiplies leave the second core idle (SmolLM2 at
//! half of PyTorch's speed). Here, as for the BERT family (`packed.rs`), the batch's real
//! tokens are concatenated, each projection is one multiply over all of them, attention runs
//! per (text, head) with that text's causal (and, for Gemma 3's local layers, sliding-window)
//! mask, and every token's final hidden state is available, so a text can be pooled by its
//! last token or by the mean of its tokens. The maintained candle-transformers code stays the
//! reference: a test holds the two to the same output on random models of both families.

use candle_core::quantized::gguf_file::Content;
use candle_core::{Device, Result};
use rayon::prelude::*;

use super::decoder::{md_f32, md_u32};
use super::encoder::Encoded;
use super::fast_math;
use super::packed::{scores_qk, text_starts, weighted_values, Dense, SharedOut};

/// How a decoder's per-token hidden states become one feature vector.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum DecoderPooling {
    /// The final hidden state of the text's last token (what P(IK) probes read).
    #[default]
    LastToken,
    /// The mean of the text's final hidden states, the BOS token left out.
    Mean,
}

impl DecoderPooling {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LastToken => "last_token",
            Self::Mean => "mean",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Arch {
    /// Pre-norm blocks, interleaved RoPE (GGUF's Llama layout), SiLU-gated feed-forward.
    Llama,
    /// Embeddings scaled by √hidden, RMS norms on Q and K, norms after attention and the
    /// feed-forward as well as before, split-half RoPE with a local and a global base,
    /// sliding-window attention on the local layers, GELU(tanh)-gated feed-forward.
    Gemma3,
}

/// Rotary position tables: `cos`/`sin` (positions × half).
struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
    interleaved: bool,
}

impl Rope {
    fn new(dim: usize, base: f32, positions: usize, interleaved: bool) -> Self {
        let half = dim / 2;
        // As candle computes it: θᵢ = base^(−2i/d) in f32, angle = position · θᵢ.
        let theta: Vec<f32> = (0..dim)
            .step_by(2)
            .map(|i| 1f32 / base.powf(i as f32 / dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for p in 0..positions {
            for t in &theta {
                let a = p as f32 * t;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Self {
            cos,
            sin,
            half,
            interleaved,
        }
    }

    /// Rotates one head's vector for position `pos`.
    fn apply(&self, x: &mut [f32], pos: usize) {
        let cos = &self.cos[pos * self.half..(pos + 1) * self.half];
        let sin = &self.sin[pos * self.half..(pos + 1) * self.half];
        for i in 0..self.half {
            let (a, b) = if self.interleaved {
                (2 * i, 2 * i + 1)
            } else {
                (i, i + self.half)
            };
            let (x0, x1) = (x[a], x[b]);
            x[a] = x0 * cos[i] - x1 * sin[i];
            x[b] = x0 * sin[i] + x1 * cos[i];
        }
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    /// Q, K and V stacked: one multiply.
    qkv: Dense,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    wo: Dense,
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    /// Gate and up projections stacked: one multiply.
    gate_up: Dense,
    down: Dense,
    post_ffn_norm: Option<Vec<f32>>,
    /// Gemma 3's local layers: a token sees itself and this many tokens before it.
    window: Option<usize>,
    rope: usize,
}

pub struct PackedDecoder {
    arch: Arch,
    embed: Vec<f32>,
    vocab: usize,
    hidden: usize,
    emb_scale: f32,
    layers: Vec<Layer>,
    final_norm: Vec<f32>,
    eps: f32,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    ropes: Vec<Rope>,
    positions: usize,
    bos: Option<u32>,
}

/// One RMS norm per row of `x` (rows of `weight.len()`), in parallel.
fn rms_rows(x: &mut [f32], weight: &[f32], eps: f32) {
    let h = weight.len();
    x.par_chunks_mut(h * 8).for_each(|chunk| {
        for row in chunk.chunks_mut(h) {
            fast_math::rms_norm_row(row, weight, eps);
        }
    });
}

impl PackedDecoder {
    /// Reads (and dequantizes) every weight of a `llama` or `gemma3` GGUF file whose bytes
    /// are `bytes`; texts may be up to `positions` tokens long.
    pub fn from_gguf(
        ct: &Content,
        bytes: &[u8],
        arch: &str,
        positions: usize,
    ) -> anyhow::Result<Self> {
        let tensor = |name: &str| -> anyhow::Result<(Vec<f32>, Vec<usize>)> {
            let mut reader = std::io::Cursor::new(bytes);
            let q = ct.tensor(&mut reader, name, &Device::Cpu)?;
            let t = q.dequantize(&Device::Cpu)?;
            let dims = t.dims().to_vec();
            Ok((t.flatten_all()?.to_vec1::<f32>()?, dims))
        };
        let u = |key: &str| md_u32(ct, &format!("{arch}.{key}"));
        let f = |key: &str| md_f32(ct, &format!("{arch}.{key}"));
        let kind = match arch {
            "llama" => Arch::Llama,
            "gemma3" => Arch::Gemma3,
            other => anyhow::bail!("GGUF architecture {other:?} has no packed implementation"),
        };
        if kind == Arch::Llama && u("expert_count").unwrap_or(0) > 0 {
            anyhow::bail!("mixture-of-experts Llama models are not supported");
        }
        let hidden = u("embedding_length")?;
        let heads = u("attention.head_count")?;
        let kv_heads = u("attention.head_count_kv")?;
        let blocks = u("block_count")?;
        let eps = f("attention.layer_norm_rms_epsilon")?;
        let head_dim = match kind {
            Arch::Llama => hidden / heads,
            Arch::Gemma3 => u("attention.key_length")?,
        };
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 || head_dim % 2 != 0 {
            anyhow::bail!("unsupported attention shape: {heads} heads, {kv_heads} key/value heads of {head_dim}");
        }
        let (ropes, window, every) = match kind {
            Arch::Llama => {
                let dim = u("rope.dimension_count")?;
                if dim != head_dim {
                    anyhow::bail!(
                        "partial rotary embeddings ({dim} of {head_dim}) are not supported"
                    );
                }
                let base = f("rope.freq_base").unwrap_or(10_000.0);
                (vec![Rope::new(dim, base, positions, true)], None, 0)
            }
            Arch::Gemma3 => {
                let global = f("rope.freq_base").unwrap_or(1_000_000.0);
                let local = f("rope.local_freq_base").unwrap_or(10_000.0);
                (
                    vec![
                        Rope::new(head_dim, global, positions, false),
                        Rope::new(head_dim, local, positions, false),
                    ],
                    Some(u("attention.sliding_window")?),
                    u("attention.sliding_window_type").unwrap_or(6),
                )
            }
        };
        let (embed, emb_dims) = tensor("token_embd.weight")?;
        let vocab = emb_dims.first().copied().unwrap_or(0);
        let (final_norm, _) = tensor("output_norm.weight")?;
        let q_out = heads * head_dim;
        let kv_out = kv_heads * head_dim;
        let mut layers = Vec::with_capacity(blocks);
        for l in 0..blocks {
            let w = |name: &str| tensor(&format!("blk.{l}.{name}.weight")).map(|t| t.0);
            let stacked = |names: &[&str]| -> anyhow::Result<(Vec<f32>, usize)> {
                let mut all = Vec::new();
                let mut out = 0;
                for n in names {
                    let (v, dims) = tensor(&format!("blk.{l}.{n}.weight"))?;
                    out += dims.first().copied().unwrap_or(0);
                    all.extend(v);
                }
                Ok((all, out))
            };
            let (qkv, qkv_out) = stacked(&["attn_q", "attn_k", "attn_v"])?;
            if qkv_out != q_out + 2 * kv_out {
                anyhow::bail!("layer {l}: Q/K/V shapes do not match the metadata");
            }
            let (gate_up, gu_out) = stacked(&["ffn_gate", "ffn_up"])?;
            let (down, down_dims) = tensor(&format!("blk.{l}.ffn_down.weight"))?;
            let inner = gu_out / 2;
            let gemma = kind == Arch::Gemma3;
            let local = gemma && (l + 1) % every.max(1) > 0;
            layers.push(Layer {
                attn_norm: w("attn_norm")?,
                qkv: Dense::from_rows(&qkv, qkv_out, hidden),
                q_norm: gemma.then(|| w("attn_q_norm")).transpose()?,
                k_norm: gemma.then(|| w("attn_k_norm")).transpose()?,
                wo: Dense::from_rows(&w("attn_output")?, hidden, q_out),
                post_attn_norm: gemma.then(|| w("post_attention_norm")).transpose()?,
                ffn_norm: w("ffn_norm")?,
                gate_up: Dense::from_rows(&gate_up, gu_out, hidden),
                down: Dense::from_rows(&down, down_dims.first().copied().unwrap_or(0), inner),
                post_ffn_norm: gemma.then(|| w("post_ffw_norm")).transpose()?,
                window: if local { window } else { None },
                rope: usize::from(local),
            });
        }
        let bos = ct
            .metadata
            .get("tokenizer.ggml.bos_token_id")
            .and_then(|v| v.to_u32().ok());
        Ok(Self {
            arch: kind,
            embed,
            vocab,
            hidden,
            emb_scale: if kind == Arch::Gemma3 {
                (hidden as f32).sqrt()
            } else {
                1.0
            },
            layers,
            final_norm,
            eps,
            heads,
            kv_heads,
            head_dim,
            ropes,
            positions,
            bos,
        })
    }

    /// One feature vector per text, L2-normalised, in input order.
    pub fn embed(&self, batch: &[&Encoded], pooling: DecoderPooling) -> Result<Vec<Vec<f32>>> {
        let h = self.hidden;
        let starts = text_starts(batch, self.positions)?;
        let total = starts[batch.len()];
        // Each token's position in its own text (RoPE), the same in every layer.
        let positions: Vec<usize> = starts.windows(2).flat_map(|w| 0..w[1] - w[0]).collect();
        let mut x = vec![0f32; total * h];
        for (row, &id) in x.chunks_mut(h).zip(batch.iter().flat_map(|e| e.ids.iter())) {
            let id = id as usize;
            if id >= self.vocab {
                candle_core::bail!("token id {id} is outside the vocabulary ({})", self.vocab);
            }
            row.iter_mut()
                .zip(&self.embed[id * h..(id + 1) * h])
                .for_each(|(v, e)| *v = e * self.emb_scale);
        }
        let (q_out, kv_out) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let mut normed = vec![0f32; total * h];
        let mut qkv = vec![0f32; total * (q_out + 2 * kv_out)];
        let mut ctx = vec![0f32; total * q_out];
        let mut block = vec![0f32; total * h];
        let inner = self.layers.first().map(|l| l.gate_up.out / 2).unwrap_or(0);
        let mut gate_up = vec![0f32; total * 2 * inner];
        let mut act = vec![0f32; total * inner];
        for layer in &self.layers {
            normed.copy_from_slice(&x);
            rms_rows(&mut normed, &layer.attn_norm, self.eps);
            layer.qkv.forward_into(&normed, None, &mut qkv);
            self.position_qk(layer, &mut qkv, &positions);
            self.attention(layer, &qkv, &starts, &mut ctx);
            self.residual(
                &layer.wo,
                &ctx,
                layer.post_attn_norm.as_deref(),
                &mut x,
                &mut block,
            );
            normed.copy_from_slice(&x);
            rms_rows(&mut normed, &layer.ffn_norm, self.eps);
            layer.gate_up.forward_into(&normed, None, &mut gate_up);
            let arch = self.arch;
            act.par_chunks_mut(inner * 8)
                .zip(gate_up.par_chunks(2 * inner * 8))
                .for_each(|(a, gu)| {
                    for (a, gu) in a.chunks_mut(inner).zip(gu.chunks(2 * inner)) {
                        let (g, u) = gu.split_at(inner);
                        match arch {
                            Arch::Llama => fast_math::silu_mul(g, u, a),
                            Arch::Gemma3 => fast_math::gelu_tanh_mul(g, u, a),
                        }
                    }
                });
            self.residual(
                &layer.down,
                &act,
                layer.post_ffn_norm.as_deref(),
                &mut x,
                &mut block,
            );
        }
        Ok(starts
            .windows(2)
            .zip(batch)
            .map(|(w, e)| {
                let rows = &x[w[0] * h..w[1] * h];
                let mut out = vec![0f32; h];
                match pooling {
                    _ if rows.is_empty() => return out,
                    DecoderPooling::LastToken => {
                        out.copy_from_slice(&rows[rows.len() - h..]);
                        fast_math::rms_norm_row(&mut out, &self.final_norm, self.eps);
                    }
                    DecoderPooling::Mean => {
                        let skip =
                            usize::from(e.len() > 1 && self.bos.is_some_and(|b| e.ids[0] == b));
                        let mut row = vec![0f32; h];
                        for r in rows.chunks(h).skip(skip) {
                            row.copy_from_slice(r);
                            fast_math::rms_norm_row(&mut row, &self.final_norm, self.eps);
                            out.iter_mut().zip(&row).for_each(|(o, v)| *o += v);
                        }
                    }
                }
                fast_math::unit_length(&mut out);
                out
            })
            .collect())
    }

    /// `x += norm?(input · W)`, through `scratch` (Gemma 3 norms the block's output before
    /// the residual; Llama adds it as it is).
    fn residual(
        &self,
        w: &Dense,
        input: &[f32],
        post_norm: Option<&[f32]>,
        x: &mut Vec<f32>,
        scratch: &mut Vec<f32>,
    ) {
        match post_norm {
            None => {
                w.forward_into(input, Some(x), scratch);
                std::mem::swap(x, scratch);
            }
            Some(norm) => {
                w.forward_into(input, None, scratch);
                rms_rows(scratch, norm, self.eps);
                x.par_chunks_mut(4096)
                    .zip(scratch.par_chunks(4096))
                    .for_each(|(x, s)| x.iter_mut().zip(s).for_each(|(x, s)| *x += s));
            }
        }
    }

    /// Per token: Gemma 3's RMS norms of each Q and K head, then the rotary embedding of Q and
    /// K at the token's position in its text.
    fn position_qk(&self, layer: &Layer, qkv: &mut [f32], positions: &[usize]) {
        let d = self.head_dim;
        let width = (self.heads + 2 * self.kv_heads) * d;
        let rope = &self.ropes[layer.rope];
        let qk_heads = self.heads + self.kv_heads;
        qkv.par_chunks_mut(width)
            .zip(positions.par_iter())
            .for_each(|(row, &pos)| {
                for (hd, head) in row[..qk_heads * d].chunks_mut(d).enumerate() {
                    let norm = if hd < self.heads {
                        &layer.q_norm
                    } else {
                        &layer.k_norm
                    };
                    if let Some(w) = norm {
                        fast_math::rms_norm_row(head, w, self.eps);
                    }
                    rope.apply(head, pos);
                }
            });
    }

    /// Causal self-attention of every text with itself: `qkv` rows hold Q (heads), K and V
    /// (kv heads each); `ctx` (tokens × heads·d) receives the heads' outputs.
    fn attention(&self, layer: &Layer, qkv: &[f32], starts: &[usize], ctx: &mut [f32]) {
        let d = self.head_dim;
        let (nq, nkv) = (self.heads, self.kv_heads);
        let width = (nq + 2 * nkv) * d;
        let q_out = nq * d;
        let scale = 1.0 / (d as f32).sqrt();
        let out = SharedOut(ctx.as_mut_ptr());
        let ctx_len = ctx.len();
        let tasks: Vec<(usize, usize)> = (0..starts.len() - 1)
            .flat_map(|s| (0..nq).map(move |hd| (s, hd)))
            .collect();
        tasks.par_iter().for_each(|&(s, hd)| {
            let (start, len) = (starts[s], starts[s + 1] - starts[s]);
            if len == 0 {
                return;
            }
            let kvh = hd / (nq / nkv);
            let base = start * width;
            let q = &qkv[base + hd * d..];
            let k = &qkv[base + q_out + kvh * d..];
            let v = &qkv[base + q_out + nkv * d + kvh * d..];
            let mut scores = vec![0f32; len * len];
            // SAFETY: q, k and v address rows start..start+len of their head's columns inside
            // `qkv` (row stride `width`).
            unsafe {
                scores_qk(
                    &mut scores,
                    q.as_ptr(),
                    k.as_ptr(),
                    len,
                    len,
                    d,
                    width,
                    scale,
                )
            };
            for (qi, srow) in scores.chunks_mut(len).enumerate() {
                let from = layer.window.map_or(0, |w| qi.saturating_sub(w));
                srow[..from].iter_mut().for_each(|v| *v = 0.0);
                srow[qi + 1..].iter_mut().for_each(|v| *v = 0.0);
                fast_math::softmax_row(&mut srow[from..=qi]);
            }
            debug_assert!((start + len - 1) * q_out + hd * d + d <= ctx_len);
            // SAFETY: this task alone writes rows start..start+len, columns hd·d..(hd+1)·d of
            // `ctx` (bounds asserted above).
            unsafe {
                weighted_values(
                    out.at(start * q_out + hd * d),
                    q_out,
                    &scores,
                    v.as_ptr(),
                    width,
                    len,
                    len,
                    d,
                )
            };
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::decoder::{read_header, DecoderLm};
    use crate::model::testing::write_tiny_gguf;

    fn text(ids: &[u32]) -> Encoded {
        Encoded {
            ids: ids.to_vec(),
            type_ids: vec![0; ids.len()],
            truncated: false,
            overflow: vec![],
        }
    }

    /// A random model of `arch` written to a temporary directory (kept alive by the guard).
    fn tiny_file(arch: &str, seed: u64) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        write_tiny_gguf(&path, arch, seed).unwrap();
        (dir, path)
    }

    fn load(path: &std::path::Path, pooling: DecoderPooling, limit: usize) -> DecoderLm {
        let header = read_header(path).unwrap();
        DecoderLm::load_within(path, header, &Device::Cpu, pooling, limit).unwrap()
    }

    fn close(a: &[f32], b: &[f32], what: &str) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-4, "{what}: {x} vs {y}");
        }
    }

    /// The packed path against candle-transformers' model code (the candle path is forced by
    /// a dequantization limit of 0), one batch of mixed lengths, at 1 and 3 threads.
    fn same_as_candle(arch: &str) {
        let (_dir, path) = tiny_file(arch, 7);
        let packed = load(&path, DecoderPooling::LastToken, usize::MAX);
        let candle = load(&path, DecoderPooling::LastToken, 0);
        assert!(packed.dequantized && !candle.dequantized);
        // Lengths past Gemma 3's window of 3, one of 1 token, one empty.
        let texts = [
            text(&[1, 5, 9, 2, 33, 17, 8, 8, 21, 3, 4, 39]),
            text(&[1, 7]),
            text(&[12]),
            text(&[1, 30, 31, 32, 33, 34, 35]),
            text(&[]),
            text(&[1, 2, 3, 4, 5]),
        ];
        let refs: Vec<&Encoded> = texts.iter().collect();
        let want = candle.embed(&refs).unwrap();
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let got = pool.install(|| packed.embed(&refs)).unwrap();
            assert_eq!(got.len(), want.len());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                close(g, w, &format!("{arch}, text {i}, {threads} threads"));
            }
        }
        // Each text alone gives what it gave in the batch.
        let batch = packed.embed(&refs).unwrap();
        for (i, r) in refs.iter().enumerate() {
            let one = packed.embed(&[r]).unwrap();
            close(&one[0], &batch[i], &format!("{arch}, text {i} alone"));
        }
    }

    #[test]
    fn packed_llama_matches_candle_transformers() {
        same_as_candle("llama");
    }

    #[test]
    fn packed_gemma3_matches_candle_transformers() {
        same_as_candle("gemma3");
    }

    #[test]
    fn mean_pooling_leaves_out_bos_and_the_candle_path_refuses_it() {
        let (_dir, path) = tiny_file("llama", 3);
        let last = load(&path, DecoderPooling::LastToken, usize::MAX);
        let mean = load(&path, DecoderPooling::Mean, usize::MAX);
        let texts = [text(&[1, 9]), text(&[4, 9]), text(&[1, 6, 9, 14])];
        let refs: Vec<&Encoded> = texts.iter().collect();
        let l = last.embed(&refs).unwrap();
        let m = mean.embed(&refs).unwrap();
        // BOS + one token: the mean is that token's state, which is also the last.
        close(&m[0], &l[0], "bos + 1 token");
        // Without BOS both tokens count, so the mean differs from the last token.
        let diff: f32 = m[1].iter().zip(&l[1]).map(|(a, b)| (a - b).abs()).sum();
        assert!(diff > 1e-3, "mean equals last token without BOS ({diff})");
        let norm: f32 = m[2].iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        let header = read_header(&path).unwrap();
        let err = DecoderLm::load_within(&path, header, &Device::Cpu, DecoderPooling::Mean, 0)
            .err()
            .expect("the quantized path has no mean pooling");
        assert!(format!("{err:#}").contains("mean pooling"), "{err:#}");
    }

    #[test]
    fn packed_decoder_rejects_ids_outside_the_vocabulary_and_overlong_texts() {
        let (_dir, path) = tiny_file("gemma3", 1);
        let lm = load(&path, DecoderPooling::LastToken, usize::MAX);
        assert!(lm.embed(&[&text(&[1, 40])]).is_err());
        let long: Vec<u32> = (0..65).map(|i| i % 40).collect();
        assert!(lm.embed(&[&text(&long)]).is_err());
        assert!(lm.embed(&[]).unwrap().is_empty());
    }
}
