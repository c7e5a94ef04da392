"""PyTorch CPU baseline for the L3 forward benchmark of issue 4 (compare with l3kit's forward).

    ~/.venvs/l3fix/bin/python benches/l3_torch_bench.py                 # time it
    ~/.venvs/l3fix/bin/python benches/l3_torch_bench.py --dump /tmp/l3b # also write the problem

One paper-dialect L3 layer (separate K/V, RMSNorms with weights, eps 1e-6, output replaces x),
d_in 1024, d_emb 512, d_up 4096, vocab 50,000, n_emb 200,000, k_max 512, 4096 tokens drawn
from a Zipf distribution (exponent 1.1), random weights, computed with
fixtures/l3_torch.py's forward_grouped (torch.unique + one pair of matmuls per distinct token,
then W_up / W_mix over all positions) under torch.inference_mode() with
torch.set_num_threads(2). One warm-up run, then 5 timed runs; the LAST line printed is JSON with
the median / min / max throughput in tokens/s (min = slowest run).

The problem (everything seeded, deterministic for a given torch version):
  * token frequency: token id i has frequency rank i (id 0 is the most frequent), with
    p(i) = (i + 1)^-s / H, s = 1.1, H = sum over the vocab.
  * allocation (Zipf-shaped, proportional water-filling): rows(i) = 1 + e(i) where
    e(i) = min(k_max - 1, floor(lam * p(i))) with lam the largest value (bisection, float64)
    for which sum e(i) <= n_emb - vocab; the R = n_emb - vocab - sum e(i) rows left over go one
    each to the R most frequent tokens with e(i) < k_max - 1. Rows are thus non-increasing in
    rank, 1 <= rows <= k_max, and sum to n_emb exactly; bounds = [0, cumsum(rows)].
  * token ids: 4096 draws with replacement from p, torch.multinomial with
    torch.Generator().manual_seed(seed) (seed 0).
  * weights, from torch.manual_seed(seed + 1) in this order: w_k randn(n_emb, d_in)/sqrt(d_in),
    w_v randn(n_emb, d_emb), w_up randn(d_up, d_emb)/sqrt(d_emb), w_mix randn(d_in, d_up+d_in)
    /sqrt(d_up+d_in), norm_in 1 + 0.1 randn(d_in), norm_out 1 + 0.1 randn(d_up); then the
    hidden states randn(4096, d_in).

--dump DIR writes the identical problem for the Rust side (all F32, or BF16 with --dtype bf16):
  DIR/model.safetensors       l3.0.{w_k,w_v,w_up,w_mix,norm_in,norm_out}.weight (paper dialect)
  DIR/allocation.safetensors  bounds I64 [vocab + 1]
  DIR/inputs.safetensors      hidden F32 [4096, d_in], token_ids I64 [4096]  (l3kit forward --inputs)
  DIR/output.safetensors      output.l3.0 F32 [4096, d_in]: this script's result, for checking
  DIR/config.json             the shapes, semantics and generator settings
The model file is about 1.25 GB in f32.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fixtures"))
from l3_torch import PAPER, compare, forward_grouped, forward_naive  # noqa: E402


def zipf_probs(vocab: int, s: float) -> np.ndarray:
    w = np.arange(1, vocab + 1, dtype=np.float64) ** -s
    return w / w.sum()


def zipf_allocation(p: np.ndarray, n_emb: int, k_max: int) -> np.ndarray:
    vocab = p.size
    budget = n_emb - vocab
    assert 0 <= budget <= vocab * (k_max - 1), "n_emb out of range"

    def extra(lam):
        return np.minimum(k_max - 1, np.floor(lam * p)).astype(np.int64)

    lo, hi = 0.0, 1.0
    while extra(hi).sum() <= budget and hi < 1e30:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if extra(mid).sum() <= budget:
            lo = mid
        else:
            hi = mid
    e = extra(lo)
    left = budget - int(e.sum())
    room = np.flatnonzero(e < k_max - 1)  # ascending = by rank
    assert left <= room.size
    e[room[:left]] += 1
    rows = 1 + e
    assert rows.sum() == n_emb and rows.min() >= 1 and rows.max() <= k_max
    assert np.all(np.diff(rows) <= 0), "rows must be non-increasing in rank"
    return np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)


def make_problem(a):
    p = zipf_probs(a.vocab, a.zipf)
    bounds = torch.from_numpy(zipf_allocation(p, a.n_emb, a.k_max))
    gen = torch.Generator().manual_seed(a.seed)
    ids = torch.multinomial(torch.from_numpy(p), a.tokens, replacement=True, generator=gen)
    torch.manual_seed(a.seed + 1)
    t = dict(
        K=torch.randn(a.n_emb, a.d_in) / a.d_in**0.5,
        V=torch.randn(a.n_emb, a.d_emb),
        bounds=bounds,
        w_up=torch.randn(a.d_up, a.d_emb) / a.d_emb**0.5,
        w_mix=torch.randn(a.d_in, a.d_up + a.d_in) / (a.d_up + a.d_in) ** 0.5,
        norm_in=1 + 0.1 * torch.randn(a.d_in),
        norm_out=1 + 0.1 * torch.randn(a.d_up),
        lam=None,
    )
    x = torch.randn(a.tokens, a.d_in)
    return p, ids, x, t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d-in", type=int, default=1024)
    ap.add_argument("--d-emb", type=int, default=512)
    ap.add_argument("--d-up", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=50_000)
    ap.add_argument("--n-emb", type=int, default=200_000)
    ap.add_argument("--k-max", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--check", type=int, default=64, help="positions checked against the naive reference (0: none)")
    ap.add_argument("--dump", type=Path, help="write the problem (see the module docstring) to this folder")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    t0 = time.time()
    p, ids, x, t = make_problem(a)
    t = {k: (v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in t.items()}
    x = x.to(dtype)
    setup_s = time.time() - t0
    bounds = t["bounds"]
    rows = (bounds[1:] - bounds[:-1]).numpy()
    drawn_rows = rows[ids.numpy()]
    info = {
        "distinct_tokens": int(ids.unique().numel()),
        "rows_per_position_mean": round(float(drawn_rows.mean()), 2),
        "expected_rows_per_token": round(float((p * rows).sum()), 2),  # E[d_t] under the Zipf law
        "tokens_at_k_max": int((rows == a.k_max).sum()),
        "tokens_with_1_row": int((rows == 1).sum()),
    }
    print(json.dumps({"setup_s": round(setup_s, 1), **info}), flush=True)

    with torch.inference_mode():
        times = []
        for r in range(a.warmup + a.runs):
            s = time.perf_counter()
            y = forward_grouped(x, ids, **t, cfg=PAPER)
            el = time.perf_counter() - s
            print(f"{'warm-up' if r < a.warmup else 'run'} {r}: {el:.3f} s  {a.tokens / el:.0f} tok/s", flush=True)
            if r >= a.warmup:
                times.append(el)
        check = None
        if a.check:
            sel = torch.arange(min(a.check, a.tokens))
            yn = forward_naive(x[sel], ids[sel], **t, cfg=PAPER)
            check = compare(y[sel], yn)
            assert check["rel_l2"] < (1e-5 if dtype == torch.float32 else 2e-2), check

    if a.dump:
        from safetensors.torch import save_file
        d = a.dump
        d.mkdir(parents=True, exist_ok=True)
        names = {"K": "w_k", "V": "w_v", "w_up": "w_up", "w_mix": "w_mix", "norm_in": "norm_in", "norm_out": "norm_out"}
        save_file({f"l3.0.{n}.weight": t[k].contiguous() for k, n in names.items()}, str(d / "model.safetensors"),
                  metadata={"format": "pt", "dialect": "paper"})
        save_file({"bounds": bounds.contiguous()}, str(d / "allocation.safetensors"), metadata={"format": "pt"})
        save_file({"hidden": x.float().contiguous(), "token_ids": ids.contiguous()}, str(d / "inputs.safetensors"),
                  metadata={"format": "pt"})
        save_file({"output.l3.0": y.float().contiguous()}, str(d / "output.safetensors"), metadata={"format": "pt"})
        cfg = {k: getattr(a, k) for k in ("d_in", "d_emb", "d_up", "vocab", "n_emb", "k_max", "tokens", "zipf", "seed", "dtype")}
        cfg.update(semantics=json.loads(PAPER.to_json()), generator="benches/l3_torch_bench.py", **info)
        (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        print(f"dumped to {d}", flush=True)

    tps = sorted(a.tokens / s for s in times)
    print(json.dumps({
        "bench": "l3_forward_cpu", "impl": "pytorch forward_grouped", "torch": torch.__version__,
        "threads": a.threads, "dtype": a.dtype, "tokens": a.tokens,
        "shape": {"d_in": a.d_in, "d_emb": a.d_emb, "d_up": a.d_up, "vocab": a.vocab, "n_emb": a.n_emb,
                  "k_max": a.k_max, "zipf": a.zipf},
        **info,
        "runs": a.runs, "seconds": [round(s, 4) for s in times],
        "tokens_per_s": {"median": round(statistics.median(tps), 1), "min": round(tps[0], 1), "max": round(tps[-1], 1)},
        "check_vs_naive": check,
    }))


if __name__ == "__main__":
    main()
