//! Per-task settings, with defaults meant for any labeling task (README, "Task settings").

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::graph::{ClassBalance, GraphSettings};
use crate::method::pik::PikFeatures;
use crate::method::policy::Selection;
use crate::method::safeguard::StageMode;
use crate::method::training::TrainConfig;

/// τ: a fixed threshold, or `"fit"` to choose it on gold labels at each training job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Tau {
    Fixed(f32),
    /// The string `"fit"`.
    Named(String),
}

/// Declared as what it is on the wire: a number in [0, 1] or the string "fit".
impl utoipa::PartialSchema for Tau {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Number)
                    .minimum(Some(0.0))
                    .maximum(Some(1.0)),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["fit"])),
            )
            .description(Some(
                "a fixed threshold in [0, 1], or \"fit\" to choose it on gold labels at each job",
            ))
            .into()
    }
}

impl utoipa::ToSchema for Tau {}

impl Tau {
    pub fn fixed(&self) -> Option<f32> {
        match self {
            Tau::Fixed(v) => Some(*v),
            Tau::Named(_) => None,
        }
    }
}

/// What the classification head is trained on at a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Targets {
    /// One-hot current decisions.
    Hard,
    /// Gold and strong decisions one-hot; weak-refined decisions as their refined distribution.
    Soft,
}

/// Which examples train the classification head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TrainOn {
    /// Every example with a decision (strong self-labels included).
    Decided,
    /// Gold and weak-refined decisions only: the strong model's own picks do not train it.
    GoldAndWeak,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum JobMode {
    /// Frozen encoder: train the heads on stored embeddings (seconds).
    Head,
    /// Fine-tune encoder and head, then re-embed the task (minutes to hours on a CPU).
    Full,
}

impl JobMode {
    pub fn as_str(self) -> &'static str {
        match self {
            JobMode::Head => "head",
            JobMode::Full => "full",
        }
    }
}

/// How a task's texts longer than the model's window become features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LongTexts {
    /// Read whole: the token-weighted mean of overlapping windows (README, "Long texts").
    Chunk,
    /// The first window only, as sentence-transformers does.
    Truncate,
}

impl LongTexts {
    /// How the tokenizer treats such a text for this task, on a server that accepts it.
    pub fn overlong(self) -> crate::model::Overlong {
        match self {
            Self::Chunk => crate::model::Overlong::Chunk,
            Self::Truncate => crate::model::Overlong::Truncate,
        }
    }
}

/// The default `train_precision`: training on the decisions a 0.9 precision target would
/// accept raised balanced SST-2's PGR from 0.44 to 0.59 (README, "Weak-to-strong
/// experiments").
pub const DEFAULT_TRAIN_PRECISION: f64 = 0.9;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TaskSettings {
    /// Neighbours per example in the similarity graph.
    pub knn_k: usize,
    /// Label spreading: weight of the neighbours against the example's own weak label.
    pub alpha: f32,
    /// Most label spreading iterations per pass (a pass stops earlier once converged).
    pub iterations: usize,
    /// Incremental smoothing re-runs this many hops around new examples.
    pub hops: usize,
    /// Every this many incremental updates, a full smoothing pass.
    pub full_pass_every: u32,
    /// How classes are weighed in the refined label: `estimated` (default: towards the
    /// estimated class prior), `uniform`, `weak_prior` or `none` (README, "Graph smoothing").
    pub class_balance: ClassBalance,
    /// The model of the weak sources: `auto` (on while it beats the confidence-weighted mean
    /// on gold), `on` or `off`.
    pub source_model: StageMode,
    /// Graph smoothing: `auto` (on while it beats the weak aggregate on gold), `on`, `off`.
    pub smoothing: StageMode,
    /// Strong-model selection: `auto` (on while it beats the weak side on gold), `on`, `off`.
    pub strong: StageMode,
    /// Train the next strong model on the decisions: `auto` (while that beats training on
    /// the raw weak labels, judged by both models' predictions on gold; `head` jobs only),
    /// `on` or `off`.
    pub decision_targets: StageMode,
    /// How the strong and weak sides are chosen between: `confidence` (the higher calibrated
    /// probability of being right) or `tau` (strong when P(IK) ≥ τ).
    pub selection: Selection,
    /// A stage must lead its input on gold by z·√(discordant examples) (and at least one).
    pub safeguard_z: f64,
    /// Decisions whose confidence is below the threshold that reaches this precision on
    /// gold abstain (none: every decision counts).
    pub target_precision: Option<f64>,
    /// The next strong model trains only on the decisions whose confidence reaches the
    /// threshold that gives this precision on gold (one-sided 95% bound); the others are
    /// still handed out but teach nothing (none: every decision trains; where no threshold
    /// reaches it on gold, every decision trains too).
    pub train_precision: Option<f64>,
    /// Weight of an example's own weak label in its refined label against its neighbours'
    /// (1: plain label spreading, 0: neighbours only).
    pub self_weight: f32,
    /// Selection threshold on P(IK): a number in [0, 1], or "fit".
    pub tau: Tau,
    /// Gold labels needed to train the P(IK) head and the weak-side trust model; below it
    /// the fallbacks (MSP, the refined label's own probability) are used.
    pub pik_min_gold: usize,
    pub pik_features: PikFeatures,
    pub targets: Targets,
    pub train_on: TrainOn,
    /// Texts longer than the model's window: `chunk` (read whole, the mean of overlapping
    /// windows) or `truncate` (the first window). A server run with `--on-overlong refuse`
    /// refuses them instead.
    pub long_texts: LongTexts,
    /// Mode of jobs started by the schedule or the new-example trigger.
    pub job_mode: JobMode,
    /// Start a job after this many new examples (none: off).
    pub job_every_new_examples: Option<u64>,
    /// Start a job after this many new gold labels since the last job (none: off), e.g.
    /// retraining every N annotations from Label Studio.
    pub job_every_new_gold: Option<u64>,
    /// Start a job this many seconds after the last one (none: off).
    pub job_every_secs: Option<u64>,
    /// Head training.
    pub train: TrainConfig,
    /// Encoder fine-tuning (`full` jobs).
    pub finetune: FinetuneConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FinetuneConfig {
    pub epochs: usize,
    pub lr: f64,
    pub batch_size: usize,
    /// Longest training input in tokens (shorter is faster).
    pub max_tokens: usize,
    /// Most training examples (a random sample beyond it).
    pub max_examples: usize,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            epochs: 2,
            lr: 3e-5,
            batch_size: 16,
            max_tokens: 128,
            max_examples: 20_000,
        }
    }
}

impl Default for TaskSettings {
    fn default() -> Self {
        Self {
            knn_k: 10,
            alpha: 0.9,
            iterations: 100,
            hops: 2,
            full_pass_every: 50,
            class_balance: ClassBalance::Estimated,
            source_model: StageMode::Auto,
            smoothing: StageMode::Auto,
            strong: StageMode::Auto,
            decision_targets: StageMode::Auto,
            selection: Selection::Confidence,
            safeguard_z: crate::method::safeguard::DEFAULT_Z,
            target_precision: None,
            train_precision: Some(DEFAULT_TRAIN_PRECISION),
            self_weight: 0.5,
            tau: Tau::Named("fit".into()),
            pik_min_gold: 50,
            pik_features: PikFeatures::Probs,
            targets: Targets::Hard,
            train_on: TrainOn::Decided,
            long_texts: LongTexts::Chunk,
            job_mode: JobMode::Head,
            job_every_new_examples: None,
            job_every_new_gold: None,
            job_every_secs: None,
            train: TrainConfig::default(),
            finetune: FinetuneConfig::default(),
        }
    }
}

impl TaskSettings {
    /// Checks ranges; the message names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=100).contains(&self.knn_k) {
            return Err("knn_k must be in 1..=100".into());
        }
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err("alpha must be in (0, 1)".into());
        }
        if !(1..=1000).contains(&self.iterations) {
            return Err("iterations must be in 1..=1000".into());
        }
        if !(0.0..=1.0).contains(&self.self_weight) {
            return Err("self_weight must be in [0, 1]".into());
        }
        if self.hops > 6 {
            return Err("hops must be in 0..=6".into());
        }
        if self.full_pass_every == 0 {
            return Err("full_pass_every must be at least 1".into());
        }
        match &self.tau {
            Tau::Fixed(t) if !(0.0..=1.0).contains(t) => {
                return Err("tau must be in [0, 1] or \"fit\"".into())
            }
            Tau::Named(s) if s != "fit" => {
                return Err("tau must be a number in [0, 1] or \"fit\"".into())
            }
            _ => {}
        }
        if !(0.0..=5.0).contains(&self.safeguard_z) {
            return Err("safeguard_z must be in [0, 5]".into());
        }
        if let Some(t) = self.target_precision {
            if !(t > 0.0 && t < 1.0) {
                return Err("target_precision must be in (0, 1) or null".into());
            }
        }
        if let Some(t) = self.train_precision {
            if !(t > 0.0 && t < 1.0) {
                return Err("train_precision must be in (0, 1) or null".into());
            }
        }
        if self.pik_min_gold < 10 {
            return Err("pik_min_gold must be at least 10".into());
        }
        if self.job_every_new_examples == Some(0)
            || self.job_every_new_gold == Some(0)
            || self.job_every_secs == Some(0)
        {
            return Err(
                "job_every_new_examples, job_every_new_gold and job_every_secs must be positive (or null)"
                    .into(),
            );
        }
        self.train.validate()?;
        let f = &self.finetune;
        if f.epochs == 0
            || f.epochs > 100
            || !(f.lr > 0.0 && f.lr < 1.0)
            || f.batch_size == 0
            || f.max_tokens < 8
            || f.max_examples == 0
        {
            return Err("finetune: epochs 1..=100, lr in (0, 1), batch_size ≥ 1, max_tokens ≥ 8, max_examples ≥ 1".into());
        }
        Ok(())
    }

    pub fn graph(&self) -> GraphSettings {
        GraphSettings {
            k: self.knn_k,
            alpha: self.alpha,
            iterations: self.iterations,
            hops: self.hops,
            full_pass_every: self.full_pass_every,
            class_balance: self.class_balance,
            self_weight: self.self_weight,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let s = TaskSettings::default();
        s.validate().unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<TaskSettings>(&json).unwrap(), s);
        let partial: TaskSettings = serde_json::from_str(r#"{"knn_k": 5, "tau": "fit"}"#).unwrap();
        assert_eq!(partial.knn_k, 5);
        assert_eq!(partial.tau, Tau::Named("fit".into()));
        partial.validate().unwrap();
    }

    #[test]
    fn invalid_settings_are_named() {
        assert!(serde_json::from_str::<TaskSettings>(r#"{"nope": 1}"#).is_err());
        let bad = TaskSettings {
            alpha: 1.0,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("alpha"));
        let bad = TaskSettings {
            tau: Tau::Named("auto".into()),
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("tau"));
    }
}
