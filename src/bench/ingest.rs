//! `sw2s bench ingest`: examples/s of `POST /v1/tasks/{task}/examples` (new examples with a
//! weak label each, `--concurrency` clients sending requests of `--batch`) on a server this
//! command starts (SQLite, or PostgreSQL with `--database-url`), against the raw encoder's
//! sentences/s on the same texts in the same groups, alternating run by run. Everything
//! ingest adds to the encoder — JSON, validation, the database transaction, the vector
//! index, smoothing, the decision — shows as the gap between the two.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use super::server::Server;
use super::{median, read_rows, with_threads, Row};
use crate::cli::IngestBench;

pub fn run(args: IngestBench) -> anyhow::Result<()> {
    let threads = args.model.threads.unwrap_or(2);
    let (dir, encoder) = args.model.load_encoder()?;
    let rows = read_rows(&args.data, args.limit)?;
    let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
    let labels: Vec<String> = rows
        .iter()
        .find_map(|r| r.label_names.clone())
        .unwrap_or_else(|| vec!["negative".into(), "positive".into()]);
    let backend = match &args.database_url {
        Some(url) if url.starts_with("postgres") => "PostgreSQL",
        Some(_) => "the given database",
        None => "SQLite",
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // PostgreSQL: a fresh database on that server, so no earlier run's rows are in play.
    let fresh_db = match &args.database_url {
        Some(url) if url.starts_with("postgres") => Some(runtime.block_on(fresh_database(url))?),
        _ => None,
    };
    let url = fresh_db
        .as_ref()
        .map(|(url, _)| url.clone())
        .or(args.database_url.clone());
    let server = runtime.block_on(Server::start(&dir, threads, &args.model, url.as_deref()))?;
    println!(
        "ingest benchmark: {} examples from {} with one weak label each, requests of {}, {} client(s), {backend}, {} model thread(s), model {}, {} alternating run(s) (a fresh task each), median",
        texts.len(),
        args.data.display(),
        args.batch,
        args.concurrency,
        threads,
        encoder.info.model_id,
        args.repeats
    );
    let (mut encoder_rates, mut ingest_rates) = (vec![], vec![]);
    let run_id = std::process::id();
    for round in 0..args.repeats {
        encoder_rates.push(with_threads(threads, || {
            super::embed::run_groups(&encoder, &texts, args.batch)
        })??);
        let task = format!("bench-{run_id}-{round}");
        ingest_rates.push(runtime.block_on(ingest(&server, &task, &labels, &rows, &args))?);
        eprintln!(
            "run {}: encoder {:.1} sentences/s, ingest {:.1} examples/s",
            round + 1,
            encoder_rates[round],
            ingest_rates[round]
        );
    }
    let (enc, ing) = (median(encoder_rates), median(ingest_rates));
    println!("| database | raw encoder sentences/s (same groups) | ingest examples/s | ingest / encoder |");
    println!("|---|---|---|---|");
    println!(
        "| {backend} | {enc:.1} | {ing:.1} | {:.0}% |",
        100.0 * ing / enc
    );
    let metrics = runtime.block_on(server.get_text("/metrics"))?;
    print_phases(&metrics);
    drop(server);
    if let Some((_, admin)) = fresh_db {
        runtime.block_on(drop_database(&admin, url.as_deref().unwrap_or_default()))?;
    }
    Ok(())
}

/// Makes `sw2s_bench_<uuid>` on the server of `url`; returns its URL and `url` (to drop it).
async fn fresh_database(url: &str) -> anyhow::Result<(String, String)> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let name = format!("sw2s_bench_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await?;
    let base = url.rsplit_once('/').map(|(b, _)| b).unwrap_or(url);
    Ok((format!("{base}/{name}"), url.to_string()))
}

async fn drop_database(admin: &str, url: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let name = url.rsplit('/').next().unwrap_or_default();
    let mut conn = sqlx::PgConnection::connect(admin).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// Where a request's time went, from the server's `sw2s_ingest_phase_seconds` (all runs):
/// mean milliseconds per request and phase. `settle_*` run under the task's graph lock,
/// one request at a time; the rest overlap across requests.
fn print_phases(metrics: &str) {
    let mut phases: Vec<(String, f64, f64)> = vec![];
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("sw2s_ingest_phase_seconds_sum{phase=\"") else {
            continue;
        };
        let Some((phase, value)) = rest.split_once("\"} ") else {
            continue;
        };
        let count = metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "sw2s_ingest_phase_seconds_count{{phase=\"{phase}\"}} "
                ))
            })
            .and_then(|c| c.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if let Ok(sum) = value.trim().parse::<f64>() {
            phases.push((phase.to_string(), sum, count));
        }
    }
    if phases.is_empty() {
        return;
    }
    println!();
    println!("Server-side time per request by phase (mean over every request of every run):");
    println!("| phase | mean ms | requests |");
    println!("|---|---|---|");
    for (phase, sum, count) in phases {
        if count > 0.0 {
            println!("| {phase} | {:.1} | {count:.0} |", 1e3 * sum / count);
        }
    }
}

async fn ingest(
    server: &Server,
    task: &str,
    labels: &[String],
    rows: &[Row],
    args: &IngestBench,
) -> anyhow::Result<f64> {
    server
        .post("/v1/tasks", &json!({ "name": task, "labels": labels }))
        .await?;
    let bodies: Arc<Vec<serde_json::Value>> = Arc::new(
        rows.chunks(args.batch)
            .enumerate()
            .map(|(c, chunk)| {
                let examples: Vec<serde_json::Value> = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        let label = &labels[r.label.unwrap_or(0) % labels.len()];
                        json!({
                            "id": format!("{}", c * args.batch + i),
                            "text": r.text,
                            "weak_labels": [{ "source": "bench", "label": label }],
                        })
                    })
                    .collect();
                json!({ "examples": examples })
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let path = format!("/v1/tasks/{task}/examples");
    let started = Instant::now();
    let clients: Vec<_> = (0..args.concurrency.max(1))
        .map(|_| {
            let (bodies, next, path) = (bodies.clone(), next.clone(), path.clone());
            let client = server.client.clone();
            let base = server.base.clone();
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = bodies.get(i) else {
                        return Ok::<(), anyhow::Error>(());
                    };
                    let r = client
                        .post(format!("{base}{path}"))
                        .json(body)
                        .send()
                        .await?;
                    if !r.status().is_success() {
                        anyhow::bail!("POST {path}: {}: {}", r.status(), r.text().await?);
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.await??;
    }
    Ok(rows.len() as f64 / started.elapsed().as_secs_f64())
}
