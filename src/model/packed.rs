//! Inference for the BERT family (BERT, RoBERTa-style positions, MPNet) on packed tokens.
//!
//! Why it exists: candle's padded path (`bert::Bert`) pads every text of a batch to the
//! longest, multiplies the padding through every layer, runs attention as many tiny batched
//! matmuls with copies around them, and does each element-wise op in its own single-threaded
//! pass with a fresh allocation. Here the batch's real tokens are concatenated (no padding
//! anywhere), each linear layer is one matrix multiply over all of them (gemm, split by rows
//! over the rayon pool), attention runs per (text, head) in parallel with exactly that text's
//! tokens, and bias, residual, layer norm and GELU are fused into row passes. Training keeps
//! the candle `Bert` (it has autograd); a test holds the two to the same output.

use candle_core::{Result, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::bert::{relative_position_bucket, Activation, Bert, LayerNorm};
use super::encoder::Encoded;
use super::fast_math;

/// A linear layer with its weight transposed to (in × out), row-major, for `x · W`.
pub(super) struct Dense {
    wt: Vec<f32>,
    bias: Vec<f32>,
    pub(super) inp: usize,
    pub(super) out: usize,
}

impl Dense {
    /// From candle `Linear` weights, (out × in) each; several are stacked along `out` (Q, K
    /// and V become one multiply).
    fn stack(parts: &[&candle_nn::Linear]) -> Result<Self> {
        let weights: Vec<Tensor> = parts.iter().map(|l| l.weight().clone()).collect();
        let w = Tensor::cat(&weights, 0)?;
        let (out, inp) = w.dims2()?;
        let mut bias = Vec::with_capacity(out);
        for part in parts {
            match part.bias() {
                Some(b) => bias.extend(b.to_vec1::<f32>()?),
                None => bias.extend(std::iter::repeat_n(0.0, part.weight().dims2()?.0)),
            }
        }
        Ok(Self {
            wt: w.t()?.contiguous()?.flatten_all()?.to_vec1::<f32>()?,
            bias,
            inp,
            out,
        })
    }

    /// From a weight without bias, (out × in) row-major (GGUF's layout as candle reads it).
    pub(super) fn from_rows(w: &[f32], out: usize, inp: usize) -> Self {
        let mut wt = vec![0f32; out * inp];
        for (o, row) in w.chunks(inp).enumerate() {
            for (i, v) in row.iter().enumerate() {
                wt[i * out + o] = *v;
            }
        }
        Self {
            wt,
            bias: vec![0.0; out],
            inp,
            out,
        }
    }

    /// `dst` (rows × out) gets `base + x · W + bias`, where `base` (rows × out) is what a
    /// residual connection adds (None: nothing).
    pub(super) fn forward_into(&self, x: &[f32], base: Option<&[f32]>, dst: &mut [f32]) {
        let rows = x.len() / self.inp;
        debug_assert_eq!(dst.len(), rows * self.out);
        // Bias (and residual) first, then the multiply accumulates onto them.
        dst.par_chunks_mut(self.out * 16)
            .enumerate()
            .for_each(|(c, chunk)| {
                for (r, row) in chunk.chunks_mut(self.out).enumerate() {
                    row.copy_from_slice(&self.bias);
                    if let Some(base) = base {
                        let at = (c * 16 + r) * self.out;
                        row.iter_mut()
                            .zip(&base[at..at + self.out])
                            .for_each(|(d, b)| *d += b);
                    }
                }
            });
        matmul_rows(dst, x, &self.wt, rows, self.inp, self.out);
    }
}

/// `dst` (m × n) += `a` (m × k) · `b` (k × n), all row-major. Split by rows over the rayon
/// pool: each thread runs gemm single-threaded on its own rows, which scales better at
/// these sizes (a few hundred rows) than gemm's own splitting.
pub(super) fn matmul_rows(dst: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize) {
    let threads = rayon::current_num_threads().max(1);
    let rows_per = m.div_ceil(threads).max(1);
    if threads == 1 || m < 2 * threads {
        let parallelism = if threads > 1 {
            Parallelism::Rayon(threads)
        } else {
            Parallelism::None
        };
        gemm_acc(dst, a, b, m, k, n, parallelism);
        return;
    }
    dst.par_chunks_mut(rows_per * n)
        .zip(a.par_chunks(rows_per * k))
        .for_each(|(d, a)| gemm_acc(d, a, b, d.len() / n, k, n, Parallelism::None));
}

fn gemm_acc(
    dst: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    parallelism: Parallelism,
) {
    assert!(dst.len() >= m * n && a.len() >= m * k && b.len() >= k * n);
    // SAFETY: the three buffers hold at least the elements the strides address (checked
    // above), `dst` is exclusively borrowed and does not alias the inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            true,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

impl Norm {
    fn from(norm: &LayerNorm) -> Result<Self> {
        Ok(Self {
            weight: norm.weight.to_vec1::<f32>()?,
            bias: norm.bias.to_vec1::<f32>()?,
            eps: norm.eps as f32,
        })
    }

    fn rows(&self, x: &mut [f32]) {
        let h = self.weight.len();
        x.par_chunks_mut(h * 8).for_each(|chunk| {
            for row in chunk.chunks_mut(h) {
                fast_math::layer_norm_row(row, &self.weight, &self.bias, self.eps);
            }
        });
    }
}

struct Layer {
    qkv: Dense,
    attn_out: Dense,
    attn_norm: Norm,
    intermediate: Dense,
    output: Dense,
    out_norm: Norm,
}

/// A raw pointer that attention tasks share: each writes a disjoint block of the context.
#[derive(Clone, Copy)]
pub(super) struct SharedOut(pub(super) *mut f32);
// SAFETY: tasks write disjoint (rows of one text) × (columns of one head) blocks.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The address `offset` floats in (taking `self` whole, so closures capture the Sync
    /// wrapper rather than its raw field).
    pub(super) fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

pub struct PackedBert {
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Option<Vec<f32>>,
    vocab: usize,
    positions: usize,
    type_vocab: usize,
    position_offset: usize,
    emb_norm: Norm,
    layers: Vec<Layer>,
    /// MPNet: (buckets × heads) and the bucket count.
    relative: Option<(Vec<f32>, usize)>,
    hidden: usize,
    heads: usize,
    act: Activation,
}

impl PackedBert {
    /// Copies the weights of a loaded candle `Bert` (base or fine-tuned) into packed form.
    pub fn from_bert(bert: &Bert) -> Result<Self> {
        let c = &bert.config;
        let emb = &bert.embeddings;
        let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
        let layers = bert
            .layers
            .iter()
            .map(|l| {
                Ok(Layer {
                    qkv: Dense::stack(&[&l.query, &l.key, &l.value])?,
                    attn_out: Dense::stack(&[&l.attn_out])?,
                    attn_norm: Norm::from(&l.attn_norm)?,
                    intermediate: Dense::stack(&[&l.intermediate])?,
                    output: Dense::stack(&[&l.output])?,
                    out_norm: Norm::from(&l.out_norm)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let relative = match &bert.relative_bias {
            Some(table) => Some((flat(table.embeddings())?, table.embeddings().dims2()?.0)),
            None => None,
        };
        let act = bert
            .layers
            .first()
            .map(|l| l.act)
            .unwrap_or(Activation::GeluErf);
        Ok(Self {
            word: flat(emb.word.embeddings())?,
            vocab: emb.word.embeddings().dims2()?.0,
            position: flat(emb.position.embeddings())?,
            positions: emb.position.embeddings().dims2()?.0,
            type_vocab: emb
                .token_type
                .as_ref()
                .map(|t| t.embeddings().dims2().map(|d| d.0))
                .transpose()?
                .unwrap_or(0),
            token_type: emb
                .token_type
                .as_ref()
                .map(|t| flat(t.embeddings()))
                .transpose()?,
            position_offset: emb.position_offset as usize,
            emb_norm: Norm::from(&emb.norm)?,
            layers,
            relative,
            hidden: c.hidden_size,
            heads: c.num_attention_heads,
            act,
        })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Mean-pooled, L2-normalised embeddings, one per text, in input order.
    pub fn embed(&self, batch: &[&Encoded]) -> Result<Vec<Vec<f32>>> {
        let h = self.hidden;
        let starts = text_starts(batch, self.positions - self.position_offset)?;
        let total = starts[batch.len()];
        let longest = batch.iter().map(|e| e.len()).max().unwrap_or(0);
        // MPNet: the bucket of every relative position this batch has, computed once.
        let buckets: Vec<usize> = match &self.relative {
            Some((_, n)) => (0..2 * longest)
                .map(|i| relative_position_bucket(i as i64 - longest as i64, *n, 128) as usize)
                .collect(),
            None => vec![],
        };
        let mut x = self.embeddings(batch, total)?;
        let mut qkv = vec![0f32; total * 3 * h];
        let mut ctx = vec![0f32; total * h];
        let mut attn = vec![0f32; total * h];
        let inner_dim = self.layers.first().map(|l| l.intermediate.out).unwrap_or(0);
        let mut inner = vec![0f32; total * inner_dim];
        for layer in &self.layers {
            layer.qkv.forward_into(&x, None, &mut qkv);
            self.attention(&qkv, &starts, &buckets, longest, &mut ctx);
            layer.attn_out.forward_into(&ctx, Some(&x), &mut attn);
            layer.attn_norm.rows(&mut attn);
            layer.intermediate.forward_into(&attn, None, &mut inner);
            let act = self.act;
            inner
                .par_chunks_mut(inner_dim * 8)
                .for_each(|chunk| act.apply_in_place(chunk));
            layer.output.forward_into(&inner, Some(&attn), &mut x);
            layer.out_norm.rows(&mut x);
        }
        Ok(starts
            .windows(2)
            .map(|w| {
                let mut mean = vec![0f32; h];
                for row in x[w[0] * h..w[1] * h].chunks(h) {
                    mean.iter_mut().zip(row).for_each(|(m, v)| *m += v);
                }
                let n = (w[1] - w[0]).max(1) as f32;
                mean.iter_mut().for_each(|m| *m /= n);
                fast_math::unit_length(&mut mean);
                mean
            })
            .collect())
    }

    fn embeddings(&self, batch: &[&Encoded], total: usize) -> Result<Vec<f32>> {
        let h = self.hidden;
        let mut x = vec![0f32; total * h];
        let mut rows = x.chunks_mut(h);
        for e in batch {
            for (i, (&id, &tt)) in e.ids.iter().zip(&e.type_ids).enumerate() {
                let Some(row) = rows.next() else {
                    candle_core::bail!("packed rows out of step with the batch");
                };
                let id = id as usize;
                if id >= self.vocab {
                    candle_core::bail!("token id {id} is outside the vocabulary ({})", self.vocab);
                }
                row.copy_from_slice(&self.word[id * h..(id + 1) * h]);
                let p = self.position_offset + i;
                row.iter_mut()
                    .zip(&self.position[p * h..(p + 1) * h])
                    .for_each(|(v, b)| *v += b);
                if let Some(types) = &self.token_type {
                    let tt = tt as usize;
                    if tt >= self.type_vocab {
                        candle_core::bail!(
                            "token type {tt} is outside the model's {}",
                            self.type_vocab
                        );
                    }
                    row.iter_mut()
                        .zip(&types[tt * h..(tt + 1) * h])
                        .for_each(|(v, b)| *v += b);
                }
            }
        }
        self.emb_norm.rows(&mut x);
        Ok(x)
    }

    /// Self-attention of every text with itself only: `qkv` is (tokens × 3·hidden) with Q, K
    /// and V side by side; `ctx` (tokens × hidden) receives the heads' outputs.
    /// `buckets[r + longest]` is the relative-position bucket of offset `r` (MPNet).
    fn attention(
        &self,
        qkv: &[f32],
        starts: &[usize],
        buckets: &[usize],
        longest: usize,
        ctx: &mut [f32],
    ) {
        let h = self.hidden;
        let heads = self.heads;
        let d = h / heads;
        let scale = 1.0 / (d as f32).sqrt();
        let out = SharedOut(ctx.as_mut_ptr());
        let ctx_len = ctx.len();
        let tasks: Vec<(usize, usize)> = (0..starts.len() - 1)
            .flat_map(|s| (0..heads).map(move |hd| (s, hd)))
            .collect();
        tasks.par_iter().for_each(|&(s, hd)| {
            let (start, len) = (starts[s], starts[s + 1] - starts[s]);
            if len == 0 {
                return;
            }
            let row = 3 * h;
            let q = &qkv[start * row + hd * d..];
            let k = &qkv[start * row + h + hd * d..];
            let v = &qkv[start * row + 2 * h + hd * d..];
            let mut scores = vec![0f32; len * len];
            // SAFETY: q and k address rows start..start+len of their column block, inside
            // `qkv` (row stride `row`).
            unsafe { scores_qk(&mut scores, q.as_ptr(), k.as_ptr(), len, len, d, row, scale) };
            for (qi, srow) in scores.chunks_mut(len).enumerate() {
                if let Some((table, _)) = &self.relative {
                    // Offsets m − qi run from −qi, at index longest − qi.
                    let from = longest - qi;
                    for (sv, b) in srow.iter_mut().zip(&buckets[from..from + len]) {
                        *sv += table[b * heads + hd];
                    }
                }
                fast_math::softmax_row(srow);
            }
            debug_assert!((start + len - 1) * h + hd * d + d <= ctx_len);
            // SAFETY: this task alone writes rows start..start+len, columns hd·d..(hd+1)·d of
            // `ctx` (bounds asserted above); v addresses the same rows of V inside `qkv`.
            unsafe {
                weighted_values(
                    out.at(start * h + hd * d),
                    h,
                    &scores,
                    v.as_ptr(),
                    row,
                    len,
                    len,
                    d,
                )
            };
        });
    }
}

/// Where each text of a packed batch starts among its rows, and one past the last text's
/// end; a text over `limit` tokens (the positions the model has) is an error.
pub(super) fn text_starts(batch: &[&Encoded], limit: usize) -> Result<Vec<usize>> {
    let mut starts = Vec::with_capacity(batch.len() + 1);
    starts.push(0usize);
    for e in batch {
        if e.len() > limit {
            candle_core::bail!(
                "a text of {} tokens is longer than the model's {limit} positions",
                e.len()
            );
        }
        starts.push(starts[starts.len() - 1] + e.len());
    }
    Ok(starts)
}

/// `scores` (lq × lk) = scale · Q · Kᵀ for one head: Q's rows at `q` and K's at `k`, each `d`
/// wide, `stride` apart.
///
/// # Safety
/// `q` must address `lq` rows and `k` `lk` rows of `d` readable floats at that stride.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn scores_qk(
    scores: &mut [f32],
    q: *const f32,
    k: *const f32,
    lq: usize,
    lk: usize,
    d: usize,
    stride: usize,
    scale: f32,
) {
    assert!(scores.len() >= lq * lk);
    gemm::gemm(
        lq,
        lk,
        d,
        scores.as_mut_ptr(),
        1,
        lk as isize,
        false,
        q,
        1,
        stride as isize,
        k,
        stride as isize,
        1,
        0.0,
        scale,
        false,
        false,
        false,
        Parallelism::None,
    );
}

/// `dst` (lq × d, rows `dst_stride` apart) = `probs` (lq × lk) · V (lk rows at `v`, `stride`
/// apart).
///
/// # Safety
/// `dst` must address `lq` writable rows of `d` floats that nothing else touches meanwhile,
/// and `v` `lk` readable rows of `d` floats.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn weighted_values(
    dst: *mut f32,
    dst_stride: usize,
    probs: &[f32],
    v: *const f32,
    stride: usize,
    lq: usize,
    lk: usize,
    d: usize,
) {
    assert!(probs.len() >= lq * lk);
    gemm::gemm(
        lq,
        d,
        lk,
        dst,
        1,
        dst_stride as isize,
        false,
        probs.as_ptr(),
        1,
        lk as isize,
        v,
        1,
        stride as isize,
        0.0,
        1.0,
        false,
        false,
        false,
        Parallelism::None,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::encoder::{embed_batch, TextTokenizer};
    use crate::model::testing::{write_tiny_bert, write_tiny_mpnet};
    use candle_core::Device;

    /// A tiny random BERT (or MPNet) in a temporary directory, loaded by candle.
    fn tiny(mpnet: bool) -> (tempfile::TempDir, Bert) {
        let dir = tempfile::tempdir().unwrap();
        if mpnet {
            write_tiny_mpnet(dir.path(), 3).unwrap();
        } else {
            write_tiny_bert(dir.path(), 3).unwrap();
        }
        let config = crate::model::encoder::read_config(dir.path()).unwrap();
        let bert = crate::model::encoder::load_bert(
            &config,
            &dir.path().join("model.safetensors"),
            None,
            &Device::Cpu,
        )
        .unwrap();
        (dir, bert)
    }

    fn same_as_candle(mpnet: bool, threads: usize) {
        let (dir, bert) = tiny(mpnet);
        let packed = PackedBert::from_bert(&bert).unwrap();
        // MPNet numbers positions from 1: 63 of the 64 are usable.
        let tok = TextTokenizer::load(dir.path(), 48).unwrap();
        let texts = [
            "a",
            "a short one",
            "a somewhat longer sentence, with punctuation and more words than the others!",
            "good good good",
            "",
        ];
        let enc = tok
            .tokenize(&texts, crate::model::Overlong::Truncate)
            .unwrap();
        let refs: Vec<&Encoded> = enc.iter().collect();
        let want = embed_batch(&bert, &refs, &Device::Cpu).unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let got = pool.install(|| packed.embed(&refs)).unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            for (a, b) in g.iter().zip(w) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }
        }
        // One at a time gives the same as in a batch (no padding to leak through).
        for (i, r) in refs.iter().enumerate() {
            let one = packed.embed(&[r]).unwrap();
            for (a, b) in one[0].iter().zip(&got[i]) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn packed_bert_matches_the_candle_path() {
        same_as_candle(false, 1);
        same_as_candle(false, 2);
    }

    #[test]
    fn packed_mpnet_matches_the_candle_path() {
        same_as_candle(true, 1);
        same_as_candle(true, 3);
    }

    #[test]
    fn packed_rejects_ids_outside_the_vocabulary() {
        let (_dir, bert) = tiny(false);
        let packed = PackedBert::from_bert(&bert).unwrap();
        let bad = Encoded {
            ids: vec![1, 1_000_000, 2],
            type_ids: vec![0, 0, 0],
            truncated: false,
            overflow: vec![],
        };
        assert!(packed.embed(&[&bad]).is_err());
        assert!(packed.embed(&[]).unwrap().is_empty());
    }
}
