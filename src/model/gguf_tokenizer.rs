//! A tokenizer built from a GGUF file's own metadata, for decoder LMs shipped without a
//! `tokenizer.json` (the SmolLM2 and Gemma 3 packages carry only the `.gguf`).
//!
//! GGUF stores the vocabulary as `tokenizer.ggml.*` arrays. Two kinds occur:
//! - `gpt2`: byte-level BPE with explicit merges (Llama-family models such as SmolLM2);
//! - `llama`: SentencePiece BPE with per-token scores and byte fallback (Gemma); merges are
//!   derived from the scores as Hugging Face's `SentencePieceExtractor` does.
//!
//! The result is an ordinary `tokenizers::Tokenizer`, assembled as tokenizer.json text so the
//! crate's own deserialisation checks it.

use std::collections::HashMap;

use anyhow::{bail, Context};
use candle_core::quantized::gguf_file::{Content, Value};
use serde_json::{json, Value as Json};
use tokenizers::Tokenizer;

/// GGUF token types (llama.cpp's `llama_token_type`).
const TYPE_NORMAL: i32 = 1;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;

fn strings(ct: &Content, key: &str) -> anyhow::Result<Vec<String>> {
    let value = ct
        .metadata
        .get(key)
        .with_context(|| format!("the GGUF metadata has no {key}"))?;
    value
        .to_vec()
        .map_err(anyhow::Error::from)?
        .iter()
        .map(|v| v.to_string().cloned().map_err(anyhow::Error::from))
        .collect()
}

fn numbers(ct: &Content, key: &str) -> anyhow::Result<Option<Vec<f64>>> {
    let Some(value) = ct.metadata.get(key) else {
        return Ok(None);
    };
    let values = value.to_vec().map_err(anyhow::Error::from)?;
    values
        .iter()
        .map(|v| match v {
            Value::F32(x) => Ok(*x as f64),
            Value::F64(x) => Ok(*x),
            Value::I32(x) => Ok(*x as f64),
            Value::U32(x) => Ok(*x as f64),
            Value::I8(x) => Ok(*x as f64),
            Value::U8(x) => Ok(*x as f64),
            other => bail!("{key} holds a non-number ({other:?})"),
        })
        .collect::<anyhow::Result<Vec<f64>>>()
        .map(Some)
}

fn flag(ct: &Content, key: &str) -> Option<bool> {
    ct.metadata.get(key).and_then(|v| v.to_bool().ok())
}

fn token_id(ct: &Content, key: &str) -> Option<u32> {
    ct.metadata.get(key).and_then(|v| v.to_u32().ok())
}

/// Builds the tokenizer described by `ct`'s metadata.
pub fn from_gguf(ct: &Content) -> anyhow::Result<Tokenizer> {
    let kind = ct
        .metadata
        .get("tokenizer.ggml.model")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .context("the GGUF metadata names no tokenizer (tokenizer.ggml.model)")?;
    let tokens = strings(ct, "tokenizer.ggml.tokens")?;
    let types: Vec<i32> = numbers(ct, "tokenizer.ggml.token_type")?
        .map(|v| v.into_iter().map(|x| x as i32).collect())
        .unwrap_or_else(|| vec![TYPE_NORMAL; tokens.len()]);
    if types.len() != tokens.len() {
        bail!(
            "the GGUF tokenizer has {} tokens but {} token types",
            tokens.len(),
            types.len()
        );
    }
    let added: Vec<Json> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, &t))| t == TYPE_CONTROL || t == TYPE_USER_DEFINED)
        .map(|(id, (content, &t))| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": t == TYPE_CONTROL})
        })
        .collect();
    let vocab: serde_json::Map<String, Json> = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.clone(), json!(id)))
        .collect();
    let add_bos = flag(ct, "tokenizer.ggml.add_bos_token").unwrap_or(kind == "llama");
    let bos = token_id(ct, "tokenizer.ggml.bos_token_id");
    let post_processor = match (add_bos, bos) {
        (true, Some(id)) => {
            let bos = tokens
                .get(id as usize)
                .with_context(|| format!("bos_token_id {id} is outside the vocabulary"))?;
            json!({"type": "TemplateProcessing",
                   "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                              {"Sequence": {"id": "A", "type_id": 0}}],
                   "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                            {"Sequence": {"id": "A", "type_id": 0}},
                            {"Sequence": {"id": "B", "type_id": 1}}],
                   "special_tokens": {bos: {"id": bos, "ids": [id], "tokens": [bos]}}})
        }
        _ => Json::Null,
    };
    let spec = match kind.as_str() {
        "gpt2" => {
            let merges: Vec<Json> = strings(ct, "tokenizer.ggml.merges")?
                .iter()
                .map(|m| {
                    let (a, b) = m
                        .split_once(' ')
                        .with_context(|| format!("malformed merge {m:?}"))?;
                    Ok(json!([a, b]))
                })
                .collect::<anyhow::Result<_>>()?;
            let pre = ct
                .metadata
                .get("tokenizer.ggml.pre")
                .and_then(|v| v.to_string().ok())
                .map(String::as_str)
                .unwrap_or("default");
            let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
            // SmolLM's (StarCoder's) tokenizer splits digits one by one before byte-level BPE.
            let pre_tokenizer = if matches!(pre, "smollm" | "starcoder" | "refact") {
                json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Digits", "individual_digits": true}, byte_level]})
            } else {
                byte_level
            };
            json!({
                "normalizer": Json::Null,
                "pre_tokenizer": pre_tokenizer,
                "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
                "model": {"type": "BPE", "dropout": Json::Null, "unk_token": Json::Null,
                          "continuing_subword_prefix": Json::Null, "end_of_word_suffix": Json::Null,
                          "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                          "vocab": vocab, "merges": merges},
            })
        }
        "llama" => {
            let scores = numbers(ct, "tokenizer.ggml.scores")?
                .context("a SentencePiece GGUF tokenizer needs tokenizer.ggml.scores")?;
            let merges = sentencepiece_merges(&tokens, &types, &scores);
            let unk = token_id(ct, "tokenizer.ggml.unknown_token_id")
                .and_then(|id| tokens.get(id as usize).cloned());
            let add_space_prefix = flag(ct, "tokenizer.ggml.add_space_prefix").unwrap_or(true);
            let mut normalizers =
                vec![json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"})];
            if add_space_prefix {
                normalizers.insert(0, json!({"type": "Prepend", "prepend": "\u{2581}"}));
            }
            json!({
                "normalizer": {"type": "Sequence", "normalizers": normalizers},
                "pre_tokenizer": Json::Null,
                "decoder": Json::Null,
                "model": {"type": "BPE", "dropout": Json::Null, "unk_token": unk,
                          "continuing_subword_prefix": Json::Null, "end_of_word_suffix": Json::Null,
                          "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                          "vocab": vocab, "merges": merges},
            })
        }
        other => bail!(
            "GGUF tokenizer kind {other:?} is not supported (gpt2 and llama are); \
             put a tokenizer.json beside the .gguf file"
        ),
    };
    let mut doc = json!({"version": "1.0", "truncation": Json::Null, "padding": Json::Null,
                         "added_tokens": added, "post_processor": post_processor});
    if let (Some(doc), Some(spec)) = (doc.as_object_mut(), spec.as_object()) {
        doc.extend(spec.clone());
    }
    let text = serde_json::to_string(&doc)?;
    text.parse::<Tokenizer>()
        .map_err(|e| anyhow::anyhow!("building the tokenizer from GGUF metadata: {e}"))
}

/// SentencePiece BPE merges from token scores: every split of a normal token into two known
/// pieces is a merge, ranked by the merged token's score (highest first), ties by the pieces'
/// ids — what Hugging Face's converters do for the same vocabulary.
fn sentencepiece_merges(tokens: &[String], types: &[i32], scores: &[f64]) -> Vec<Json> {
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut merges: Vec<(f64, usize, usize)> = Vec::new();
    for (id, token) in tokens.iter().enumerate() {
        if types.get(id) != Some(&TYPE_NORMAL) {
            continue;
        }
        let score = scores.get(id).copied().unwrap_or(0.0);
        let mut local: Vec<(usize, usize)> = token
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (l, r) = token.split_at(at);
                Some((*ids.get(l)?, *ids.get(r)?))
            })
            .collect();
        local.sort_unstable();
        merges.extend(local.into_iter().map(|(l, r)| (score, l, r)));
    }
    // Stable: equal scores keep the order above.
    merges.sort_by(|a, b| b.0.total_cmp(&a.0));
    merges
        .into_iter()
        .map(|(_, l, r)| json!([tokens[l], tokens[r]]))
        .collect()
}
