"""Shared fixtures: the repository's bundled data and the l3kit binary the tests compare with."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
GPT2 = FIXTURES / "tokenizer" / "gpt2.json"
TRAIN = FIXTURES / "corpus" / "train.txt"
HELDOUT = FIXTURES / "corpus" / "heldout.txt"


def cli_path() -> Path:
    path = Path(os.environ.get("L3KIT_BIN", ROOT / "target" / "release" / "l3kit"))
    if not path.exists():
        pytest.fail(f"{path} is missing: build it with `cargo build --release` (or set L3KIT_BIN)")
    return path


def cli(*args, expect=0) -> dict:
    """Run the l3kit binary with --json --quiet; its JSON output."""
    run = subprocess.run(
        [str(cli_path()), *map(str, args), "--json", "--quiet"], capture_output=True, text=True
    )
    assert run.returncode == expect, run.stderr
    return json.loads(run.stdout) if expect == 0 else {"stderr": run.stderr}


@pytest.fixture(scope="session")
def corpus():
    """The bundled training text tokenised with GPT-2 as the reference tokenises it: line by
    line, each line's newline included, no special tokens."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(GPT2))
    with open(TRAIN, encoding="utf-8", newline="") as f:
        lines = f.readlines()
    seqs = [e.ids for e in tok.encode_batch(lines, add_special_tokens=False)]
    return seqs, tok.get_vocab_size(with_added_tokens=True)


@pytest.fixture(scope="session")
def cli_profiles(tmp_path_factory):
    """Training and held-out profiles made by the CLI."""
    d = tmp_path_factory.mktemp("profiles")
    train, held = d / "train.safetensors", d / "heldout.safetensors"
    summary = cli("profile", "--tokenizer", GPT2, TRAIN, "--out", train)
    cli("profile", "--tokenizer", GPT2, HELDOUT, "--out", held)
    return train, held, summary
