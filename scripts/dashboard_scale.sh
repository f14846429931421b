#!/usr/bin/env bash
# The dashboard at scale: a task of N examples (default 100,000) with two weak sources each,
# gold on a tenth and two decisions per example, written straight into a fresh PostgreSQL
# database, then the dashboard's requests timed against the release binary (5 runs each).
#   scripts/dashboard_scale.sh [N]
# Environment: SW2S_BIN (default target/release/sw2s), PG (default postgres://postgres@127.0.0.1:5432).
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-100000}"
PG="${PG:-postgres://postgres@127.0.0.1:5432}"
BIN="${SW2S_BIN:-${CARGO_TARGET_DIR:-target}/release/sw2s}"
CACHE="${SW2S_TEST_CACHE:-/var/tmp/sw2s-test-cache}"
DB="sw2s_scale_$$"
PORT="${PORT:-18090}"
WORK="$(mktemp -d)"
psql -q "$PG/postgres" -c "CREATE DATABASE $DB"
cleanup() { kill "$pid" 2>/dev/null || true; wait 2>/dev/null || true; psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"; rm -rf "$WORK"; }
trap cleanup EXIT
MODEL_DIR="$("$BIN" fetch-model --data-dir "$CACHE/model-data" | tail -1)"
"$BIN" serve --data-dir "$WORK" --model-dir "$MODEL_DIR" --database-url "$PG/$DB" --addr "127.0.0.1:$PORT" --no-jobs > "$WORK/log" 2>&1 &
pid=$!
until curl -sf "127.0.0.1:$PORT/ready" > /dev/null; do sleep 0.5; done
curl -sf -XPOST "127.0.0.1:$PORT/v1/tasks" -H 'content-type: application/json' -d '{"name": "big", "labels": ["negative", "positive"]}' > /dev/null
echo "== writing $N examples, $((2 * N)) weak labels, $((2 * N)) decisions"
psql -q "$PG/$DB" <<SQL
INSERT INTO examples (task_id, external_id, text, weak, weak_label, refined, refined_label, decision_label, decision_source,
                      confidence, gold_label, dirty, created_at, updated_at)
SELECT 1, 'e' || g, 'synthetic example number ' || g, '[0.3,0.7]', g % 2, '[0.3,0.7]', g % 2,
       CASE WHEN g % 7 = 0 THEN NULL ELSE (g + (g % 5 = 0)::int) % 2 END,
       CASE WHEN g % 10 = 0 THEN 'gold' WHEN g % 7 = 0 THEN 'abstain' WHEN g % 3 = 0 THEN 'strong' ELSE 'weak_refined' END,
       0.5 + (g % 50) / 100.0, CASE WHEN g % 10 = 0 THEN g % 2 END, 0,
       1764300000000 + g * 600, 1764300000000 + g * 600
FROM generate_series(1, $N) g;
INSERT INTO weak_labels (example_id, source, label, scores, confidence, vote, created_at, updated_at)
SELECT id, s, (id + (s = 'rules')::int) % 2, '[0.5,0.5]', 0.8, (id + (s = 'rules')::int) % 2, created_at, created_at
FROM examples, unnest(ARRAY['rater', 'rules']) s WHERE task_id = 1;
INSERT INTO decisions (task_id, example_id, label, source, p_ik_source, graph_version, reason, confidence, created_at)
SELECT 1, id, decision_label, decision_source, 'none', 0, 'synthetic', confidence, created_at + k * 3600000
FROM examples, generate_series(0, 1) k WHERE task_id = 1;
ANALYZE;
SQL
echo "== timings (ms, 5 runs each, release build, PostgreSQL)"
for path in /ui/ /ui/tasks/big /v1/tasks/big/dashboard "/v1/tasks/big/review_queue?limit=50" "/v1/tasks/big/review_queue?limit=50&order=sample" /v1/tasks/big/sources /v1/tasks/big; do
    times=()
    for _ in 1 2 3 4 5; do
        times+=("$(curl -s -o /dev/null -w '%{time_total}' "127.0.0.1:$PORT$path" | awk '{printf "%.0f", $1 * 1000}')")
    done
    printf '%-42s %s\n' "$path" "${times[*]}"
done
