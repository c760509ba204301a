#!/usr/bin/env bash
# The GPU check: on a machine with one NVIDIA GPU, in about 10 minutes,
#   1. the CUDA parity tests (tests/gpu.rs: logits, rollouts, GRPO steps and bf16 mixed precision
#      on the tiny fixtures, each against the CPU),
#   2. the rollout benchmark on SmolLM2-135M-Instruct (f32 and bf16 on the GPU, and the CPU fast
#      path of the same machine),
#   3. three GRPO steps on SmolLM2-135M (f32, and bf16 with f32 master weights) and on
#      Qwen2.5-0.5B-Instruct when it is in the Hugging Face cache or the Hub is reachable,
# then prints one table. Every log stays in $GPU_CHECK_DIR (default target/gpu-check).
#
# Usage:
#   scripts/gpu-check.sh            # build (needs nvcc: the system's, or a PyPI one via
#                                   # scripts/install-cuda-toolkit.sh) then run
#   scripts/gpu-check.sh build      # only build, e.g. on a CPU machine, into $GPU_CHECK_DIR/bin
#   scripts/gpu-check.sh run        # only run binaries built before (a GPU machine without nvcc)
#
# CUDA_COMPUTE_CAP (e.g. 90 for H100/H200, 89 for L4/4090, 80 for A100) is read from nvidia-smi
# when a GPU is present; set it when building elsewhere. The binaries link cuBLAS, cuRAND and NVRTC
# of CUDA 13 and need a driver >= R580 on the GPU machine (LD_LIBRARY_PATH may point at the
# `nvidia-cublas`, `nvidia-curand`, `nvidia-cuda-nvrtc` wheels' lib folders).
# The SmolLM2 model comes from ./scripts/fetch-models.sh (models/).
#
# A dry run of the script's own logic on a CPU machine (no CUDA build, everything on the CPU,
# small sizes):
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_FEATURES= GPU_CHECK_TOKENS=16 GPU_CHECK_RUNS=0 scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

MODE="${1:-all}"
OUT="${GPU_CHECK_DIR:-target/gpu-check}"
BIN="$OUT/bin"
SMOL="${SMOL_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}"
QWEN="${QWEN_MODEL:-Qwen/Qwen2.5-0.5B-Instruct}"
DEV="${GPU_CHECK_DEVICE:-cuda:0}"
FEATURES="${GPU_CHECK_FEATURES-cuda}"
TOKENS="${GPU_CHECK_TOKENS:-128}"
# Never empty: an empty array under `set -u` aborts bash before 4.4 (`--locked` is harmless).
FEAT_ARGS=(--locked); [[ -n "$FEATURES" ]] && FEAT_ARGS=(--locked --features "$FEATURES")
mkdir -p "$OUT" "$BIN"
log() { echo "gpu-check: $*" >&2; }

if [[ -z "${CUDA_COMPUTE_CAP:-}" ]] && command -v nvidia-smi >/dev/null; then
  CUDA_COMPUTE_CAP="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null \
    | head -n1 | tr -d '. ' || true)"
fi
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"

build() {
  if [[ "$FEATURES" == *cuda* ]] && ! command -v nvcc >/dev/null; then
    cargo fetch
    eval "$(scripts/install-cuda-toolkit.sh --print-env)"
  fi
  log "building with features '${FEATURES}' for sm_$CUDA_COMPUTE_CAP"
  cargo build --release "${FEAT_ARGS[@]}" --example rollout_bench --example train
  cp target/release/examples/rollout_bench target/release/examples/train "$BIN/"
  # The test binary's path has a hash in it: ask cargo for it.
  local test_bin
  test_bin="$(cargo test --release "${FEAT_ARGS[@]}" --test gpu --no-run --message-format=json \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "gpu":
        print(m["executable"])' | tail -n1)"
  cp "$test_bin" "$BIN/gpu-tests"
  log "binaries in $BIN"
}

# `row NAME VALUE`: one line of the final table.
ROWS=()
row() { ROWS+=("$(printf '| %-52s | %s |' "$1" "$2")"); }

# `metric DIR KEY [DIVISOR_KEY]`: mean of KEY (or of KEY / DIVISOR_KEY) over the steps of a run
# folder's metrics.jsonl, skipping step 1 (warm-up) when there are more.
metric() {
  python3 - "$@" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl") if l.strip()]
rows = rows[1:] or rows
key, div = sys.argv[2], (sys.argv[3] if len(sys.argv) > 3 else None)
vals = [r[key] / r[div] if div else r[key] for r in rows if key in r and (not div or r.get(div))]
print(f"{sum(vals) / len(vals):.3f}" if vals else "n/a")
PY
}

grpo() {  # grpo LABEL MODEL EXTRA_FLAGS...
  local label="$1" model="$2"; shift 2
  local dir="$OUT/run-$label"
  rm -rf "$dir"
  if "$BIN/train" --model "$model" --device "$DEV" --task addition --steps 3 \
      --prompts-per-step 4 --num-generations 8 --max-completion-length "$TOKENS" \
      --no-export --out "$dir" "$@" >"$OUT/$label.log" 2>&1; then
    row "GRPO step, $label (s, mean of steps 2-3)" "$(metric "$dir" step_time)"
    row "  rollout tokens/s, $label" "$(metric "$dir" sampled_tokens time/rollout)"
    row "  mean reward, $label" "$(metric "$dir" reward)"
  elif grep -qiE 'hub|connect|dns|resolve' "$OUT/$label.log" && [[ ! -e "$model" ]]; then
    row "GRPO, $label" "SKIPPED: $model is not in the HF cache and the Hub is unreachable"
  else
    row "GRPO, $label" "FAILED (see $OUT/$label.log)"
  fi
}

run() {
  { command -v nvidia-smi >/dev/null && nvidia-smi -L; } 2>&1 | tee "$OUT/gpu.txt" >&2 || true
  row "GPU" "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo none)"

  log "1/3 parity tests on CUDA"
  # The fixtures are read from this checkout, wherever the binary was built.
  if RLZERO_FIXTURES="$PWD/tests/fixtures" RLZERO_TEST_DEVICE="$DEV" \
      "$BIN/gpu-tests" --nocapture --test-threads=1 >"$OUT/parity.log" 2>&1; then
    # With --nocapture a test's output shares the line of the harness's `test NAME ... `.
    if grep -q 'skipped:' "$OUT/parity.log"; then
      row "parity tests (tests/gpu.rs)" "SKIPPED: $(grep -m1 -o 'skipped:.*' "$OUT/parity.log")"
    else
      row "parity tests (tests/gpu.rs)" "$(grep -m1 -o 'test result: .* passed' "$OUT/parity.log")"
    fi
  else
    row "parity tests (tests/gpu.rs)" "FAILED (see $OUT/parity.log)"
  fi
  while IFS= read -r l; do row "  ${l%%:*}" "${l#*: }"; done \
    < <(grep -o -E '(tiny-[a-z0-9]+: \|cuda.*|step 1: .*|cuda bf16 reward curve.*)' "$OUT/parity.log" || true)

  log "2/3 rollout benchmark"
  if [[ -f "$SMOL" ]]; then
    for cfg in "$DEV f32" "$DEV bf16" "cpu f32"; do
      read -r dev dt <<<"$cfg"
      if DEVICE="$dev" DTYPE="$dt" RUNS="${GPU_CHECK_RUNS:-3}" "$BIN/rollout_bench" "$SMOL" >"$OUT/rollout-$dev-$dt.log" 2>&1; then
        row "rollout SmolLM2 $dev $dt, 1 x 8 x 128 (tok/s)" \
          "$(grep -m1 '^1 prompt' "$OUT/rollout-$dev-$dt.log" | sed -E 's/.*median ([0-9.]+).*/\1/')"
        row "rollout SmolLM2 $dev $dt, 4 x 8 x 128 (tok/s)" \
          "$(grep -m1 '^4 prompt' "$OUT/rollout-$dev-$dt.log" | sed -E 's/.*median ([0-9.]+).*/\1/')"
      else
        row "rollout SmolLM2 $dev $dt" "FAILED (see $OUT/rollout-$dev-$dt.log)"
      fi
    done
  else
    row "rollout SmolLM2" "SKIPPED: $SMOL missing (./scripts/fetch-models.sh)"
  fi

  log "3/3 GRPO steps"
  if [[ -f "$SMOL" ]]; then
    grpo smollm2-f32 "$SMOL"
    grpo smollm2-bf16 "$SMOL" --precision bf16
  else
    row "GRPO SmolLM2" "SKIPPED: $SMOL missing"
  fi
  grpo qwen2.5-0.5b-bf16 "$QWEN" --precision bf16

  {
    echo
    echo "| check | result |"
    echo "| --- | --- |"
    printf '%s\n' "${ROWS[@]}"
  } | tee "$OUT/table.md"
}

case "$MODE" in
  build) build ;;
  run) run ;;
  all) build; run ;;
  *) log "unknown mode $MODE (build, run or all)"; exit 2 ;;
esac
