#!/usr/bin/env python3
"""The PyTorch side of `sw2s bench embed|finetune` (sw2s starts it; it is compiled into the
binary). It loads the model once, then answers one JSON request per stdin line with one JSON
line on stdout, so sw2s can alternate the two sides measurement by measurement.

    python3 bench_baseline.py MODEL_DIR TEXTS.json

TEXTS.json: {"texts": [...], "labels": [...]}.

{"op": "embed", "threads": 2, "batch": 32, "groups": false}
    -> {"rate": sentences/s}. sentence-transformers encodes the texts (sorted by length,
    padded to the longest of each batch). groups=true encodes each run of `batch` texts in
    input order on its own: what a client sending requests of `batch` texts gets.
{"op": "finetune", "threads": 2, "batch": 16, "max_tokens": 128, "steps": 29, "seed": 1,
 "lr": 2e-5}
    -> {"rate": examples/s, "tokens": real tokens/s}. AutoModel + mean pooling + L2
    normalisation + a linear head, cross-entropy, AdamW (weight decay 0.01), dropout on,
    batches of shuffled texts padded to the longest, one untimed warm-up step.
"""
import json
import os
import random
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def embed(model, texts, req):
    batch = req["batch"]
    start = time.perf_counter()
    with torch.inference_mode():
        if req.get("groups"):
            for i in range(0, len(texts), batch):
                model.encode(texts[i : i + batch], batch_size=batch, normalize_embeddings=True)
        else:
            model.encode(texts, batch_size=batch, normalize_embeddings=True)
    return {"rate": len(texts) / (time.perf_counter() - start)}


class Finetune:
    def __init__(self, model_dir):
        from transformers import AutoModel, AutoTokenizer

        self.model_dir = model_dir
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir)
        self.head = torch.nn.Linear(self.model.config.hidden_size, 2)

    def step(self, opt, texts, labels, max_tokens):
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt"
        )
        out = self.model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(out.dtype)
        pooled = (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        pooled = F.normalize(pooled, p=2, dim=1)
        loss = F.cross_entropy(self.head(pooled), torch.tensor(labels))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return int(enc["attention_mask"].sum())

    def run(self, texts, labels, req):
        self.model.train()
        opt = torch.optim.AdamW(
            list(self.model.parameters()) + list(self.head.parameters()),
            lr=req.get("lr", 2e-5),
            weight_decay=0.01,
        )
        order = list(range(len(texts)))
        random.Random(req.get("seed", 1)).shuffle(order)
        batch, steps, max_tokens = req["batch"], req["steps"], req["max_tokens"]
        batches = [order[i : i + batch] for i in range(0, len(order), batch)]
        if not batches:
            return {"rate": 0.0, "tokens": 0.0}

        def take(i):
            b = batches[i % len(batches)]
            return [texts[j] for j in b], [labels[j] % 2 for j in b]

        self.step(opt, *take(0), max_tokens)  # warm-up, untimed
        tokens = examples = 0
        start = time.perf_counter()
        for i in range(1, steps + 1):
            t, y = take(i)
            tokens += self.step(opt, t, y, max_tokens)
            examples += len(t)
        elapsed = time.perf_counter() - start
        return {"rate": examples / elapsed, "tokens": tokens / elapsed}


def main():
    model_dir, texts_file = sys.argv[1], sys.argv[2]
    device = sys.argv[3] if len(sys.argv) > 3 else "cpu"
    with open(texts_file) as f:
        data = json.load(f)
    texts, labels = data["texts"], data.get("labels") or [i % 2 for i in range(len(data["texts"]))]
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(model_dir, device=device)
    finetune = None
    print(json.dumps({"ready": True, "torch": torch.__version__}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        torch.set_num_threads(int(req.get("threads", 1)))
        if req["op"] == "embed":
            answer = embed(encoder, texts, req)
        elif req["op"] == "finetune":
            if finetune is None:
                finetune = Finetune(model_dir)
            answer = finetune.run(texts, labels, req)
        else:
            answer = {"error": f"unknown op {req['op']!r}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
