use clap::Parser;
use tracing_subscriber::EnvFilter;

use sw2s::cli::{Cli, Command, LogFormat};

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("SW2S_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn set_threads(threads: Option<usize>) {
    // candle and rayon read this when they first start their pools.
    if let Some(n) = threads.filter(|n| *n > 0) {
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            init_logging(args.log_format);
            set_threads(args.model.threads);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let running = sw2s::server::start(&args).await?;
                running.run_until_signal().await
            })
        }
        Command::Migrate(args) => {
            init_logging(LogFormat::Text);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let store = sw2s::store::Store::connect(&args.db.url(&args.data_dir)).await?;
                tracing::info!(backend = store.backend().name(), "migrations applied");
                store.close().await;
                Ok(())
            })
        }
        Command::FetchModel(args) => {
            init_logging(LogFormat::Text);
            let (dir, encoder) = args.load_encoder()?;
            println!("{}", dir.display());
            eprintln!(
                "{} ({} {}, {} pooling, {} dims, max {} tokens, jobs {}, sha256 {})",
                encoder.info.model_id,
                encoder.info.family,
                encoder.info.dtype,
                encoder.info.pooling,
                encoder.info.dims,
                encoder.info.max_length,
                encoder.info.jobs.join("+"),
                encoder.info.sha256
            );
            Ok(())
        }
        Command::Bench(args) => {
            init_logging(LogFormat::Text);
            sw2s::bench::run(args)
        }
        Command::Experiment(args) => {
            init_logging(LogFormat::Text);
            set_threads(args.model.threads);
            let report = sw2s::experiment::run(&args)?;
            println!("{}", report.markdown());
            Ok(())
        }
        Command::Keys(command) => sw2s::api::auth::run_command(command),
        Command::Openapi => {
            println!("{}", sw2s::api::openapi_json());
            Ok(())
        }
    }
}
