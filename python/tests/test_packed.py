"""`PackedModel`, `pack`, `unpack`, `verify`: rows equal the packed safetensors slices, the
state dict round trip is exact, errors are typed, and no file handle is left open."""

import gc
import os
import shutil

import ml_dtypes
import numpy as np
import pytest
import safetensors

import l3kit
from conftest import FIXTURES, cli

PAPER = FIXTURES / "checkpoints" / "paper"
NANOCHAT = FIXTURES / "checkpoints" / "nanochat"
TABLE_DTYPES = {"f32": np.dtype("<f4"), "f16": np.dtype("<f2"), "bf16": np.dtype(ml_dtypes.bfloat16)}


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """The paper fixture packed as every table dtype, and the nanochat one as it is (bf16)."""
    d = tmp_path_factory.mktemp("packed")
    out = {}
    for dtype in ("f32", "bf16", "f16", "int8"):
        out[("paper", dtype)] = d / f"paper-{dtype}"
        l3kit.pack(PAPER, out[("paper", dtype)], dtype=dtype, max_shard_size="200KB")
    out[("nanochat", "bf16")] = d / "nanochat"
    l3kit.pack(NANOCHAT, out[("nanochat", "bf16")])
    return out


def tensors_of(path):
    """name -> (dtype, shape, bytes) of a safetensors file, read by the safetensors package."""
    with open(path, "rb") as f:
        return {n: (t["dtype"], t["shape"], t["data"]) for n, t in safetensors.deserialize(f.read())}


def test_pack_reports_what_the_cli_reports(packed, tmp_path):
    py = l3kit.pack(PAPER, tmp_path / "py", dtype="int8")
    want = cli("pack", PAPER, "--dtype", "int8", "--out", tmp_path / "cli")
    for key in ("dialect", "dtype", "vocab_size", "layers", "residual"):
        assert py[key] == want[key]
    for name in os.listdir(tmp_path / "cli"):
        assert (tmp_path / "py" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes()


@pytest.mark.parametrize("key", [("paper", "f32"), ("paper", "bf16"), ("paper", "f16"), ("nanochat", "bf16")])
def test_rows_are_zero_copy_views_equal_to_the_safetensors_slices(packed, key):
    with l3kit.PackedModel(packed[key]) as m:
        assert m.dtype == key[1] and m.vocab_size == 512 and len(m.layers) == 2
        for li, layer in enumerate(m.layers):
            bounds = m.bounds(li)
            assert bounds[0] == 0 and bounds[-1] == layer["n_emb"]
            for part in layer["parts"]:
                t = tensors_of(packed[key] / part["file"])
                dtype, shape, data = t[part["rows"]]
                rows = np.frombuffer(data, dtype=TABLE_DTYPES[key[1]]).reshape(shape)
                for token in range(part["token_start"], part["token_end"]):
                    got = m.rows(layer["name"] if token % 2 else li, token)
                    r0, r1 = bounds[token] - part["row_start"], bounds[token + 1] - part["row_start"]
                    assert got.dtype == TABLE_DTYPES[key[1]]
                    assert got.shape == (r1 - r0, layer["row_width"])
                    assert got.tobytes() == rows[r0:r1].tobytes()
                    # A view of the mapped shard: owns no data, cannot be written.
                    assert not got.flags.owndata and not got.flags.writeable


def test_rows_equal_the_source_tables(packed):
    src = l3kit.read_checkpoint(PAPER / "model.safetensors")
    with l3kit.PackedModel(packed[("paper", "f32")]) as m:
        for li, layer in enumerate(m.layers):
            keys, values = src[layer["source"]["keys"]], src[layer["source"]["values"]]
            b = m.bounds(li)
            for token in (0, 1, 100, 511):
                want = np.concatenate([keys[b[token]:b[token + 1]], values[b[token]:b[token + 1]]], axis=1)
                np.testing.assert_array_equal(m.rows(li, token), want)


def test_int8_rows_are_dequantised(packed):
    path = packed[("paper", "int8")]
    with l3kit.PackedModel(path) as m:
        layer = m.layers[0]
        d_in = layer["d_in"]
        for part in layer["parts"]:
            t = tensors_of(path / part["file"])
            _, shape, data = t[part["rows"]]
            q = np.frombuffer(data, dtype=np.int8).reshape(shape).astype(np.float32)
            _, sshape, sdata = t[part["scales"]]
            scales = np.frombuffer(sdata, dtype="<f4").reshape(sshape)
            want = np.concatenate([q[:, :d_in] * scales[:, :1], q[:, d_in:] * scales[:, 1:2]], axis=1)
            b = m.bounds(0)
            for token in range(part["token_start"], part["token_end"]):
                got = m.rows(0, token)
                assert got.dtype == np.float32
                r0, r1 = b[token] - part["row_start"], b[token + 1] - part["row_start"]
                np.testing.assert_array_equal(got, want[r0:r1])


def test_views_outlive_the_model(packed):
    m = l3kit.PackedModel(packed[("paper", "f32")])
    view = m.rows(0, 5)
    copy = view.copy()
    m.close()
    del m
    gc.collect()
    np.testing.assert_array_equal(view, copy)


@pytest.mark.parametrize("key,source", [(("paper", "f32"), PAPER / "model.safetensors"),
                                        (("nanochat", "bf16"), NANOCHAT / "model.safetensors")])
def test_state_dict_round_trip(packed, key, source):
    want = tensors_of(source)
    with l3kit.PackedModel(packed[key]) as m:
        got = m.to_state_dict()
    assert sorted(got) == sorted(want)
    for name, (dtype, shape, data) in want.items():
        assert list(got[name].shape) == shape, name
        assert got[name].tobytes() == data, name
        if dtype == "BF16":
            assert got[name].dtype == np.dtype(ml_dtypes.bfloat16)


def test_check_passes_and_fails(packed, tmp_path):
    with l3kit.PackedModel(packed[("paper", "f32")]) as m:
        report = m.check()
        assert report["problems"] == [] and report["files_hashed"] >= 3
    bad = tmp_path / "bad"
    shutil.copytree(packed[("paper", "f32")], bad)
    with l3kit.PackedModel(bad) as m:
        shard = bad / m.layers[0]["parts"][0]["file"]
        data = bytearray(shard.read_bytes())
        data[-1] ^= 0xFF
        shard.write_bytes(bytes(data))
        with pytest.raises(l3kit.CheckFailedError, match="sha256|SHA-256|hash"):
            m.check()


def test_verify(packed):
    report = l3kit.verify(PAPER, packed[("paper", "bf16")], tokens=64)
    assert report["passed"] and len(report["layers"]) == 2
    with pytest.raises(l3kit.CheckFailedError, match="beyond the tolerance"):
        l3kit.verify(PAPER, packed[("paper", "int8")], tokens=64, tolerance=1e-9)


def test_unpack_equals_the_cli(packed, tmp_path):
    l3kit.unpack(packed[("nanochat", "bf16")], tmp_path / "py")
    cli("unpack", packed[("nanochat", "bf16")], "--out", tmp_path / "cli")
    for name in os.listdir(tmp_path / "cli"):
        assert (tmp_path / "py" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes()


def test_bad_inputs_raise_bad_input(packed, tmp_path):
    assert issubclass(l3kit.BadInputError, l3kit.L3kitError)
    assert issubclass(l3kit.CheckFailedError, l3kit.L3kitError)
    with pytest.raises(l3kit.BadInputError, match="no such folder"):
        l3kit.PackedModel(tmp_path / "missing")
    with pytest.raises(l3kit.BadInputError, match="not a packed model"):
        l3kit.PackedModel(PAPER)
    with pytest.raises(l3kit.BadInputError, match="NaN|non-finite"):
        l3kit.pack(FIXTURES / "checkpoints" / "nonfinite", tmp_path / "nf")
    assert not (tmp_path / "nf").exists()
    with pytest.raises(l3kit.BadInputError, match="exists|--force|force"):
        l3kit.pack(PAPER, packed[("paper", "f32")])
    with pytest.raises(l3kit.BadInputError, match="dtype"):
        l3kit.pack(PAPER, tmp_path / "x", dtype="f8")
    with pytest.raises(l3kit.BadInputError, match="max_shard_size"):
        l3kit.pack(PAPER, tmp_path / "x", max_shard_size="huge")
    with l3kit.PackedModel(packed[("paper", "f32")]) as m:
        with pytest.raises(l3kit.BadInputError, match="vocabulary size 512"):
            m.rows(0, 512)
        with pytest.raises(l3kit.BadInputError, match="no layer 2"):
            m.rows(2, 0)
        with pytest.raises(l3kit.BadInputError, match="no L3 layer named"):
            m.rows("l3_layers.9", 0)
    m.close()
    with pytest.raises(l3kit.BadInputError, match="closed"):
        m.rows(0, 0)


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def test_no_file_handles_leak(packed, cli_profiles, tmp_path):
    def everything():
        for key, path in packed.items():
            with l3kit.PackedModel(path) as m:
                m.rows(0, 3)
                m.check()
            m = l3kit.PackedModel(path)  # closed by garbage collection alone
            m.rows(1, 7)
            del m
        l3kit.PackedModel(packed[("paper", "f32")]).to_state_dict()
        l3kit.Profile.load(cli_profiles[0]).allocate(n_emb=100000).save(tmp_path / "a.safetensors")
        l3kit.read_checkpoint(FIXTURES / "checkpoints" / "paper.pt")
        for bad in (tmp_path / "missing", PAPER):
            with pytest.raises(l3kit.BadInputError):
                l3kit.PackedModel(bad)
        gc.collect()

    everything()  # first use: imports and thread pools open what they keep
    before = open_fds()
    for _ in range(3):
        everything()
    assert open_fds() == before
