"""Tables and plots of the study from experiments/results/ (no training; a few seconds).

    ~/.venvs/l3fix/bin/python experiments/analyze.py

Reads results/runs/*.json (train_study.py), results/evaluate/*.json (`l3kit evaluate`),
results/proxies.json (proxies.py) and, if present, results/l3kit_eval.json (check_l3kit.py).
Writes:
  results/allocation_study.csv   one row per allocation: loss over seeds, coverage, E[d_t], proxy
  results/comparison.csv         one row per model of part 2: loss, params, FLOPs, routing
  results/summary.json           both tables plus rank correlations and the DTop-p tracking
  plots/loss_vs_allocation.{png,svg}, plots/dtopp_tracking.{png,svg}
"""
import csv
import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["svg.hashsalt"] = "l3kit-study"   # deterministic SVG ids
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

HERE = Path(__file__).resolve().parent
RES = HERE / "results"
PLOTS = HERE / "plots"
sys.path.insert(0, str(HERE.parent / "fixtures"))
import train_tiny as tt  # noqa: E402

ALLOCATIONS = ["lzw", "opt-half", "opt-quarter", "opt-tenth", "frequency", "uniform", "one-row"]
MOE = ["moe-topk-e8", "moe-dtopp-e8", "moe-topk-e25", "moe-dtopp-e25"]
C = tt.CFG
D, V, T, L = C["n_embd"], C["vocab_size"], C["block_size"], C["n_layer"]


def load_runs():
    runs = {}
    for f in sorted((RES / "runs").glob("*.json")):
        r = json.loads(f.read_text())
        runs.setdefault(r["label"], []).append(r)
    return runs


def spread(xs):
    n = len(xs)
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else float("nan")
    return m, sd, min(xs), max(xs)


def rank(xs):
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    i = 0
    while i < len(order):       # average ranks over ties
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2
        i = j + 1
    return r


def spearman(a, b):
    ra, rb = rank(a), rank(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))


# ---------------------------------------------------------------- parameters and FLOPs per token
# A "multiply-add" is 2 FLOPs; norms, softmaxes and activations are left out (they are O(d) per
# token against O(d^2) for the projections). Attention over the causal context is counted at
# the mean context of a 64-token window, (T + 1) / 2 positions.

def backbone_macs():
    per_block = D * 3 * D + D * D + D * C["mlp_hidden"] * 2
    attention = 2 * D * (T + 1) / 2
    return L * (per_block + attention) + D * V      # + the tied output head


def l3_layer(expected_rows, n_emb):
    d_emb, d_up = C["d_emb"], C["d_up"]
    dense = d_up * d_emb + D * (d_up + D) + D + d_up            # W_up, W_mix, the two norms
    macs = expected_rows * (D + d_emb) + d_up * d_emb + D * (d_up + D)
    return {"active": dense + expected_rows * (D + d_emb), "total": dense + n_emb * (D + d_emb), "macs": macs}


def moe_layer(experts, hidden, mean_active, learned_scale):
    expert = 3 * D * hidden
    router_norm = experts * D + D + (1 if learned_scale else 0)     # gate, norm, DTop-p's tau
    return {"active": router_norm + mean_active * expert, "total": router_norm + experts * expert,
            "macs": experts * D + mean_active * expert}


def resolved_pairs(rows, runs):
    """The pairs of allocations whose loss difference the seeds resolve (the paired difference's
    mean is more than 2 standard errors from 0), and for each proxy how many it orders as the
    loss does. Pairs within the noise say nothing about a proxy, so they are left out."""
    by_seed = {r["allocation"]: {x["seed"]: x["heldout_mean_nll"] for x in runs[r["allocation"]]} for r in rows}
    keys = {"heldout_coverage": -1, "train_coverage": -1, "heldout_expected_rows": -1, "count_model_heldout_nll": 1}
    pairs, agree = [], {k: 0 for k in keys}
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            seeds = sorted(set(by_seed[a["allocation"]]) & set(by_seed[b["allocation"]]))
            if len(seeds) < 2:
                continue
            d = [by_seed[a["allocation"]][s] - by_seed[b["allocation"]][s] for s in seeds]
            m, sd, *_ = spread(d)
            if abs(m) <= 2 * sd / math.sqrt(len(d)):
                continue
            rec = {"a": a["allocation"], "b": b["allocation"], "loss_a_minus_b": m, "std": sd}
            for k, sign in keys.items():
                ok = (a[k] - b[k]) * sign * m > 0      # the proxy says a is worse exactly when it is
                rec[k] = ok
                agree[k] += ok
            pairs.append(rec)
    return {"what": "pairs whose paired loss difference is more than 2 standard errors from 0, and whether each "
                    "proxy orders them as the loss does", "pairs": pairs, "resolved": len(pairs), "agree": agree}


def markdown(rows, dense_m, dense_sd, corr, comp, tracking, proxies):
    """The tables of docs/planner.md and docs/comparison.md, as markdown."""
    out = ["## Allocation study", "",
           "| allocation | n_emb | max d_t | held-out loss, mean +- std (min..max) | minus LZW, same seed | held-out coverage "
           "| E[d_t] held-out | proxy: count-model NLL |", "|---|---|---|---|---|---|---|---|",
           f"| dense (no L3) | - | - | {dense_m:.4f} +- {dense_sd:.4f} | {corr['dense_minus_lzw'][0]:+.4f} +- "
           f"{corr['dense_minus_lzw'][1]:.4f} | - | - | "
           f"{proxies['bigram']['heldout_nll']:.4f} (bigram) |"]
    for r in rows:
        out.append(f"| {r['allocation']} | {r['n_emb']} | {r['max_rows']} | {r['heldout_loss_mean']:.4f} +- "
                   f"{r['heldout_loss_std']:.4f} ({r['heldout_loss_min']:.4f}..{r['heldout_loss_max']:.4f}) | "
                   f"{r['minus_lzw_paired_mean']:+.4f} +- {r['minus_lzw_paired_std']:.4f} | {r['heldout_coverage']:.4f} | {r['heldout_expected_rows']:.3f} | "
                   f"{r['count_model_heldout_nll']:.4f} |")
    out += ["", "Spearman rank correlation with the mean loss over " + ", ".join(corr["over"]) + ":", ""]
    for k in ("heldout_coverage", "train_coverage", "heldout_expected_rows", "count_model_heldout_nll"):
        out.append(f"- {k}: {corr[k]:+.3f}, orders {corr['resolved_pairs']['agree'][k]} of the "
                   f"{corr['resolved_pairs']['resolved']} pairs the seeds resolve as the loss does")
    out += ["", "## L3 vs MoE", "",
            "| model | routing | held-out loss, mean +- std (min..max) | minus L3 (LZW), same seed | minus dense, same seed "
            "| active params / token (sparse layers) | total params (sparse layers) | FLOPs / token |",
            "|---|---|---|---|---|---|---|---|"]
    for r in comp:
        out.append(f"| {r['model']} | {r['routing']} | {r['heldout_loss_mean']:.4f} +- {r['heldout_loss_std']:.4f} "
                   f"({r['heldout_loss_min']:.4f}..{r['heldout_loss_max']:.4f}) | {r['minus_lzw_paired_mean']:+.4f} +- "
                   f"{r['minus_lzw_paired_std']:.4f} | {r['minus_dense_paired_mean']:+.4f} +- "
                   f"{r['minus_dense_paired_std']:.4f} | {r['active_params_per_token']:,} "
                   f"({r['sublayer_active_params_per_token']:,}) | {r['total_params']:,} ({r['sublayer_total_params']:,}) "
                   f"| {r['flops_per_token']:,} |")
    out += ["", "## DTop-p controller tracking", "",
            "| model | seed | active experts per batch, mean +- std (min..max) | last 100 batches | p per batch, mean +- std "
            "| final p | tau (moe.1 / moe.3) |", "|---|---|---|---|---|---|---|"]
    for name, rs in tracking.items():
        for r in rs:
            a, l, p = r["active_per_batch"], r["active_per_batch_last_100"], r["p_per_batch"]
            tau = " / ".join(f"{v:.3f}" for v in r["tau"].values())
            out.append(f"| {name} | {r['seed']} | {a['mean']:.3f} +- {a['std']:.3f} ({a['min']:.3f}..{a['max']:.3f}) | "
                       f"{l['mean']:.3f} +- {l['std']:.3f} | {p['mean']:.3f} +- {p['std']:.3f} | {r['final_p']:.4f} | {tau} |")
    return "\n".join(out) + "\n"


def main():
    runs = load_runs()
    evals = {a: json.loads((RES / "evaluate" / f"{a}.json").read_text()) for a in ALLOCATIONS}
    proxies = json.loads((RES / "proxies.json").read_text())
    PLOTS.mkdir(exist_ok=True)
    dense_m, dense_sd, *_ = spread([r["heldout_mean_nll"] for r in runs["dense"]])
    base_params = runs["dense"][0]["params"]

    # ---------------------------------------------------------------- part 1
    lzw_by_seed = {r["seed"]: r["heldout_mean_nll"] for r in runs["lzw"]}
    dense_by_seed = {r["seed"]: r["heldout_mean_nll"] for r in runs["dense"]}

    def paired(rs, ref):
        """The loss minus ref's at the same seed (same initialisation of the shared parts, same
        batches): mean and std over the seeds both have."""
        d = [r["heldout_mean_nll"] - ref[r["seed"]] for r in rs if r["seed"] in ref]
        return spread(d)[:2] if d else (float("nan"), float("nan"))

    rows = []
    for a in ALLOCATIONS:
        if a not in runs:
            continue
        ls = [r["heldout_mean_nll"] for r in sorted(runs[a], key=lambda r: r["seed"])]
        m, sd, lo, hi = spread(ls)
        ev, px = evals[a], proxies["allocations"][a]
        rows.append({"allocation": a, "seeds": len(ls), "n_emb": ev["allocation"]["n_emb"],
                     "max_rows": ev["allocation"]["max_rows"],
                     "heldout_loss_mean": m, "heldout_loss_std": sd, "heldout_loss_min": lo, "heldout_loss_max": hi,
                     "gain_over_dense": dense_m - m,
                     "minus_lzw_paired_mean": paired(runs[a], lzw_by_seed)[0],
                     "minus_lzw_paired_std": paired(runs[a], lzw_by_seed)[1],
                     "minus_dense_paired_mean": paired(runs[a], dense_by_seed)[0],
                     "minus_dense_paired_std": paired(runs[a], dense_by_seed)[1],
                     "heldout_coverage": ev["heldout"]["coverage"], "train_coverage": ev["train"]["coverage"],
                     "heldout_expected_rows": ev["heldout"]["expected_rows"],
                     "train_expected_rows": ev["train"]["expected_rows"],
                     "count_model_heldout_nll": px["heldout_nll"],
                     "count_model_gain": proxies["bigram"]["heldout_nll"] - px["heldout_nll"],
                     "losses_by_seed": " ".join(f"{x:.4f}" for x in ls)})
    with open(RES / "allocation_study.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    # rank agreement over the allocations of the same n_emb (the one-row control has n_emb = vocab)
    same = [r for r in rows if r["n_emb"] == rows[0]["n_emb"]]
    loss = [r["heldout_loss_mean"] for r in same]
    correlations = {
        "over": [r["allocation"] for r in same],
        "what": "Spearman rank correlation with the mean held-out loss; a good proxy is strongly NEGATIVE "
                "(more coverage, lower loss) or, for the count model's loss, strongly POSITIVE",
        "heldout_coverage": spearman([r["heldout_coverage"] for r in same], loss),
        "train_coverage": spearman([r["train_coverage"] for r in same], loss),
        "heldout_expected_rows": spearman([r["heldout_expected_rows"] for r in same], loss),
        "count_model_heldout_nll": spearman([r["count_model_heldout_nll"] for r in same], loss),
        "dense_minus_lzw": paired(runs["dense"], lzw_by_seed),
    }
    correlations["resolved_pairs"] = resolved_pairs(same, runs)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    panels = [("heldout_expected_rows", "E[d_t] on held-out text (log)", True),
              ("heldout_coverage", "held-out context coverage (l3kit evaluate)", False),
              ("count_model_heldout_nll", "proxy: held-out NLL of the context count model (nats)", False)]
    for ax, (key, label, log) in zip(axes, panels):
        for r in rows:
            ax.errorbar(r[key], r["minus_lzw_paired_mean"], yerr=r["minus_lzw_paired_std"], fmt="o", capsize=4,
                        color="tab:orange" if r["allocation"] == "one-row" else "tab:blue")
            ax.annotate(r["allocation"], (r[key], r["minus_lzw_paired_mean"]), textcoords="offset points",
                        xytext=(5, 5), fontsize=8)
        if log:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xticks([1, 2, 4, 8, 16])
        ax.set_xlabel(label)
        ax.set_ylabel("held-out loss minus LZW's at the same seed (nats)")
        ax.grid(alpha=0.3)
    dm, dsd = correlations["dense_minus_lzw"]
    fig.suptitle(f"Trained held-out loss of allocations of n_emb = 2048 (vocab 512, k_max 64) against LZW's, mean and "
                 f"std over {rows[0]['seeds']} seeds; one-row (orange): n_emb 512. The dense model (no L3) is off the "
                 f"chart at {dm:+.3f} +- {dsd:.3f}", fontsize=10)
    fig.tight_layout()
    for ext in ("png", "svg"):
        fig.savefig(PLOTS / f"loss_vs_allocation.{ext}", dpi=110, metadata={"Date": None} if ext == "svg" else None)
    plt.close(fig)

    # ---------------------------------------------------------------- part 2
    comp = []
    lzw_ev = evals["lzw"]["heldout"]["expected_rows"]
    head = backbone_macs()
    dense_total = base_params
    for name in ["dense", "lzw", *MOE]:
        if name not in runs:
            continue
        rs = sorted(runs[name], key=lambda r: r["seed"])
        m, sd, lo, hi = spread([r["heldout_mean_nll"] for r in rs])
        row = {"model": name, "seeds": len(rs), "heldout_loss_mean": m, "heldout_loss_std": sd,
               "heldout_loss_min": lo, "heldout_loss_max": hi,
               "minus_lzw_paired_mean": paired(rs, lzw_by_seed)[0], "minus_lzw_paired_std": paired(rs, lzw_by_seed)[1],
               "minus_dense_paired_mean": paired(rs, dense_by_seed)[0],
               "minus_dense_paired_std": paired(rs, dense_by_seed)[1]}
        if name == "dense":
            sub = {"active": 0, "total": 0, "macs": 0}
            row.update(routing="-", mean_active_experts="-")
        elif name == "lzw":
            sub = l3_layer(lzw_ev, evals["lzw"]["allocation"]["n_emb"])
            row.update(routing="static, by token id (LZW allocation, E[d_t] %.2f rows)" % lzw_ev,
                       mean_active_experts="-")
        else:
            r0 = rs[0]
            a = [r["active_per_batch"]["mean"] for r in rs]
            mean_active = 2.0 if r0["routing"] == "topk" else sum(a) / len(a)
            sub = moe_layer(r0["experts"], r0["expert_hidden"], mean_active, r0["routing"] == "dtopp")
            row.update(routing=("top-2 of %d" if r0["routing"] == "topk" else "DTop-p + PI, target 2 of %d")
                       % r0["experts"], mean_active_experts=round(mean_active, 4))
        n_sub = len(C["l3_layers"])
        row["total_params"] = round(dense_total + n_sub * sub["total"])
        row["active_params_per_token"] = round(dense_total + n_sub * sub["active"])
        row["sublayer_active_params_per_token"] = round(n_sub * sub["active"])
        row["sublayer_total_params"] = round(n_sub * sub["total"])
        row["flops_per_token"] = round(2 * (head + n_sub * sub["macs"]))
        row["losses_by_seed"] = " ".join(f"{r['heldout_mean_nll']:.4f}" for r in rs)
        if name != "dense":
            assert row["total_params"] == rs[0]["params"], (name, row["total_params"], rs[0]["params"])
        comp.append(row)
    with open(RES / "comparison.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(comp[0]), lineterminator="\n")
        w.writeheader()
        for r in comp:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})

    tracking = {}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for name in [n for n in MOE if "dtopp" in n and n in runs]:
        rs = sorted(runs[name], key=lambda r: r["seed"])
        tracking[name] = [{"seed": r["seed"], "active_per_batch": r["active_per_batch"],
                           "active_per_batch_last_100": r["active_per_batch_last_100"],
                           "p_per_batch": r["p_per_batch"], "final_p": r["final_p"], "tau": r["tau"]} for r in rs]
        for r in rs:
            steps = [10 * i for i in range(len(r["p_trajectory_every_10"]))]
            axes[0].plot(steps, r["active_trajectory_every_10"], lw=1, label=f"{name} seed {r['seed']}")
            axes[1].plot(steps, r["p_trajectory_every_10"], lw=1, label=f"{name} seed {r['seed']}")
    axes[0].axhline(2.0, color="gray", ls="--", lw=1)
    axes[0].set_ylabel("mean active experts of the batch")
    axes[1].set_ylabel("threshold p the batch was routed with")
    for ax in axes:
        ax.set_xlabel("training step (every 10th batch)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    for ext in ("png", "svg"):
        fig.savefig(PLOTS / f"dtopp_tracking.{ext}", dpi=110, metadata={"Date": None} if ext == "svg" else None)
    plt.close(fig)

    summary = {"dense": {"heldout_loss_mean": dense_m, "heldout_loss_std": dense_sd},
               "allocation_study": rows, "rank_correlations": correlations, "comparison": comp,
               "dtopp_tracking": tracking, "count_model_bigram_nll": proxies["bigram"]["heldout_nll"]}
    (RES / "tables.md").write_text(markdown(rows, dense_m, dense_sd, correlations, comp, tracking, proxies))
    l3e = RES / "l3kit_eval.json"
    if l3e.exists():
        summary["l3kit_eval"] = json.loads(l3e.read_text())
    (RES / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({"rank_correlations": correlations}, indent=1))
    for r in rows:
        print(f"{r['allocation']:12s} loss {r['heldout_loss_mean']:.4f} +- {r['heldout_loss_std']:.4f}  "
              f"cov {r['heldout_coverage']:.4f}  E[d_t] {r['heldout_expected_rows']:.3f}  proxy {r['count_model_heldout_nll']:.4f}")
    print(f"dense        loss {dense_m:.4f} +- {dense_sd:.4f}")
    for r in comp:
        print(r)


if __name__ == "__main__":
    main()
