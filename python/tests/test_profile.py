"""`profile`, `Profile.allocate`, `Profile.evaluate` and `plan` give the figures the CLI's
`--json` gives, as Python objects."""

import numpy as np
import pytest
from safetensors.numpy import load_file

import l3kit
from conftest import GPT2, HELDOUT, TRAIN, cli

TIMING = {"seconds", "tokens_per_second", "peak_rss_bytes"}


def untimed(value):
    """The report without its wall-clock figures (which differ from run to run)."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


def test_profile_equals_the_cli(cli_profiles, tmp_path):
    train, _, cli_summary = cli_profiles
    p = l3kit.profile([TRAIN], tokenizer=GPT2, out=tmp_path / "p.safetensors")
    want = untimed(cli_summary)
    del want["out"]
    assert untimed(p.summary) == want
    assert p.content_sha256 == l3kit.Profile.load(train).content_sha256
    assert (tmp_path / "p.safetensors").read_bytes() == train.read_bytes()
    assert p.vocab_size == 50257 and p.unigram.sum() == cli_summary["tokens"]


@pytest.mark.parametrize(
    "options,flags",
    [
        ({"n_emb": 150000, "k_max": 64}, ["--n-emb", 150000, "--k-max", 64]),
        ({"rows_per_token": 3.9, "tokenizer": GPT2, "d_in": 2048},
         ["--rows-per-token", 3.9, "--tokenizer", GPT2, "--d-in", 2048]),
        ({"n_emb": 150000, "method": "frequency"}, ["--n-emb", 150000, "--method", "frequency"]),
        ({"rows_per_token": 3.9, "method": "optimal", "mean_rows": 27},
         ["--rows-per-token", 3.9, "--method", "optimal", "--mean-rows", 27]),
        ({"n_emb": 400000, "k_max": 64, "fill": "round-robin"},
         ["--n-emb", 400000, "--k-max", 64, "--fill", "round-robin"]),
    ],
)
def test_allocate_equals_the_cli(cli_profiles, tmp_path, options, flags):
    train = cli_profiles[0]
    out = tmp_path / "cli.safetensors"
    want = untimed(cli("allocate", "--profile", train, *flags, "--out", out))
    del want["out"]
    alloc = l3kit.Profile.load(train).allocate(**options)
    assert untimed(alloc.report) == want
    np.testing.assert_array_equal(alloc.bounds, load_file(out)["bounds"])
    alloc.save(tmp_path / "py.safetensors")
    assert (tmp_path / "py.safetensors").read_bytes() == out.read_bytes()


def test_evaluate_equals_the_cli(cli_profiles, tmp_path):
    train, held, _ = cli_profiles
    a = tmp_path / "a.safetensors"
    cli("allocate", "--profile", train, "--rows-per-token", 3.9, "--out", a)
    want = cli("evaluate", "--allocation", a, "--profile", held, "--train-profile", train,
               "--d-in", 2048, "--tokenizer", GPT2)
    got = l3kit.Profile.load(train).evaluate(a, heldout=held, d_in=2048, tokenizer=GPT2)
    assert got == want
    # An allocation computed here, and profiles made here, give the same figures.
    mem = l3kit.profile(TRAIN, tokenizer=GPT2)
    again = mem.evaluate(mem.allocate(rows_per_token=3.9), heldout=l3kit.profile(HELDOUT, tokenizer=GPT2),
                         d_in=2048, tokenizer=GPT2)
    assert again["heldout"]["coverage"] == want["heldout"]["coverage"]
    assert again["train"]["expected_rows"] == want["train"]["expected_rows"]


def test_plan_equals_the_cli(cli_profiles, tmp_path):
    train, held, _ = cli_profiles
    flags = ["--rows-per-token", "2,3.9", "--budgets", 3]
    want = untimed(cli("plan", "--profile", train, "--heldout", held, "--out", tmp_path / "cli", *flags))
    got = untimed(l3kit.plan(train, heldout=held, out=tmp_path / "py", rows_per_token=[2, 3.9], budgets=3))
    files = [f.replace(str(tmp_path / "cli"), str(tmp_path / "py")) for f in want.pop("files")]
    assert got.pop("files") == files
    assert got == want
    assert (tmp_path / "py" / "plan.csv").read_bytes() == (tmp_path / "cli" / "plan.csv").read_bytes()


def test_bad_profile_inputs_raise_bad_input(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a profile")
    with pytest.raises(l3kit.BadInputError, match="junk.safetensors"):
        l3kit.Profile.load(junk)
    with pytest.raises(l3kit.BadInputError, match="no such|No such|does not exist|cannot"):
        l3kit.profile(tmp_path / "missing.txt", tokenizer=GPT2)
    with pytest.raises(l3kit.BadInputError, match="give --tokenizer"):
        l3kit.profile(TRAIN)
    with pytest.raises(l3kit.BadInputError, match="format"):
        l3kit.profile(TRAIN, tokenizer=GPT2, format="docx")
    p = l3kit.profile(TRAIN, tokenizer=GPT2, max_tokens=50000)
    with pytest.raises(l3kit.BadInputError, match="ran out"):
        p.allocate(n_emb=400000, k_max=64)
    with pytest.raises(l3kit.BadInputError, match="below the vocabulary size"):
        p.allocate(n_emb=10)
    with pytest.raises(l3kit.BadInputError, match="method=\"optimal\""):
        p.allocate(n_emb=100000, mean_rows=3)
    with pytest.raises(l3kit.BadInputError, match="rows_per_token"):
        p.allocate(rows_per_token=float("nan"))
    with pytest.raises(l3kit.BadInputError, match="not a size|size"):
        p.allocate(n_emb=100000, method="optimal", max_bytes_per_token="lots", d_in=64)
    with pytest.raises(l3kit.BadInputError, match="nope.json: no such file"):
        p.allocate(n_emb=100000, tokenizer=tmp_path / "nope.json")


def test_outputs_never_replace_an_input(tmp_path):
    # On a copy: a failure here must not be able to touch the bundled corpus.
    text = tmp_path / "held.txt"
    text.write_bytes(HELDOUT.read_bytes())
    with pytest.raises(l3kit.BadInputError, match="out"):
        l3kit.profile(text, tokenizer=GPT2, out=text)
    p = l3kit.profile(text, tokenizer=GPT2)
    with pytest.raises(l3kit.BadInputError, match="path"):
        p.save(text)
    assert text.read_bytes() == HELDOUT.read_bytes()
    p.save(tmp_path / "p.safetensors")
    assert l3kit.Profile.load(tmp_path / "p.safetensors").content_sha256 == p.content_sha256
    with pytest.raises(l3kit.BadInputError, match="out"):
        l3kit.plan(tmp_path / "p.safetensors", out=tmp_path / "p.safetensors")
