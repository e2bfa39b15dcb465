#!/usr/bin/env bash
# One bounded check of the cuda path on a machine with an NVIDIA GPU (issue 15): build with
# `--features cuda`, run the SmolLM2 reference tests on cuda, the model benchmark, and
# `waypoint serve --device cuda` (bf16) under `waypoint bench`, then HF transformers on the same GPU
# where a CUDA PyTorch is importable. Every figure goes into one results file.
#
# Usage: scripts/gpu-check.sh [--out FILE] [--device cuda|cuda:N] [--model PATH]
#                             [--budget SECONDS] [--dry-run]
#   --out FILE        results file [default: $OUT/gpu-check.md, or target/gpu-check.md]
#   --device DEV      the GPU to use [default: cuda]
#   --model PATH      GGUF file [default: SmolLM2 from scripts/fetch-smollm2.sh]
#   --budget SECONDS  wall-clock bound of the whole run [default: 570, under 10 minutes]
#   --dry-run         write the plan (every command) to the results file, run nothing
#
# Without a GPU (no working `nvidia-smi -L`), it writes why into the results file and exits 0:
# a CPU machine that runs it has nothing to check, which is not a failure. Each step runs under
# what is left of the budget; a step that fails or times out is recorded and the rest still run.
# The exit status is 1 if any step failed, 0 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '7,13p' "$0" | sed 's/^# \{0,1\}//' >&2; }

out="${OUT:+$OUT/gpu-check.md}"
out="${out:-target/gpu-check.md}"
device=cuda
model=""
budget=570
dry_run=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || { usage; exit 2; }; out="$2"; shift 2 ;;
    --device) [ $# -ge 2 ] || { usage; exit 2; }; device="$2"; shift 2 ;;
    --model) [ $# -ge 2 ] || { usage; exit 2; }; model="$2"; shift 2 ;;
    --budget) [ $# -ge 2 ] || { usage; exit 2; }; budget="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu-check: unknown argument: $1" >&2; usage; exit 2 ;;
  esac
done
case "$device" in
  cuda|cuda:[0-9]|cuda:[0-9][0-9]) ;;
  *) echo "gpu-check: --device must be cuda or cuda:N, not '$device'" >&2; exit 2 ;;
esac
case "$budget" in
  ''|*[!0-9]*) echo "gpu-check: --budget must be whole seconds, not '$budget'" >&2; exit 2 ;;
esac
if [ "$budget" -ge 600 ]; then
  echo "gpu-check: --budget must stay under 600 seconds (the check is bounded by 10 minutes)" >&2
  exit 2
fi

mkdir -p "$(dirname "$out")"
: > "$out"
record() { printf '%s\n' "$*" >> "$out"; }
deadline=$(( $(date +%s) + budget ))
failed=0

record "# waypoint gpu-check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
record ""
record "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown), device: $device"

if ! gpus=$(nvidia-smi -L 2>&1) || [ -z "$gpus" ]; then
  record ""
  record "SKIPPED: no NVIDIA GPU here (nvidia-smi -L: ${gpus:-no output})"
  echo "gpu-check: no NVIDIA GPU; wrote $out"
  exit 0
fi
record "gpus: $gpus"

port=$(( 18000 + RANDOM % 1000 ))
bench_json="$(dirname "$out")/gpu-check-bench.json"
server_log="$(dirname "$out")/gpu-check-serve.log"

# Runs one step under what is left of the budget, records its status and output (tail).
step() {
  local name="$1"; shift
  record ""
  record "## $name"
  record ""
  record '```'
  record "\$ $*"
  if [ "$dry_run" = 1 ]; then
    record '```'
    return 0
  fi
  local left=$(( deadline - $(date +%s) ))
  if [ "$left" -le 5 ]; then
    record "SKIPPED: the ${budget}s budget is spent"
    record '```'
    failed=1
    return 1
  fi
  local log rc
  log=$(mktemp)
  timeout "$left" "$@" > "$log" 2>&1
  rc=$?
  tail -n 60 "$log" >> "$out"
  rm -f "$log"
  if [ "$rc" = 124 ]; then record "TIMEOUT after ${left}s"; fi
  record "exit status: $rc"
  record '```'
  [ "$rc" = 0 ] || failed=1
  return "$rc"
}

if [ -z "$model" ]; then
  if [ "$dry_run" = 1 ]; then
    model='$(scripts/fetch-smollm2.sh)'
  else
    model=$(scripts/fetch-smollm2.sh) || { record "FAILED: could not fetch SmolLM2"; exit 1; }
  fi
fi

# One profile (dev: opt-level 3, see Cargo.toml) for the tests, the example and the binary,
# so the dependencies build once.
step "build (--features cuda)" \
  cargo build --features cuda --bin waypoint --example model_bench --test smollm2_reference

# The cuda reference tests are #[ignore]d so that a GPU-less `cargo test --features cuda`
# stays green; here they are the point. In f32 (the peer's precision) and in bf16 (what
# `--dtype auto` serves on cuda), each against its own tolerance (tests/smollm2_reference.rs).
WAYPOINT_TEST_DEVICE="$device" step "SmolLM2 reference tests on $device (f32)" \
  cargo test --features cuda --test smollm2_reference -- --ignored cuda_reference
WAYPOINT_TEST_DEVICE="$device" step "SmolLM2 reference tests on $device (bf16)" \
  cargo test --features cuda --test smollm2_reference -- --ignored cuda_bf16_reference

# `--dtype auto`: bf16 on cuda, as `serve` below runs.
step "model benchmark on $device (bf16)" \
  cargo run --features cuda --example model_bench -- --device "$device" --dtype auto "$model"

serve_and_bench() {
  target/debug/waypoint serve --device "$device" --model "$model" --port "$port" \
    > "$server_log" 2>&1 &
  local server=$!
  local ready=0
  for _ in $(seq 1 120); do
    if curl -sf "http://127.0.0.1:$port/v1/models" > /dev/null 2>&1; then ready=1; break; fi
    kill -0 "$server" 2>/dev/null || break
    sleep 1
  done
  if [ "$ready" != 1 ]; then
    echo "waypoint serve did not become ready; its log:"
    tail -n 30 "$server_log"
    kill "$server" 2>/dev/null
    return 1
  fi
  local rc=0
  for streams in 1 64; do
    echo "### $streams concurrent streams"
    target/debug/waypoint bench --url "http://127.0.0.1:$port" --num-prompts "$streams" \
      --max-concurrency "$streams" --input-len 128 --output-len 64 --no-progress \
      --output-json "$bench_json.$streams" || rc=$?
  done
  kill "$server" 2>/dev/null
  wait "$server" 2>/dev/null
  return "$rc"
}
if [ "$dry_run" = 1 ]; then
  step "waypoint serve --device $device under waypoint bench (1 and 64 streams)" \
    target/debug/waypoint serve --device "$device" --model "$model" --port "$port"
else
  # `timeout` runs programs, not functions: hand the function to a child bash.
  export -f serve_and_bench
  export device model port server_log bench_json
  step "waypoint serve --device $device under waypoint bench (1 and 64 streams)" \
    bash -c serve_and_bench
fi

if [ "$dry_run" = 1 ] || python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  step "HF transformers (eager) on the same GPU, 1 and 64 streams" \
    python3 scripts/hf_decode_bench.py --model "$model" --device "$device" --streams 1 64 \
      --input-len 128 --output-len 64
else
  record ""
  record "HF transformers: SKIPPED (no CUDA PyTorch importable; pip install torch transformers gguf)"
fi

record ""
record "total: $(( budget - (deadline - $(date +%s)) ))s of a ${budget}s budget"
echo "gpu-check: wrote $out"
exit "$failed"
