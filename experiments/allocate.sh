#!/bin/sh
# Profiles, the study's allocations and their `l3kit evaluate` reports, all from the l3kit
# binary of this checkout (build it first: cargo build --release).
#   sh experiments/allocate.sh
set -eu
cd "$(dirname "$0")/.."
L3KIT=target/release/l3kit
TOK=fixtures/tokenizer/tiny-bpe-512.json
P=experiments/profiles
A=experiments/allocations
E=experiments/results/evaluate
mkdir -p "$P" "$A" "$E"
$L3KIT -q profile --tokenizer $TOK fixtures/corpus/train.txt --out $P/train.safetensors > /dev/null
$L3KIT -q profile --tokenizer $TOK fixtures/corpus/heldout.txt --out $P/heldout.safetensors > /dev/null
# n_emb 2048 = 4 rows per token, k_max 64: the allocation of fixtures/trained/ (byte-identical)
common="--profile $P/train.safetensors --rows-per-token 4 --k-max 64"
$L3KIT -q allocate $common --method lzw --out $A/lzw.safetensors > /dev/null
cmp $A/lzw.safetensors fixtures/checkpoints/allocation-tiny.safetensors
lzw_mean=$($L3KIT -q evaluate --allocation $A/lzw.safetensors --profile $P/train.safetensors --json |
  python3 -c 'import json, sys; print(repr(json.load(sys.stdin)["heldout"]["expected_rows"]))')
for spec in "opt-half 2" "opt-quarter 4" "opt-tenth 10"; do
  set -- $spec
  budget=$(python3 -c "print(repr($lzw_mean / $2))")
  $L3KIT -q allocate $common --method optimal --mean-rows "$budget" --out $A/$1.safetensors > /dev/null
done
$L3KIT -q allocate $common --method frequency --out $A/frequency.safetensors > /dev/null
$L3KIT -q allocate $common --method uniform --out $A/uniform.safetensors > /dev/null
# the control: one row per token (n_emb = vocab), nothing to allocate
$L3KIT -q allocate --profile $P/train.safetensors --rows-per-token 1 --k-max 64 --method uniform \
  --out $A/one-row.safetensors > /dev/null
for a in lzw opt-half opt-quarter opt-tenth frequency uniform one-row; do
  $L3KIT -q evaluate --allocation $A/$a.safetensors --profile $P/heldout.safetensors \
    --train-profile $P/train.safetensors --json > $E/$a.json
done
sha256sum $A/*.safetensors
