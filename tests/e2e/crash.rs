//! Crashes and concurrent writers, with the real binary as operations run it: three ingest
//! clients re-sending overlapping ids and gold labels while the server is SIGKILLed at random
//! moments, ten times; after each restart every acknowledged example is stored with its
//! labels and is a node of the similarity graph, and no request was ever answered 5xx. A
//! settings change whose re-decision a SIGKILL cut short is finished after the restart. On
//! PostgreSQL, two processes then serve one database at once, with the same guarantees.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::common::{
    create_pg_database, drop_pg_database, send_patch, status_json, tiny_model_dir, Backend,
};

const IDS: usize = 400;
const KILLS: usize = 10;
const LABELS: [&str; 2] = ["neg", "pos"];

fn text(i: usize) -> String {
    const WORDS: [&str; 8] = [
        "bright", "dull", "quick", "slow", "kind", "harsh", "warm", "cold",
    ];
    format!(
        "{} {} {} story number {i}",
        WORDS[i % 8],
        WORDS[(i / 8) % 8],
        WORDS[(i * 5 + 3) % 8]
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One `sw2s serve` process.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    async fn start(data_dir: &Path, model_dir: &Path, db_url: &str) -> Server {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_sw2s"))
            .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--model-dir")
            .arg(model_dir)
            .args(["--database-url", db_url, "--scheduler-interval-ms", "200"])
            .env("SW2S_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning sw2s");
        let server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        for _ in 0..600 {
            if let Ok(r) = client.get(format!("{}/ready", server.base)).send().await {
                if r.status() == 200 {
                    return server;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("sw2s never became ready at {}", server.base);
    }

    fn kill(self) {
        drop(self);
    }
}

/// A test that fails part-way must not leave its server running (the test binary would
/// wait on the server's inherited stderr).
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request's status and JSON body.
async fn send_json(request: reqwest::RequestBuilder) -> (u16, Value) {
    status_json(request.send().await.expect("request")).await
}

/// What the clients were told was stored: per example id, the weak label per source and the
/// gold label.
#[derive(Default)]
struct Acked {
    weak: BTreeMap<usize, BTreeMap<String, &'static str>>,
    gold: BTreeMap<usize, &'static str>,
    requests: usize,
    server_errors: Vec<String>,
}

/// One client: batches of 10–50 ids from a shared pool (so ids are re-sent, by itself and
/// by the others), its own weak source, sometimes a gold label; until the server goes away.
async fn client(
    bases: Vec<String>,
    who: usize,
    seed: u64,
    rounds: usize,
    acked: Arc<Mutex<Acked>>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for round in 0..rounds {
        let n = rng.gen_range(10..=50);
        let mut ids = BTreeSet::new();
        while ids.len() < n {
            ids.insert(rng.gen_range(0..IDS));
        }
        let source = format!("client-{who}");
        let batch: Vec<(usize, &'static str, Option<&'static str>)> = ids
            .iter()
            .map(|&i| {
                let weak = LABELS[usize::from(rng.gen_bool(0.5))];
                let gold = rng.gen_bool(0.1).then_some(LABELS[i % 2]);
                (i, weak, gold)
            })
            .collect();
        let examples: Vec<Value> = batch
            .iter()
            .map(|&(i, weak, gold)| {
                let mut e = json!({"id": format!("e{i}"), "text": text(i),
                    "weak_labels": [{"source": source, "label": weak}]});
                if let Some(g) = gold {
                    e["gold_label"] = json!(g);
                }
                e
            })
            .collect();
        let base = &bases[round % bases.len()];
        let sent = http
            .post(format!("{base}/v1/tasks/t/examples"))
            .json(&json!({ "examples": examples }))
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            // The server was killed: what was not acknowledged may or may not be stored.
            Err(_) => return,
        };
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        let mut acked = acked.lock().unwrap();
        acked.requests += 1;
        if status == 200 {
            for &(i, weak, gold) in &batch {
                acked
                    .weak
                    .entry(i)
                    .or_default()
                    .insert(source.clone(), weak);
                if let Some(g) = gold {
                    acked.gold.insert(i, g);
                }
            }
        } else if status >= 500 {
            acked.server_errors.push(format!("{status} {body}"));
        } else {
            panic!("a well-formed batch was refused: {status} {body}");
        }
    }
}

/// Every acknowledged example is stored with its latest acknowledged labels (or a later
/// one from a batch cut short by the kill), and the graph holds every stored embedding.
async fn check_acknowledged(base: &str, acked: &Acked) {
    let http = reqwest::Client::new();
    for (i, sources) in &acked.weak {
        let (_, e) = send_json(http.get(format!("{base}/v1/tasks/t/examples/e{i}"))).await;
        assert_eq!(
            e["id"],
            format!("e{i}"),
            "acknowledged example e{i} lost: {e}"
        );
        let stored: BTreeSet<&str> = e["weak_labels"]
            .as_array()
            .unwrap_or_else(|| panic!("e{i} has no weak labels: {e}"))
            .iter()
            .filter_map(|w| w["source"].as_str())
            .collect();
        for source in sources.keys() {
            assert!(
                stored.contains(source.as_str()),
                "the weak label of {source} on e{i} was acknowledged but is not stored: {e}"
            );
        }
        if acked.gold.contains_key(i) {
            assert!(e["gold_label"].is_string(), "gold of e{i} lost: {e}");
        }
    }
    let (_, graph) = send_json(http.get(format!("{base}/v1/tasks/t/graph"))).await;
    assert_eq!(graph["consistent"], true, "{graph}");
    assert!(
        graph["nodes"].as_u64().unwrap() as usize >= acked.weak.len(),
        "{graph}"
    );
}

async fn database(backend: Backend, dir: &Path) -> Option<(String, bool)> {
    Some(match backend {
        Backend::Sqlite => (format!("sqlite://{}/sw2s.db", dir.display()), false),
        Backend::Postgres => (create_pg_database().await?, true),
    })
}

async fn create_task(base: &str) {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/tasks"))
        .json(&json!({"name": "t", "labels": LABELS, "settings": {"knn_k": 5}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

async fn sigkill_under_load(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some((db_url, owns_db)) = database(backend, dir.path()).await else {
        return;
    };
    let model_dir = tiny_model_dir(dir.path());
    let data_dir: PathBuf = dir.path().join("data");
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for kill in 0..=KILLS {
        let server = Server::start(&data_dir, &model_dir, &db_url).await;
        if kill == 0 {
            create_task(&server.base).await;
        } else {
            // Everything acknowledged before the last kill survived it.
            let snapshot = std::mem::take(&mut *acked.lock().unwrap());
            check_acknowledged(&server.base, &snapshot).await;
            *acked.lock().unwrap() = snapshot;
        }
        if kill == KILLS {
            server.kill();
            break;
        }
        let clients: Vec<_> = (0..3)
            .map(|c| {
                tokio::spawn(client(
                    vec![server.base.clone()],
                    c,
                    (kill * 10 + c) as u64,
                    usize::MAX,
                    acked.clone(),
                ))
            })
            .collect();
        // Kill once the clients have had some answers in this round (a loaded machine is slow
        // to get there), at a random moment after that.
        let before = acked.lock().unwrap().requests;
        for _ in 0..300 {
            if acked.lock().unwrap().requests >= before + 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..1200))).await;
        server.kill();
        for c in clients {
            c.await.unwrap();
        }
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    eprintln!(
        "{backend:?}: {KILLS} SIGKILLs, {} requests, {} examples acknowledged, {} answered 5xx",
        acked.requests,
        acked.weak.len(),
        acked.server_errors.len()
    );
    assert!(acked.requests >= KILLS * 3, "the clients hardly ran");
    assert!(
        acked.server_errors.is_empty(),
        "answered 5xx: {:?}",
        acked.server_errors
    );
    if owns_db {
        drop_pg_database(&db_url).await;
    }
}
both_backends!(
    sigkill_loses_no_acknowledged_write,
    super::sigkill_under_load
);

/// SIGKILL while a settings change decides the task again: the PATCH's client hangs up
/// once the setting is saved and the process is killed at once. After the restart the
/// decisions follow the saved setting (the recovery sweep finishes what the kill cut short).
/// A kill that lands after the re-decision ended proves nothing, so it is tried again.
async fn sigkill_during_a_settings_redecision(backend: Backend) {
    const N: usize = 3000;
    let dir = tempfile::tempdir().unwrap();
    let Some((db_url, owns_db)) = database(backend, dir.path()).await else {
        return;
    };
    let model_dir = tiny_model_dir(dir.path());
    let data_dir: PathBuf = dir.path().join("data");
    let http = reqwest::Client::new();
    let mut server = Server::start(&data_dir, &model_dir, &db_url).await;
    let (status, body) = send_json(
        http.post(format!("{}/v1/tasks", server.base))
            .json(&json!({"name": "t", "labels": LABELS,
            "settings": {"knn_k": 5, "pik_min_gold": 20, "selection": "tau"}})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    for chunk in (0..N).collect::<Vec<_>>().chunks(500) {
        let examples: Vec<Value> = chunk
            .iter()
            .map(|&i| {
                let truth = LABELS[i % 2];
                let weak = if i % 5 == 0 {
                    LABELS[(i + 1) % 2]
                } else {
                    truth
                };
                let mut e = json!({"id": format!("e{i}"), "text": text(i),
                    "weak_labels": [{"source": "rules", "label": weak}]});
                if i % 10 == 0 {
                    e["gold_label"] = json!(truth);
                }
                e
            })
            .collect();
        let (status, body) = send_json(
            http.post(format!("{}/v1/tasks/t/examples", server.base))
                .json(&json!({ "examples": examples })),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, job) = send_json(
        http.post(format!("{}/v1/tasks/t/jobs", server.base))
            .json(&json!({"mode": "head"})),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let task = |base: String| {
        let http = http.clone();
        async move {
            let (status, t) = send_json(http.get(format!("{base}/v1/tasks/t"))).await;
            assert_eq!(status, 200, "{t}");
            t
        }
    };
    for _ in 0..1200 {
        let (_, j) =
            send_json(http.get(format!("{}/v1/tasks/t/jobs/{}", server.base, job["id"]))).await;
        match j["state"].as_str() {
            Some("succeeded") => break,
            Some("failed") | Some("cancelled") => panic!("{j}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let strong = |t: &Value| t["decisions"]["strong"].as_i64().unwrap_or(0);
    for attempt in 1..=5 {
        // The model decides some examples (answered, so done before the PATCH below).
        let (status, body) = send_json(
            http.patch(format!("{}/v1/tasks/t", server.base))
                .json(&json!({"settings": {"strong": "on", "tau": 0.5}})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let before = task(server.base.clone()).await;
        assert!(strong(&before) > 0, "{before}");
        // Strong selection off, the client gone and the process killed once it is saved.
        let socket = send_patch(
            server.base.trim_start_matches("http://"),
            "/v1/tasks/t",
            &json!({"settings": {"strong": "off"}}),
        )
        .await;
        while task(server.base.clone()).await["settings"]["strong"] != "off" {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        server.kill();
        drop(socket);
        server = Server::start(&data_dir, &model_dir, &db_url).await;
        let after = task(server.base.clone()).await;
        assert_eq!(after["settings"]["strong"], "off", "{after}");
        if strong(&after) == 0 {
            eprintln!("{backend:?}: attempt {attempt}: the kill came after the re-decision");
            continue;
        }
        // Cut short: the rest is decided after the restart.
        eprintln!(
            "{backend:?}: attempt {attempt}: killed with {} of {} strong decisions left",
            strong(&after),
            strong(&before)
        );
        for _ in 0..600 {
            let t = task(server.base.clone()).await;
            if strong(&t) == 0 && t["pending"] == 0 {
                server.kill();
                if owns_db {
                    drop_pg_database(&db_url).await;
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "after the restart the decisions do not follow the saved setting: {}",
            task(server.base.clone()).await
        );
    }
    panic!("in 5 tries the kill never landed while the task was decided again");
}
both_backends!(
    sigkill_during_a_settings_change_loses_no_redecision,
    super::sigkill_during_a_settings_redecision
);

/// Two processes on one PostgreSQL database, three clients alternating between them: no
/// conflict reaches a client, and each process's graph holds what the other wrote, live and
/// after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let Some(db_url) = create_pg_database().await else {
        return;
    };
    let model_dir = tiny_model_dir(dir.path());
    let a = Server::start(&dir.path().join("a"), &model_dir, &db_url).await;
    let b = Server::start(&dir.path().join("b"), &model_dir, &db_url).await;
    create_task(&a.base).await;
    let acked = Arc::new(Mutex::new(Acked::default()));
    let clients: Vec<_> = (0..3)
        .map(|c| {
            tokio::spawn(client(
                vec![a.base.clone(), b.base.clone()],
                c,
                100 + c as u64,
                20,
                acked.clone(),
            ))
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    check_acknowledged(&a.base, &acked).await;
    check_acknowledged(&b.base, &acked).await;
    b.kill();
    a.kill();
    assert!(
        acked.server_errors.is_empty(),
        "answered 5xx: {:?}",
        acked.server_errors
    );
    eprintln!(
        "two processes: {} requests, {} examples acknowledged",
        acked.requests,
        acked.weak.len()
    );
    // Both restarted: each checks the database against its own graph snapshot.
    let a = Server::start(&dir.path().join("a"), &model_dir, &db_url).await;
    let b = Server::start(&dir.path().join("b"), &model_dir, &db_url).await;
    check_acknowledged(&a.base, &acked).await;
    check_acknowledged(&b.base, &acked).await;
    a.kill();
    b.kill();
    drop_pg_database(&db_url).await;
}
