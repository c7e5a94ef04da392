"""l3kit from Python: LZW allocations, profiles, the planner and packed Large Lookup Layers.

The work is done by l3kit's Rust library (the same code as the ``l3kit`` command line), with
the GIL released while it runs. Arrays come in and go out as numpy arrays; torch tensors are
accepted wherever a sequence of token ids is (converted with ``.numpy()``, on the CPU).
Summaries are the dictionaries the command line prints with ``--json``.

Errors are raised as :class:`L3kitError` subclasses carrying l3kit's message:
:class:`BadInputError` for input that cannot be used (the CLI's exit code 2) and
:class:`CheckFailedError` for a check that ran and failed (exit code 1).

Progress bars are off unless a function is called with ``progress=True`` (and stderr is a
terminal).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any, Iterable, Optional, Union

import numpy as np

from . import _native
from ._native import BadInputError, CheckFailedError, L3kitError

__all__ = [
    "L3kitError",
    "BadInputError",
    "CheckFailedError",
    "lzw_allocation",
    "profile",
    "Profile",
    "Allocation",
    "plan",
    "PackedModel",
    "pack",
    "unpack",
    "verify",
    "read_checkpoint",
]

PathLike = Union[str, "os.PathLike[str]"]

# How many ids `lzw_allocation` gathers from an iterable before handing them to the scanner:
# large enough that the per-call overhead vanishes, small enough to keep memory flat.
_BATCH_IDS = 1 << 20
_U32_MAX = (1 << 32) - 1


def _from_torch(x: Any) -> Any:
    """A torch tensor as a numpy array (only looked for when torch is already imported)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return x


def _ids(seq: Any, where: Any) -> np.ndarray:
    """Token ids as a uint32 array, or BadInputError naming the place of a bad value.

    `where(pos)` gives (name, position) of the id at flat position `pos`, so that a batch of
    sequences converted at once still names the sequence an id came from."""
    seq = _from_torch(seq)
    if isinstance(seq, (str, bytes)):
        raise BadInputError(f"{where(0)[0]} is a {type(seq).__name__}, not a sequence of token ids")
    try:
        arr = np.asarray(seq)
    except (TypeError, ValueError, OverflowError) as e:
        raise BadInputError(f"{where(0)[0]} is not a sequence of token ids: {e}") from None
    if arr.size == 0:
        return np.zeros(0, dtype=np.uint32)
    if arr.ndim != 1:
        raise BadInputError(f"{where(0)[0]} has shape {arr.shape}; a sequence of token ids is 1-D")
    if arr.dtype.kind not in "iu":
        raise BadInputError(f"{where(0)[0]} holds {arr.dtype} values; token ids are integers")
    if arr.dtype == np.uint32:
        return np.ascontiguousarray(arr)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > _U32_MAX:
        pos = int(np.argmax(arr < 0)) if lo < 0 else int(np.argmax(arr > _U32_MAX))
        name, at = where(pos)
        raise BadInputError(
            f"{name}: token id {int(arr[pos])} at position {at} is not a token id "
            f"(ids are 0 to 2^32 - 1, and below the vocabulary size)"
        )
    return arr.astype(np.uint32)


class _Batch:
    """Sequences gathered for one call into the scanner: numpy arrays as they come, runs of
    Python lists joined into one list first (one conversion instead of one per sequence)."""

    def __init__(self) -> None:
        self.parts: list = []
        self.lengths: list = []
        self.ids = 0
        self._list: list = []
        self._list_first = 0  # index of the first sequence in `_list`
        self._list_lengths: list = []

    def add(self, i: int, seq: Any) -> None:
        if isinstance(seq, (list, tuple)):
            if not self._list_lengths:
                self._list_first = i
            self._list.extend(seq)
            self._list_lengths.append(len(seq))
        else:
            self._join_lists()
            ids = _ids(seq, lambda pos: (f"sequence {i}", pos))
            self.parts.append(ids)
            self.lengths.append(len(ids))
        self.ids += self._list_lengths[-1] if self._list_lengths else self.lengths[-1]

    def _join_lists(self) -> None:
        if not self._list_lengths:
            return
        first, lengths = self._list_first, self._list_lengths
        ends = np.cumsum(lengths)

        def where(pos: int) -> tuple:
            k = int(np.searchsorted(ends, pos, side="right"))
            return f"sequence {first + k}", pos - (int(ends[k - 1]) if k else 0)

        try:
            arr = np.asarray(self._list)
        except (TypeError, ValueError, OverflowError):
            arr = None
        if arr is None or arr.dtype.kind not in "iu":
            # Only on failure: find the first value that is no token id, to name it.
            bad = next(
                k for k, x in enumerate(self._list)
                if isinstance(x, bool)
                or not isinstance(x, (int, np.integer))
                or not 0 <= x <= _U32_MAX
            )
            name, at = where(bad)
            raise BadInputError(
                f"{name}: {self._list[bad]!r} at position {at} is not a token id (an integer "
                "from 0 to 2^32 - 1, below the vocabulary size)"
            )
        self.parts.append(_ids(arr, where))
        self.lengths.extend(lengths)
        self._list, self._list_lengths = [], []

    def scan_into(self, scanner: Any) -> None:
        self._join_lists()
        offsets = np.zeros(len(self.lengths) + 1, dtype=np.uint64)
        np.cumsum(self.lengths, out=offsets[1:])
        flat = np.concatenate(self.parts) if self.parts else np.zeros(0, dtype=np.uint32)
        scanner.scan_batch(flat.astype(np.uint32, copy=False), offsets)
        self.__init__()


def lzw_allocation(
    sequences: Any,
    vocab_size: int,
    n_emb: int,
    k_max: int,
    fill: Optional[str] = None,
    *,
    seq_len: Optional[int] = None,
    separator: Optional[int] = None,
) -> np.ndarray:
    """The paper's LZW allocation (Algorithm 1) of token sequences, bit-identical to the
    reference Python code and to ``l3kit allocate --method lzw``.

    Returns the bounds: an int64 array of ``vocab_size + 1`` entries, the prefix sum of the
    rows per token (token ``t`` owns rows ``bounds[t]:bounds[t + 1]``), ``bounds[-1] == n_emb``.

    ``sequences`` is one of:

    - any iterable of sequences of token ids (lists, tuples, numpy arrays, torch tensors),
      consumed once and in order, so a generator over a dataloader works without holding the
      corpus in memory (ids are handed to the scanner in batches of about a million);
    - one 2-D array: each row is a sequence;
    - one flat 1-D array with ``seq_len=N`` (runs of N ids, the last may be shorter) or
      ``separator=ID`` (the separator ends a sequence and belongs to none; empty sequences
      are dropped; it may lie outside the vocabulary).

    ``n_emb`` is the rows per table (at least ``vocab_size``, at most
    ``vocab_size * k_max``), ``k_max`` the most rows any token may own.

    The quirks of the reference are reproduced on purpose, since a model trained with an
    allocation can only be loaded with the same one:

    - every single token is a codeword from the start (count 0), so single tokens take part
      in the ranking like any other codeword;
    - a phrase is the longest codeword match; the match plus the token that broke it becomes
      a new codeword with count 1, and that *breaking token is consumed*: the next phrase
      starts after it, not at it;
    - a match that reaches the end of the sequence *resets* that codeword's count to 1 (the
      reference assigns ``counts[...] = 1`` whether or not the codeword existed), after its
      prefix was counted;
    - codewords are ranked by count, descending, ties in the order the dictionary first saw
      them (Python's stable sort with ``reverse=True``);
    - each codeword gives one row to its last token; a token already at ``k_max`` is skipped
      and the walk goes on; the walk stops as soon as ``n_emb`` rows are placed.

    When the codewords run out before ``n_emb`` rows are placed the reference has no rule and
    stops with an error; so does this function (:class:`BadInputError`, saying how many rows
    are left) unless ``fill`` says where the rest go: ``"frequency"`` (in proportion to the
    unigram counts) or ``"round-robin"`` (one per token in id order, round after round).

    Token ids must be below ``vocab_size``; an id outside it raises :class:`BadInputError`
    naming the sequence and position. The scan runs with the GIL released.
    """
    scanner = _native.LzwScanner(vocab_size)
    sequences = _from_torch(sequences)
    if isinstance(sequences, np.ndarray):
        if sequences.ndim == 2 and seq_len is None and separator is None:
            rows = sequences.shape[1]
            flat = _ids(sequences.reshape(-1), lambda pos: (f"sequence {pos // rows}", pos % rows))
            scanner.scan_flat(flat, seq_len=max(rows, 1))
        elif sequences.ndim == 1:
            if seq_len is None and separator is None:
                raise BadInputError(
                    "one flat array of ids needs seq_len= or separator= to be cut into "
                    "sequences (for a single sequence, pass [array])"
                )
            flat = _ids(sequences, lambda pos: ("sequences", pos))
            scanner.scan_flat(flat, separator=separator, seq_len=seq_len)
        else:
            raise BadInputError(
                f"sequences has shape {sequences.shape}: give a 1-D array with seq_len= or "
                "separator=, a 2-D array of sequences, or an iterable of sequences"
            )
        return scanner.allocate(n_emb, k_max, fill)
    if seq_len is not None or separator is not None:
        raise BadInputError("seq_len= and separator= cut one flat array; sequences is not one")
    if isinstance(sequences, (str, bytes)) or not hasattr(sequences, "__iter__"):
        raise BadInputError(
            f"sequences is a {type(sequences).__name__}, not an iterable of token id sequences"
        )
    batch = _Batch()
    for i, seq in enumerate(sequences):
        batch.add(i, _from_torch(seq))
        if batch.ids >= _BATCH_IDS:
            batch.scan_into(scanner)
    batch.scan_into(scanner)
    return scanner.allocate(n_emb, k_max, fill)


# ---- profiles and allocations -------------------------------------------------------------


class Allocation:
    """An allocation: ``bounds`` (int64, vocab + 1), its ``meta`` (method, n_emb, k_max, ...)
    and, when computed here, the ``report`` that ``l3kit allocate --json`` prints."""

    def __init__(self, native: Any, report: Optional[dict] = None, path: Optional[str] = None):
        self._native = native
        self.report = report
        self.path = path

    @staticmethod
    def load(path: PathLike) -> "Allocation":
        """Read an allocation file (any safetensors file with an I64 ``bounds`` tensor)."""
        return Allocation(_native.NativeAllocation.load(os.fspath(path)), path=os.fspath(path))

    @property
    def bounds(self) -> np.ndarray:
        return self._native.bounds()

    @property
    def rows_per_token(self) -> np.ndarray:
        b = self.bounds
        return b[1:] - b[:-1]

    @property
    def meta(self) -> dict:
        return json.loads(self._native.meta_json())

    def save(self, path: PathLike) -> None:
        """Write the allocation file (safetensors), as ``l3kit allocate --out`` does."""
        self._native.save(os.fspath(path))
        self.path = os.fspath(path)

    def __repr__(self) -> str:
        m = self.meta
        return f"Allocation(method={m['method']!r}, vocab_size={m['vocab_size']}, n_emb={m['n_emb']})"


def _name(obj: Any, default: str) -> str:
    return obj.path if getattr(obj, "path", None) else default


class Profile:
    """A corpus profile: unigram counts and the LZW codeword dictionary.

    Made by :func:`profile` or read with :meth:`Profile.load`; ``summary`` is what
    ``l3kit profile --json`` reports (timings only for a profile made in this process).
    """

    def __init__(self, native: Any, summary: dict, path: Optional[str] = None):
        self._native = native
        self.summary = summary
        self.path = path

    @staticmethod
    def load(path: PathLike) -> "Profile":
        """Read a profile file written by ``l3kit profile`` or :meth:`save`."""
        native = _native.NativeProfile.load(os.fspath(path))
        return Profile(native, json.loads(native.summary_json()), os.fspath(path))

    def save(self, path: PathLike) -> None:
        """Write the profile file (safetensors, docs/profile-format.md)."""
        self._native.save(os.fspath(path))
        self.path = os.fspath(path)

    @property
    def vocab_size(self) -> int:
        return self._native.vocab_size

    @property
    def unigram(self) -> np.ndarray:
        """Unigram counts (uint64, vocab_size)."""
        return self._native.unigram()

    @property
    def meta(self) -> dict:
        """How the profile was made: inputs, options, tokens, sequences, tokenizer hash."""
        return json.loads(self._native.meta_json())

    @property
    def content_sha256(self) -> str:
        return self._native.content_sha256

    def allocate(
        self,
        n_emb: Optional[int] = None,
        *,
        rows_per_token: Optional[float] = None,
        k_max: int = 512,
        method: str = "lzw",
        fill: Optional[str] = None,
        mean_rows: Optional[float] = None,
        max_bytes_per_token: Union[int, str, None] = None,
        tokenizer: Optional[PathLike] = None,
        d_in: Optional[int] = None,
        d_emb: Optional[int] = None,
        tied: bool = False,
        dtype: str = "bf16",
    ) -> Allocation:
        """``l3kit allocate`` on this profile; the options are the CLI's flags.

        The budget is ``n_emb`` or ``rows_per_token``; ``method`` is ``"lzw"`` (the paper's,
        exact), ``"uniform"``, ``"frequency"`` or ``"optimal"`` (with ``mean_rows`` or
        ``max_bytes_per_token`` as a speed budget). Returns an :class:`Allocation` whose
        ``report`` is what ``--json`` prints (without ``out``); :meth:`Allocation.save` writes
        the file.
        """
        if isinstance(max_bytes_per_token, str):
            max_bytes_per_token = _size(max_bytes_per_token, "max_bytes_per_token")
        native, report = self._native.allocate(
            _name(self, "<profile>"),
            n_emb,
            rows_per_token,
            k_max,
            method,
            fill,
            mean_rows,
            max_bytes_per_token,
            _path(tokenizer),
            d_in,
            d_emb,
            tied,
            dtype,
        )
        return Allocation(native, json.loads(report))

    def evaluate(
        self,
        allocation: Union[Allocation, PathLike],
        *,
        heldout: Union["Profile", PathLike],
        tokenizer: Optional[PathLike] = None,
        d_in: Optional[int] = None,
        d_emb: Optional[int] = None,
        tied: bool = False,
        dtype: str = "bf16",
        top: int = 10,
    ) -> dict:
        """``l3kit evaluate``: the allocation's context coverage, E[d_t] and bytes per token
        on the ``heldout`` profile beside this (training) profile, and the starved tokens.
        Returns what ``--json`` prints."""
        alloc = allocation if isinstance(allocation, Allocation) else Allocation.load(allocation)
        held = heldout if isinstance(heldout, Profile) else Profile.load(heldout)
        report = held._native.evaluate(
            _name(held, "<held-out profile>"),
            alloc._native,
            _name(alloc, "<allocation>"),
            self._native,
            _name(self, "<training profile>"),
            _path(tokenizer),
            d_in,
            d_emb,
            tied,
            dtype,
            top,
        )
        return json.loads(report)

    def __repr__(self) -> str:
        s = self.summary
        return (
            f"Profile(vocab_size={s['vocab_size']}, tokens={s['tokens']}, "
            f"codewords={s['codewords']})"
        )


def _path(p: Optional[PathLike]) -> Optional[str]:
    return None if p is None else os.fspath(p)


def _size(value: Union[int, str], name: str) -> int:
    """A size given as bytes or as the CLI spells it (``5GB``, ``512KiB``)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise BadInputError(f"{name}={value!r} is not a size (e.g. 2MB, 512KiB, or bytes)")
    return value if isinstance(value, int) else _native.parse_size(value, name)


def profile(
    files: Union[PathLike, Iterable[PathLike]],
    *,
    tokenizer: Optional[PathLike] = None,
    format: Optional[str] = None,
    field: Optional[str] = None,
    vocab_size: Optional[int] = None,
    separator: Optional[int] = None,
    seq_len: Optional[int] = None,
    max_tokens: Optional[int] = None,
    add_special_tokens: bool = False,
    max_sequence_bytes: Union[int, str] = "4MiB",
    lzw: str = "reference",
    out: Optional[PathLike] = None,
    progress: bool = False,
) -> Profile:
    """``l3kit profile``: tokenise files (text, JSON Lines, Parquet, u16/u32 ids) and collect
    the unigram counts and the LZW dictionary. The options are the CLI's flags; with ``out``
    the profile file is written too. The returned profile's ``summary`` is what ``--json``
    prints."""
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    inputs = [os.fspath(f) for f in files]
    native, summary = _native.profile(
        inputs,
        _path(tokenizer),
        format,
        field,
        vocab_size,
        separator,
        seq_len,
        max_tokens,
        add_special_tokens,
        _size(max_sequence_bytes, "max_sequence_bytes"),
        lzw,
        _path(out),
        progress,
    )
    return Profile(native, json.loads(summary), _path(out))


def plan(
    profile: Union[Profile, PathLike],
    *,
    out: PathLike,
    heldout: Union[Profile, PathLike, None] = None,
    rows_per_token: Iterable[float] = (1.5, 2, 3, 3.9, 6),
    mean_rows: Iterable[float] = (),
    budgets: int = 12,
    k_max: int = 512,
    d_in: int = 2048,
    d_emb: Optional[int] = None,
    tied: bool = False,
    dtype: str = "bf16",
    paper_rows_per_token: float = 3.9,
    rows_plot_mean_rows: Optional[float] = None,
    fill: str = "frequency",
    progress: bool = False,
) -> dict:
    """``l3kit plan``: sweep memory and speed budgets, write plan.csv, plan.json and the plots
    into ``out``, and return what ``--json`` prints."""
    train = profile if isinstance(profile, Profile) else Profile.load(profile)
    held = heldout if heldout is None or isinstance(heldout, Profile) else Profile.load(heldout)
    report = _native.plan(
        train._native,
        _name(train, "<training profile>"),
        None if held is None else held._native,
        _name(held, "<held-out profile>") if held is not None else "",
        os.fspath(out),
        [float(r) for r in rows_per_token],
        [float(m) for m in mean_rows],
        budgets,
        k_max,
        d_in,
        d_emb,
        tied,
        dtype,
        paper_rows_per_token,
        rows_plot_mean_rows,
        fill,
        progress,
    )
    return json.loads(report)


# ---- packed folders -----------------------------------------------------------------------


def _bfloat16() -> Any:
    try:
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    except ImportError:
        return np.dtype(np.uint16)


def _numpy_dtype(name: str) -> np.dtype:
    """A safetensors dtype name (F32, BF16, I64, ...) as a numpy dtype."""
    if name == "BF16":
        return _bfloat16()
    table = {
        "F64": np.float64, "F32": np.float32, "F16": np.float16,
        "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
        "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8,
        "BOOL": np.bool_,
    }
    if name not in table:
        raise BadInputError(f"tensor dtype {name} has no numpy equivalent")
    return np.dtype(table[name]).newbyteorder("<")


_TABLE_DTYPES = {"f32": np.dtype("<f4"), "f16": np.dtype("<f2")}


class PackedModel:
    """A packed model folder (``l3kit pack``'s output), opened and validated.

    ``rows(layer, token)`` returns the token's rows of an L3 layer, shape
    ``(rows, row_width)`` with each row ``[key | value]`` (or the one tied row): for f32, f16
    and bf16 tables a read-only, zero-copy view of the memory-mapped shard (bf16 as
    ``ml_dtypes.bfloat16`` when ml_dtypes is installed, otherwise the raw bits as uint16);
    for int8 tables the rows dequantised to float32 (a new array).

    Use it as a context manager or call :meth:`close` to release the files; arrays returned by
    :meth:`rows` keep their mapping alive on their own.
    """

    def __init__(self, path: PathLike):
        self.path = os.fspath(path)
        self._native = _native.NativePacked(self.path)
        self.config = json.loads(self._native.config_json())
        self._l3 = self.config["l3"]

    def __enter__(self) -> "PackedModel":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._native.close()

    @property
    def layers(self) -> list:
        """The L3 layers as ``config.json`` records them (name, d_in, d_emb, n_emb, parts...)."""
        return self._l3["layers"]

    @property
    def dtype(self) -> str:
        """The tables' dtype: f32, bf16, f16 or int8."""
        return self._l3["dtype"]

    @property
    def vocab_size(self) -> int:
        return self._l3["vocab_size"]

    def _layer(self, layer: Union[int, str]) -> int:
        if isinstance(layer, str):
            for i, l in enumerate(self.layers):
                if l["name"] == layer:
                    return i
            names = ", ".join(l["name"] for l in self.layers)
            raise BadInputError(f"{self.path}: no L3 layer named {layer!r} (layers: {names})")
        if not isinstance(layer, (int, np.integer)) or not 0 <= layer < len(self.layers):
            raise BadInputError(
                f"{self.path}: the packed model has {len(self.layers)} L3 layers, there is no "
                f"layer {layer!r}"
            )
        return int(layer)

    def bounds(self, layer: Union[int, str] = 0) -> np.ndarray:
        """The layer's allocation bounds (int64, vocab_size + 1)."""
        return self._native.bounds(self._layer(layer))

    def rows(self, layer: Union[int, str], token: int) -> np.ndarray:
        """Token ``token``'s rows of L3 layer ``layer`` (an index or a layer name)."""
        i = self._layer(layer)
        if not isinstance(token, (int, np.integer)) or not 0 <= token < self.vocab_size:
            raise BadInputError(
                f"token id {token!r} is not below the vocabulary size {self.vocab_size}"
            )
        width = self.layers[i]["row_width"]
        if self.dtype == "int8":
            return self._native.rows_f32(i, int(token)).reshape(-1, width)
        raw = self._native.raw_rows(i, int(token))
        dtype = _bfloat16() if self.dtype == "bf16" else _TABLE_DTYPES[self.dtype]
        view = raw.view(dtype).reshape(-1, width)
        view.flags.writeable = False
        return view

    def check(self, progress: bool = False) -> dict:
        """``l3kit inspect --check``: re-hash every file and check every invariant. Returns the
        report; raises :class:`CheckFailedError` listing the problems when one fails."""
        return json.loads(self._native.check(progress))

    def to_state_dict(self) -> dict:
        """The source dialect's tensors rebuilt, as ``l3kit unpack`` writes them (names,
        dtypes and shapes of the checkpoint that was packed; the file hashes are checked
        first), as a dict of numpy arrays. bf16 tensors are ``ml_dtypes.bfloat16`` (or uint16
        bits); for torch: ``torch.from_numpy(a)``, or for bf16
        ``torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)``.

        The tensors pass through a temporary folder (``tempfile``'s), removed afterwards."""
        with tempfile.TemporaryDirectory(prefix="l3kit-unpack-") as tmp:
            out = os.path.join(tmp, "unpacked")
            _native.unpack(self.path, out, "5GB", False, True, False)
            return read_checkpoint(out)

    def __repr__(self) -> str:
        return (
            f"PackedModel({self.path!r}, layers={len(self.layers)}, dtype={self.dtype!r}, "
            f"vocab_size={self.vocab_size})"
        )


def read_checkpoint(path: PathLike) -> dict:
    """Every tensor of a checkpoint l3kit can read (a safetensors file, a sharded folder, a
    PyTorch ``.pt``/``.bin`` state dict, read without running any pickle code) as a dict of
    numpy arrays."""
    out = {}
    for name, dtype, shape, data in _native.read_checkpoint(os.fspath(path)):
        out[name] = data.view(_numpy_dtype(dtype)).reshape(shape)
    return out


def pack(
    source: PathLike,
    out: PathLike,
    *,
    dialect: Optional[str] = None,
    map: Optional[PathLike] = None,
    allocation: Optional[PathLike] = None,
    dtype: Optional[str] = None,
    other_dtype: Optional[str] = None,
    max_shard_size: Union[int, str] = "5GB",
    allow_nonfinite: bool = False,
    force: bool = False,
    progress: bool = False,
) -> dict:
    """``l3kit pack``: write a packed folder from a checkpoint; the options are the CLI's
    flags. Returns what ``--json`` prints."""
    report = _native.pack(
        os.fspath(source),
        os.fspath(out),
        dialect,
        _path(map),
        _path(allocation),
        dtype,
        other_dtype,
        str(max_shard_size),
        allow_nonfinite,
        force,
        progress,
    )
    return json.loads(report)


def unpack(
    packed: PathLike,
    out: PathLike,
    *,
    max_shard_size: Union[int, str] = "5GB",
    force: bool = False,
    no_check: bool = False,
    progress: bool = False,
) -> dict:
    """``l3kit unpack``: the source dialect's checkpoint back from a packed folder."""
    report = _native.unpack(
        os.fspath(packed), os.fspath(out), str(max_shard_size), force, not no_check, progress
    )
    return json.loads(report)


def verify(
    source: PathLike,
    packed: PathLike,
    *,
    dialect: Optional[str] = None,
    map: Optional[PathLike] = None,
    allocation: Optional[PathLike] = None,
    inputs: Optional[PathLike] = None,
    profile: Optional[PathLike] = None,
    tokens: int = 1024,
    seed: int = 0,
    device: str = "cpu",
    tolerance: Optional[float] = None,
    progress: bool = False,
) -> dict:
    """``l3kit verify``: check the packed folder, then run every L3 layer with the source and
    the packed tables on the same inputs. Returns the report (what ``--json`` prints); raises
    :class:`CheckFailedError` when a layer differs beyond the tolerance."""
    report = _native.verify(
        os.fspath(source),
        os.fspath(packed),
        dialect,
        _path(map),
        _path(allocation),
        _path(inputs),
        _path(profile),
        tokens,
        seed,
        device,
        tolerance,
        progress,
    )
    return json.loads(report)
