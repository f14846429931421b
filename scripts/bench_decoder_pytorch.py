#!/usr/bin/env python3
"""PyTorch reference for `sw2s bench embed --model <decoder>`: the same texts through Hugging
Face transformers, which reads the GGUF file and runs it dequantized to float32 (PyTorch has
no CPU kernels for GGUF's quantized formats). Texts are sorted by length and padded to the
longest in each batch; the feature is the final hidden state of each text's last token, as
in sw2s.

Usage (scripts/bench_models.sh makes the virtual environment):
    python3 scripts/bench_decoder_pytorch.py FILE.gguf DATA.jsonl [LIMIT] [REPEATS] [DEVICE]

DEVICE is `cpu` (the default; 1 and 2 threads) or `cuda:N` (as `sw2s bench embed --device`).
"""
import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402


def run(model, tokenizer, texts, batch, device):
    started = time.perf_counter()
    order = sorted(range(len(texts)), key=lambda i: len(tokenizer(texts[i])["input_ids"]))
    with torch.no_grad():
        for at in range(0, len(order), batch):
            chunk = [texts[i] for i in order[at:at + batch]]
            enc = tokenizer(chunk, return_tensors="pt", padding=True).to(device)
            out = model.model(**enc)
            last = enc["attention_mask"].sum(1) - 1
            out.last_hidden_state[torch.arange(len(chunk), device=device), last].cpu()
    return len(texts) / (time.perf_counter() - started)


def main() -> None:
    path, data = sys.argv[1], sys.argv[2]
    limit = int(sys.argv[3]) if len(sys.argv) > 3 else 256
    repeats = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    device = sys.argv[5] if len(sys.argv) > 5 else "cpu"
    with open(data) as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()][:limit]
    folder, name = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.to(device).eval()
    tokens = sum(len(tokenizer(t)["input_ids"]) for t in texts) / len(texts)
    print(f"PyTorch {torch.__version__} (transformers, GGUF dequantized to F32), {len(texts)} texts "
          f"(mean {tokens:.1f} tokens), median of {repeats} runs, on {device}")
    print("| threads | batch | sentences/s | tokens/s |")
    print("|---|---|---|---|")
    for threads in (1, 2) if device == "cpu" else (1,):
        torch.set_num_threads(threads)
        for batch in (8, 32):
            run(model, tokenizer, texts[:batch], batch, device)  # warm-up (CUDA kernels load)
            rate = statistics.median(run(model, tokenizer, texts, batch, device) for _ in range(repeats))
            print(f"| {threads} | {batch} | {rate:.1f} | {rate * tokens:.0f} |")


if __name__ == "__main__":
    main()
