//! The dashboard in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, installed here with apt-get when missing) driven over WebDriver. A task
//! with SST-2 sentences, two weak sources, gold labels and a finished job; each page loads, the
//! charts hold the numbers the API gives, three examples are labelled from the review queue
//! with the keyboard and arrive as gold labels. Screenshots go to `SW2S_UI_SCREENSHOTS` (the
//! README's come from there) or the test's directory.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::common::{in_ci, Backend, ModelKind, Options, TestServer};
use crate::data::{have_datasets, read_rows, run_job, settled};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Chromium and its driver, installed from Debian's packages when missing. Outside CI a machine
/// that cannot install them skips the test; in CI that fails it.
fn have_chromium() -> bool {
    let present =
        || std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists();
    if present() {
        return true;
    }
    // The SQLite and PostgreSQL variants run in parallel: one apt-get at a time (dpkg's
    // lock fails the second), and the second finds the packages installed.
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if present() {
        return true;
    }
    eprintln!("installing chromium and chromium-driver with apt-get (once per machine)");
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let _ = apt(&["update", "-q"]);
    if apt(&["install", "-y", "-q", "chromium", "chromium-driver"]) && present() {
        return true;
    }
    assert!(
        !in_ci(),
        "chromium and chromium-driver could not be installed"
    );
    eprintln!("SKIPPED: chromium and chromium-driver are not installed and apt-get failed");
    false
}

struct Driver {
    process: Child,
    client: Client,
}

impl Driver {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let process = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"binary": CHROMIUM, "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                   "--disable-dev-shm-usage", "--window-size=1400,2000", "--hide-scrollbars"]}),
        );
        let mut last = None;
        for _ in 0..100 {
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => return Self { process, client },
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not answer: {last:?}");
    }

    async fn finish(mut self) {
        let _ = self.client.close().await;
        let _ = self.process.kill();
        let _ = self.process.wait();
    }

    /// Runs `script` until it returns something truthy (or panics after 30 s).
    async fn wait_for(&self, what: &str, script: &str) -> Value {
        for _ in 0..300 {
            let v = self.client.execute(script, vec![]).await.expect(what);
            if !(v.is_null() || v == false || v == "") {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{what}: still not there after 30 s");
    }

    async fn screenshot(&self, dir: &std::path::Path, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(name), png).unwrap();
    }
}

/// A task worth looking at: 240 SST-2 sentences, a noisy rater and a keyword rule as weak
/// sources, 80 gold labels, one finished head job.
async fn seed(s: &TestServer) -> Vec<(String, usize)> {
    let (status, body) = s
        .post(
            "/v1/tasks",
            &json!({"name": "reviews", "labels": ["negative", "positive"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let rows = read_rows("sst2/validation.jsonl", 240);
    let names = ["negative", "positive"];
    let examples: Vec<Value> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            // The rater flips every fourth label; the rule only speaks on a few words.
            let rater = if i % 4 == 0 { 1 - r.label } else { r.label };
            let mut weak =
                vec![json!({"source": "rater", "label": names[rater], "confidence": 0.75})];
            let text = r.text.to_lowercase();
            if ["bad", "dull", "worst", "boring"]
                .iter()
                .any(|w| text.contains(w))
            {
                weak.push(json!({"source": "keywords", "label": "negative"}));
            } else if ["great", "best", "beautiful", "fun"]
                .iter()
                .any(|w| text.contains(w))
            {
                weak.push(json!({"source": "keywords", "label": "positive"}));
            }
            let mut e = json!({"id": format!("r{i}"), "text": r.text, "weak_labels": weak});
            if i % 3 == 0 {
                e["gold_label"] = json!(names[r.label]);
            }
            e
        })
        .collect();
    let (status, body) = s
        .post(
            "/v1/tasks/reviews/examples",
            &json!({ "examples": examples }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    run_job(s, "reviews", json!({"mode": "head"})).await;
    settled(s, "reviews").await;
    rows.iter()
        .enumerate()
        .map(|(i, r)| (format!("r{i}"), r.label))
        .collect()
}

async fn dashboard_in_a_browser(backend: Backend) {
    if !have_datasets() || !have_chromium() {
        return;
    }
    let Some(s) = TestServer::start(Options::new(backend, ModelKind::Real)).await else {
        return;
    };
    let truth = seed(&s).await;
    let shots = std::env::var("SW2S_UI_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| s.dir.path().join("screenshots"))
        .join(backend_name(backend));
    let driver = Driver::start().await;
    let c = &driver.client;

    // Tasks: the row's numbers are the API's.
    let (_, task) = s.get("/v1/tasks/reviews").await;
    c.goto(&s.url("/ui/")).await.unwrap();
    let row = c
        .find(Locator::Css("tr[data-task='reviews']"))
        .await
        .expect("the task's row");
    let examples = row
        .find(Locator::Css("[data-field='examples']"))
        .await
        .unwrap();
    assert_eq!(examples.text().await.unwrap(), task["examples"].to_string());
    for (source, n) in task["decisions"].as_object().unwrap() {
        if n.as_i64() == Some(0) {
            continue;
        }
        let pill = row
            .find(Locator::Css(&format!("[data-source='{source}']")))
            .await
            .unwrap_or_else(|_| panic!("no {source} in the decision mix"));
        assert_eq!(pill.attr("data-n").await.unwrap(), Some(n.to_string()));
    }
    let job = row.find(Locator::Css("[data-field='job']")).await.unwrap();
    assert!(
        job.text().await.unwrap().contains("succeeded"),
        "{}",
        job.text().await.unwrap()
    );
    assert_eq!(
        row.find(Locator::Css("[data-field='version']"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "v1"
    );
    driver.screenshot(&shots, "tasks.png").await;

    // The task page: every chart drawn, with the API's numbers.
    let (_, d) = s.get("/v1/tasks/reviews/dashboard").await;
    c.goto(&s.url("/ui/tasks/reviews")).await.unwrap();
    driver
        .wait_for("the dashboard", "return document.body.dataset.loaded")
        .await;
    let charts = c
        .execute(
            "const g = (id) => Chart.getChart(id).data;
             return {
               shares: g('shares').datasets.map((d) => d.counts),
               reliability: g('reliability').datasets[1].data,
               coverage: g('coverage').datasets[0].data,
               timeline: g('timeline').datasets.map((d) => [d.label, d.data.reduce((a, b) => a + b, 0)]),
               versions: g('versions_chart').datasets[0].data,
               loss: g('loss').datasets[0].data,
               jobs: document.querySelectorAll('#jobs tbody tr[data-job]').length,
               active: document.querySelector('#models tr[data-version=\"1\"]').textContent,
               sources: [...document.querySelectorAll('#sources tbody tr[data-source]')].map((r) => r.dataset.source),
               thresholds: document.getElementById('thresholds').textContent,
               gold_use: document.getElementById('gold_use').textContent,
             };",
            vec![],
        )
        .await
        .unwrap();
    // No target is set; the training threshold (train_precision's default) is said in words.
    let train_reason = d["report"]["train_precision"]["reason"]
        .as_str()
        .expect("a training threshold fitted at the job");
    assert!(d["report"]["target_precision"].is_null());
    assert_eq!(
        charts["thresholds"],
        json!(format!("train_precision: {train_reason}"))
    );
    // Every gold label was sent without `picked`: all 80 judge, as the page says.
    assert_eq!(d["report"]["gold_use"]["judging"], 80, "{}", d["report"]);
    assert_eq!(
        charts["gold_use"],
        json!(format!(
            "Gold: {}.",
            d["report"]["gold_use"]["reason"].as_str().unwrap()
        ))
    );
    let shares = &d["shares"];
    assert_eq!(
        charts["shares"],
        json!([
            shares["weak"],
            shares["refined"],
            shares["decision"],
            shares["gold"]
        ])
    );
    // Independent of the dashboard endpoint: 80 gold labels, split as the data is.
    let gold: Vec<i64> = (0..2)
        .map(|l| {
            truth
                .iter()
                .enumerate()
                .filter(|(i, (_, t))| i % 3 == 0 && *t == l)
                .count() as i64
        })
        .collect();
    assert_eq!(charts["shares"][3], json!(gold));
    let weak_total: i64 = shares["weak"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .sum();
    assert_eq!(weak_total, 240, "every example has a weak aggregate");
    let bins = d["report"]["strong_confidence"]["reliability"]
        .as_array()
        .expect("P(IK) reliability bins");
    assert!(!bins.is_empty());
    let drawn = charts["reliability"].as_array().unwrap();
    assert_eq!(drawn.len(), bins.len());
    for (p, b) in drawn.iter().zip(bins) {
        let f = |v: &Value| v.as_f64().expect("a number");
        assert_eq!(
            (f(&p["x"]), f(&p["y"]), f(&p["n"])),
            (f(&b["confidence"]), f(&b["accuracy"]), f(&b["count"]))
        );
    }
    assert_eq!(
        bins.iter()
            .map(|b| b["count"].as_i64().unwrap())
            .sum::<i64>(),
        80,
        "the bins hold every gold example"
    );
    assert_eq!(
        charts["coverage"].as_array().unwrap().len(),
        d["report"]["decision_calibration"]["precision_coverage"]
            .as_array()
            .unwrap()
            .len()
    );
    let decided: i64 = charts["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_i64().unwrap())
        .sum();
    assert!(
        decided >= 240,
        "at least one decision per example: {decided}"
    );
    assert_eq!(charts["versions"].as_array().unwrap().len(), 1);
    assert_eq!(
        charts["versions"][0].as_f64(),
        d["models"]["versions"][0]["manifest"]["metrics"]["pik"]["auroc"].as_f64()
    );
    let curve = d["jobs"][0]["progress"]["loss_curve"]
        .as_array()
        .expect("the finished job keeps its loss curve");
    assert!(!curve.is_empty());
    assert_eq!(charts["loss"].as_array().unwrap().len(), curve.len());
    assert_eq!(charts["jobs"], 1);
    assert!(charts["active"].as_str().unwrap().contains("active"));
    assert_eq!(charts["sources"], json!(["keywords", "rater"]));
    driver.screenshot(&shots, "task.png").await;

    // The review queue: three examples labelled with the keyboard arrive as gold labels.
    c.goto(&s.url("/ui/tasks/reviews/review")).await.unwrap();
    let mut labelled = vec![];
    for i in 0..3 {
        let id = driver
            .wait_for(
                "an example to review",
                &format!(
                    "const r = document.body.dataset.ready; return r && r !== 'empty' && !{prev}.includes(r) ? r : null;",
                    prev = json!(labelled.iter().map(|(id, _)| id).collect::<Vec<&String>>())
                ),
            )
            .await
            .as_str()
            .unwrap()
            .to_string();
        let label = truth.iter().find(|(e, _)| *e == id).expect("a seeded id").1;
        if i == 0 {
            driver.screenshot(&shots, "review.png").await;
        }
        let key = (label + 1).to_string();
        c.find(Locator::Css("body"))
            .await
            .unwrap()
            .send_keys(&key)
            .await
            .unwrap();
        labelled.push((id, label));
    }
    driver
        .wait_for(
            "the third label to be sent",
            &format!(
                "return document.getElementById('status').textContent.startsWith({})",
                json!(labelled[2].0)
            ),
        )
        .await;
    for (id, label) in &labelled {
        let (status, e) = s.get(&format!("/v1/tasks/reviews/examples/{id}")).await;
        assert_eq!(status, 200);
        assert_eq!(
            e["gold_label"],
            ["negative", "positive"][*label],
            "{id} was labelled from the review page"
        );
        assert_eq!(e["gold_picked"], "review", "hardest first: {e}");
    }
    // The page links to the fair sample, which shows the API's first sampled example.
    let link = driver
        .wait_for(
            "the fair-sample link",
            "const a = document.querySelector('#order a'); return a && a.getAttribute('href');",
        )
        .await;
    assert_eq!(link, "?order=sample");
    c.goto(&s.url("/ui/tasks/reviews/review?order=sample"))
        .await
        .unwrap();
    let shown = driver
        .wait_for(
            "a sampled example",
            "const r = document.body.dataset.ready; return r && r !== 'empty' ? r : null;",
        )
        .await;
    let (_, sample) = s
        .get("/v1/tasks/reviews/review_queue?order=sample&limit=1")
        .await;
    assert_eq!(shown, sample["items"][0]["id"]);
    let said = driver
        .wait_for(
            "its reason and the mode",
            "return document.getElementById('reason').textContent + ' | ' + document.getElementById('order').textContent;",
        )
        .await;
    let said = said.as_str().unwrap_or_default();
    assert!(
        said.starts_with("fair sample") && said.contains("| Fair sample"),
        "{said}"
    );
    // Labelled from the fair sample, it says so.
    let id = shown.as_str().unwrap().to_string();
    let label = truth.iter().find(|(e, _)| *e == id).expect("a seeded id").1;
    c.find(Locator::Css("body"))
        .await
        .unwrap()
        .send_keys(&(label + 1).to_string())
        .await
        .unwrap();
    driver
        .wait_for(
            "the sampled label to be sent",
            &format!(
                "return document.getElementById('status').textContent.startsWith({})",
                json!(id)
            ),
        )
        .await;
    let (_, e) = s.get(&format!("/v1/tasks/reviews/examples/{id}")).await;
    assert_eq!(
        (&e["gold_label"], &e["gold_picked"]),
        (
            &json!(["negative", "positive"][label].to_string()),
            &json!("random")
        ),
        "{e}"
    );

    // Rollback from the page: a second job makes v2 active; the v1 button activates v1 again.
    run_job(&s, "reviews", json!({"mode": "head"})).await;
    c.goto(&s.url("/ui/tasks/reviews")).await.unwrap();
    driver
        .wait_for("the dashboard", "return document.body.dataset.loaded")
        .await;
    c.find(Locator::Css(
        "button[data-action='activate'][data-version='1']",
    ))
    .await
    .expect("an activate button for v1")
    .click()
    .await
    .unwrap();
    let mut active = Value::Null;
    for _ in 0..100 {
        active = s.get("/v1/tasks/reviews/models").await.1["active_version"].clone();
        if active == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(active, 1, "the page's button activated v1");
    driver
        .wait_for(
            "the page to show v1 active",
            "return document.querySelector('#models tr[data-version=\"1\"]').textContent.includes('active')",
        )
        .await;
    driver.finish().await;
    s.finish().await;
}

fn backend_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    }
}

both_backends!(dashboard_pages, super::dashboard_in_a_browser);
