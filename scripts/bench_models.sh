#!/usr/bin/env bash
# Embedding speed of every catalogue model: `sw2s bench embed` beside PyTorch on the same
# texts, in one run (for the GGUF decoders, scripts/bench_decoder_pytorch.py after it).
# Makes (once) a virtual environment it owns for the PyTorch side.
#
#   scripts/bench_models.sh [DATA.jsonl] [LIMIT]
#
# DATA defaults to SST-2 validation sentences from ../shared/datasets. On a GPU:
# SW2S_DEVICE=cuda CARGO_FEATURES=cuda (scripts/check_cuda.sh sets up the CUDA toolkit);
# both sides then run on the GPU, and sw2s also reports its parity with its own CPU path.
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/datasets/sst2/validation.jsonl}"
limit="${2:-256}"
venv="${SW2S_BENCH_VENV:-$HOME/.cache/sw2s/bench-venv}"
data_dir="${SW2S_DATA_DIR:-./data}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  # The versions the README's figures were measured with (src/bench/baseline.rs pins the first three).
  "$venv/bin/pip" install --disable-pip-version-check -q torch==2.15.0 transformers==5.24.0 \
    sentence-transformers==6.2.0 gguf==0.19.0 accelerate==1.15.0
fi
device="${SW2S_DEVICE:-cpu}"
cargo build --release --quiet ${CARGO_FEATURES:+--features "$CARGO_FEATURES"}
sw2s=target/release/sw2s
[ -n "${CARGO_TARGET_DIR:-}" ] && sw2s="$CARGO_TARGET_DIR/release/sw2s"
for model in minilm mpnet-base smollm2-135m gemma3-270m; do
  echo "## $model"
  dir=$("$sw2s" fetch-model --data-dir "$data_dir" --model "$model")
  # BERT-family models: sw2s bench embed runs sentence-transformers itself, alternating.
  "$sw2s" bench embed --data-dir "$data_dir" --model "$model" --data "$data" --limit "$limit" \
    --thread-counts 1,2 --batch-sizes 8,32 --venv "$venv" --device "$device"
  case "$model" in
    smollm2-135m|gemma3-270m)
      "$venv/bin/python" scripts/bench_decoder_pytorch.py "$(ls "$dir"/*.gguf)" "$data" "$limit" 3 "$device" ;;
  esac
done
