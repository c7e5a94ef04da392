"""Benchmark: `l3kit.lzw_allocation` vs the reference Python code (fixtures/lzw_reference.py).

    python python/bench/lzw_bench.py [--tokens 10000000] [--reference-tokens N] [--reps 5]
        [--cli target/release/l3kit]

Both start from the same numpy array of ids (Zipf(1.1) over a 50K vocabulary, rank r mapped to
a fixed random id, seeded; cut into sequences of 1024) and end with the bounds of the LZW
allocation at 3.9 rows per token, k_max 512. l3kit takes the flat array with seq_len=1024;
the reference needs Python lists, so its time includes `tolist()` (a small share). Each
measurement is repeated and the median printed with min and max; the bounds of the two are
compared whenever both ran on the same ids. With --cli, the same ids written to a .u32 file go
through `l3kit profile --seq-len 1024` and `l3kit allocate` too (wall clock of both processes,
writing the file excluded), for the CLI's figure side by side. docs/benchmarks.md has the
figures.
"""

import argparse
import importlib.util
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

import l3kit

ROOT = Path(__file__).resolve().parents[2]


def zipf_ids(n, vocab, s, seed):
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab + 1, dtype=np.float64) ** s
    p /= p.sum()
    ranks = rng.choice(vocab, size=n, p=p)
    return rng.permutation(vocab).astype(np.uint32)[ranks]


def reference():
    spec = importlib.util.spec_from_file_location("lzw_reference", ROOT / "fixtures" / "lzw_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_reference(ref, ids, vocab, seq_len, n_emb, k_max):
    flat = ids.tolist()
    seqs = [flat[i : i + seq_len] for i in range(0, len(flat), seq_len)]
    alloc = ref.allocate(ref.lzw_counts(seqs, vocab), vocab, n_emb, k_max)
    bounds = np.zeros(vocab + 1, dtype=np.int64)
    np.cumsum(alloc, out=bounds[1:])
    return bounds


def timed(reps, f):
    times, out = [], None
    for _ in range(reps):
        t = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - t)
    return times, out


def report(name, tokens, times):
    med = statistics.median(times)
    print(
        f"RESULT {name}: {tokens} ids, median {med:.3f} s (min {min(times):.3f}, max {max(times):.3f}, "
        f"{len(times)} reps), {tokens / med / 1e6:.2f} M ids/s"
    )
    return med


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=10_000_000)
    ap.add_argument("--reference-tokens", type=int, default=None,
                    help="ids for the reference (default --tokens; it is slow)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--reference-reps", type=int, default=None, help="default --reps")
    ap.add_argument("--vocab", type=int, default=50_000)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--rows-per-token", type=float, default=3.9)
    ap.add_argument("--k-max", type=int, default=512)
    ap.add_argument("--cli", default=None, help="an l3kit binary to time on the same ids")
    a = ap.parse_args()
    ids = zipf_ids(a.tokens, a.vocab, a.zipf, a.seed)
    n_emb = round(a.rows_per_token * a.vocab)
    print(f"vocab {a.vocab}, n_emb {n_emb}, k_max {a.k_max}, seq_len {a.seq_len}, Zipf({a.zipf}), seed {a.seed}")

    def ours(x):
        return l3kit.lzw_allocation(x, a.vocab, n_emb, a.k_max, seq_len=a.seq_len, fill="frequency")

    times, bounds = timed(a.reps, lambda: ours(ids))
    fast = report("l3kit.lzw_allocation", a.tokens, times)

    if a.cli:
        with tempfile.TemporaryDirectory(prefix="l3kit-lzw-bench-") as tmp:
            ids_file, prof, out = f"{tmp}/ids.u32", f"{tmp}/p.safetensors", f"{tmp}/a.safetensors"
            ids.astype("<u4").tofile(ids_file)

            def cli():
                base = [a.cli, "--quiet", "--json"]
                subprocess.run(base + ["profile", "--vocab-size", str(a.vocab), "--seq-len", str(a.seq_len),
                                       ids_file, "--out", prof], check=True, capture_output=True)
                r = subprocess.run(base + ["allocate", "--profile", prof, "--n-emb", str(n_emb), "--k-max",
                                           str(a.k_max), "--fill", "frequency", "--out", out],
                                   check=True, capture_output=True)
                return json.loads(r.stdout)

            times, _ = timed(a.reps, cli)
            report("l3kit CLI (profile + allocate)", a.tokens, times)
            assert np.array_equal(load_file(out)["bounds"], bounds), "the CLI's bounds differ"

    ref = reference()
    ref_n = a.reference_tokens or a.tokens
    ref_ids = ids[:ref_n]
    times, ref_bounds = timed(a.reference_reps or a.reps,
                              lambda: run_reference(ref, ref_ids, a.vocab, a.seq_len, n_emb, a.k_max))
    slow = report("reference lzw_reference.py", ref_n, times)
    if ref_n != a.tokens:
        t, b = timed(a.reps, lambda: ours(ref_ids))
        fast_same = report("l3kit.lzw_allocation (reference's ids)", ref_n, t)
        bounds = b
        print(f"ratio at {ref_n} ids: {slow / fast_same:.1f}x")
        print(f"ratio, reference's rate at {ref_n} ids vs l3kit at {a.tokens}: "
              f"{(slow / ref_n) / (fast / a.tokens):.1f}x")
    else:
        print(f"ratio: {slow / fast:.1f}x")
    assert np.array_equal(bounds, ref_bounds), "the bounds differ"
    print("bounds identical")


if __name__ == "__main__":
    main()
