//! A task's decision pipeline as fitted on its gold labels at a job: which label-changing
//! stages are on and why (the source model, graph smoothing, strong selection), the class
//! prior smoothing balances towards, the weak-side trust model and the decision policy.
//! A model version carries it (in its manifest), so serving, rollback and every process
//! sharing the database use the same one.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::confidence::{CalibrationReport, TrustModel};
use super::gold::GoldUse;
use super::label_model::{LabelModel, SourceFit, Vote};
use super::policy::Policy;
use super::prior::PriorEstimate;
use super::safeguard::StageReport;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PipelineFit {
    /// Source names, in the index order of the source model.
    pub sources: Vec<String>,
    pub source_model: SourceFit,
    pub prior: PriorEstimate,
    pub smoothing: StageReport,
    /// The weak-side trust model (absent with too few gold labels).
    pub trust: Option<TrustModel>,
    /// Its calibration on gold, out of fold (or the fallback's).
    pub trust_report: CalibrationReport,
    pub trust_reason: String,
    pub policy: Policy,
    /// Whether the strong model trained on the decisions or on the raw weak labels.
    pub decision_targets: StageReport,
    /// Which gold labels judged the stage checks and the class prior (absent in versions made
    /// before gold said how it was picked).
    #[serde(default)]
    pub gold: Option<GoldUse>,
}

/// One stored weak label, by source name.
pub struct NamedVote<'a> {
    pub source: &'a str,
    pub scores: Vec<f32>,
    pub confidence: f32,
}

impl PipelineFit {
    /// The weak aggregate of an example's votes under the source model in use.
    pub fn aggregate(&self, votes: &[NamedVote]) -> Option<Vec<f32>> {
        aggregate_with(&self.source_model.used, &self.sources, votes)
    }
}

/// The aggregate under `model`, whose source indices follow `sources` (a source it has never
/// seen gets an index past them and counts as in the mean).
pub fn aggregate_with(
    model: &LabelModel,
    sources: &[String],
    votes: &[NamedVote],
) -> Option<Vec<f32>> {
    let votes: Vec<Vote> = votes
        .iter()
        .map(|v| Vote {
            source: sources
                .iter()
                .position(|s| s == v.source)
                .unwrap_or(usize::MAX),
            scores: v.scores.clone(),
            confidence: v.confidence,
        })
        .collect();
    model.posterior(&votes)
}
