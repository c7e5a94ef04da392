#!/usr/bin/env bash
# Pack benchmark: streaming memory and throughput against `cp`, side by side.
#
#   benches/pack.sh [WORKDIR] [N_EMB] [REPS]
#
# Writes a synthetic paper-dialect checkpoint (2 L3 layers, d_in 2048, d_emb 1024, bf16 tables;
# N_EMB rows per layer, default 850000 = 10.4 GB) into WORKDIR (default /tmp/l3kit-bench), then
# alternates `cp` and `l3kit pack` (bf16 -> bf16) REPS times (default 3) on the same page-cached
# bytes and prints the medians, their ratio and pack's peak RSS (/usr/bin/time -v, or the
# summary's VmHWM). A smaller f32 checkpoint measures f32 -> bf16 and f32 -> int8.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/l3kit-bench}
n_emb=${2:-850000}
reps=${3:-3}
cargo build --release -q
bin=target/release/l3kit
mkdir -p "$work"
vocab=$(( n_emb / 4 < 180000 ? n_emb / 4 : 180000 ))
src="$work/src-bf16"
if [ ! -f "$src/model.safetensors" ]; then
  $bin synth --dialect paper --vocab "$vocab" --n-emb "$n_emb" --k-max 512 --d-in 2048 --d-emb 1024 \
    --d-up 4096 --layers 4,16 --dtype bf16 --out "$src" --quiet
fi
bytes=$(stat -c %s "$src/model.safetensors")
cat "$src/model.safetensors" > /dev/null   # page-cache the source
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
now() { date +%s.%N; }
cp_t=(); pack_t=(); rss=()
for i in $(seq "$reps"); do
  rm -f "$work/copy.safetensors"; sync
  t0=$(now); cp "$src/model.safetensors" "$work/copy.safetensors"; sync; t1=$(now)
  cp_t+=("$(echo "$t1 - $t0" | bc)")
  rm -f "$work/copy.safetensors"; rm -rf "$work/packed"; sync
  t0=$(now)
  json=$($bin pack "$src/model.safetensors" --allocation "$src/allocation.safetensors" \
      --dtype bf16 --out "$work/packed" --force --json --quiet)
  sync; t1=$(now)
  pack_t+=("$(echo "$t1 - $t0" | bc)")
  rss+=("$(echo "$json" | grep -o '"peak_rss_bytes": [0-9]*' | grep -o '[0-9]*$')")
done
cp_med=$(printf '%s\n' "${cp_t[@]}" | median)
pack_med=$(printf '%s\n' "${pack_t[@]}" | median)
rss_max=$(printf '%s\n' "${rss[@]}" | sort -n | tail -1)
echo "source: $bytes bytes ($(echo "scale=2; $bytes/1000000000" | bc) GB), $reps reps, times include sync"
echo "cp   seconds: ${cp_t[*]}  median $cp_med  ($(echo "scale=0; $bytes/$cp_med/1000000" | bc) MB/s)"
echo "pack seconds: ${pack_t[*]}  median $pack_med  ($(echo "scale=0; $bytes/$pack_med/1000000" | bc) MB/s)"
echo "pack / cp throughput ratio: $(echo "scale=3; $cp_med/$pack_med" | bc)"
echo "pack peak RSS: $rss_max bytes ($(echo "scale=1; $rss_max/1048576" | bc) MiB)"
$bin inspect --check "$work/packed" --quiet

# Conversions from an f32 source (smaller: n_emb / 4).
src32="$work/src-f32"
if [ ! -f "$src32/model.safetensors" ]; then
  $bin synth --dialect paper --vocab $((vocab / 4)) --n-emb $((n_emb / 4)) --k-max 512 --d-in 2048 \
    --d-emb 1024 --d-up 4096 --layers 4,16 --dtype f32 --out "$src32" --quiet
fi
bytes32=$(stat -c %s "$src32/model.safetensors")
cat "$src32/model.safetensors" > /dev/null
for dt in bf16 int8; do
  rm -rf "$work/packed32"; sync
  t0=$(now)
  json=$($bin pack "$src32/model.safetensors" --allocation "$src32/allocation.safetensors" \
      --dtype $dt --out "$work/packed32" --force --json --quiet)
  sync; t1=$(now)
  s=$(echo "$t1 - $t0" | bc)
  echo "f32 -> $dt: $bytes32 bytes in $s s ($(echo "scale=0; $bytes32/$s/1000000" | bc) MB/s read), peak RSS $(echo "$json" | grep -o '"peak_rss_bytes": [0-9]*' | grep -o '[0-9]*$')"
done
rm -rf "$work/packed" "$work/packed32"
