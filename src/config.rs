//! Command line and environment configuration. Every flag is also an `SW2S_…` variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    /// Fetch the default model into the data dir (if needed) and print its directory.
    FetchModel(ModelArgs),
    /// Print the OpenAPI document the server serves.
    Openapi,
    /// Benchmarks: `embed` (encoder throughput) and `graph` (incremental smoothing).
    Bench(crate::bench::BenchArgs),
    /// Run the weak-to-strong protocol on a labelled JSONL dataset and print the results table.
    Experiment(Box<crate::experiment::ExperimentArgs>),
}

/// Where the model and data live; shared by every subcommand that loads the encoder.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Directory for the SQLite database, vector indexes, model versions and the default model.
    #[arg(long, env = "SW2S_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// A BERT-family model directory (config.json, model.safetensors, tokenizer.json).
    /// Default: all-MiniLM-L6-v2, fetched into the data dir on first use.
    #[arg(long, env = "SW2S_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// What to do with a text longer than the model's maximum length.
    #[arg(long, env = "SW2S_ON_OVERLONG", value_enum, default_value_t = Overlong::Truncate)]
    pub on_overlong: Overlong,
    /// Compute threads for the model (default: all cores).
    #[arg(long, env = "SW2S_THREADS")]
    pub threads: Option<usize>,
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    ValueEnum,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Overlong {
    /// Keep the first tokens, as sentence-transformers does.
    Truncate,
    /// Reject the request with 422.
    Refuse,
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
    /// If set, every /v1 request must carry `Authorization: Bearer <key>`.
    #[arg(long, env = "SW2S_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Most examples (or texts) in one request.
    #[arg(long, env = "SW2S_MAX_BATCH_EXAMPLES", default_value_t = 1000)]
    pub max_batch_examples: usize,
    /// Longest accepted text, in characters.
    #[arg(long, env = "SW2S_MAX_TEXT_CHARS", default_value_t = 20_000)]
    pub max_text_chars: usize,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "SW2S_MAX_BODY_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Texts waiting for the model before requests are answered 429.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}
