#!/usr/bin/env bash
# One L3 layer forward on CPU: PyTorch (benches/l3_torch_bench.py, fixtures/l3_torch.py's grouped
# implementation, 2 threads) against l3kit on the identical problem, one after the other.
#
#   benches/forward.sh [WORKDIR] [REPS]
#
# Needs a Python with torch (PYTHON, default ~/.venvs/l3fix/bin/python; see fixtures/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/l3kit-forward-bench}
reps=${2:-5}
py=${PYTHON:-$HOME/.venvs/l3fix/bin/python}
if [ ! -f "$work/inputs.safetensors" ]; then
  "$py" benches/l3_torch_bench.py --dump "$work" --runs 1 > /dev/null
fi
echo "== PyTorch"
"$py" benches/l3_torch_bench.py --runs "$reps" | tail -1
echo "== l3kit"
cargo bench -q --bench forward -- forward "$work" "$reps" 2>/dev/null | tail -2
