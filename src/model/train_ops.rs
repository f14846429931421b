//! The training pass's element-wise ops, each one fused op with its own backward pass:
//! layer norm, softmax over the last dimension and GELU (erf). candle's fused versions have
//! no backward pass, and composing them from tensor ops (what `bert.rs` did) costs 5–10
//! single-threaded passes with an allocation each, forward and again backward. Here each is
//! one parallel pass over rows; tests hold them to the composed versions, values and
//! gradients.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fast_math;

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op} takes F32");
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{op} takes a contiguous tensor"),
    }
}

fn values(t: &Tensor) -> Result<Vec<f32>> {
    t.contiguous()?.flatten_all()?.to_vec1::<f32>()
}

/// Rows per parallel task: enough work per task to pay for it.
fn rows_per_task(width: usize) -> usize {
    (16_384 / width.max(1)).max(1)
}

/// Layer norm over the last dimension, with weight and bias: `x.apply_op3(w, b, LayerNorm)`.
pub struct LayerNorm {
    pub eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "sw2s-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s1, l1, self.name())?;
        let w = contiguous(s2, l2, self.name())?;
        let b = contiguous(s3, l3, self.name())?;
        let n = w.len();
        if n == 0 || x.len() % n != 0 || b.len() != n {
            candle_core::bail!("layer norm: weight, bias and the last dimension differ");
        }
        let mut y = x.to_vec();
        let per = rows_per_task(n) * n;
        y.par_chunks_mut(per).for_each(|chunk| {
            for row in chunk.chunks_mut(n) {
                fast_math::layer_norm_row(row, w, b, self.eps);
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (xv, wv, gv) = (values(x)?, values(w)?, values(grad)?);
        let n = wv.len();
        let per = rows_per_task(n) * n;
        let mut dx = vec![0f32; xv.len()];
        // Each task returns its rows' contributions to dw and db; summed after.
        let partial: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(per)
            .zip(xv.par_chunks(per).zip(gv.par_chunks(per)))
            .map(|(dx, (x, g))| {
                let (mut dw, mut db) = (vec![0f32; n], vec![0f32; n]);
                let mut xhat = vec![0f32; n];
                for ((dxr, xr), gr) in dx.chunks_mut(n).zip(x.chunks(n)).zip(g.chunks(n)) {
                    let (mean, rstd) = fast_math::mean_rstd(xr, self.eps);
                    let (mut sum_dy, mut sum_dy_xhat) = (0f32, 0f32);
                    for i in 0..n {
                        xhat[i] = (xr[i] - mean) * rstd;
                        let dy = gr[i] * wv[i];
                        sum_dy += dy;
                        sum_dy_xhat += dy * xhat[i];
                        dw[i] += gr[i] * xhat[i];
                        db[i] += gr[i];
                    }
                    let (m1, m2) = (sum_dy / n as f32, sum_dy_xhat / n as f32);
                    for i in 0..n {
                        dxr[i] = rstd * (gr[i] * wv[i] - m1 - xhat[i] * m2);
                    }
                }
                (dw, db)
            })
            .collect();
        let (mut dw, mut db) = (vec![0f32; n], vec![0f32; n]);
        for (pw, pb) in partial {
            dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
            db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
        }
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dw, w.shape(), w.device())?),
            Some(Tensor::from_vec(db, b.shape(), b.device())?),
        ))
    }
}

/// Softmax over the last dimension.
pub struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "sw2s-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s, l, self.name())?;
        let n = l.dims().last().copied().unwrap_or(1).max(1);
        let mut y = x.to_vec();
        let per = rows_per_task(n) * n;
        y.par_chunks_mut(per)
            .for_each(|chunk| chunk.chunks_mut(n).for_each(fast_math::softmax_row));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (y, g) = (values(res)?, values(grad)?);
        let n = arg.dims().last().copied().unwrap_or(1).max(1);
        let per = rows_per_task(n) * n;
        let mut dx = vec![0f32; y.len()];
        dx.par_chunks_mut(per)
            .zip(y.par_chunks(per).zip(g.par_chunks(per)))
            .for_each(|(dx, (y, g))| {
                for ((dr, yr), gr) in dx.chunks_mut(n).zip(y.chunks(n)).zip(g.chunks(n)) {
                    let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
                    for i in 0..n {
                        dr[i] = yr[i] * (gr[i] - dot);
                    }
                }
            });
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

/// GELU with the exact (erf) form, as BERT's `gelu`.
pub struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "sw2s-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s, l, self.name())?;
        let mut y = x.to_vec();
        y.par_chunks_mut(16_384).for_each(fast_math::gelu_in_place);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (x, g) = (values(arg)?, values(grad)?);
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(16_384)
            .zip(x.par_chunks(16_384).zip(g.par_chunks(16_384)))
            .for_each(|(d, (x, g))| fast_math::gelu_backward(x, g, d));
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn close(a: &Tensor, b: &Tensor, tol: f32) {
        let (a, b) = (values(a).unwrap(), values(b).unwrap());
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{x} vs {y}");
        }
    }

    /// Values and gradients of `fused` against `composed` for a random input and a random
    /// upstream gradient.
    fn check(
        shape: (usize, usize, usize),
        fused: impl Fn(&Tensor) -> Tensor,
        composed: impl Fn(&Tensor) -> Tensor,
    ) {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&(Tensor::randn(0f32, 2.0, shape, &dev).unwrap())).unwrap();
        let up = Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
        let (yf, yc) = (fused(x.as_tensor()), composed(x.as_tensor()));
        close(&yf, &yc, 1e-5);
        let gf = (yf * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (yc * &up).unwrap().sum_all().unwrap().backward().unwrap();
        close(
            gf.get(x.as_tensor()).unwrap(),
            gc.get(x.as_tensor()).unwrap(),
            1e-4,
        );
    }

    #[test]
    fn softmax_matches_composed_ops() {
        check(
            (3, 4, 37),
            |x| x.apply_op1(Softmax).unwrap(),
            |x| candle_nn::ops::softmax(x, D::Minus1).unwrap(),
        );
    }

    #[test]
    fn gelu_matches_candle() {
        check(
            (2, 50, 300),
            |x| x.apply_op1(GeluErf).unwrap(),
            |x| x.gelu_erf().unwrap(),
        );
    }

    #[test]
    fn layer_norm_matches_composed_ops_with_weight_and_bias_gradients() {
        let dev = Device::Cpu;
        let n = 48;
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.3, n, &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, n, &dev).unwrap()).unwrap();
        let x = Var::from_tensor(&Tensor::randn(0.5f32, 2.0, (5, 70, n), &dev).unwrap()).unwrap();
        let up = Tensor::randn(0f32, 1.0, (5, 70, n), &dev).unwrap();
        let eps = 1e-12;
        let composed = {
            let x = x.as_tensor();
            let mean = x.mean_keepdim(D::Minus1).unwrap();
            let c = x.broadcast_sub(&mean).unwrap();
            let var = c.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            c.broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
                .unwrap()
                .broadcast_mul(w.as_tensor())
                .unwrap()
                .broadcast_add(b.as_tensor())
                .unwrap()
        };
        let fused = x
            .as_tensor()
            .apply_op3(w.as_tensor(), b.as_tensor(), LayerNorm { eps: eps as f32 })
            .unwrap();
        close(&fused, &composed, 1e-5);
        let gf = (fused * &up)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gc = (composed * &up)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&x, &w, &b] {
            close(
                gf.get(v.as_tensor()).unwrap(),
                gc.get(v.as_tensor()).unwrap(),
                1e-3,
            );
        }
    }
}
