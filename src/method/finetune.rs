//! Fine-tuning the encoder with a classification head (`full` jobs): the BERT's weights live
//! in a `VarMap`, so AdamW updates them in place and the fine-tuned encoder can be saved as
//! one safetensors file that [`crate::model::encoder::load_bert`] reads back.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::adamw::FusedAdamW;
use super::heads::LinearHead;
use super::training::{Cancelled, EpochReport};
use crate::model::bert::{Bert, BertConfig, Pass};
use crate::model::encoder::{batch_tensors, Encoded};

pub struct TrainableBert {
    pub varmap: VarMap,
    pub bert: Bert,
}

impl TrainableBert {
    /// Wraps loaded (name-normalised) weights as trainable variables.
    pub fn from_tensors(
        config: &BertConfig,
        tensors: HashMap<String, Tensor>,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let varmap = VarMap::new();
        {
            let mut data = varmap
                .data()
                .lock()
                .map_err(|_| candle_core::Error::Msg("varmap lock".into()))?;
            for (name, t) in tensors {
                data.insert(name, Var::from_tensor(&t)?);
            }
        }
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let bert = Bert::load(config, vb, None)?;
        Ok(Self { varmap, bert })
    }

    pub fn load(config: &BertConfig, weights: &Path, device: &Device) -> candle_core::Result<Self> {
        Self::from_tensors(
            config,
            crate::model::bert::load_weights(weights, device)?,
            device,
        )
    }

    pub fn save(&self, path: &Path) -> candle_core::Result<()> {
        self.varmap.save(path)
    }
}

/// Settings of one fine-tuning run.
#[derive(Debug, Clone)]
pub struct FinetuneParams {
    pub epochs: usize,
    pub lr: f64,
    pub batch_size: usize,
    pub seed: u64,
    /// Learning rate of the freshly initialised head (higher than the encoder's).
    pub head_lr: f64,
}

/// Fine-tunes encoder and a linear head on `(tokens, target distribution)` pairs with soft
/// cross-entropy. `on_step` sees progress and may return false to cancel.
pub fn finetune(
    model: &TrainableBert,
    head_init: &LinearHead,
    items: &[(Encoded, Vec<f32>)],
    params: &FinetuneParams,
    device: &Device,
    on_step: &mut dyn FnMut(&EpochReport) -> bool,
) -> anyhow::Result<LinearHead> {
    let k = head_init.out_dim;
    let w = Var::from_tensor(&Tensor::from_slice(
        &head_init.weight,
        (k, head_init.in_dim),
        device,
    )?)?;
    let b = Var::from_tensor(&Tensor::from_slice(&head_init.bias, k, device)?)?;
    let mut enc_opt = FusedAdamW::new(
        model.varmap.all_vars(),
        ParamsAdamW {
            lr: params.lr,
            weight_decay: 0.01,
            ..Default::default()
        },
    )?;
    let mut head_opt = AdamW::new(
        vec![w.clone(), b.clone()],
        ParamsAdamW {
            lr: params.head_lr,
            weight_decay: 0.01,
            ..Default::default()
        },
    )?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(params.seed);
    let mut order: Vec<usize> = (0..items.len()).collect();
    let mut step = 0;
    for epoch in 1..=params.epochs {
        order.shuffle(&mut rng);
        let mut loss_sum = 0.0;
        let mut seen = 0;
        for batch in order.chunks(params.batch_size.max(1)) {
            let encoded: Vec<&Encoded> = batch.iter().map(|&i| &items[i].0).collect();
            let targets: Vec<f32> = batch
                .iter()
                .flat_map(|&i| items[i].1.iter().copied())
                .collect();
            let (ids, types, mask) = batch_tensors(&encoded, device)?;
            let emb = model.bert.embed(&ids, &types, &mask, Pass::Train)?;
            let logits = emb
                .matmul(&w.as_tensor().t()?)?
                .broadcast_add(b.as_tensor())?;
            let t = Tensor::from_vec(targets, (batch.len(), k), device)?;
            let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
            let loss = (t * logp)?.sum(1)?.neg()?.mean_all()?;
            let grads = loss.backward()?;
            enc_opt.step(&grads)?;
            head_opt.step(&grads)?;
            step += 1;
            let l = loss.to_scalar::<f32>()? as f64;
            loss_sum += l * batch.len() as f64;
            seen += batch.len();
            if !on_step(&EpochReport {
                epoch,
                step,
                train_loss: loss_sum / seen as f64,
                val_loss: None,
            }) {
                return Err(Cancelled.into());
            }
        }
    }
    Ok(LinearHead {
        in_dim: head_init.in_dim,
        out_dim: k,
        weight: w.as_tensor().flatten_all()?.to_vec1::<f32>()?,
        bias: b.as_tensor().to_vec1::<f32>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::encoder::{embed_batch, TextTokenizer};
    use crate::model::testing::{write_tiny_bert, write_tiny_mpnet};

    fn tiny() -> (
        tempfile::TempDir,
        BertConfig,
        HashMap<String, Tensor>,
        TextTokenizer,
    ) {
        tiny_of(false)
    }

    fn tiny_of(
        mpnet: bool,
    ) -> (
        tempfile::TempDir,
        BertConfig,
        HashMap<String, Tensor>,
        TextTokenizer,
    ) {
        let dir = tempfile::tempdir().unwrap();
        if mpnet {
            write_tiny_mpnet(dir.path(), 3).unwrap();
        } else {
            write_tiny_bert(dir.path(), 3).unwrap();
        }
        let mut config = crate::model::encoder::read_config(dir.path()).unwrap();
        config.hidden_dropout_prob = 0.0;
        config.attention_probs_dropout_prob = 0.0;
        let tensors =
            crate::model::bert::load_weights(&dir.path().join("model.safetensors"), &Device::Cpu)
                .unwrap();
        let tok = TextTokenizer::load(dir.path(), 64).unwrap();
        (dir, config, tensors, tok)
    }

    #[test]
    fn train_path_matches_inference_path() {
        let (_dir, config, tensors, tok) = tiny();
        let model = TrainableBert::from_tensors(&config, tensors, &Device::Cpu).unwrap();
        let enc = tok
            .tokenize(
                &[
                    "a short one",
                    "a somewhat longer sentence, with punctuation!",
                ],
                crate::model::Overlong::Truncate,
            )
            .unwrap();
        let refs: Vec<&Encoded> = enc.iter().collect();
        let inference = embed_batch(&model.bert, &refs, &Device::Cpu).unwrap();
        let (ids, types, mask) = batch_tensors(&refs, &Device::Cpu).unwrap();
        let train = model
            .bert
            .embed(&ids, &types, &mask, Pass::Train)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (a, b) in inference.iter().flatten().zip(train.iter().flatten()) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn every_encoder_weight_gets_a_gradient() {
        every_weight_gets_a_gradient(false);
    }

    #[test]
    fn every_mpnet_weight_gets_a_gradient() {
        every_weight_gets_a_gradient(true);
    }

    fn every_weight_gets_a_gradient(mpnet: bool) {
        let (_dir, config, tensors, tok) = tiny_of(mpnet);
        let model = TrainableBert::from_tensors(&config, tensors, &Device::Cpu).unwrap();
        let enc = tok
            .tokenize(
                &["gradients reach every layer", "and the embeddings too"],
                crate::model::Overlong::Truncate,
            )
            .unwrap();
        let refs: Vec<&Encoded> = enc.iter().collect();
        let (ids, types, mask) = batch_tensors(&refs, &Device::Cpu).unwrap();
        let emb = model.bert.embed(&ids, &types, &mask, Pass::Train).unwrap();
        let proj = Tensor::randn(0f32, 1.0, (config.hidden_size, 1), &Device::Cpu).unwrap();
        let loss = emb.matmul(&proj).unwrap().sqr().unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let data = model.varmap.data().lock().unwrap();
        assert!(data.len() > 30);
        for (name, var) in data.iter() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name} has no gradient"));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            // Embedding tables have zero rows for unused tokens, but never a zero gradient.
            assert!(
                norm > 0.0 && norm.is_finite(),
                "{name}: gradient norm {norm}"
            );
        }
    }

    #[test]
    fn finetuning_fits_a_toy_task_and_saves_loadable_weights() {
        let (dir, config, tensors, tok) = tiny();
        let model = TrainableBert::from_tensors(&config, tensors, &Device::Cpu).unwrap();
        let texts = [
            "good good",
            "great good",
            "fine good",
            "bad bad",
            "awful bad",
            "poor bad",
        ];
        let enc = tok
            .tokenize(&texts, crate::model::Overlong::Truncate)
            .unwrap();
        let items: Vec<(Encoded, Vec<f32>)> = enc
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                (
                    e,
                    if i < 3 {
                        vec![0.0, 1.0]
                    } else {
                        vec![1.0, 0.0]
                    },
                )
            })
            .collect();
        let head = LinearHead::zeros(config.hidden_size, 2);
        let params = FinetuneParams {
            epochs: 30,
            lr: 1e-3,
            batch_size: 6,
            seed: 1,
            head_lr: 5e-2,
        };
        let mut losses = vec![];
        let head = finetune(&model, &head, &items, &params, &Device::Cpu, &mut |r| {
            losses.push(r.train_loss);
            true
        })
        .unwrap();
        assert!(
            losses.last().unwrap() < &(losses[0] * 0.5),
            "loss fell: {losses:?}"
        );
        let path = dir.path().join("ft.safetensors");
        model.save(&path).unwrap();
        let reloaded =
            crate::model::encoder::load_bert(&config, &path, None, &Device::Cpu).unwrap();
        let refs: Vec<&Encoded> = items.iter().map(|(e, _)| e).collect();
        let a = embed_batch(&model.bert, &refs, &Device::Cpu).unwrap();
        let b = embed_batch(&reloaded, &refs, &Device::Cpu).unwrap();
        assert_eq!(a, b);
        let correct = a
            .iter()
            .enumerate()
            .filter(|(i, e)| {
                let p = crate::method::heads::softmax(&head.forward(e));
                (p[1] > 0.5) == (*i < 3)
            })
            .count();
        assert_eq!(correct, 6);
    }
}
