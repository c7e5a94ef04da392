"""Run every training of the study, one after the other, skipping those whose result exists.

    nice -n 5 ~/.venvs/l3fix/bin/python experiments/run_study.py [--steps 300] [--seeds 0,1,2]

Results: experiments/results/runs/<name>-s<seed>.json; seed 0's models: experiments/models/<name>/
(not committed). Order: all runs of seed 0, then seed 1, then seed 2, so an interrupted study
still holds whole seeds.
"""
import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ALLOC = HERE / "allocations"

# name -> train_study.py arguments
RUNS = {
    "dense": ["--mixer", "dense"],
    "lzw": ["--mixer", "l3", "--allocation", "lzw.safetensors"],
    "opt-half": ["--mixer", "l3", "--allocation", "opt-half.safetensors"],
    "opt-quarter": ["--mixer", "l3", "--allocation", "opt-quarter.safetensors"],
    "opt-tenth": ["--mixer", "l3", "--allocation", "opt-tenth.safetensors"],
    "frequency": ["--mixer", "l3", "--allocation", "frequency.safetensors"],
    "uniform": ["--mixer", "l3", "--allocation", "uniform.safetensors"],
    # a control: L3 layers with nothing to allocate (n_emb = vocab, one row per token)
    "one-row": ["--mixer", "l3", "--allocation", "one-row.safetensors"],
    # MoE: H = 44 gives ~L3-LZW's active parameters per token with 2 experts; E = 25 its total too
    "moe-topk-e8": ["--mixer", "moe-topk", "--experts", "8", "--expert-hidden", "44", "--top-k", "2"],
    "moe-dtopp-e8": ["--mixer", "moe-dtopp", "--experts", "8", "--expert-hidden", "44", "--target", "2"],
    "moe-topk-e25": ["--mixer", "moe-topk", "--experts", "25", "--expert-hidden", "44", "--top-k", "2"],
    "moe-dtopp-e25": ["--mixer", "moe-dtopp", "--experts", "25", "--expert-hidden", "44", "--target", "2"],
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--only", default="", help="comma-separated run names (default: all)")
    args = ap.parse_args()
    names = [n for n in RUNS if not args.only or n in args.only.split(",")]
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name in names:
            result = HERE / "results" / "runs" / f"{name}-s{seed}.json"
            if result.exists():
                continue
            cmd = [sys.executable, str(HERE / "train_study.py"), *[str(ALLOC / a) if a.endswith(".safetensors") else a
                                                                     for a in RUNS[name]],
                   "--seed", str(seed), "--steps", str(args.steps), "--label", name, "--result", str(result)]
            if seed == 0:
                cmd += ["--out", str(HERE / "models" / name)]
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
