#!/usr/bin/env python3
"""Writes a three-class task unlike SST-2 for `sw2s experiment`, from ../shared/datasets:
700 negative and 3,300 positive SST-2 sentences and 1,000 science questions with their
support paragraph (SciQ's right-answer rows, long texts), so 14 / 66 / 20% over two
domains. The file goes where OUT says, outside the repository (the data's licences keep it
out of the project).

    python3 scripts/three_class_task.py /tmp/three.jsonl [DATASETS_DIR]
"""
import json
import os
import random
import sys

from task_args import out_and_datasets


def rows(path, limit=None):
    with open(path) as f:
        for n, line in enumerate(f):
            if limit is not None and n >= limit:
                return
            yield json.loads(line)


def main():
    out, data = out_and_datasets(__doc__)
    sst = list(rows(os.path.join(data, "sst2", "train.jsonl"), 20000))
    sciq = [r for split in ("validation", "test")
            for r in rows(os.path.join(data, "sciq_support", f"{split}.jsonl"))]
    names = ["negative review", "positive review", "science question"]
    picked = ([(r, 0) for r in sst if r["label"] == 0][:700]
              + [(r, 1) for r in sst if r["label"] == 1][:3300]
              + [(r, 2) for r in sciq if r["label"] == 1][:1000])
    task = [{"id": r["id"], "text": r["text"], "label": label, "label_names": names,
             "group": r["group"]} for r, label in picked]
    random.Random(7).shuffle(task)
    with open(out, "w") as f:
        for r in task:
            f.write(json.dumps(r) + "\n")
    print(f"{len(task)} rows written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
