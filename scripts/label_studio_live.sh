#!/usr/bin/env bash
# Label Studio, live: installs Label Studio from PyPI into a virtual environment this script
# owns, starts it and sw2s on loopback, connects sw2s as a project's ML backend through Label
# Studio's own API and checks predictions, scores and annotations end to end
# (scripts/label_studio_live.py does the talking). Usage:
#   scripts/label_studio_live.sh [TASKS]     # TASKS: SST-2 sentences to import (default 500)
# Environment: SW2S_BIN (default target/release/sw2s, built when missing), SW2S_DATASETS
# (default ../shared/datasets), SW2S_TEST_CACHE (venv and model cache, default /var/tmp/sw2s-test-cache).
set -euo pipefail
cd "$(dirname "$0")/.."

LABEL_STUDIO="label-studio==1.23.2"
TASKS="${1:-500}"
CACHE="${SW2S_TEST_CACHE:-/var/tmp/sw2s-test-cache}"
VENV="$CACHE/ls-venv"
DATASETS="${SW2S_DATASETS:-$(pwd)/../shared/datasets}"
BIN="${SW2S_BIN:-${CARGO_TARGET_DIR:-target}/release/sw2s}"
SW2S_PORT="${SW2S_PORT:-18080}"
LS_PORT="${LS_PORT:-18089}"

mkdir -p "$CACHE"
if [ "$(cat "$VENV/.pinned" 2>/dev/null)" != "$LABEL_STUDIO" ]; then
    echo "== installing $LABEL_STUDIO into $VENV (once)"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "$LABEL_STUDIO"
    echo "$LABEL_STUDIO" > "$VENV/.pinned"
fi
if [ ! -x "$BIN" ]; then
    echo "== building sw2s (release)"
    cargo build --release
fi
MODEL_DIR="$("$BIN" fetch-model --data-dir "$CACHE/model-data" | tail -1)"

WORK="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then echo "logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

KEY="$("$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(16))')"
TOKEN="$("$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(20))')"

echo "== sw2s on 127.0.0.1:$SW2S_PORT (SQLite in $WORK/sw2s)"
"$BIN" serve --data-dir "$WORK/sw2s" --model-dir "$MODEL_DIR" --addr "127.0.0.1:$SW2S_PORT" \
    --api-key "$KEY" > "$WORK/sw2s.log" 2>&1 &
pids+=($!)

echo "== Label Studio on 127.0.0.1:$LS_PORT (data in $WORK/ls)"
# Legacy tokens let the script use a token it chose; SSRF protection would refuse a backend
# and webhooks on loopback.
LABEL_STUDIO_BASE_DATA_DIR="$WORK/ls" \
LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true \
SSRF_PROTECTION_ENABLED=false ML_BLOCK_LOCAL_IP=false SENTRY_DSN= FRONTEND_SENTRY_DSN= \
LABEL_STUDIO_USERNAME=lead@example.com LABEL_STUDIO_PASSWORD="$TOKEN" \
LABEL_STUDIO_USER_TOKEN="$TOKEN" \
    "$VENV/bin/label-studio" start --internal-host 127.0.0.1 --port "$LS_PORT" --no-browser \
    > "$WORK/ls.log" 2>&1 &
pids+=($!)

"$VENV/bin/python" scripts/label_studio_live.py \
    --sw2s "http://127.0.0.1:$SW2S_PORT" --key "$KEY" \
    --label-studio "http://127.0.0.1:$LS_PORT" --token "$TOKEN" \
    --data "$DATASETS/sst2/validation.jsonl" --tasks "$TASKS" \
    || { echo "== FAILED; last lines of the logs:"; tail -n 20 "$WORK/sw2s.log" "$WORK/ls.log"; exit 1; }
