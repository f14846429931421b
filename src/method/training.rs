//! Training of linear heads on fixed features (embeddings): soft-target cross-entropy with
//! AdamW, early stopping on a held-out slice, and the auxiliary confidence loss of Burns et
//! al. 2023 as an option. In-memory and deterministic for a given seed.

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::heads::{softmax, LinearHead};

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Most passes over the training data.
    pub epochs: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub batch_size: usize,
    /// Stop after this many epochs without a better held-out loss.
    pub patience: usize,
    /// Fraction of the examples held out for early stopping.
    pub holdout: f64,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 300,
            lr: 1e-2,
            weight_decay: 1e-2,
            batch_size: 128,
            patience: 20,
            holdout: 0.1,
            seed: 0,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.epochs == 0 || self.epochs > 10_000 {
            return Err("train.epochs must be in 1..=10000".into());
        }
        if !(self.lr > 0.0 && self.lr <= 1.0) {
            return Err("train.lr must be in (0, 1]".into());
        }
        if !(0.0..=1.0).contains(&self.weight_decay) {
            return Err("train.weight_decay must be in [0, 1]".into());
        }
        if self.batch_size == 0 || self.batch_size > 65_536 {
            return Err("train.batch_size must be in 1..=65536".into());
        }
        if !(0.0..0.5).contains(&self.holdout) {
            return Err("train.holdout must be in [0, 0.5)".into());
        }
        Ok(())
    }
}

/// The auxiliary confidence loss: (1−α)·CE(weak targets) + α·CE(the model's own hardened
/// predictions), α warmed up over the first 20% of steps. For two classes the hardening
/// threshold keeps the batch's class balance equal to the weak targets'.
#[derive(Debug, Clone, Copy)]
pub struct LogConf {
    pub alpha: f32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EpochReport {
    pub epoch: usize,
    pub step: usize,
    pub train_loss: f64,
    pub val_loss: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TrainSummary {
    pub examples: usize,
    pub held_out: usize,
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub train_loss: f64,
    pub val_loss: Option<f64>,
    pub stopped_early: bool,
}

/// Training data: `n` rows of `dims` features and `k`-class target distributions.
pub struct Dataset<'a> {
    pub x: &'a [f32],
    pub dims: usize,
    pub targets: &'a [f32],
    pub k: usize,
    pub weights: Option<&'a [f32]>,
}

impl Dataset<'_> {
    pub fn len(&self) -> usize {
        self.x.len().checked_div(self.dims).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Returned by the progress callback to stop training (a cancelled job).
#[derive(Debug, thiserror::Error)]
#[error("training was cancelled")]
pub struct Cancelled;

struct Split {
    train: Vec<u32>,
    val: Vec<u32>,
}

fn split(n: usize, holdout: f64, seed: u64) -> Split {
    let mut idx: Vec<u32> = (0..n as u32).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    idx.shuffle(&mut rng);
    // Early stopping needs enough held-out rows to be more than noise.
    let n_val = if n >= 50 {
        ((n as f64) * holdout).round() as usize
    } else {
        0
    };
    let val = idx.split_off(n - n_val);
    Split { train: idx, val }
}

fn weighted_ce(logits: &Tensor, targets: &Tensor, weights: &Tensor) -> candle_core::Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let per_example = (targets * logp)?.sum(1)?.neg()?;
    (per_example * weights)?.sum_all()? / weights.sum_all()?.to_scalar::<f32>()? as f64
}

/// Hardened own predictions for the auxiliary confidence loss.
fn hardened(logits: &Tensor, weak_targets: &Tensor) -> candle_core::Result<Tensor> {
    let (n, k) = logits.dims2()?;
    let probs = candle_nn::ops::softmax(&logits.detach(), D::Minus1)?.to_vec2::<f32>()?;
    let mut out = vec![0f32; n * k];
    if k == 2 {
        let positive_share = weak_targets
            .narrow(1, 1, 1)?
            .mean_all()?
            .to_scalar::<f32>()?;
        let mut p1: Vec<f32> = probs.iter().map(|p| p[1]).collect();
        p1.sort_by(|a, b| b.total_cmp(a));
        let n_pos = ((positive_share * n as f32).round() as usize).min(n);
        let threshold = if n_pos == 0 {
            f32::INFINITY
        } else {
            p1[n_pos - 1]
        };
        for (i, p) in probs.iter().enumerate() {
            out[i * 2 + usize::from(p[1] >= threshold)] = 1.0;
        }
    } else {
        for (i, p) in probs.iter().enumerate() {
            let best = crate::method::weak::argmax(p).unwrap_or(0);
            out[i * k + best] = 1.0;
        }
    }
    Tensor::from_vec(out, (n, k), logits.device())
}

/// Trains a linear softmax classifier. `on_epoch` may return `false` to cancel.
pub fn train_softmax(
    data: &Dataset,
    cfg: &TrainConfig,
    logconf: Option<LogConf>,
    on_epoch: &mut dyn FnMut(&EpochReport) -> bool,
) -> anyhow::Result<(LinearHead, TrainSummary)> {
    let n = data.len();
    if n == 0 {
        bail!("no training examples");
    }
    if data.targets.len() != n * data.k || data.x.len() != n * data.dims {
        bail!("features and targets disagree in size");
    }
    let dev = Device::Cpu;
    let x = Tensor::from_slice(data.x, (n, data.dims), &dev)?;
    let t = Tensor::from_slice(data.targets, (n, data.k), &dev)?;
    let ones = vec![1f32; n];
    let w_all = Tensor::from_slice(data.weights.unwrap_or(&ones), n, &dev)?;
    let Split { train, val } = split(n, cfg.holdout, cfg.seed);
    let val_idx = Tensor::from_slice(&val, val.len(), &dev)?;
    let (xv, tv, wv) = (
        x.index_select(&val_idx, 0)?,
        t.index_select(&val_idx, 0)?,
        w_all.index_select(&val_idx, 0)?,
    );

    let weight = Var::zeros((data.k, data.dims), DType::F32, &dev)?;
    let bias = Var::zeros(data.k, DType::F32, &dev)?;
    let mut opt = AdamW::new(
        vec![weight.clone(), bias.clone()],
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;
    let forward = |x: &Tensor| -> candle_core::Result<Tensor> {
        x.matmul(&weight.as_tensor().t()?)?
            .broadcast_add(bias.as_tensor())
    };

    let steps_per_epoch = train.len().div_ceil(cfg.batch_size);
    let warmup = ((cfg.epochs * steps_per_epoch) as f32 * 0.2).max(1.0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed.wrapping_add(1));
    let mut order = train.clone();
    let mut best: Option<(f64, usize, Tensor, Tensor)> = None;
    let mut step = 0usize;
    let mut summary = TrainSummary {
        examples: train.len(),
        held_out: val.len(),
        epochs_run: 0,
        best_epoch: 0,
        train_loss: f64::NAN,
        val_loss: None,
        stopped_early: false,
    };
    for epoch in 1..=cfg.epochs {
        order.shuffle(&mut rng);
        let mut loss_sum = 0.0;
        for batch in order.chunks(cfg.batch_size) {
            let idx = Tensor::from_slice(batch, batch.len(), &dev)?;
            let (xb, tb, wb) = (
                x.index_select(&idx, 0)?,
                t.index_select(&idx, 0)?,
                w_all.index_select(&idx, 0)?,
            );
            let logits = forward(&xb)?;
            let mut loss = weighted_ce(&logits, &tb, &wb)?;
            if let Some(lc) = logconf {
                let a = (lc.alpha * (step as f32 / warmup).min(1.0)) as f64;
                let own = hardened(&logits, &tb)?;
                loss = ((loss * (1.0 - a))? + (weighted_ce(&logits, &own, &wb)? * a)?)?;
            }
            opt.backward_step(&loss)?;
            loss_sum += loss.to_scalar::<f32>()? as f64 * batch.len() as f64;
            step += 1;
        }
        let train_loss = loss_sum / train.len() as f64;
        let val_loss = if val.is_empty() {
            None
        } else {
            Some(weighted_ce(&forward(&xv)?, &tv, &wv)?.to_scalar::<f32>()? as f64)
        };
        summary.epochs_run = epoch;
        summary.train_loss = train_loss;
        if !on_epoch(&EpochReport {
            epoch,
            step,
            train_loss,
            val_loss,
        }) {
            return Err(Cancelled.into());
        }
        if let Some(v) = val_loss {
            if best.as_ref().map(|b| v < b.0 - 1e-6).unwrap_or(true) {
                best = Some((
                    v,
                    epoch,
                    weight.as_tensor().copy()?,
                    bias.as_tensor().copy()?,
                ));
            } else if best
                .as_ref()
                .map(|b| epoch - b.1 >= cfg.patience)
                .unwrap_or(false)
            {
                summary.stopped_early = true;
                break;
            }
        }
    }
    let (w, b) = match best {
        Some((v, epoch, w, b)) => {
            summary.best_epoch = epoch;
            summary.val_loss = Some(v);
            (w, b)
        }
        None => {
            summary.best_epoch = summary.epochs_run;
            (weight.as_tensor().clone(), bias.as_tensor().clone())
        }
    };
    let head = LinearHead {
        in_dim: data.dims,
        out_dim: data.k,
        weight: w.flatten_all()?.to_vec1::<f32>()?,
        bias: b.to_vec1::<f32>()?,
    };
    Ok((head, summary))
}

/// Logistic regression for a binary target (the P(IK) head): a two-class softmax folded into
/// one logit, so `sigmoid(w·x + b)` = P(target).
pub fn train_logistic(
    x: &[f32],
    dims: usize,
    y: &[bool],
    cfg: &TrainConfig,
) -> anyhow::Result<(LinearHead, TrainSummary)> {
    let targets: Vec<f32> = y
        .iter()
        .flat_map(|&v| if v { [0.0, 1.0] } else { [1.0, 0.0] })
        .collect();
    let data = Dataset {
        x,
        dims,
        targets: &targets,
        k: 2,
        weights: None,
    };
    let (two, summary) =
        train_softmax(&data, cfg, None, &mut |_| true).context("training P(IK)")?;
    let weight = (0..dims)
        .map(|j| two.weight[dims + j] - two.weight[j])
        .collect();
    Ok((
        LinearHead {
            in_dim: dims,
            out_dim: 1,
            weight,
            bias: vec![two.bias[1] - two.bias[0]],
        },
        summary,
    ))
}

/// Out-of-fold class probabilities for the gold rows: each fold's rows are predicted by a
/// classifier trained without them (their gold label is a training target otherwise, and
/// P(IK) would learn that the model is always right on gold).
pub fn cross_fit(
    data: &Dataset,
    gold_rows: &[usize],
    folds: usize,
    cfg: &TrainConfig,
    on_fold: &mut dyn FnMut(usize) -> bool,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let folds = folds.clamp(2, gold_rows.len().max(2));
    let mut order: Vec<usize> = (0..gold_rows.len()).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(cfg.seed ^ 0x5eed));
    let mut oof = vec![Vec::new(); gold_rows.len()];
    let n = data.len();
    for f in 0..folds {
        if !on_fold(f) {
            return Err(super::training::Cancelled.into());
        }
        let held: Vec<usize> = order.iter().copied().filter(|i| i % folds == f).collect();
        let mut excluded = vec![false; n];
        for &g in &held {
            excluded[gold_rows[g]] = true;
        }
        let keep: Vec<usize> = (0..n).filter(|&i| !excluded[i]).collect();
        let x: Vec<f32> = keep
            .iter()
            .flat_map(|&i| data.x[i * data.dims..(i + 1) * data.dims].iter().copied())
            .collect();
        let t: Vec<f32> = keep
            .iter()
            .flat_map(|&i| data.targets[i * data.k..(i + 1) * data.k].iter().copied())
            .collect();
        let w: Option<Vec<f32>> = data.weights.map(|w| keep.iter().map(|&i| w[i]).collect());
        let part = Dataset {
            x: &x,
            dims: data.dims,
            targets: &t,
            k: data.k,
            weights: w.as_deref(),
        };
        let (head, _) = train_softmax(&part, cfg, None, &mut |_| true)?;
        for &g in &held {
            let row = gold_rows[g];
            oof[g] = softmax(&head.forward(&data.x[row * data.dims..(row + 1) * data.dims]));
        }
    }
    Ok(oof)
}

/// One gold example as P(IK) sees it.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::heads::{sigmoid, softmax};
    use crate::method::weak::argmax;
    use rand::Rng;

    /// Two Gaussian blobs in 4 dimensions.
    fn blobs(n: usize, seed: u64) -> (Vec<f32>, Vec<usize>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut x = vec![];
        let mut y = vec![];
        for i in 0..n {
            let c = i % 2;
            let centre = if c == 0 { -1.0 } else { 1.0 };
            for d in 0..4 {
                let shift = if d < 2 { centre } else { 0.0 };
                x.push(shift + rng.gen_range(-0.8f32..0.8));
            }
            y.push(c);
        }
        (x, y)
    }

    fn one_hot_flat(y: &[usize], k: usize) -> Vec<f32> {
        y.iter()
            .flat_map(|&c| crate::method::weak::one_hot(c, k))
            .collect()
    }

    #[test]
    fn softmax_head_learns_separable_blobs() {
        let (x, y) = blobs(400, 1);
        let targets = one_hot_flat(&y, 2);
        let data = Dataset {
            x: &x,
            dims: 4,
            targets: &targets,
            k: 2,
            weights: None,
        };
        let mut epochs = 0;
        let (head, summary) = train_softmax(&data, &TrainConfig::default(), None, &mut |_| {
            epochs += 1;
            true
        })
        .unwrap();
        assert_eq!(epochs, summary.epochs_run);
        assert_eq!(summary.held_out, 40);
        let (xt, yt) = blobs(200, 2);
        let correct = xt
            .chunks(4)
            .zip(&yt)
            .filter(|(row, &c)| {
                crate::method::weak::argmax(&softmax(&head.forward(row))) == Some(c)
            })
            .count();
        assert!(correct >= 190, "accuracy {correct}/200");
    }

    #[test]
    fn training_is_deterministic_and_cancellable() {
        let (x, y) = blobs(100, 3);
        let targets = one_hot_flat(&y, 2);
        let data = Dataset {
            x: &x,
            dims: 4,
            targets: &targets,
            k: 2,
            weights: None,
        };
        let cfg = TrainConfig {
            epochs: 5,
            ..Default::default()
        };
        let a = train_softmax(&data, &cfg, None, &mut |_| true).unwrap().0;
        let b = train_softmax(&data, &cfg, None, &mut |_| true).unwrap().0;
        assert_eq!(a, b);
        let err = train_softmax(&data, &cfg, None, &mut |r| r.epoch < 2).unwrap_err();
        assert!(err.downcast_ref::<Cancelled>().is_some());
    }

    #[test]
    fn logistic_head_is_calibrated_on_a_known_rate() {
        // A constant feature with a 75% positive rate: P should approach 0.75.
        let n = 400;
        let x = vec![1.0f32; n];
        let y: Vec<bool> = (0..n).map(|i| i % 4 != 0).collect();
        let cfg = TrainConfig {
            weight_decay: 0.0,
            ..Default::default()
        };
        let (head, _) = train_logistic(&x, 1, &y, &cfg).unwrap();
        let p = sigmoid(head.forward(&[1.0])[0]);
        assert!((p - 0.75).abs() < 0.03, "p = {p}");
    }

    #[test]
    fn logconf_keeps_the_weak_class_balance_when_hardening() {
        let logits = Tensor::new(
            &[[0.0f32, 3.0], [0.0, 2.0], [0.0, 1.0], [0.0, -1.0]],
            &Device::Cpu,
        )
        .unwrap();
        let weak = Tensor::new(
            &[[0.0f32, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]],
            &Device::Cpu,
        )
        .unwrap();
        let h = hardened(&logits, &weak).unwrap().to_vec2::<f32>().unwrap();
        // 25% positive in the weak targets: only the most confident row is hardened to 1.
        assert_eq!(
            h,
            vec![
                vec![0.0, 1.0],
                vec![1.0, 0.0],
                vec![1.0, 0.0],
                vec![1.0, 0.0]
            ]
        );
    }

    #[test]
    fn cross_fitting_never_predicts_a_row_with_its_own_label() {
        // A memorising setup: every row has a unique feature, its target is random. A model
        // that saw the row's label would get it right; out of fold it is at chance.
        let n = 200;
        let dims = n;
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let x: Vec<f32> = (0..n)
            .flat_map(|i| (0..dims).map(move |j| if i == j { 1.0 } else { 0.0 }))
            .collect();
        let labels: Vec<usize> = (0..n).map(|_| rng.gen_range(0..2)).collect();
        let t: Vec<f32> = labels
            .iter()
            .flat_map(|&l| crate::method::weak::one_hot(l, 2))
            .collect();
        let data = Dataset {
            x: &x,
            dims,
            targets: &t,
            k: 2,
            weights: None,
        };
        let gold: Vec<usize> = (0..n).collect();
        let train = TrainConfig {
            epochs: 50,
            lr: 0.1,
            holdout: 0.0,
            ..Default::default()
        };
        let oof = cross_fit(&data, &gold, 5, &train, &mut |_| true).unwrap();
        let right = oof
            .iter()
            .zip(&labels)
            .filter(|(p, &l)| argmax(p) == Some(l))
            .count();
        assert!(
            right < 130,
            "out-of-fold accuracy on random labels should be near chance: {right}/200"
        );
        let (head, _) = train_softmax(&data, &train, None, &mut |_| true).unwrap();
        let in_sample = (0..n)
            .filter(|&i| {
                argmax(&softmax(&head.forward(&x[i * dims..(i + 1) * dims]))) == Some(labels[i])
            })
            .count();
        assert!(in_sample > 190, "in sample it memorises: {in_sample}/200");
    }
}
