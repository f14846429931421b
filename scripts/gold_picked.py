#!/usr/bin/env python3
"""What gold picked for review does to a task's checks, over HTTP against a running sw2s.

Two tasks get the same examples: SST-2 sentences with 25% negatives and one weak source
that calls a negative positive 40% of the time and a positive negative 10% (the experiment's
`flip:0.1,0.4`; `--negatives` and `--flip` change both), target precision 0.9. Each gets the same 200 gold labels on a random sample
(`picked: random`) and a head job; then each labels the first 300 of its own review queue
(hardest first) and runs a second job. Task `unsaid` sends those 300 without `picked` (so
they judge the checks and the class prior, as every gold label did before `picked` existed);
task `review` sends `picked: review` (they train and calibrate, but the checks and the prior
rest on the 200). Measured on the examples with no gold label,
against their true labels: the decisions' accuracy (an abstention counted by the label it
would have given), and the precision and coverage of the
accepted (non-abstaining) decisions, beside what the report says about the threshold.

    python3 scripts/gold_picked.py URL [DATASETS_DIR] [--seed N] [--examples N]
        [--negatives 0.25] [--flip 0.4 0.1]

URL is a running server (e.g. http://127.0.0.1:18080, started with `sw2s serve`). The data
is read from DATASETS_DIR (else SW2S_DATASETS, else ../shared/datasets); nothing is written
outside the server.
"""
import argparse
import json
import os
import random

from sw2s_http import call, examples, ok, run_job


def decisions(base, task):
    """Each example's current decision (label, source, suggested_label), by id."""
    return {i: e["decision"] or {} for i, e in examples(base, task).items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url")
    ap.add_argument("datasets", nargs="?", default=os.environ.get(
        "SW2S_DATASETS", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "datasets")))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--examples", type=int, default=3000)
    ap.add_argument("--random-gold", type=int, default=200)
    ap.add_argument("--review-gold", type=int, default=300)
    ap.add_argument("--negatives", type=float, default=0.25, help="share of negative sentences")
    ap.add_argument("--flip", type=float, nargs=2, default=(0.4, 0.1), metavar=("NEG", "POS"),
                    help="how often the weak source flips a negative / a positive")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    with open(os.path.join(a.datasets, "sst2", "train.jsonl")) as f:
        rows = [json.loads(l) for l in f]
    rng.shuffle(rows)
    neg = [r for r in rows if r["label"] == 0][: round(a.examples * a.negatives)]
    pos = [r for r in rows if r["label"] == 1][: a.examples - len(neg)]
    task_rows = neg + pos
    rng.shuffle(task_rows)
    names = ["negative", "positive"]
    truth = {r["id"]: r["label"] for r in task_rows}
    examples = []
    for r in task_rows:
        flip = rng.random() < a.flip[0 if r["label"] == 0 else 1]
        weak = 1 - r["label"] if flip else r["label"]
        examples.append({"id": r["id"], "text": r["text"],
                         "weak_labels": [{"source": "rater", "label": names[weak]}]})
    sample = rng.sample([r["id"] for r in task_rows], a.random_gold)
    out = {}
    for task, picked in (("unsaid", None), ("review", "review")):
        name = f"{task}-{a.seed}"
        call(a.url, "DELETE", f"/v1/tasks/{name}")
        ok(call(a.url, "POST", "/v1/tasks", {"name": name, "labels": names,
                                             "settings": {"target_precision": 0.9}}), "task")
        for i in range(0, len(examples), 256):
            ok(call(a.url, "POST", f"/v1/tasks/{name}/examples", {"examples": examples[i:i + 256]}), "ingest")
        for eid in sample:
            ok(call(a.url, "PUT", f"/v1/tasks/{name}/examples/{eid}/gold",
                    {"label": names[truth[eid]], "picked": "random"}), "gold")
        run_job(a.url, name)
        queue = ok(call(a.url, "GET", f"/v1/tasks/{name}/review_queue?limit={a.review_gold}"), "queue")
        reviewed = [item["id"] for item in queue["items"]]
        for eid in reviewed:
            body = {"label": names[truth[eid]]}
            if picked:
                body["picked"] = picked
            ok(call(a.url, "PUT", f"/v1/tasks/{name}/examples/{eid}/gold", body), "gold")
        job = run_job(a.url, name)
        report = ok(call(a.url, "GET", f"/v1/tasks/{name}/report"), "report")
        gold = set(sample) | set(reviewed)
        d = decisions(a.url, name)
        rest = [eid for eid in truth if eid not in gold]
        labelled = [eid for eid in rest if d[eid].get("label") is not None]
        right = sum(d[eid]["label"] == names[truth[eid]] for eid in labelled)
        suggested = [d[eid].get("label") or d[eid].get("suggested_label") for eid in rest]
        weak_right = sum(e["weak_labels"][0]["label"] == names[truth[e["id"]]] for e in examples if e["id"] in set(rest))
        all_right = sum(s == names[truth[eid]] for s, eid in zip(suggested, rest))
        target = report.get("target_precision") or {}
        out[task] = {
            "gold": job["metrics"].get("gold"),
            "stages": {s["stage"]: s["on"] for s in report["stages"]},
            "prior": report["prior"]["shares"] if report.get("prior") else None,
            "rest": len(rest),
            "raw_weak_accuracy": weak_right / len(rest),
            "decisions_accuracy": all_right / len(rest),
            "accepted_precision": right / max(1, len(labelled)),
            "coverage": len(labelled) / len(rest),
            "threshold_reason": target.get("reason"),
            "reviewed_negative_share": sum(truth[e] == 0 for e in reviewed) / max(1, len(reviewed)),
        }
        print(json.dumps({"seed": a.seed, "task": task, **out[task]}), flush=True)


if __name__ == "__main__":
    main()
