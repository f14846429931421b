//! `sw2s bench finetune`: examples/s and tokens/s of fine-tuning (forward, backward, AdamW)
//! — `method::finetune`, what `full` jobs run — against a plain PyTorch loop on the same
//! texts, batch size and token limit, alternating run by run.

use std::time::Instant;

use anyhow::bail;
use serde_json::json;

use super::baseline::{venv_dir, Baseline};
use super::{median, ratio, read_rows, with_threads};
use crate::cli::FinetuneBench;
use crate::method::finetune::{finetune, FinetuneParams, TrainableBert};
use crate::method::heads::LinearHead;
use crate::model::encoder::{read_config, Encoded};
use crate::model::Overlong;

pub fn run(args: FinetuneBench) -> anyhow::Result<()> {
    let (dir, encoder) = args.model.load_encoder()?;
    if !encoder.info.trainable() {
        bail!(
            "{} ({}) cannot be fine-tuned here: only BERT-family models (BERT, RoBERTa, MPNet) can",
            encoder.info.model_id,
            encoder.info.family
        );
    }
    let config = read_config(&dir)?;
    let rows = read_rows(&args.data, args.limit)?;
    let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
    let labels: Vec<usize> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| r.label.unwrap_or(i) % 2)
        .collect();
    let mut encoded = encoder.tokenizer.tokenize(&texts, Overlong::Truncate)?;
    encoded
        .iter_mut()
        .for_each(|e| e.truncate_to(args.max_tokens));
    let items: Vec<(Encoded, Vec<f32>)> = encoded
        .into_iter()
        .zip(&labels)
        .map(|(e, &l)| {
            (
                e,
                if l == 0 {
                    vec![1.0, 0.0]
                } else {
                    vec![0.0, 1.0]
                },
            )
        })
        .collect();
    let steps = items.len().div_ceil(args.batch);
    let mut baseline = if args.baseline.no_baseline {
        None
    } else {
        Some(Baseline::start(
            &venv_dir(args.baseline.venv.as_deref(), &args.model.data_dir),
            &dir,
            &texts,
            &labels,
            "cpu",
        )?)
    };
    println!(
        "fine-tuning benchmark: {} texts from {}, batch {}, at most {} tokens, {} steps per run (one untimed warm-up step first), model {}, {} alternating run(s), median; PyTorch {}",
        items.len(),
        args.data.display(),
        args.batch,
        args.max_tokens,
        steps,
        encoder.info.model_id,
        args.repeats,
        baseline.as_ref().map(|b| b.torch.as_str()).unwrap_or("not run"),
    );
    println!("| threads | sw2s examples/s | sw2s tokens/s | PyTorch examples/s | PyTorch tokens/s | sw2s / PyTorch |");
    println!("|---|---|---|---|---|---|");
    let weights = dir.join("model.safetensors");
    // Fine-tuning runs on the CPU whatever --device says (its backward passes are CPU code).
    let device = candle_core::Device::Cpu;
    for &threads in &args.thread_counts {
        let (mut ours, mut our_tokens, mut theirs, mut their_tokens) =
            (vec![], vec![], vec![], vec![]);
        for _ in 0..args.repeats {
            let model = TrainableBert::load(&config, &weights, &device)?;
            let (rate, tokens) = with_threads(threads, || {
                measure(&model, &items, config.hidden_size, &args, &device)
            })??;
            ours.push(rate);
            our_tokens.push(tokens);
            if let Some(b) = baseline.as_mut() {
                let answer = b.ask(json!({
                    "op": "finetune", "threads": threads, "batch": args.batch,
                    "max_tokens": args.max_tokens, "steps": steps, "seed": 1, "lr": args.lr,
                }))?;
                theirs.push(answer["rate"].as_f64().unwrap_or(0.0));
                their_tokens.push(answer["tokens"].as_f64().unwrap_or(0.0));
            }
        }
        let ours = median(ours);
        let theirs = (!theirs.is_empty()).then(|| median(theirs));
        println!(
            "| {threads} | {ours:.1} | {:.0} | {} | {} | {} |",
            median(our_tokens),
            super::figure(theirs),
            if their_tokens.is_empty() {
                "–".to_string()
            } else {
                format!("{:.0}", median(their_tokens))
            },
            ratio(ours, theirs)
        );
    }
    Ok(())
}

/// One run: a warm-up step, then `steps` timed steps over the shuffled items.
fn measure(
    model: &TrainableBert,
    items: &[(Encoded, Vec<f32>)],
    hidden: usize,
    args: &FinetuneBench,
    device: &candle_core::Device,
) -> anyhow::Result<(f64, f64)> {
    let params = FinetuneParams {
        epochs: 1,
        lr: args.lr,
        batch_size: args.batch,
        seed: 1,
        head_lr: args.lr,
    };
    let head = LinearHead::zeros(hidden, 2);
    // The warm-up: one batch, untimed (first allocations, thread pool start).
    finetune(
        model,
        &head,
        &items[..args.batch.min(items.len())],
        &params,
        device,
        &mut |_| true,
    )?;
    let tokens: usize = items.iter().map(|(e, _)| e.len()).sum();
    let started = Instant::now();
    finetune(model, &head, items, &params, device, &mut |_| true)?;
    let secs = started.elapsed().as_secs_f64();
    Ok((items.len() as f64 / secs, tokens as f64 / secs))
}
