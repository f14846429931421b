//! The strong model runtime: parity with sentence-transformers on the real MiniLM, batching
//! invisible to results, tokenizer limits, the bounded queue, /info and predictions.

use std::sync::Arc;

use crate::common::{
    assert_error, real_model_dir, wait_job, Backend, ModelKind, Options, TestServer,
};
use serde_json::{json, Value};
use sw2s::model::Overlong;
use sw2s::model::{BatchConfig, Encoder, ModelWorker};

pub(crate) fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64) * (*y as f64))
        .sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// The lowest cosine between paired vectors.
pub(crate) fn lowest_cosine(got: &[Vec<f32>], want: &[Vec<f32>]) -> f64 {
    got.iter()
        .zip(want)
        .map(|(g, w)| cosine(g, w))
        .fold(1.0, f64::min)
}

/// Embeddings over HTTP match vectors computed once with sentence-transformers
/// (scripts/reference_embeddings.py).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_model_matches_sentence_transformers() {
    let fixture: Value =
        serde_json::from_str(include_str!("../fixtures/minilm_reference.json")).unwrap();
    let sentences: Vec<String> = serde_json::from_value(fixture["sentences"].clone()).unwrap();
    let reference: Vec<Vec<f32>> = serde_json::from_value(fixture["embeddings"].clone()).unwrap();
    let s = TestServer::start(Options::new(Backend::Sqlite, ModelKind::Real))
        .await
        .unwrap();
    let (status, info) = s.get("/info").await;
    assert_eq!(status, 200);
    assert_eq!(
        info["model"]["model_id"],
        "sentence-transformers/all-MiniLM-L6-v2"
    );
    assert_eq!(
        info["model"]["sha256"],
        sw2s::model::fetch::DEFAULT_MODEL_SHA256
    );
    assert_eq!(info["model"]["max_length"], fixture["max_seq_length"]);
    assert_eq!(info["device"], "cpu");
    let (status, body) = s.post("/v1/embed", &json!({ "texts": sentences })).await;
    assert_eq!(status, 200, "{body}");
    let got: Vec<Vec<f32>> = serde_json::from_value(body["embeddings"].clone()).unwrap();
    let worst = lowest_cosine(&got, &reference);
    eprintln!(
        "parity with sentence-transformers: lowest cosine {worst:.7} over {} sentences",
        got.len()
    );
    for (i, (g, r)) in got.iter().zip(&reference).enumerate() {
        assert_eq!(g.len(), 384);
        let c = cosine(g, r);
        assert!(c >= 0.9999, "sentence {i} {:?}: cosine {c}", sentences[i]);
        let norm: f32 = g.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }
    // The 400-word sentence is over the 256-token limit: cut like sentence-transformers does.
    assert_eq!(body["truncated"], json!([9]));
    s.finish().await;
}

/// The same text gives the same vector alone or inside any batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_is_invisible_to_results() {
    let dir = tokio::task::spawn_blocking(real_model_dir).await.unwrap();
    let encoder = tokio::task::spawn_blocking(move || Encoder::load(&dir))
        .await
        .unwrap()
        .unwrap();
    let bert = encoder.backbone.clone();
    let texts = [
        "short",
        "a medium length sentence about the weather today",
        "an even longer sentence that goes on and on, with commas, clauses and a few more words at the end",
        "mid-size text, again",
        "x y z",
    ];
    let encoded = encoder
        .tokenizer
        .tokenize(&texts, Overlong::Truncate)
        .unwrap();
    for config in [
        BatchConfig {
            max_batch_size: 32,
            max_batch_tokens: 16_384,
            max_queue_texts: 64,
        },
        BatchConfig {
            max_batch_size: 2,
            max_batch_tokens: 16_384,
            max_queue_texts: 64,
        },
        BatchConfig {
            max_batch_size: 32,
            max_batch_tokens: 40,
            max_queue_texts: 64,
        },
    ] {
        let worker = ModelWorker::start(config).unwrap();
        let together = worker.embed(&bert, encoded.clone()).await.unwrap();
        for (i, e) in encoded.iter().enumerate() {
            let alone = worker.embed(&bert, vec![e.clone()]).await.unwrap();
            let diff = alone[0]
                .iter()
                .zip(&together[i])
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-5, "text {i} differs by {diff} under {config:?}");
        }
        // Concurrent requests batch together and still get their own answers.
        let handles: Vec<_> = encoded
            .iter()
            .map(|e| {
                let worker = worker.clone();
                let bert = Arc::clone(&bert);
                let e = e.clone();
                tokio::spawn(async move { worker.embed(&bert, vec![e]).await.unwrap() })
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            let v = h.await.unwrap();
            let diff = v[0]
                .iter()
                .zip(&together[i])
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-5, "concurrent text {i} differs by {diff}");
        }
    }
}

/// The tokenizer's built-in fixed padding/truncation is replaced by the model's limit. A
/// longer text is cut by `/v1/embed` (as sentence-transformers does), read whole by a task
/// (the mean of its windows; the task setting `long_texts`), and refused by setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlong_texts_are_chunked_truncated_or_refused_by_setting() {
    let long = "word ".repeat(80);
    let short = "hello there, this has more than sixteen tokens in it";
    let texts = json!({ "texts": [short, long] });
    let cosine = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let vectors = |body: &Value| -> Vec<Vec<f32>> {
        serde_json::from_value(body["embeddings"].clone()).unwrap()
    };

    let s = TestServer::start(
        Options::new(Backend::Sqlite, ModelKind::Tiny).flag("on-overlong", "chunk"),
    )
    .await
    .unwrap();
    let (_, info) = s.get("/info").await;
    assert_eq!(info["on_overlong"], "chunk", "{info}");
    let (status, body) = s.post("/v1/embed", &texts).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["truncated"], json!([]));
    assert_eq!(body["chunked"], json!([1]));
    let whole = vectors(&body);
    let norm: f32 = whole[1].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    s.finish().await;

    // The default server: /v1/embed cuts; tasks read long texts whole unless set otherwise.
    let s = TestServer::start(Options::new(Backend::Sqlite, ModelKind::Tiny))
        .await
        .unwrap();
    let (_, info) = s.get("/info").await;
    assert_eq!(info["on_overlong"], "truncate", "{info}");
    let (status, body) = s.post("/v1/embed", &texts).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["truncated"],
        json!([1]),
        "only the text over 64 tokens is cut, not the one over 16"
    );
    assert_eq!(body["chunked"], json!([]));
    let cut = vectors(&body);
    let diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    assert!(
        diff(&whole[0], &cut[0]) < 1e-5,
        "a text that fits is the same"
    );
    assert!(
        diff(&whole[1], &cut[1]) > 1e-3,
        "the rest of the text counts"
    );
    for (name, settings, want) in [
        ("whole", json!({}), cosine(&whole[0], &whole[1])),
        (
            "cut",
            json!({"long_texts": "truncate"}),
            cosine(&cut[0], &cut[1]),
        ),
    ] {
        let (status, body) = s
            .post(
                "/v1/tasks",
                &json!({"name": name, "labels": ["a", "b"], "settings": settings}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = s
            .post(
                &format!("/v1/tasks/{name}/examples"),
                &json!({"examples": [{"id": "1", "text": short}, {"id": "2", "text": long}]}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (_, example) = s.get(&format!("/v1/tasks/{name}/examples/2")).await;
        let got = example["neighbours"][0]["similarity"].as_f64().unwrap() as f32;
        assert!(
            (got - want).abs() < 1e-4,
            "{name}: similarity {got}, want {want}"
        );
    }
    let (_, task) = s.get("/v1/tasks/whole").await;
    assert_eq!(task["settings"]["long_texts"], "chunk", "{task}");
    // Changing the setting re-embeds what is stored: the cut text is read whole now, and
    // only it (the short one embeds the same either way).
    let (status, body) = s
        .patch(
            "/v1/tasks/cut",
            &json!({"settings": {"long_texts": "chunk"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["settings"]["long_texts"], "chunk", "{body}");
    assert_eq!(
        (&body["job"]["mode"], &body["job"]["trigger"]),
        (&json!("reembed"), &json!("settings")),
        "{body}"
    );
    let job = wait_job(&s, "cut", body["job"]["id"].as_i64().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["metrics"]["reembedded"], 1, "{job}");
    assert_eq!(job["model_version"], Value::Null, "{job}");
    let (_, example) = s.get("/v1/tasks/cut/examples/2").await;
    let got = example["neighbours"][0]["similarity"].as_f64().unwrap() as f32;
    let want = cosine(&whole[0], &whole[1]);
    assert!(
        (got - want).abs() < 1e-4,
        "after the change: {got}, want {want}"
    );
    // Other settings queue nothing.
    let (status, body) = s
        .patch("/v1/tasks/cut", &json!({"settings": {"knn_k": 5}}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("job").is_none(), "{body}");
    s.finish().await;

    let s = TestServer::start(
        Options::new(Backend::Sqlite, ModelKind::Tiny).flag("on-overlong", "refuse"),
    )
    .await
    .unwrap();
    let resp = s.post("/v1/embed", &json!({"texts": ["fine", long]})).await;
    assert_error(&resp, 422, "text_too_long");
    assert!(
        resp.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("texts[1]"),
        "{}",
        resp.1
    );
    s.post("/v1/tasks", &json!({"name": "t", "labels": ["a", "b"]}))
        .await;
    let resp = s
        .post(
            "/v1/tasks/t/examples",
            &json!({"examples": [{"id": "1", "text": "ok"}, {"id": "2", "text": long}]}),
        )
        .await;
    assert_error(&resp, 422, "text_too_long");
    assert!(
        resp.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("examples[1].text"),
        "{}",
        resp.1
    );
    let (_, task) = s.get("/v1/tasks/t").await;
    assert_eq!(task["examples"], 0);
    s.finish().await;
}

/// A full queue answers 429 with Retry-After instead of queueing without bound; a long text
/// read whole takes a place per window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_429() {
    let s = TestServer::start(
        Options::new(Backend::Sqlite, ModelKind::Real)
            .flag("max-queue-texts", "16")
            .flag("max-batch-size", "4")
            .flag("on-overlong", "chunk"),
    )
    .await
    .unwrap();
    let sentence = "a rather long sentence to keep the model busy ";
    let heavy: Vec<String> = (0..16)
        .map(|i| format!("{i} {}", sentence.repeat(12)))
        .collect();
    assert!(
        fills_the_queue(&s, json!({"texts": heavy})).await,
        "no 429 while 16 texts filled the queue"
    );
    // One text of about 3,800 tokens: 18 windows of MiniLM's 256, more than the 16 places.
    let long = sentence.repeat(420);
    assert!(
        fills_the_queue(&s, json!({"texts": [long]})).await,
        "no 429 while one long text's windows filled the queue"
    );
    s.finish().await;
}

/// Sends `body` to /v1/embed and, once /ready says the queue has no room, one short text,
/// which must be refused; then checks that `body` still completes and the queue is free
/// again. (Probing only then keeps a probe from taking a place before `body` does.)
async fn fills_the_queue(s: &TestServer, body: Value) -> bool {
    let client = s.client.clone();
    let url = s.url("/v1/embed");
    let big =
        tokio::spawn(async move { client.post(url).json(&body).send().await.unwrap().status() });
    let mut saw_429 = false;
    for _ in 0..500 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        if big.is_finished() {
            break;
        }
        let (ready, _) = s.get("/ready").await;
        if ready != 503 {
            continue;
        }
        let r = s
            .client
            .post(s.url("/v1/embed"))
            .json(&json!({"texts": ["one more"]}))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            assert!(r.headers().get("retry-after").is_some());
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "overloaded");
            saw_429 = true;
            break;
        }
        if big.is_finished() {
            break;
        }
    }
    assert_eq!(
        big.await.unwrap(),
        200,
        "the request holding the queue still completes"
    );
    let (status, _) = s
        .post("/v1/embed", &json!({"texts": ["after the rush"]}))
        .await;
    assert_eq!(status, 200);
    saw_429
}

/// Ingest stores the encoder's embedding; predict without a trained version says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_stores_embeddings_and_predict_needs_a_version() {
    let s = TestServer::start(Options::new(Backend::Sqlite, ModelKind::Tiny))
        .await
        .unwrap();
    s.post("/v1/tasks", &json!({"name": "t", "labels": ["a", "b"]}))
        .await;
    let (status, _) = s
        .post(
            "/v1/tasks/t/examples",
            &json!({"examples": [{"id": "1", "text": "store my vector"}]}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, embedded) = s
        .post("/v1/embed", &json!({"texts": ["store my vector"]}))
        .await;
    let expected: Vec<f32> = serde_json::from_value(embedded["embeddings"][0].clone()).unwrap();
    let task = s.service().task("t").await.unwrap();
    let row = sw2s::store::examples::by_external_id(s.service().store.pool(), task.id, "1")
        .await
        .unwrap()
        .unwrap();
    let stored = sw2s::store::examples::embeddings_of(s.service().store.pool(), &[row.id])
        .await
        .unwrap();
    let stored = sw2s::store::bytes_to_f32s(&stored[0].embedding);
    assert_eq!(stored.len(), 32);
    let diff = stored
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-5);

    let (status, body) = s
        .post("/v1/tasks/t/predict", &json!({"texts": ["anything"]}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["model_version"], Value::Null);
    assert_eq!(body["predictions"][0]["label"], Value::Null);
    assert_eq!(body["predictions"][0]["p_ik_source"], "none");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("no trained model version"));
    assert_error(
        &s.post("/v1/tasks/zzz/predict", &json!({"texts": ["x"]}))
            .await,
        404,
        "not_found",
    );
    s.finish().await;
}

/// all-mpnet-base-v2 through sw2s's own MPNet port matches sentence-transformers
/// (scripts/reference_embeddings.py), the 400-word text cut at its 384 tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mpnet_matches_sentence_transformers() {
    let fixture: Value =
        serde_json::from_str(include_str!("../fixtures/mpnet_reference.json")).unwrap();
    let sentences: Vec<String> = serde_json::from_value(fixture["sentences"].clone()).unwrap();
    let reference: Vec<Vec<f32>> = serde_json::from_value(fixture["embeddings"].clone()).unwrap();
    let encoder = crate::common::catalogue_encoder("mpnet-base").await;
    assert_eq!(encoder.info.family, "mpnet");
    assert_eq!(encoder.info.dims, 768);
    assert_eq!(encoder.info.max_length, 384);
    assert!(encoder.info.trainable(), "MPNet is trainable like BERT");
    let texts: Vec<&str> = sentences.iter().map(|s| s.as_str()).collect();
    let encoded = encoder
        .tokenizer
        .tokenize(&texts, Overlong::Truncate)
        .unwrap();
    let refs: Vec<&sw2s::model::Encoded> = encoded.iter().collect();
    let got = encoder.backbone.embed(&refs).unwrap();
    let worst = lowest_cosine(&got, &reference);
    eprintln!("MPNet parity with sentence-transformers: lowest cosine {worst:.7}");
    assert!(worst >= 0.9999, "lowest cosine {worst}");

    // What a GPU serves (`--device cuda`): candle's padded forward instead of the packed
    // kernels, run here on the CPU against the same reference.
    let device = candle_core::Device::Cpu;
    let bert = sw2s::model::encoder::load_bert(
        &sw2s::model::encoder::read_config(&encoder.dir).unwrap(),
        &encoder.dir.join("model.safetensors"),
        None,
        &device,
    )
    .unwrap();
    let padded = sw2s::model::Backbone::Padded(bert, device);
    let worst = lowest_cosine(&padded.embed(&refs).unwrap(), &reference);
    eprintln!("MPNet, the GPU's padded path on the CPU: lowest cosine {worst:.7}");
    assert!(worst >= 0.9999, "padded path: lowest cosine {worst}");
}

/// `--device`: a GPU asked of a build without the `cuda` feature, or a device that is not
/// one, stops the start with a message saying what to do, before the data dir is touched.
#[test]
fn serve_refuses_a_device_it_cannot_open() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let model = crate::common::tiny_model_dir(tmp.path());
    let serve = |device: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sw2s"))
            .args(["serve", "--addr", "127.0.0.1:0", "--device", device])
            .arg("--data-dir")
            .arg(&data)
            .arg("--model-dir")
            .arg(&model)
            .env("SW2S_LOG", "warn")
            .output()
            .unwrap();
        (out.status, String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (status, stderr) = serve("tpu");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("use cpu, cuda or cuda:N"), "{stderr}");
    if !sw2s::model::ComputeDevice::CUDA_BUILT {
        let (status, stderr) = serve("cuda:0");
        assert!(!status.success(), "{stderr}");
        assert!(
            stderr.contains("built without GPU support") && stderr.contains("--features cuda"),
            "{stderr}"
        );
        assert!(!data.exists(), "nothing is written before the device opens");
    }
}

/// DistilBERT, XLM-RoBERTa and ModernBERT run through candle-transformers: tiny random
/// models written by transformers (scripts/reference_encoders.py) give the features
/// transformers gives, batched with padding here against each text alone there.
#[test]
fn candle_transformers_encoders_match_transformers() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/encoders");
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("reference.json")).unwrap())
            .unwrap();
    let texts: Vec<Vec<u32>> = serde_json::from_value(reference["texts"].clone()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // Any tokenizer.json will do: the test feeds the reference's token ids directly.
    sw2s::model::testing::write_tiny_bert(&tmp.path().join("tiny"), 1).unwrap();
    for family in ["distilbert", "xlm-roberta", "modernbert"] {
        let dir = tmp.path().join(family);
        std::fs::create_dir_all(&dir).unwrap();
        for file in ["config.json", "model.safetensors"] {
            std::fs::copy(fixtures.join(family).join(file), dir.join(file)).unwrap();
        }
        std::fs::copy(
            tmp.path().join("tiny/tokenizer.json"),
            dir.join("tokenizer.json"),
        )
        .unwrap();
        let encoder = Encoder::load(&dir).unwrap_or_else(|e| panic!("{family}: {e:#}"));
        assert_eq!(encoder.info.family, family);
        assert_eq!(encoder.info.pooling, "mean");
        assert_eq!(encoder.info.jobs, vec!["head".to_string()], "{family}");
        let encoded: Vec<sw2s::model::Encoded> = texts
            .iter()
            .map(|ids| sw2s::model::Encoded {
                ids: ids.clone(),
                type_ids: vec![0; ids.len()],
                truncated: false,
                overflow: vec![],
            })
            .collect();
        let refs: Vec<&sw2s::model::Encoded> = encoded.iter().collect();
        let got = encoder.backbone.embed(&refs).unwrap();
        let want: Vec<Vec<f32>> =
            serde_json::from_value(reference["families"][family].clone()).unwrap();
        let worst = lowest_cosine(&got, &want);
        eprintln!("{family}: lowest cosine to transformers {worst:.7}");
        assert!(worst >= 0.9999, "{family}: lowest cosine {worst}");
    }
}
