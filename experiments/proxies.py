"""A proxy for an allocation's trained loss: held-out log-loss of a count model whose contexts are
the codewords the allocation covers.

    ~/.venvs/l3fix/bin/python experiments/proxies.py --train-profile train.safetensors \
        --allocations experiments/allocations/*.safetensors --out experiments/results/proxies.json

Context coverage (docs/planner.md) counts how much LZW codeword mass the allocation's rows
cover, but not whether a covered context tells the model anything about what comes next. This
proxy asks exactly that, with counts instead of a network:

- token t with d_t rows covers its d_t - 1 most frequent training codewords ending in t (the
  coverage definition; ties by codeword id). Each covered multi-token codeword is one context
  class of t; t's remaining occurrences fall into its own "no covered context" class.
- at position i of a stream, the class is the LONGEST covered codeword of tok[i] that ends the
  text at i (searched backwards through the same line);
- P(next | class) is estimated on the training stream with interpolated absolute discounting
  (D = 0.75), backed off to P(next | tok[i]), itself backed off to the add-one unigram;
- the proxy is the mean negative log-likelihood (nats) of the held-out stream's next tokens.

With every d_t = 1 (no rows to spend) it is the bigram model's held-out loss; the "gain" is how
much the allocation's contexts lower it. Streams are tokenised as train_tiny.py does (lines of
the text, each tokenised alone, concatenated).
"""
import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures"
DISCOUNT = 0.75
NO_PARENT = 4294967295


def lines_ids(path, tok):
    lines = Path(path).read_text().splitlines(keepends=True)
    return [np.array(e.ids, dtype=np.int64) for e in tok.encode_batch(lines)]


def codeword_tokens(parent, token):
    """The token tuple of every codeword (parents come first, so one forward pass builds them)."""
    seqs = []
    for i in range(len(parent)):
        p = int(parent[i])
        seqs.append((int(token[i]),) if p == NO_PARENT else seqs[p] + (int(token[i]),))
    return seqs


def covered_contexts(bounds, prof, seqs):
    """{reversed codeword tuple: class id} for the covered multi-token codewords, and the set of
    all reversed prefixes on the way to one (so the backward search knows when to stop)."""
    rows = np.diff(bounds)
    token, count = prof["codeword_token"], prof["codeword_count"]
    order = np.lexsort((np.arange(len(count)), -count.astype(np.int64)))  # count desc, id asc
    taken = np.zeros(len(rows), dtype=np.int64)
    classes, prefixes = {}, set()
    for i in order:
        t = int(token[i])
        if taken[t] >= rows[t] - 1:
            continue
        taken[t] += 1
        if len(seqs[i]) > 1:
            rev = seqs[i][::-1]
            classes[rev] = len(classes)
            for k in range(1, len(rev) + 1):
                prefixes.add(rev[:k])
    return classes, prefixes


def class_ids(lines, classes, prefixes, vocab):
    """Per position (lines concatenated): the class id (vocab + covered id) or the token itself."""
    out = []
    for ids in lines:
        lst = ids.tolist()
        for i, t in enumerate(lst):
            best = t
            key = (t,)
            j = i - 1
            while j >= 0:
                key = key + (lst[j],)
                if key not in prefixes:
                    break
                c = classes.get(key)
                if c is not None:
                    best = vocab + c
                j -= 1
            out.append(best)
    return np.array(out, dtype=np.int64)


class Discounted:
    """P(y | h) = max(c(h,y) - D, 0) / c(h) + D N1(h) / c(h) P_lower(y), P_lower for unseen h."""

    def __init__(self, hist, nxt, vocab):
        self.vocab = vocab
        key = hist * vocab + nxt
        uk, uc = np.unique(key, return_counts=True)
        self.pairs = dict(zip(uk.tolist(), uc.tolist()))
        hk, hc = np.unique(hist, return_counts=True)
        self.total = dict(zip(hk.tolist(), hc.tolist()))
        hn, nn = np.unique(uk // vocab, return_counts=True)
        self.types = dict(zip(hn.tolist(), nn.tolist()))

    def prob(self, h, y, lower):
        n = self.total.get(h)
        if n is None:
            return lower
        c = self.pairs.get(h * self.vocab + y, 0)
        return max(c - DISCOUNT, 0.0) / n + DISCOUNT * self.types[h] / n * lower


def proxy_loss(train_lines, held_lines, bounds, prof, seqs, vocab):
    classes, prefixes = covered_contexts(bounds, prof, seqs)
    streams = {}
    for name, lines in (("train", train_lines), ("held", held_lines)):
        ids = np.concatenate(lines)
        cls = class_ids(lines, classes, prefixes, vocab)
        streams[name] = (ids[:-1], cls[:-1], ids[1:])
    tok, cls, nxt = streams["train"]
    uni = (np.bincount(nxt, minlength=vocab) + 1.0) / (len(nxt) + vocab)
    bigram = Discounted(tok, nxt, vocab)
    ctx = Discounted(cls, nxt, vocab)
    tok, cls, nxt = streams["held"]
    nll = 0.0
    for t, c, y in zip(tok.tolist(), cls.tolist(), nxt.tolist()):
        pb = bigram.prob(t, y, uni[y])
        nll -= math.log(ctx.prob(c, y, pb) if c >= vocab else pb)
    held_in_context = float((cls >= vocab).mean())
    return {"heldout_nll": nll / len(nxt), "covered_contexts": len(classes),
            "heldout_positions_in_a_covered_context": held_in_context}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-profile", type=Path, required=True)
    ap.add_argument("--allocations", type=Path, nargs="+", required=True)
    ap.add_argument("--tokenizer", type=Path, default=FIX / "tokenizer" / "tiny-bpe-512.json")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    prof = load_file(str(args.train_profile))
    vocab = len(prof["unigram_counts"])
    seqs = codeword_tokens(prof["codeword_parent"], prof["codeword_token"])
    tok = Tokenizer.from_file(str(args.tokenizer))
    train_lines = lines_ids(FIX / "corpus" / "train.txt", tok)
    held_lines = lines_ids(FIX / "corpus" / "heldout.txt", tok)
    results = {"discount": DISCOUNT, "train_profile": str(args.train_profile), "allocations": {}}
    one_row = np.arange(vocab + 1, dtype=np.int64)
    results["bigram"] = proxy_loss(train_lines, held_lines, one_row, prof, seqs, vocab)
    for a in args.allocations:
        bounds = load_file(str(a))["bounds"]
        if len(bounds) != vocab + 1:
            sys.exit(f"{a}: bounds has {len(bounds)} entries, the profile's vocabulary needs {vocab + 1}")
        results["allocations"][a.stem] = proxy_loss(train_lines, held_lines, bounds, prof, seqs, vocab)
        print(a.stem, json.dumps(results["allocations"][a.stem]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
