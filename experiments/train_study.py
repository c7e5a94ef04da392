"""Train one model of the study (allocation study and L3 vs MoE) and write its result.

    ~/.venvs/l3fix/bin/python experiments/train_study.py --mixer l3 --allocation A.safetensors \
        --seed 1 --result runs/x.json [--out DIR]

The model family, its initialisation, optimiser, schedule and batch sampler are
fixtures/train_tiny.py's (TinyLM, lr_at, the AdamW groups) and fixtures/train_moe.py's MoE
sublayers (MoELM), imported, not copied. What this script adds:

- `--allocation`: any allocation file (an I64 `bounds` [vocab+1]) for the L3 layers, where
  train_tiny.py always uses fixtures/checkpoints/allocation-tiny.safetensors;
- `--seed S`: S seeds both the initialisation and the batch sampler, so every mixer and every
  allocation trained with seed S sees the same batches in the same order, and seed 0 is
  train_tiny.py's own run;
- held-out loss on the WHOLE held-out stream by the rule of fixtures/trained/eval.json (which
  `l3kit eval` follows): windows of 64+1 ids, each from position 0, the last one kept with >= 2
  ids, NLL from the f32 logits upcast to f64 and summed in f64. train_tiny.py's 64-window
  estimate is recorded too;
- `--out DIR`: the model in the layout of fixtures/trained/ (model.safetensors,
  allocation.safetensors, config.json; dense models: model.safetensors and config.json with no
  L3 layers) or, for MoE mixers, of fixtures/trained-moe/ (model.safetensors, config.json,
  controller.json for DTop-p), so l3kit can read them.
"""
import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures"
sys.path.insert(0, str(FIX))
import train_tiny as tt  # noqa: E402
import train_moe as tm  # noqa: E402
import moe_torch as mt  # noqa: E402
from l3_torch import save_safetensors  # noqa: E402

EVAL_SEQ_LEN = 64


def heldout_nll(model, stream, seq_len=EVAL_SEQ_LEN, chunk=32):
    """(total NLL in f64, number of targets) over the whole stream, eval.json's rule."""
    n = stream.numel()
    starts = list(range(0, n, seq_len))
    full = [s for s in starts if s + seq_len + 1 <= n]
    rest = [s for s in starts if s + seq_len + 1 > n and n - s >= 2]
    total, targets = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(full), chunk):
            w = torch.stack([stream[s:s + seq_len + 1] for s in full[i:i + chunk]])
            logits = model(w[:, :-1])
            lp = torch.log_softmax(logits.double(), -1)
            total += -lp.gather(-1, w[:, 1:, None]).sum().item()
            targets += w[:, 1:].numel()
        for s in rest:
            w = stream[s:n][None]
            lp = torch.log_softmax(model(w[:, :-1]).double(), -1)
            total += -lp.gather(-1, w[:, 1:, None]).sum().item()
            targets += w.shape[1] - 1
    return total, targets


def param_groups(model):
    # train_tiny.py's groups: weight decay on 2-D weights except embeddings and L3 tables
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and not n.startswith("wte") and not n.startswith("wpe")
             and not n.endswith("w_k.weight") and not n.endswith("w_v.weight")]
    no_decay = [p for n, p in model.named_parameters() if all(p is not q for q in decay)]
    return [{"params": decay, "weight_decay": tt.TRAIN["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mixer", choices=["dense", "l3", "moe-topk", "moe-dtopp"], required=True)
    ap.add_argument("--allocation", type=Path, help="l3: the allocation file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=tt.TRAIN["steps"])
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--expert-hidden", type=int, default=32)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--target", type=float, default=2.0, help="moe-dtopp: target active experts")
    ap.add_argument("--result", type=Path, required=True, help="where to write the result JSON")
    ap.add_argument("--out", type=Path, help="write the trained model here")
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    if (args.mixer == "l3") != (args.allocation is not None):
        ap.error("--allocation is needed with --mixer l3 and only there")

    tt.TRAIN["steps"] = args.steps        # tt.lr_at reads tt.TRAIN
    tt.TRAIN["seed"] = args.seed
    tt.TRAIN["threads"] = 1
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    tok = Tokenizer.from_file(str(tt.TOKENIZER))
    train = tt.tokenise(FIX / "corpus" / "train.txt", tok)
    held = tt.tokenise(FIX / "corpus" / "heldout.txt", tok)
    cfg = dict(tt.CFG)

    ctrl, names, bounds = None, [], None
    is_moe = args.mixer.startswith("moe-")
    if is_moe:
        for k in ("l3_layers", "d_emb", "d_up"):
            cfg.pop(k)
        moe_cfg = dict(moe_layers=[1, 3], experts=args.experts, expert_hidden=args.expert_hidden, shared_experts=0,
                       routing=args.mixer[4:], top_k=args.top_k)
        model = tm.MoELM(cfg, moe_cfg)
        names = model.names()
        if args.mixer == "moe-dtopp":
            ctrl = mt.PIController(args.target, args.experts, p0=0.5, kp=1.0, ki=0.25, p_min=0.05, p_max=1.0)
            model.set_p(ctrl.p)
        else:
            model.set_p(None)
    else:
        if args.allocation is not None:
            bounds = load_file(str(args.allocation))["bounds"]
            if bounds.numel() != cfg["vocab_size"] + 1:
                sys.exit(f"{args.allocation}: bounds has {bounds.numel()} entries, the model's vocabulary needs "
                         f"{cfg['vocab_size'] + 1}")
        model = tt.TinyLM(cfg, bounds, use_l3=args.mixer == "l3")
    n_params = sum(p.numel() for p in model.parameters())
    n_sub = sum(p.numel() for n, p in model.named_parameters() if n.startswith("moe.") or n.startswith("l3."))

    opt = torch.optim.AdamW(param_groups(model), lr=tt.TRAIN["lr"], betas=tt.TRAIN["betas"])
    gen = torch.Generator().manual_seed(args.seed)
    T = cfg["block_size"]
    active, ps, losses = [], [], []
    t0 = time.time()
    for step in range(args.steps):
        loss = tt.train_step(model, opt, train, gen, step)
        losses.append(loss.item())
        if is_moe:
            per, _ = model.active()
            mean = sum(per.values()) / len(per)
            active.append(mean)
            if ctrl is not None:
                ps.append(ctrl.p)          # the p this batch was routed with
                ctrl.update(mean)
                model.set_p(ctrl.p)
        if step % 100 == 0 or step == args.steps - 1:
            print(json.dumps({"step": step, "loss": round(loss.item(), 4), "s": round(time.time() - t0, 1)}), flush=True)
    train_seconds = time.time() - t0
    model.eval()
    est64 = tt.evaluate(model, held, T)
    total, targets = heldout_nll(model, held)
    eval_seconds = time.time() - t0 - train_seconds

    result = {"label": args.label, "mixer": args.mixer, "seed": args.seed, "steps": args.steps,
              "allocation": None if args.allocation is None else str(args.allocation),
              "heldout_mean_nll": total / targets, "heldout_total_nll": total, "heldout_targets": targets,
              "heldout_loss_64_windows": est64, "train_loss_last_50_mean": sum(losses[-50:]) / len(losses[-50:]),
              "params": n_params, "sublayer_params": n_sub,
              "train_seconds": round(train_seconds, 1), "eval_seconds": round(eval_seconds, 1)}
    if is_moe:
        result.update({"experts": args.experts, "expert_hidden": args.expert_hidden, "routing": args.mixer[4:]})
        _, counts = model.active()        # the last evaluation forward, at the final p
        result["heldout_eval_mean_active_last_chunk"] = torch.cat(list(counts.values())).double().mean().item()
        result["active_per_batch"] = tm.stats(active)
        result["active_per_batch_last_100"] = tm.stats(active[-100:])
        if args.mixer == "moe-topk":
            result["top_k"] = args.top_k
        else:
            result["target"] = args.target
            result["final_p"] = ctrl.p
            result["p_per_batch"] = tm.stats(ps)
            result["p_trajectory_every_10"] = [round(p, 5) for p in ps[::10]]
            result["active_trajectory_every_10"] = [round(a, 4) for a in active[::10]]
            result["tau"] = {n: model.moe[n.split(".")[1]].block_sparse_moe.scale().item() for n in names}
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if "trajectory" not in k}), flush=True)

    if args.out is not None:
        write_model(args, model, cfg, ctrl, names, result)


def write_model(args, model, cfg, ctrl, names, result):
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"format": "pt", "generator": "experiments/train_study.py", "mixer": args.mixer,
            "torch_version": torch.__version__}
    if args.mixer == "l3":
        meta["dialect"] = "paper"
    save_safetensors(sd, out / "model.safetensors", meta)
    train = {**tt.TRAIN, "betas": list(tt.TRAIN["betas"]), "data": "fixtures/corpus/train.txt",
             "torch_version": torch.__version__}
    results = {k: v for k, v in result.items() if not k.endswith("seconds") and "trajectory" not in k}
    if args.mixer in ("dense", "l3"):
        config = {"model_type": "l3-tiny-trained", **cfg, "mlp_activation": "gelu", "positions": "learned",
                  "norm": "RMSNorm(weight, eps 1e-6), pre-norm", "l3_dialect": "paper", "l3_residual": "replace",
                  "l3_placement": "after decoder block i (0-based) for i in l3_layers"}
        if args.mixer == "dense":
            config["l3_layers"] = []
        else:
            bounds = load_file(str(args.allocation))["bounds"]
            config.update({"n_emb": int(bounds[-1]), "k_max": int((bounds[1:] - bounds[:-1]).max()),
                           "allocation": f"allocation.safetensors = {args.allocation}"})
            shutil.copyfile(args.allocation, out / "allocation.safetensors")
    else:
        config = {"model_type": f"tiny-{args.mixer}-trained", **cfg, "mlp_activation": "gelu", "positions": "learned",
                  "norm": "RMSNorm(weight, eps 1e-6), pre-norm", "moe_layers": [1, 3],
                  "moe_placement": "x <- x + MoE_i(RMSNorm_i(x)) after decoder block i (0-based) for i in moe_layers",
                  "moe_names": "moe.{i}.norm.weight; moe.{i}.block_sparse_moe (Mixtral scheme)",
                  "experts": args.experts, "expert_hidden": args.expert_hidden, "expert_activation": "swiglu",
                  "shared_experts": 0, "routing": args.mixer[4:]}
        if args.mixer == "moe-topk":
            config["top_k"] = args.top_k
        else:
            config["dtopp"] = {"eps": mt.DTOPP_EPS, "scale_init": 1.0, "scale_learned": True,
                               "normalisation": "((l - mean) / sqrt(var_pop + eps)) * gate.scale"}
            config["controller"] = {"variant": "global",
                                    "form": "positional PI, anti-windup by undoing the integral step on clamping",
                                    "update": "once per training batch, after its forward",
                                    "settings": ctrl.settings(), "final_state": ctrl.state(), "final_p": ctrl.p}
            mt.save_controller(ctrl, out / "controller.json")
    config["train"] = train
    config["results"] = results
    (out / "config.json").write_text(json.dumps(config, indent=1) + "\n")


if __name__ == "__main__":
    main()
