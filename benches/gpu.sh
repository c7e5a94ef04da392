#!/usr/bin/env bash
# The GPU checks, as one command for a machine with one NVIDIA H100/H200, PyTorch and the CUDA 13
# runtime libraries, and no Rust and no network (issue 15).
#
#   benches/gpu.sh [--dry-run] [--bin PATH] [--out DIR]
#
# --bin   the l3kit binary built with `../shared/cuda/build-cuda.sh` (default: ./l3kit-cuda,
#         then target/cuda/release/l3kit)
# --out   where the report and the log go (default: $OUT, else ./gpu-out)
# --dry-run  check the inputs and print every command instead of running it (needs no GPU)
# --device D  run the same steps on another device (`--device cpu --small` is the smoke test
#         of this script on a machine without a GPU: every command and check, a small model)
# --small the decode model with 100 MB of tables instead of 4 GB
#
# It runs, in this order (about 4 minutes on an H200, most of it writing the 4 GB model):
#   1. parity: the forward goldens of both dialects (f32 within 1e-5 relative L2) with
#      `forward --device cuda`, compared with the committed outputs (benches/gpu_check.py,
#      plain Python); `verify
#      --device cuda` of the bundled trained model packed int8 on its captured hidden states;
#      the bundled model's held-out NLL on cuda against cpu (within 1e-5 relative);
#   2. decode: a synthetic whole model with 4 GB of bf16 tables (`synth --family tiny`),
#      `generate --device cuda` at batch 1 with its tables served from host memory (ram and
#      mmap tiers) with prefetch on and off, 3 runs each, tokens/s and the layers' wait;
#   3. writes $OUT/gpu-report.json (every figure and check) and $OUT/gpu.log.
# Not covered yet (the CLI has no batched decode; tables resident on the device are not
# built): batch 16 and 256, --tables gpu, and the PyTorch layer on the GPU for reference.
set -euo pipefail
cd "$(dirname "$0")/.."

dry=0
bin=""
device=cuda
n_emb=655360
vocab=32768
out="${OUT:-$PWD/gpu-out}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --bin) bin="$2"; shift ;;
    --out) out="$2"; shift ;;
    --device) device="$2"; shift ;;
    --small) n_emb=16384; vocab=4096 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "benches/gpu.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$bin" ]; then
  for c in ./l3kit-cuda target/cuda/release/l3kit; do
    if [ -x "$c" ]; then bin="$c"; break; fi
  done
fi
# The CUDA binary is about 78 MB (70 MB stripped): over what a device run can carry (64 MiB),
# so it travels gzipped (21 MB): strip -o l3kit-cuda target/cuda/release/l3kit; gzip -9 l3kit-cuda
if [ -z "$bin" ] && [ -f ./l3kit-cuda.gz ]; then
  bin="${TMPDIR:-/tmp}/l3kit-cuda.$$"
  if [ "$dry" = 1 ]; then
    echo "would unpack ./l3kit-cuda.gz to $bin"
  else
    gzip -dc ./l3kit-cuda.gz > "$bin" && chmod +x "$bin"
  fi
fi

problems=0
need() { # need PATH WHAT
  if [ ! -e "$1" ]; then echo "missing: $1 ($2)" >&2; problems=$((problems + 1)); fi
}
need fixtures/trained/model.safetensors "the bundled trained model"
need fixtures/trained/inputs.safetensors "its captured hidden states"
need fixtures/tokenizer/tiny-bpe-512.json "its tokenizer"
need fixtures/corpus/heldout.txt "held-out text"
need benches/gpu_check.py "the checks and the report"
need fixtures/checkpoints/allocation-tiny.safetensors "the goldens' allocation"
for d in paper nanochat; do
  need "fixtures/checkpoints/$d/model.safetensors" "the $d golden checkpoint"
  need "fixtures/golden/forward-$d-f32.safetensors" "the $d golden forward"
done
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
  if [ "$dry" = 0 ] || [ ! -f ./l3kit-cuda.gz ]; then
    echo "missing: the CUDA build of l3kit (build it with ../shared/cuda/build-cuda.sh, then" \
         "strip -o l3kit-cuda target/cuda/release/l3kit && gzip -9 l3kit-cuda beside this" \
         "checkout, or pass --bin)" >&2
  fi
  if [ "$dry" = 0 ]; then problems=$((problems + 1)); fi
  bin="${bin:-./l3kit-cuda}"
fi
if ! command -v python3 >/dev/null; then
  echo "missing: python3 (benches/gpu_check.py compares and reports)" >&2
  problems=$((problems + 1))
fi
if [ "$problems" -gt 0 ]; then
  echo "benches/gpu.sh: $problems input(s) missing; nothing was run" >&2
  exit 2
fi

[ "$dry" = 1 ] || mkdir -p "$out"
log="$out/gpu.log"
report="$out/gpu-report.jsonl"
[ "$dry" = 1 ] || : > "$report"
run() { # run NAME COMMAND...: print it (dry run) or run it, its stdout into NAME.json
  local name="$1"; shift
  if [ "$dry" = 1 ]; then
    echo "would run [$name]: $*"
    return 0
  fi
  echo "== $name: $*" >> "$log"
  local started ms rc
  started=$(date +%s%N)
  if "$@" > "$out/$name.json" 2>> "$log"; then rc=0; else rc=$?; fi
  ms=$(( ($(date +%s%N) - started) / 1000000 ))
  echo "{\"step\": \"$name\", \"rc\": $rc, \"ms\": $ms}" >> "$report"
  echo "   [$name] exit $rc in ${ms} ms" | tee -a "$log"
}

# 1. Parity.
for d in paper nanochat; do
  alloc=()
  [ "$d" = paper ] && alloc=(--allocation fixtures/checkpoints/allocation-tiny.safetensors)
  run "forward-$d" "$bin" --json forward --device "$device" --model "fixtures/checkpoints/$d" \
    "${alloc[@]}" --inputs "fixtures/golden/forward-$d-f32.safetensors" \
    --out "$out/forward-$d.safetensors"
done
for d in paper nanochat; do
  run "golden-$d" python3 benches/gpu_check.py golden "$out/forward-$d.safetensors" \
    "fixtures/golden/forward-$d-f32.safetensors"
done
run pack-trained "$bin" --json pack fixtures/trained --allocation \
  fixtures/trained/allocation.safetensors --dtype int8 --out "$out/trained-int8" --force
run "verify-$device" "$bin" --json verify --source fixtures/trained --allocation \
  fixtures/trained/allocation.safetensors --packed "$out/trained-int8" \
  --inputs fixtures/trained/inputs.safetensors --device "$device"
for dev in cpu "$device"; do
  run "eval-$dev" "$bin" --json eval --model fixtures/trained --allocation \
    fixtures/trained/allocation.safetensors --tokenizer fixtures/tokenizer/tiny-bpe-512.json \
    fixtures/corpus/heldout.txt --max-tokens 20000 --device "$dev"
done
run "eval-$device-vs-cpu" python3 benches/gpu_check.py nll "$out/eval-$device.json" \
  "$out/eval-cpu.json"

# 2. Decode with host-served tables.
model="$out/decode-model"
run synth "$bin" --json synth --family tiny --vocab "$vocab" --n-emb "$n_emb" --k-max 512 \
  --d-in 1024 --d-emb 512 --d-up 1024 --layers 2,6 --n-layer 8 --n-head 16 --block-size 1024 \
  --dtype bf16 --out "$model-src"
[ "$dry" = 1 ] || rm -rf "$model"
run pack-decode "$bin" --json pack "$model-src" --out "$model" --force
prompt=$(seq -s, 1 16)
for rep in 1 2 3; do
  for tables in ram mmap; do
    for prefetch in on off; do
      run "decode-$tables-$prefetch-$rep" "$bin" --json generate --model "$model" \
        --prompt-ids "$prompt" --max-new-tokens 64 --device "$device" --tables "$tables" \
        --prefetch "$prefetch"
    done
  done
done

if [ "$dry" = 1 ]; then
  echo "dry run: every input is present; the commands above are what a run executes"
  exit 0
fi
# 3. One JSON report: each step's exit status and time, and its JSON output.
python3 benches/gpu_check.py report "$out"
