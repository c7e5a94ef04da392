"""`l3kit.lzw_allocation`: bit-identical to the CLI and to the Python transliteration of the
paper's algorithm on the bundled corpus, whatever form the sequences come in."""

import importlib.util

import numpy as np
import pytest
from safetensors.numpy import load_file

import l3kit
from conftest import FIXTURES, cli

BUDGETS = [(150000, 64), (201028, 512)]


def reference():
    spec = importlib.util.spec_from_file_location("lzw_reference", FIXTURES / "lzw_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def reference_bounds(seqs, vocab, n_emb, k_max):
    ref = reference()
    alloc = ref.allocate(ref.lzw_counts(seqs, vocab), vocab, n_emb, k_max)
    bounds = np.zeros(vocab + 1, dtype=np.int64)
    np.cumsum(alloc, out=bounds[1:])
    return bounds


@pytest.mark.parametrize("n_emb,k_max", BUDGETS)
def test_bounds_equal_the_cli(corpus, cli_profiles, tmp_path, n_emb, k_max):
    seqs, vocab = corpus
    out = tmp_path / "a.safetensors"
    cli("allocate", "--profile", cli_profiles[0], "--n-emb", n_emb, "--k-max", k_max, "--out", out)
    bounds = l3kit.lzw_allocation(seqs, vocab, n_emb, k_max)
    assert bounds.dtype == np.int64 and bounds.shape == (vocab + 1,)
    np.testing.assert_array_equal(bounds, load_file(out)["bounds"])
    golden = load_file(FIXTURES / "golden" / f"lzw-train-n{n_emb}-k{k_max}.safetensors")["bounds"]
    np.testing.assert_array_equal(bounds, golden)


def test_bounds_equal_the_python_transliteration(corpus):
    seqs, vocab = corpus
    n_emb, k_max = BUDGETS[0]
    np.testing.assert_array_equal(
        l3kit.lzw_allocation(seqs, vocab, n_emb, k_max), reference_bounds(seqs, vocab, n_emb, k_max)
    )


def test_reference_quirks_on_small_cases():
    # Random small corpora exercise the end-of-sequence reset, the consumed breaking token,
    # ties and the cap far more often than English text does.
    rng = np.random.default_rng(7)
    for trial in range(200):
        vocab = int(rng.integers(1, 6))
        seqs = [list(rng.integers(0, vocab, int(rng.integers(0, 30)))) for _ in range(rng.integers(1, 6))]
        k_max = int(rng.integers(1, 5))
        ref = reference()
        counts = ref.lzw_counts([[int(t) for t in s] for s in seqs], vocab)
        # The largest budget the codewords can fill without a fill rule.
        alloc = np.ones(vocab, dtype=np.int64)
        for codeword, _ in sorted(counts.items(), key=lambda kv: kv[1], reverse=True):
            if alloc[codeword[-1]] < k_max:
                alloc[codeword[-1]] += 1
        for n_emb in range(vocab, int(alloc.sum()) + 1):
            got = l3kit.lzw_allocation(seqs, vocab, n_emb, k_max)
            want = reference_bounds([[int(t) for t in s] for s in seqs], vocab, n_emb, k_max)
            np.testing.assert_array_equal(got, want, err_msg=f"trial {trial} {seqs} {n_emb} {k_max}")


def test_every_input_form_gives_the_same_bounds(corpus):
    seqs, vocab = corpus
    seqs = seqs[:20000]
    n_emb, k_max = 120000, 64
    want = l3kit.lzw_allocation(seqs, vocab, n_emb, k_max)
    arrays = [np.asarray(s, dtype=np.int64) for s in seqs]
    # A generator is consumed once, in order, in batches.
    assert np.array_equal(l3kit.lzw_allocation((a for a in arrays), vocab, n_emb, k_max), want)
    assert np.array_equal(l3kit.lzw_allocation(arrays, vocab, n_emb, k_max), want)
    assert np.array_equal(l3kit.lzw_allocation([tuple(s) for s in seqs], vocab, n_emb, k_max), want)
    # Lists and arrays mixed, and other integer dtypes.
    mixed = [a.astype(np.uint16) if i % 3 else list(a) for i, a in enumerate(arrays)]
    assert np.array_equal(l3kit.lzw_allocation(iter(mixed), vocab, n_emb, k_max), want)
    # One flat array cut by a separator outside the vocabulary (empty sequences dropped).
    sep = 2**32 - 1
    flat = np.concatenate([np.append(a, sep) for a in arrays] + [np.array([sep])]).astype(np.uint32)
    assert np.array_equal(l3kit.lzw_allocation(flat, vocab, n_emb, k_max, separator=sep), want)


def test_small_batches_stream_the_same(corpus, monkeypatch):
    seqs, vocab = corpus
    seqs = seqs[:5000]
    want = l3kit.lzw_allocation(seqs, vocab, 60000, 64)
    monkeypatch.setattr(l3kit, "_BATCH_IDS", 7)
    assert np.array_equal(l3kit.lzw_allocation(iter(seqs), vocab, 60000, 64), want)


def test_seq_len_and_2d_arrays():
    rng = np.random.default_rng(3)
    vocab = 50
    flat = rng.integers(0, vocab, 10_007)
    chunks = [flat[i : i + 100] for i in range(0, len(flat), 100)]
    want = l3kit.lzw_allocation(chunks, vocab, 400, 16)
    assert np.array_equal(l3kit.lzw_allocation(flat, vocab, 400, 16, seq_len=100), want)
    rect = flat[:10_000].reshape(100, 100)
    assert np.array_equal(
        l3kit.lzw_allocation(rect, vocab, 400, 16), l3kit.lzw_allocation(list(rect), vocab, 400, 16)
    )


def test_fill_policies_place_the_rest():
    seqs = [[0, 1, 0, 1, 2]]
    with pytest.raises(l3kit.BadInputError, match="ran out"):
        l3kit.lzw_allocation(seqs, 3, 12, 8)
    for fill in ("frequency", "round-robin"):
        b = l3kit.lzw_allocation(seqs, 3, 12, 8, fill=fill)
        assert b[-1] == 12 and (np.diff(b) >= 1).all()
    with pytest.raises(l3kit.BadInputError, match="fill"):
        l3kit.lzw_allocation(seqs, 3, 12, 8, fill="sideways")


@pytest.mark.parametrize(
    "sequences,kwargs,match",
    [
        ([[0, 1, 7]], {}, "sequence 0: token id 7 at position 2 .*vocabulary size 5"),
        ([[0, 1], [2, -1]], {}, "sequence 1: token id -1 at position 1 is not a token id"),
        ([np.array([0, 1]), np.array([3, -4])], {}, "sequence 1: token id -4 at position 1"),
        ([[0, 1.5]], {}, "sequence 0: 1.5 at position 1"),
        ([np.array([0.0, 1.0])], {}, "float64 values"),
        (["abc"], {}, "not a sequence of token ids"),
        ("abc", {}, "not an iterable"),
        (np.arange(4), {}, "needs seq_len= or separator="),
        (np.arange(4), {"seq_len": 0}, "seq_len must be at least 1"),
        (np.arange(4), {"seq_len": 2, "separator": 1}, "not both"),
        ([[0, 1]], {"seq_len": 2}, "cut one flat array"),
        (np.zeros((2, 2, 2), dtype=int), {}, "shape"),
    ],
)
def test_bad_sequences_raise_bad_input(sequences, kwargs, match):
    with pytest.raises(l3kit.BadInputError, match=match):
        l3kit.lzw_allocation(sequences, 5, 10, 4, fill="frequency", **kwargs)


@pytest.mark.parametrize(
    "vocab,n_emb,k_max,match",
    [
        (5, 4, 4, "below the vocabulary size"),
        (5, 100, 4, "exceeds vocab x k_max"),
        (5, 10, 0, "k-max must be at least 1"),
        (0, 10, 4, "vocabulary size 0 is out of range"),
    ],
)
def test_bad_budgets_raise_bad_input(vocab, n_emb, k_max, match):
    with pytest.raises(l3kit.BadInputError, match=match):
        l3kit.lzw_allocation([[0, 1]], vocab, n_emb, k_max)


def test_help_explains_the_quirks():
    doc = l3kit.lzw_allocation.__doc__
    for quirk in ("breaking token is consumed", "resets", "stable sort", "k_max", "skipped"):
        assert quirk in doc


def test_torch_tensors_are_read_through_numpy(monkeypatch):
    # torch is not a dependency; a stand-in module exercises the same path (isinstance against
    # torch.Tensor, then .detach().cpu().numpy()), taken only when "torch" is imported.
    import sys
    import types

    class Tensor:
        def __init__(self, a):
            self.a = a

        def detach(self):
            return self

        def cpu(self):
            return self

        def numpy(self):
            return self.a

    fake = types.ModuleType("torch")
    fake.Tensor = Tensor
    monkeypatch.setitem(sys.modules, "torch", fake)
    rng = np.random.default_rng(5)
    seqs = [rng.integers(0, 40, 300) for _ in range(20)]
    want = l3kit.lzw_allocation(seqs, 40, 200, 16)
    assert np.array_equal(l3kit.lzw_allocation([Tensor(s) for s in seqs], 40, 200, 16), want)
    assert np.array_equal(l3kit.lzw_allocation(Tensor(np.stack(seqs)), 40, 200, 16), want)
    flat = Tensor(np.concatenate(seqs))
    assert np.array_equal(l3kit.lzw_allocation(flat, 40, 200, 16, seq_len=300), want)
