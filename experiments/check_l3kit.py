"""`l3kit eval` on every seed-0 model of the study, against PyTorch's held-out loss.

    ~/.venvs/l3fix/bin/python experiments/check_l3kit.py [NAME ...]   # after run_study.py; ~10 s a model

For each folder experiments/models/<name>/ it runs
    target/release/l3kit -q eval --model DIR --tokenizer fixtures/tokenizer/tiny-bpe-512.json \
        fixtures/corpus/heldout.txt --json
and records l3kit's mean NLL next to train_study.py's (the same whole-stream rule), or l3kit's
error where it cannot read the model (MoE models, until l3kit has the MoE decoder).
Writes experiments/results/l3kit_eval.json (with NAMEs: only those models, updating the file);
exits 1 if a readable model disagrees by more than 1e-6.
"""
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TOLERANCE = 1e-6


def main():
    target = HERE / "results" / "l3kit_eval.json"
    only = sys.argv[1:]
    out = json.loads(target.read_text()) if only and target.exists() else {}
    bad = []
    for d in sorted((HERE / "models").iterdir()):
        if only and d.name not in only:
            continue
        torch_nll = json.loads((HERE / "results" / "runs" / f"{d.name}-s0.json").read_text())["heldout_mean_nll"]
        cmd = [str(ROOT / "target" / "release" / "l3kit"), "-q", "eval", "--model", str(d), "--tokenizer",
               str(ROOT / "fixtures" / "tokenizer" / "tiny-bpe-512.json"), str(ROOT / "fixtures" / "corpus" / "heldout.txt"),
               "--json"]
        p = subprocess.run(cmd, capture_output=True, text=True)
        rec = {"exit_code": p.returncode, "pytorch_mean_nll": torch_nll}
        if p.returncode == 0:
            r = json.loads(p.stdout)
            rec.update(l3kit_mean_nll=r["result"]["mean_nll"], l3kit_perplexity=r["result"]["perplexity"],
                       targets=r["targets"], abs_diff=abs(r["result"]["mean_nll"] - torch_nll))
            if rec["abs_diff"] > TOLERANCE:
                bad.append(d.name)
        else:
            rec["error"] = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""
        out[d.name] = rec
        print(d.name, json.dumps(rec), flush=True)
    target.write_text(json.dumps(dict(sorted(out.items())), indent=1) + "\n")
    if bad:
        sys.exit(f"l3kit and PyTorch disagree on {bad}")


if __name__ == "__main__":
    main()
