#!/usr/bin/env python3
"""The first principle over HTTP on tasks unlike SST-2, against a running sw2s.

    python3 scripts/http_tasks.py URL SCENARIO [DATASETS_DIR] [--seed N] [--gold N] [--target P]

Each scenario builds a task from ../shared with weak sources of its own (each source with its
own accuracy per class and its own coverage, abstaining elsewhere; hard labels, or scores from
a source that is surer when right than when wrong but often sure when wrong), sends it
in batches, gives gold labels to a random sample (`picked: random`) and runs a head job. On
the examples without gold it compares the raw weak labels (a majority vote of what was sent,
scores adding up as fractions of a vote, a tie broken at random, fixed per example; no vote
counts as wrong) with the refined labels
and the decisions (an abstention counted by its suggested label), by accuracy and macro-F1.
Then `target_precision` and a second job: the precision and coverage of the accepted
decisions. One JSON line per stage of the run.

Scenarios:
  sciq-rare       SciQ answers, 20% correct: the strong model is at chance and each question's
                  right and wrong answers are near-duplicates of opposite label; 3 sources
  sst2-smallgold  SST-2 validation and test, 10% negative (the first label is the rare one),
                  2 sources that often disagree (ties); meant for small --gold
  three-topic     negative / positive SST-2 sentences and SciQ questions, 60 / 24 / 16%;
                  3 sources with class-dependent accuracy
  inverted        balanced SST-2, one source on 90% of the examples that is mostly wrong,
                  3 honest ones
  sst2-rare-pos   SST-2, 15% positive, one source that misses 45% of the positives
  soft-rare       SST-2, 12% negative, a scoring source on every example that misses 40% of
                  the negatives, and keyword-like hard labels on a third
  soft-long       SciQ answers after their support paragraph (up to 3,120 characters, read
                  whole), 20% correct, one scoring source, nothing else

The data is read from DATASETS_DIR (else SW2S_DATASETS, else ../shared/datasets); nothing is
written outside the server. A task of the same name is deleted first.
"""
import argparse
import json
import os
import random
import time
import zlib

from sw2s_http import call, examples, ok, run_job

# (source, coverage, accuracy per true class[, "soft"]) per scenario.
SOURCES = {
    "sciq-rare": [("lf_a", 0.7, [0.85, 0.6]), ("lf_b", 0.5, [0.7, 0.75]), ("lf_c", 0.4, [0.9, 0.5])],
    "sst2-smallgold": [("model", 1.0, [0.75, 0.75]), ("rules", 0.4, [0.85, 0.85])],
    "three-topic": [("model", 0.9, [0.8, 0.6, 0.9]), ("crowd", 0.3, [0.75, 0.75, 0.75]),
                    ("kw", 0.5, [0.6, 0.9, 0.95])],
    "inverted": [("bad", 0.9, [0.3, 0.35]), ("lf1", 0.6, [0.8, 0.8]), ("lf2", 0.6, [0.75, 0.85]),
                 ("lf3", 0.5, [0.8, 0.7])],
    "sst2-rare-pos": [("model", 1.0, [0.9, 0.55])],
    "soft-rare": [("clf", 1.0, [0.6, 0.92], "soft"), ("kw", 0.35, [0.8, 0.85])],
    "soft-long": [("clf", 1.0, [0.85, 0.65], "soft")],
}


def rows_of(scenario, data, rng):
    """(label names, rows with "id", "text", "label")."""
    def read(name):
        with open(os.path.join(data, name)) as f:
            return [json.loads(line) for line in f]

    def by_label(rows, label):
        return [r for r in rows if r["label"] == label]

    if scenario == "sciq-rare":
        rows = read("sciq/validation.jsonl") + read("sciq/test.jsonl")
        correct = by_label(rows, 1)
        rng.shuffle(correct)
        return ["incorrect", "correct"], by_label(rows, 0) + correct[:500]
    if scenario == "sst2-smallgold":
        rows = read("sst2/validation.jsonl") + read("sst2/test.jsonl")
        neg = by_label(rows, 0)
        rng.shuffle(neg)
        return ["negative", "positive"], neg[:140] + by_label(rows, 1)
    if scenario == "three-topic":
        sst = read("sst2/train.jsonl")[:20000]
        science = [dict(r, label=2) for r in by_label(read("sciq/validation.jsonl"), 1)]
        return (["negative", "positive", "science"],
                by_label(sst, 0)[:1500] + by_label(sst, 1)[:600] + science[:400])
    if scenario == "inverted":
        return ["negative", "positive"], read("sst2/train.jsonl")[30000:33000]
    if scenario == "sst2-rare-pos":
        sst = read("sst2/train.jsonl")[40000:52000]
        return ["negative", "positive"], by_label(sst, 0)[:2550] + by_label(sst, 1)[:450]
    if scenario == "soft-rare":
        sst = read("sst2/train.jsonl")[55000:]
        return ["negative", "positive"], by_label(sst, 0)[:360] + by_label(sst, 1)[:2640]
    if scenario == "soft-long":
        rows = read("sciq_support/validation.jsonl") + read("sciq_support/test.jsonl")
        correct = by_label(rows, 1)
        rng.shuffle(correct)
        return ["incorrect", "correct"], by_label(rows, 0) + correct[:500]
    raise SystemExit(f"unknown scenario {scenario!r}; one of {', '.join(SOURCES)}")


def vote(rng, y, k, accuracy):
    """`y` with probability `accuracy[y]`, else one of the other labels."""
    return y if rng.random() < accuracy[y] else rng.choice([c for c in range(k) if c != y])


def weak_label(rng, source, y, labels):
    """One source's weak label for an example of true label `y`: hard, or with scores whose
    top label is the vote, surer when the vote is right (a mean of 0.85 against 0.72)."""
    name, _, accuracy, *kind = source
    k = len(labels)
    v = vote(rng, y, k, accuracy)
    if kind != ["soft"]:
        return {"source": name, "label": labels[v]}
    top = 1 / k + (1 - 1 / k) * rng.betavariate(*((3, 1) if v == y else (1.6, 1.2)))
    rest = [rng.random() for _ in range(k - 1)]
    rest = [(1 - top) * r / sum(rest) for r in rest]
    scores = rest[:v] + [top] + rest[v:]
    return {"source": name, "scores": [round(p, 4) for p in scores]}


def majority(example_id, votes, labels):
    """The raw weak label: the most voted label (scores count as fractions of a vote), a tie
    broken at random (fixed per example)."""
    if not votes:
        return None
    counts = [0.0] * len(labels)
    for v in votes:
        for c, p in enumerate(v["scores"] if "scores" in v else
                              [float(v["label"] == name) for name in labels]):
            counts[c] += p
    tied = [c for c, n in enumerate(counts) if n >= max(counts) - 1e-9]
    return labels[tied[zlib.crc32(example_id.encode()) % len(tied)]]


def macro_f1(pairs, labels):
    f1 = []
    for c in labels:
        tp = sum(p == c and t == c for p, t in pairs)
        wrong = sum(p != t and c in (p, t) for p, t in pairs)
        f1.append(2 * tp / (2 * tp + wrong) if tp else 0.0)
    return sum(f1) / len(f1)


def measure(base, task, labels, rest, votes):
    """On `rest` (id -> true label index): raw, refined and decided labels, and the accepted."""
    ex = examples(base, task)
    truth = {i: labels[y] for i, y in rest.items()}

    def decided(i):
        d = ex[i]["decision"] or {}
        return d.get("label") or d.get("suggested_label")

    kinds = {
        "raw": lambda i: majority(i, votes[i], labels),
        "refined": lambda i: ex[i].get("refined_label"),
        "decisions": decided,
    }
    out = {"examples": len(rest),
           "true_shares": [round(sum(t == c for t in truth.values()) / len(truth), 3) for c in labels]}
    for name, f in kinds.items():
        pairs = [(f(i), t) for i, t in truth.items()]
        out[name] = round(sum(p == t for p, t in pairs) / len(pairs), 4)
        out[name + "_macro_f1"] = round(macro_f1(pairs, labels), 4)
        out[name + "_shares"] = [round(sum(p == c for p, _ in pairs) / len(pairs), 3) for c in labels]
    accepted = [i for i in truth if (ex[i]["decision"] or {}).get("source") in ("strong", "weak_refined")]
    out["coverage"] = round(len(accepted) / len(truth), 4)
    out["precision"] = round(sum(ex[i]["decision"]["label"] == truth[i] for i in accepted) / max(1, len(accepted)), 4)
    out["sources"] = {}
    for i in truth:
        s = (ex[i]["decision"] or {}).get("source", "none")
        out["sources"][s] = out["sources"].get(s, 0) + 1
    return out


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url")
    ap.add_argument("scenario", choices=sorted(SOURCES))
    ap.add_argument("datasets", nargs="?", default=os.environ.get(
        "SW2S_DATASETS", os.path.join(here, "..", "..", "shared", "datasets")))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--gold", type=int, default=200, help="gold labels on a random sample")
    ap.add_argument("--target", type=float, default=0.9, help="target_precision of the second job")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    labels, rows = rows_of(a.scenario, a.datasets, rng)
    rng.shuffle(rows)
    votes = {r["id"]: [weak_label(rng, s, r["label"], labels)
                       for s in SOURCES[a.scenario] if rng.random() < s[1]]
             for r in rows}
    task = f"{a.scenario}-{a.seed}-{a.gold}"
    call(a.url, "DELETE", f"/v1/tasks/{task}")
    ok(call(a.url, "POST", "/v1/tasks", {"name": task, "labels": labels}), "task")
    started = time.time()
    batch = [{"id": r["id"], "text": r["text"], "weak_labels": votes[r["id"]]} for r in rows]
    for i in range(0, len(batch), 250):
        ok(call(a.url, "POST", f"/v1/tasks/{task}/examples", {"examples": batch[i:i + 250]}), "ingest")
    ingest_s = round(time.time() - started, 1)
    gold = set(rng.sample([r["id"] for r in rows], a.gold))
    for r in rows:
        if r["id"] in gold:
            ok(call(a.url, "PUT", f"/v1/tasks/{task}/examples/{r['id']}/gold",
                    {"label": labels[r["label"]], "picked": "random"}), "gold")
    rest = {r["id"]: r["label"] for r in rows if r["id"] not in gold}
    head = {"scenario": a.scenario, "seed": a.seed, "gold": a.gold, "examples": len(rows)}
    print(json.dumps({**head, "stage": "before any job", "ingest_s": ingest_s,
                      **measure(a.url, task, labels, rest, votes)}), flush=True)
    run_job(a.url, task)
    report = ok(call(a.url, "GET", f"/v1/tasks/{task}/report"), "report")
    print(json.dumps({**head, "stage": "after a head job",
                      "stages_on": [s["stage"] for s in report["stages"] if s["on"]],
                      "prior": [round(p, 3) for p in report["prior"]["shares"]],
                      "source_model": report["stages"][0]["reason"],
                      **measure(a.url, task, labels, rest, votes)}), flush=True)
    ok(call(a.url, "PATCH", f"/v1/tasks/{task}", {"settings": {"target_precision": a.target}}), "target")
    run_job(a.url, task)
    report = ok(call(a.url, "GET", f"/v1/tasks/{task}/report"), "report")
    print(json.dumps({**head, "stage": f"target precision {a.target}",
                      "threshold": (report.get("target_precision") or {}).get("reason"),
                      **measure(a.url, task, labels, rest, votes)}), flush=True)


if __name__ == "__main__":
    main()
