#!/usr/bin/env python3
"""Compute reference sentence embeddings with sentence-transformers for the parity test.

Usage:
    python3 -m pip install sentence-transformers
    python3 scripts/reference_embeddings.py MODEL_DIR > tests/fixtures/minilm_reference.json
    python3 scripts/reference_embeddings.py MPNET_DIR sentence-transformers/all-mpnet-base-v2 \
        > tests/fixtures/mpnet_reference.json

MODEL_DIR is the unpacked default model (what `sw2s fetch-model` prints), e.g.
data/models/all-MiniLM-L6-v2. The sentences cover plain English, punctuation, casing,
accents, CJK, emoji and a text longer than the model's 256-token limit (truncation).
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from sentence_transformers import SentenceTransformer  # noqa: E402

SENTENCES = [
    "A gripping, beautifully acted film.",
    "the movie was a complete waste of time .",
    "Q: What do plants absorb from the air? A: carbon dioxide",
    "Héllo wörld — naïve café façade!",
    "東京は日本の首都です。",
    "I love it 😀 but the ending... meh?!",
    "UPPER CASE AND lower case Mixed",
    "x",
    "It's not that it's bad; it's that it isn't anything at all, really.",
    " ".join(["word%d" % i for i in range(400)]),
]


def main() -> None:
    model_dir = sys.argv[1]
    model = SentenceTransformer(model_dir, device="cpu")
    vectors = model.encode(SENTENCES, batch_size=4, normalize_embeddings=True)
    json.dump(
        {
            "model": sys.argv[2] if len(sys.argv) > 2 else "sentence-transformers/all-MiniLM-L6-v2",
            "max_seq_length": model.max_seq_length,
            "sentences": SENTENCES,
            "embeddings": [[round(float(x), 7) for x in v] for v in vectors],
        },
        sys.stdout,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
