//! The strong model of the protocol: linear heads on frozen embeddings (`head` mode) or the
//! encoder fine-tuned with its head (`full` mode), with the server's own training code and
//! default settings.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::bail;
use candle_core::Device;

use super::Ctx;
use crate::method::finetune::{finetune, FinetuneParams, TrainableBert};
use crate::method::heads::{softmax, LinearHead};
use crate::method::training::{train_softmax, Dataset, LogConf, TrainConfig};
use crate::model::bert::{Bert, BertConfig};
use crate::model::encoder::{embed_batch, Encoded};
use crate::service::settings::TaskSettings;

/// A trained strong model's view of the rows it was asked about.
pub struct Fitted {
    pub embeddings: HashMap<usize, Vec<f32>>,
    pub head: LinearHead,
}

impl Fitted {
    pub fn probs(&self, row: usize) -> Vec<f32> {
        softmax(&self.head.forward(&self.embeddings[&row]))
    }
}

pub trait Strong {
    /// Folds for out-of-fold self-labels.
    fn folds(&self) -> usize;
    /// Whether a second model on the raw weak labels is cheap enough to check the decision
    /// targets against (the server does it in `head` jobs only).
    fn checks_targets(&self) -> bool;
    /// Trains on `rows` with `targets` and predicts the rows in `predict`.
    fn fit(
        &mut self,
        ctx: &Ctx,
        rows: &[usize],
        targets: &[Vec<f32>],
        logconf: Option<LogConf>,
        predict: &[usize],
    ) -> anyhow::Result<Fitted>;
}

/// `head` mode: linear heads on the frozen encoder's stored embeddings.
pub struct HeadStrong;

impl Strong for HeadStrong {
    fn folds(&self) -> usize {
        5
    }

    fn checks_targets(&self) -> bool {
        true
    }

    fn fit(
        &mut self,
        ctx: &Ctx,
        rows: &[usize],
        targets: &[Vec<f32>],
        logconf: Option<LogConf>,
        predict: &[usize],
    ) -> anyhow::Result<Fitted> {
        let x: Vec<f32> = rows
            .iter()
            .flat_map(|&r| ctx.base_embeddings[r].iter().copied())
            .collect();
        let t: Vec<f32> = targets.iter().flatten().copied().collect();
        let dims = ctx.base_embeddings[0].len();
        let cfg = TrainConfig {
            seed: ctx.seed,
            ..TaskSettings::default().train
        };
        let (head, _) = train_softmax(
            &Dataset {
                x: &x,
                dims,
                targets: &t,
                k: ctx.k,
                weights: None,
            },
            &cfg,
            logconf,
            &mut |_| true,
        )?;
        Ok(Fitted {
            embeddings: predict
                .iter()
                .map(|&r| (r, ctx.base_embeddings[r].clone()))
                .collect(),
            head,
        })
    }
}

/// `full` mode: the encoder and head are fine-tuned for every model, with the learning
/// rates and batch size of the server's `full` jobs.
pub struct FullStrong {
    pub tokenized: Vec<Encoded>,
    pub config: BertConfig,
    pub weights: PathBuf,
    pub examples: usize,
    pub epochs: usize,
}

impl Strong for FullStrong {
    fn folds(&self) -> usize {
        2
    }

    fn checks_targets(&self) -> bool {
        false
    }

    fn fit(
        &mut self,
        ctx: &Ctx,
        rows: &[usize],
        targets: &[Vec<f32>],
        logconf: Option<LogConf>,
        predict: &[usize],
    ) -> anyhow::Result<Fitted> {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        if logconf.is_some() {
            bail!("logconf is only implemented for head mode");
        }
        let device = Device::Cpu;
        let model = TrainableBert::load(&self.config, &self.weights, &device)?;
        let mut idx: Vec<usize> = (0..rows.len()).collect();
        idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(ctx.seed));
        idx.truncate(self.examples);
        let items: Vec<(Encoded, Vec<f32>)> = idx
            .iter()
            .map(|&i| (self.tokenized[rows[i]].clone(), targets[i].clone()))
            .collect();
        let server = TaskSettings::default();
        let params = FinetuneParams {
            epochs: self.epochs,
            lr: server.finetune.lr,
            batch_size: server.finetune.batch_size,
            seed: ctx.seed,
            head_lr: server.train.lr,
        };
        let head = finetune(
            &model,
            &LinearHead::zeros(self.config.hidden_size, ctx.k),
            &items,
            &params,
            &device,
            &mut |_| true,
        )?;
        let embeddings = embed_rows(&model.bert, &self.tokenized, predict)?;
        Ok(Fitted { embeddings, head })
    }
}

fn embed_rows(
    bert: &Bert,
    tokenized: &[Encoded],
    rows: &[usize],
) -> anyhow::Result<HashMap<usize, Vec<f32>>> {
    let mut order: Vec<usize> = rows.to_vec();
    order.sort_by_key(|&r| tokenized[r].len());
    let mut out = HashMap::with_capacity(rows.len());
    for chunk in order.chunks(32) {
        let batch: Vec<&Encoded> = chunk.iter().map(|&r| &tokenized[r]).collect();
        for (&r, v) in chunk.iter().zip(embed_batch(bert, &batch, &Device::Cpu)?) {
            out.insert(r, v);
        }
    }
    Ok(out)
}
