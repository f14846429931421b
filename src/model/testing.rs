//! A tiny random BERT (or MPNet) written to a directory, or a tiny decoder LM as GGUF, for
//! tests that need the model's plumbing but not its knowledge (the real models are used
//! wherever behaviour depends on it).

use std::collections::HashMap;
use std::path::Path;

use rand::{Rng, SeedableRng};
use serde_json::json;

use super::bert::BertConfig;

pub const TINY_HIDDEN: usize = 32;

/// Characters the tiny vocabulary spells words with (lowercase after normalisation).
const ALPHABET: &str = "abcdefghijklmnopqrstuvwxyz0123456789";
const PUNCT: &str = ".,!?;:'\"-()";

pub fn tiny_config(vocab_size: usize) -> BertConfig {
    BertConfig {
        vocab_size,
        hidden_size: TINY_HIDDEN,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 64,
        hidden_act: "gelu".into(),
        hidden_dropout_prob: 0.1,
        attention_probs_dropout_prob: 0.1,
        max_position_embeddings: 64,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        pad_token_id: 0,
        model_type: Some("bert".into()),
        relative_attention_num_buckets: None,
    }
}

fn vocab() -> Vec<String> {
    let mut v: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for c in ALPHABET.chars().chain(PUNCT.chars()) {
        v.push(c.to_string());
    }
    for c in ALPHABET.chars() {
        v.push(format!("##{c}"));
    }
    v
}

/// Writes config.json, model.safetensors and tokenizer.json of a random 2-layer BERT with
/// a character-level WordPiece vocabulary and a 64-token limit.
pub fn write_tiny_bert(dir: &Path, seed: u64) -> anyhow::Result<()> {
    write_tiny(dir, seed, false)
}

/// The same as an MPNet: MPNet's weight names, a relative-position bias, no token types.
pub fn write_tiny_mpnet(dir: &Path, seed: u64) -> anyhow::Result<()> {
    write_tiny(dir, seed, true)
}

fn write_tiny(dir: &Path, seed: u64, mpnet: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let vocab = vocab();
    let mut config = tiny_config(vocab.len());
    if mpnet {
        config.model_type = Some("mpnet".into());
        config.relative_attention_num_buckets = Some(32);
    }
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    std::fs::write(
        dir.join(super::fetch::MODEL_ID_FILE),
        "sw2s/tiny-random-bert",
    )?;

    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let h = config.hidden_size;
    let i = config.intermediate_size;
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        (
            "embeddings.word_embeddings.weight".into(),
            vec![config.vocab_size, h],
        ),
        (
            "embeddings.position_embeddings.weight".into(),
            vec![config.max_position_embeddings, h],
        ),
        ("embeddings.LayerNorm.weight".into(), vec![h]),
        ("embeddings.LayerNorm.bias".into(), vec![h]),
    ];
    let (q, k, v, o, attn_norm) = if mpnet {
        shapes.push((
            "encoder.relative_attention_bias.weight".into(),
            vec![32, config.num_attention_heads],
        ));
        (
            "attention.attn.q",
            "attention.attn.k",
            "attention.attn.v",
            "attention.attn.o",
            "attention.LayerNorm",
        )
    } else {
        shapes.push(("embeddings.token_type_embeddings.weight".into(), vec![2, h]));
        (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "attention.output.LayerNorm",
        )
    };
    for l in 0..config.num_hidden_layers {
        let p = format!("encoder.layer.{l}");
        for (name, shape) in [
            (q, vec![h, h]),
            (k, vec![h, h]),
            (v, vec![h, h]),
            (o, vec![h, h]),
            ("intermediate.dense", vec![i, h]),
            ("output.dense", vec![h, i]),
        ] {
            let out = shape[0];
            shapes.push((format!("{p}.{name}.weight"), shape));
            shapes.push((format!("{p}.{name}.bias"), vec![out]));
        }
        for norm in [attn_norm, "output.LayerNorm"] {
            shapes.push((format!("{p}.{norm}.weight"), vec![h]));
            shapes.push((format!("{p}.{norm}.bias"), vec![h]));
        }
    }
    let mut data: HashMap<String, (Vec<usize>, Vec<u8>)> = HashMap::new();
    for (name, shape) in shapes {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = if name.contains("LayerNorm.weight") {
            (0..n).map(|_| 1.0 + rng.gen_range(-0.1..0.1)).collect()
        } else if name.ends_with(".bias") {
            (0..n).map(|_| rng.gen_range(-0.02..0.02)).collect()
        } else {
            (0..n).map(|_| rng.gen_range(-0.1..0.1)).collect()
        };
        data.insert(
            name,
            (shape, values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        );
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(name, (shape, bytes))| {
            Ok((
                name.clone(),
                safetensors::tensor::TensorView::new(
                    safetensors::tensor::Dtype::F32,
                    shape.clone(),
                    bytes,
                )?,
            ))
        })
        .collect::<Result<_, safetensors::SafeTensorError>>()?;
    safetensors::serialize_to_file(views, &None, &dir.join("model.safetensors"))?;

    let ids: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let special = |t: &str, id: usize| json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true});
    let tokenizer = json!({
        "version": "1.0",
        "truncation": {"direction": "Right", "max_length": 16, "strategy": "LongestFirst", "stride": 0},
        "padding": {"strategy": {"Fixed": 16}, "direction": "Right", "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"},
        "added_tokens": [special("[PAD]", 0), special("[UNK]", 1), special("[CLS]", 2), special("[SEP]", 3), special("[MASK]", 4)],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}
            }
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100, "vocab": ids}
    });
    std::fs::write(
        dir.join("tokenizer.json"),
        serde_json::to_string(&tokenizer)?,
    )?;
    Ok(())
}

/// Writes a random 3-layer decoder LM as a GGUF file (`arch`: `llama` or `gemma3`), F32
/// weights, a 40-token vocabulary (BOS id 1) and no tokenizer: tests feed token ids. Gemma 3's
/// head width (16) differs from its hidden size (32) and its layers 0 and 2 are local with a
/// window of 3 tokens, so the shapes and masks that differ from Llama's are exercised.
pub fn write_tiny_gguf(path: &Path, arch: &str, seed: u64) -> anyhow::Result<()> {
    use candle_core::quantized::gguf_file::Value;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    let (hidden, heads, kv_heads, inner, vocab, blocks) = (32usize, 4usize, 2usize, 48, 40, 3);
    let gemma = arch == "gemma3";
    let head_dim = if gemma { 16 } else { hidden / heads };
    let key = |k: &str| format!("{arch}.{k}");
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (key("embedding_length"), Value::U32(hidden as u32)),
        (key("block_count"), Value::U32(blocks as u32)),
        (key("context_length"), Value::U32(64)),
        (key("feed_forward_length"), Value::U32(inner as u32)),
        (key("attention.head_count"), Value::U32(heads as u32)),
        (key("attention.head_count_kv"), Value::U32(kv_heads as u32)),
        (key("attention.layer_norm_rms_epsilon"), Value::F32(1e-6)),
        (key("rope.freq_base"), Value::F32(10_000.0)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
    ];
    if gemma {
        metadata.extend([
            (key("attention.key_length"), Value::U32(head_dim as u32)),
            (key("attention.value_length"), Value::U32(head_dim as u32)),
            (key("attention.sliding_window"), Value::U32(3)),
            (key("attention.sliding_window_type"), Value::U32(2)),
            (key("rope.local_freq_base"), Value::F32(100.0)),
        ]);
    } else {
        metadata.push((key("rope.dimension_count"), Value::U32(head_dim as u32)));
    }
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("token_embd.weight".into(), vec![vocab, hidden]),
        ("output_norm.weight".into(), vec![hidden]),
    ];
    let (q_out, kv_out) = (heads * head_dim, kv_heads * head_dim);
    for l in 0..blocks {
        let mut layer = vec![
            ("attn_norm", vec![hidden]),
            ("attn_q", vec![q_out, hidden]),
            ("attn_k", vec![kv_out, hidden]),
            ("attn_v", vec![kv_out, hidden]),
            ("attn_output", vec![hidden, q_out]),
            ("ffn_norm", vec![hidden]),
            ("ffn_gate", vec![inner, hidden]),
            ("ffn_up", vec![inner, hidden]),
            ("ffn_down", vec![hidden, inner]),
        ];
        if gemma {
            layer.extend([
                ("attn_q_norm", vec![head_dim]),
                ("attn_k_norm", vec![head_dim]),
                ("post_attention_norm", vec![hidden]),
                ("post_ffw_norm", vec![hidden]),
            ]);
        }
        shapes.extend(
            layer
                .into_iter()
                .map(|(n, s)| (format!("blk.{l}.{n}.weight"), s)),
        );
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tensors = shapes
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = if shape.len() == 1 {
                (0..n).map(|_| 1.0 + rng.gen_range(-0.2..0.2)).collect()
            } else {
                (0..n).map(|_| rng.gen_range(-0.3..0.3)).collect()
            };
            let t = Tensor::from_vec(values, shape, &Device::Cpu)?;
            Ok((name, QTensor::quantize(&t, GgmlDType::F32)?))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path)?;
    candle_core::quantized::gguf_file::write(&mut file, &md, &ts)?;
    Ok(())
}
