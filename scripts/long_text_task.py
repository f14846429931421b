#!/usr/bin/env python3
"""Writes a long-text task for `sw2s experiment` from ../shared/datasets: "reviews" of 14-32
SST-2 phrases each (about 200-700 MiniLM tokens, so most are longer than its 256), whose
label is the sentiment most of their phrases carry (each phrase agrees with it with
probability 0.65, and the majority always does). The evidence is spread over the whole
text, as in a long review, so a model that reads only the first 256 tokens sees part of it.
Phrases are dealt to 50 groups of 40 texts and repeat only within their group (the
experiment splits by group), and a phrase that repeats another's opening five words is
skipped, so no phrase is on both sides of a split. The file goes where OUT says, outside the repository
(the data's licence keeps it out of the project).

    python3 scripts/long_text_task.py /tmp/long.jsonl [DATASETS_DIR]
"""
import json
import os
import random

from task_args import out_and_datasets

BUCKETS = 50
DOCS_PER_BUCKET = 40


def main():
    out, data = out_and_datasets(__doc__)
    rows = []
    for split in ("train", "validation", "test"):
        with open(os.path.join(data, "sst2", f"{split}.jsonl")) as f:
            rows += [json.loads(line) for line in f]
    rows = [r for r in rows if len(r["text"].split()) >= 5]
    # Longest first, so a phrase's longer parent is kept and the phrase itself skipped.
    rows.sort(key=lambda r: -len(r["text"].split()))
    seen, pool = set(), {0: [], 1: []}
    for r in rows:
        words = r["text"].split()
        if " ".join(words[:5]) in seen:
            continue
        seen |= {" ".join(words[i:i + 5]) for i in range(len(words) - 4)}
        pool[r["label"]].append(r["text"])
    rng = random.Random(11)
    for texts in pool.values():
        rng.shuffle(texts)
    docs = []
    for bucket in range(BUCKETS):
        # Each bucket has its own phrases, so phrases repeat only within a group.
        own = {c: texts[bucket::BUCKETS] for c, texts in pool.items()}
        for _ in range(DOCS_PER_BUCKET):
            label = rng.randrange(2)
            n = rng.randint(14, 32)
            agree = max(sum(rng.random() < 0.65 for _ in range(n)), n // 2 + 1)
            parts = rng.sample(own[label], agree) + rng.sample(own[1 - label], n - agree)
            rng.shuffle(parts)
            doc_id = f"long-{len(docs):05d}"
            docs.append({"id": doc_id, "text": " ".join(p.rstrip(" .") + " ." for p in parts),
                         "label": label, "label_names": ["negative", "positive"],
                         "group": f"long-bucket-{bucket:02d}"})
    rng.shuffle(docs)
    with open(out, "w") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")
    words = sorted(len(d["text"].split()) for d in docs)
    print(f"{len(docs)} texts, {sum(d['label'] for d in docs)} positive, from "
          f"{len(pool[0])} + {len(pool[1])} distinct phrases; words per text: "
          f"median {words[len(words) // 2]}, min {words[0]}, max {words[-1]} -> {out}")


if __name__ == "__main__":
    main()
