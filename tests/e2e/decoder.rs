//! Decoder LMs as the strong model: parity of SmolLM2 (Llama) and Gemma 3 features and
//! tokens with Hugging Face transformers, and a server on SmolLM2 over HTTP — ingest, a head
//! job with a trained P(IK) on its hidden states, decisions, and `full` refused with 422.

use crate::common::{
    assert_error, catalogue_encoder, catalogue_encoder_pooled, wait_job, Backend, ModelKind,
    Options, TestServer,
};
use crate::model::cosine;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sw2s::model::Overlong;

/// Against the float model transformers dequantizes from the same GGUF file
/// (scripts/reference_decoder.py): the same token ids, and the same features (sw2s also
/// dequantizes these small models at load; with the weights left quantized candle
/// quantizes activations to 8 bits per block and SmolLM2 measured cosine 0.9995).
async fn parity(name: &'static str, fixture: &str, dims: usize, family: &str, tolerance: f64) {
    let fixture: Value = serde_json::from_str(fixture).unwrap();
    let encoder = catalogue_encoder(name).await;
    assert_eq!(encoder.info.family, family);
    assert_eq!(encoder.info.pooling, "last_token");
    assert_eq!(encoder.info.dims, dims);
    assert_eq!(encoder.info.jobs, vec!["head".to_string()]);
    assert!(!encoder.info.trainable());
    let rows = fixture["rows"].as_array().unwrap();
    let texts: Vec<&str> = rows.iter().map(|r| r["text"].as_str().unwrap()).collect();
    let encoded = encoder
        .tokenizer
        .tokenize(&texts, Overlong::Truncate)
        .unwrap();
    for (row, e) in rows.iter().zip(&encoded) {
        let want: Vec<u32> = serde_json::from_value(row["ids"].clone()).unwrap();
        assert_eq!(e.ids, want, "{name}: token ids of {:?}", row["text"]);
    }
    let refs: Vec<&sw2s::model::Encoded> = encoded.iter().collect();
    let together = encoder.backbone.embed(&refs).unwrap();
    let mut worst = 1.0f64;
    for ((row, got), e) in rows.iter().zip(&together).zip(&encoded) {
        let want: Vec<f32> = serde_json::from_value(row["last_token"].clone()).unwrap();
        assert_eq!(got.len(), dims);
        let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-4,
            "features are unit length: {norm}"
        );
        let c = cosine(got, &want);
        worst = worst.min(c);
        eprintln!("{name}: {} tokens, cosine {c:.5}", e.len());
        assert!(
            c >= tolerance || std::env::var("SW2S_PARITY_REPORT").is_ok(),
            "{name}: cosine {c:.5} < {tolerance} for {:?}",
            row["text"]
        );
        // Alone or in a batch: the same vector.
        let alone = encoder.backbone.embed(&[e]).unwrap();
        assert!(
            cosine(&alone[0], got) > 0.99999,
            "{name}: batching changed a vector"
        );
    }
    eprintln!(
        "{name}: token ids equal on {} texts; lowest cosine to transformers' float model {worst:.5}",
        rows.len()
    );
    // `--decoder-pooling mean`: the mean of every token's final state but BOS's.
    let mean = catalogue_encoder_pooled(name, Some(sw2s::model::DecoderPooling::Mean)).await;
    assert_eq!(mean.info.pooling, "mean");
    assert_ne!(mean.info.features_id(), encoder.info.features_id());
    let pooled = mean.backbone.embed(&refs).unwrap();
    let mut worst = 1.0f64;
    for (row, got) in rows.iter().zip(&pooled) {
        let want: Vec<f32> = serde_json::from_value(row["mean"].clone()).unwrap();
        worst = worst.min(cosine(got, &want));
    }
    eprintln!("{name}: mean pooling, lowest cosine to transformers {worst:.5}");
    assert!(worst >= tolerance, "{name}: mean pooling cosine {worst:.5}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_matches_transformers() {
    parity(
        "smollm2-135m",
        include_str!("../fixtures/smollm2_reference.json"),
        576,
        "llama",
        0.9999,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemma3_matches_transformers() {
    parity(
        "gemma3-270m",
        include_str!("../fixtures/gemma3_reference.json"),
        640,
        "gemma3",
        0.9999,
    )
    .await;
}

/// 160 SciQ questions with an answer, weak labels right 70% of the time, 60 gold labels.
/// On PostgreSQL the server runs with `--decoder-pooling mean`, so both poolings serve the
/// whole scenario.
async fn serve_decoder(backend: Backend) {
    if !crate::data::have_datasets() {
        return;
    }
    let mut options = Options::new(backend, ModelKind::Catalogue("smollm2-135m"));
    let pooling = match backend {
        Backend::Postgres => {
            options = options.flag("decoder-pooling", "mean");
            "mean"
        }
        Backend::Sqlite => "last_token",
    };
    let Some(s) = TestServer::start(options).await else {
        return;
    };
    let (status, info) = s.get("/info").await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["model"]["family"], "llama", "{info}");
    assert_eq!(info["model"]["pooling"], pooling);
    assert_eq!(info["model"]["dtype"], "Q4_1 (dequantized to F32)");
    assert_eq!(info["model"]["jobs"], json!(["head"]));
    assert_eq!(info["model"]["dims"], 576);

    let (status, body) = s
        .post(
            "/v1/tasks",
            &json!({"name": "sciq", "labels": ["wrong", "right"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // A full job cannot run on a quantized decoder: refused as a request and as a setting.
    assert_error(
        &s.post("/v1/tasks/sciq/jobs", &json!({"mode": "full"}))
            .await,
        422,
        "model_not_trainable",
    );
    assert_error(
        &s.patch("/v1/tasks/sciq", &json!({"settings": {"job_mode": "full"}}))
            .await,
        422,
        "model_not_trainable",
    );

    let rows = crate::data::read_rows("sciq/validation.jsonl", 160);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let names = ["wrong", "right"];
    let mut weak_right = 0;
    for chunk in rows.chunks(40) {
        let examples: Vec<Value> = chunk
            .iter()
            .map(|r| {
                let weak = if rng.gen_bool(0.7) {
                    r.label
                } else {
                    1 - r.label
                };
                weak_right += usize::from(weak == r.label);
                json!({"id": r.id, "text": r.text,
                       "weak_labels": [{"source": "noisy", "label": names[weak]}]})
            })
            .collect();
        let (status, body) = s
            .post("/v1/tasks/sciq/examples", &json!({ "examples": examples }))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    for r in &rows[..60] {
        let (status, body) = s
            .put(
                &format!("/v1/tasks/sciq/examples/{}/gold", r.id),
                &json!({"label": names[r.label]}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, job) = s.post("/v1/tasks/sciq/jobs", &json!({})).await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["mode"], "head");
    let job = wait_job(&s, "sciq", job["id"].as_i64().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    // P(IK) is a head on the decoder's hidden state, trained on gold.
    assert_eq!(job["metrics"]["pik"]["source"], "trained", "{job}");
    let (_, models) = s.get("/v1/tasks/sciq/models").await;
    let manifest = &models["versions"][0]["manifest"];
    assert_eq!(manifest["encoder"]["dims"], 576, "{manifest}");
    assert_eq!(manifest["encoder"]["fine_tuned"], false);

    let (status, p) = s
        .post(
            "/v1/tasks/sciq/predict",
            &json!({"texts": [rows[159].text.clone()]}),
        )
        .await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["model_version"], 1);
    assert_eq!(p["predictions"][0]["p_ik_source"], "trained", "{p}");
    let p_ik = p["predictions"][0]["p_ik"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p_ik));

    // Every non-gold example has a decision with a confidence after the job.
    let (_, page) = s.get("/v1/tasks/sciq/examples?limit=1000").await;
    let examples = page["examples"].as_array().unwrap();
    assert_eq!(examples.len(), 160);
    let decided: Vec<&Value> = examples
        .iter()
        .filter(|e| e["gold_label"].is_null())
        .collect();
    assert_eq!(decided.len(), 100);
    assert!(
        decided.iter().all(|e| e["p_ik"].is_number()
            && e["decision"]["label"].is_string()
            && e["decision"]["confidence"].is_number()),
        "{page}"
    );
    let truth: std::collections::HashMap<&str, usize> =
        rows.iter().map(|r| (r.id.as_str(), r.label)).collect();
    let right = decided
        .iter()
        .filter(|e| {
            e["decision"]["label"].as_str() == Some(names[truth[e["id"].as_str().unwrap()]])
        })
        .count();
    eprintln!(
        "SmolLM2 server ({backend:?}, {pooling} pooling): decisions {right}/100 right; weak labels {weak_right}/160"
    );
    s.finish().await;
}

both_backends!(decoder_lm_serves_head_jobs, super::serve_decoder);

/// A decoder's pooling asked of an encoder is refused at load, saying why.
#[test]
fn decoder_pooling_is_refused_for_an_encoder() {
    let root = tempfile::tempdir().unwrap();
    let dir = crate::common::tiny_model_dir(root.path());
    let err = sw2s::model::Encoder::load_pooled(&dir, Some(sw2s::model::DecoderPooling::Mean))
        .err()
        .expect("an encoder with --decoder-pooling");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("--decoder-pooling mean applies to decoder LMs"),
        "{msg}"
    );
    assert!(sw2s::model::Encoder::load_pooled(&dir, None).is_ok());
}
