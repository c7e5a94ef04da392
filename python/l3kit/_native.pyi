# Type stubs of the compiled module l3kit._native (python/src/lib.rs). The public API is
# l3kit/__init__.py, typed inline; these describe what it calls. JSON strings are the
# library's serde summaries, as the CLI's --json prints them.
from typing import Optional

import numpy as np
import numpy.typing as npt

class L3kitError(Exception): ...
class BadInputError(L3kitError): ...
class CheckFailedError(L3kitError): ...

class LzwScanner:
    def __init__(self, vocab_size: int) -> None: ...
    def scan_batch(self, ids: npt.NDArray[np.uint32], offsets: npt.NDArray[np.uint64]) -> None: ...
    def scan_flat(
        self,
        ids: npt.NDArray[np.uint32],
        separator: Optional[int] = None,
        seq_len: Optional[int] = None,
    ) -> None: ...
    def allocate(self, n_emb: int, k_max: int, fill: Optional[str] = None) -> npt.NDArray[np.int64]: ...

class NativeAllocation:
    @staticmethod
    def load(path: str) -> NativeAllocation: ...
    def bounds(self) -> npt.NDArray[np.int64]: ...
    def meta_json(self) -> str: ...
    def save(self, path: str) -> None: ...

class NativeProfile:
    vocab_size: int
    content_sha256: str
    @staticmethod
    def load(path: str) -> NativeProfile: ...
    def save(self, path: str) -> None: ...
    def summary_json(self) -> str: ...
    def meta_json(self) -> str: ...
    def unigram(self) -> npt.NDArray[np.uint64]: ...
    def allocate(
        self,
        name: str,
        n_emb: Optional[int],
        rows_per_token: Optional[float],
        k_max: int,
        method: str,
        fill: Optional[str],
        mean_rows: Optional[float],
        max_bytes_per_token: Optional[int],
        tokenizer: Optional[str],
        d_in: Optional[int],
        d_emb: Optional[int],
        tied: bool,
        dtype: str,
    ) -> tuple[NativeAllocation, str]: ...
    def evaluate(
        self,
        name: str,
        alloc: NativeAllocation,
        alloc_name: str,
        train: Optional[NativeProfile],
        train_name: str,
        tokenizer: Optional[str],
        d_in: Optional[int],
        d_emb: Optional[int],
        tied: bool,
        dtype: str,
        top: int,
    ) -> str: ...

class MappedRows: ...

class NativePacked:
    closed: bool
    def __init__(self, path: str) -> None: ...
    def close(self) -> None: ...
    def config_json(self) -> str: ...
    def dtype(self) -> str: ...
    def bounds(self, layer: int) -> npt.NDArray[np.int64]: ...
    def raw_rows(self, layer: int, token: int) -> npt.NDArray[np.uint8]: ...
    def rows_f32(self, layer: int, token: int) -> npt.NDArray[np.float32]: ...
    def check(self, progress: bool = False) -> str: ...

def profile(
    inputs: list[str],
    tokenizer: Optional[str],
    format: Optional[str],
    field: Optional[str],
    vocab_size: Optional[int],
    separator: Optional[int],
    seq_len: Optional[int],
    max_tokens: Optional[int],
    add_special_tokens: bool,
    max_sequence_bytes: int,
    lzw: str,
    out: Optional[str],
    progress: bool,
) -> tuple[NativeProfile, str]: ...
def plan(
    train: NativeProfile,
    train_name: str,
    heldout: Optional[NativeProfile],
    heldout_name: str,
    out: str,
    rows_per_token: list[float],
    mean_rows: list[float],
    budgets: int,
    k_max: int,
    d_in: int,
    d_emb: Optional[int],
    tied: bool,
    dtype: str,
    paper_rows_per_token: float,
    rows_plot_mean_rows: Optional[float],
    fill: str,
    progress: bool,
) -> str: ...
def pack(
    source: str,
    out: str,
    dialect: Optional[str],
    map: Optional[str],
    allocation: Optional[str],
    dtype: Optional[str],
    other_dtype: Optional[str],
    max_shard_size: str,
    allow_nonfinite: bool,
    force: bool,
    progress: bool,
) -> str: ...
def unpack(
    packed: str, out: str, max_shard_size: str, force: bool, check: bool, progress: bool
) -> str: ...
def verify(
    source: str,
    packed: str,
    dialect: Optional[str],
    map: Optional[str],
    allocation: Optional[str],
    inputs: Optional[str],
    profile: Optional[str],
    tokens: int,
    seed: int,
    device: str,
    tolerance: Optional[float],
    progress: bool,
) -> str: ...
def read_checkpoint(path: str) -> list[tuple[str, str, list[int], npt.NDArray[np.uint8]]]: ...
def parse_size(value: str, name: str) -> int: ...
