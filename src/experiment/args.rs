//! The experiment's command line.

use std::path::PathBuf;

use clap::Args;

use crate::config::ModelArgs;
use crate::service::settings::JobMode;

#[derive(Args, Debug, Clone)]
pub struct ExperimentArgs {
    /// A JSONL file or a folder of them (id, text, label, label_names, group per line).
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value_t = 3)]
    pub seeds: usize,
    /// `head`: frozen encoder, linear heads; `full`: the encoder is fine-tuned per method.
    #[arg(long, value_enum, default_value_t = JobMode::Head)]
    pub mode: JobMode,
    /// Where results.md and results.json go.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Weak labels: `bow` (hashed word n-gram logistic regression), `layers:N` (the encoder
    /// cut to its first N layers, with a linear head), `flip:P` (the truth with a share P of
    /// labels flipped), `flip:P0,P1,…` (class-dependent flip rates), or `lfs:N` (N labeling
    /// functions, each with its own per-class accuracy in 0.55–0.95 and coverage in 0.3–0.8).
    #[arg(long, default_value = "bow")]
    pub weak: String,
    #[arg(long, default_value_t = 0.4)]
    pub weak_fraction: f64,
    #[arg(long, default_value_t = 0.4)]
    pub strong_fraction: f64,
    /// Use only the first N rows (after `--class-ratio`).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Subsample so that the first class (label 0) is this share of the rows: an imbalanced
    /// task from any dataset (e.g. 0.1).
    #[arg(long)]
    pub class_ratio: Option<f64>,
    /// The target precision of the "· target precision" method.
    #[arg(long, default_value_t = 0.9)]
    pub target_precision: f64,
    /// `full` mode: longest training input in tokens.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// `full` mode: most fine-tuning examples per model.
    #[arg(long, default_value_t = 1000)]
    pub full_examples: usize,
    /// `full` mode: fine-tuning epochs.
    #[arg(long, default_value_t = 2)]
    pub full_epochs: usize,
    /// Only these methods (comma-separated names from the table); default all.
    #[arg(long, value_delimiter = ',')]
    pub methods: Vec<String>,
    #[command(flatten)]
    pub model: ModelArgs,
}
