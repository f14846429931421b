#!/usr/bin/env python3
"""PyTorch reference for `sw2s bench embed`: the same texts through sentence-transformers
(which, like sw2s, sorts by length and pads to the longest text in a batch).

Usage:
    python3 -m pip install sentence-transformers
    python3 scripts/bench_pytorch.py MODEL_DIR DATA.jsonl [LIMIT] [REPEATS]

Prints sentences/second (median of REPEATS runs) for 1 and 2 threads and batch sizes 1, 8, 32.
"""
import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402


def main() -> None:
    model_dir, data = sys.argv[1], sys.argv[2]
    limit = int(sys.argv[3]) if len(sys.argv) > 3 else 512
    repeats = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    with open(data) as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()][:limit]
    model = SentenceTransformer(model_dir, device="cpu")
    print(f"PyTorch {torch.__version__}, {len(texts)} texts, median sentences/s of {repeats} runs")
    print("| threads | batch | sentences/s |")
    print("|---|---|---|")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for batch in (1, 8, 32):
            rates = []
            for _ in range(repeats):
                start = time.perf_counter()
                with torch.inference_mode():
                    model.encode(texts, batch_size=batch, normalize_embeddings=True)
                rates.append(len(texts) / (time.perf_counter() - start))
            print(f"| {threads} | {batch} | {statistics.median(rates):.1f} |")


if __name__ == "__main__":
    main()
