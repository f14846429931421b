#!/usr/bin/env bash
# The three speed comparisons of the README (issue "speed"), each against PyTorch or the raw
# encoder in the same command: embedding (SST-2 sentences and SciQ with its support
# paragraph, in process and through POST /v1/embed), fine-tuning, ingest (SQLite and, when
# PG_URL is set, PostgreSQL). The PyTorch side runs in a virtual environment the benchmark
# makes with pip on first use (DATA_DIR/bench-venv, or $SW2S_BENCH_VENV).
#
#   scripts/bench_all.sh [DATASETS_DIR]      (default ../shared/datasets)
#   PG_URL=postgres://postgres@127.0.0.1:5432/postgres scripts/bench_all.sh
set -euo pipefail
cd "$(dirname "$0")/.."
datasets="${1:-../shared/datasets}"
cargo build --release --locked --quiet
sw2s="${CARGO_TARGET_DIR:-target}/release/sw2s"
threads="${THREADS:-2}"
echo "## embed: SST-2 validation sentences"
"$sw2s" bench embed --http --data "$datasets/sst2/validation.jsonl" --limit 512 \
  --thread-counts "$threads" --batch-sizes 8,32
echo "## embed: SciQ with support (long texts)"
"$sw2s" bench embed --http --data "$datasets/sciq_support/validation.jsonl" --limit 256 \
  --thread-counts "$threads" --batch-sizes 8,32
echo "## fine-tuning"
"$sw2s" bench finetune --data "$datasets/sst2/validation.jsonl" --limit 464 --thread-counts "$threads"
echo "## ingest: SQLite"
"$sw2s" bench ingest --data "$datasets/sst2/validation.jsonl" --limit 512 --threads "$threads"
if [ -n "${PG_URL:-}" ]; then
  echo "## ingest: PostgreSQL"
  "$sw2s" bench ingest --data "$datasets/sst2/validation.jsonl" --limit 512 --threads "$threads" \
    --database-url "$PG_URL"
fi
