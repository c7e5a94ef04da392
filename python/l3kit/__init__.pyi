import os
from typing import Any, Iterable, Optional, Union

import numpy as np
import numpy.typing as npt

PathLike = Union[str, os.PathLike[str]]
Size = Union[int, str]

class L3kitError(Exception): ...
class BadInputError(L3kitError): ...
class CheckFailedError(L3kitError): ...

def lzw_allocation(
    sequences: Any,
    vocab_size: int,
    n_emb: int,
    k_max: int,
    fill: Optional[str] = None,
    *,
    seq_len: Optional[int] = None,
    separator: Optional[int] = None,
) -> npt.NDArray[np.int64]: ...

class Allocation:
    report: Optional[dict[str, Any]]
    path: Optional[str]
    @staticmethod
    def load(path: PathLike) -> Allocation: ...
    @property
    def bounds(self) -> npt.NDArray[np.int64]: ...
    @property
    def rows_per_token(self) -> npt.NDArray[np.int64]: ...
    @property
    def meta(self) -> dict[str, Any]: ...
    def save(self, path: PathLike) -> None: ...

class Profile:
    summary: dict[str, Any]
    path: Optional[str]
    @staticmethod
    def load(path: PathLike) -> Profile: ...
    def save(self, path: PathLike) -> None: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def unigram(self) -> npt.NDArray[np.uint64]: ...
    @property
    def meta(self) -> dict[str, Any]: ...
    @property
    def content_sha256(self) -> str: ...
    def allocate(
        self,
        n_emb: Optional[int] = None,
        *,
        rows_per_token: Optional[float] = None,
        k_max: int = 512,
        method: str = "lzw",
        fill: Optional[str] = None,
        mean_rows: Optional[float] = None,
        max_bytes_per_token: Optional[Size] = None,
        tokenizer: Optional[PathLike] = None,
        d_in: Optional[int] = None,
        d_emb: Optional[int] = None,
        tied: bool = False,
        dtype: str = "bf16",
    ) -> Allocation: ...
    def evaluate(
        self,
        allocation: Union[Allocation, PathLike],
        *,
        heldout: Union[Profile, PathLike],
        tokenizer: Optional[PathLike] = None,
        d_in: Optional[int] = None,
        d_emb: Optional[int] = None,
        tied: bool = False,
        dtype: str = "bf16",
        top: int = 10,
    ) -> dict[str, Any]: ...

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
    max_sequence_bytes: Size = "4MiB",
    lzw: str = "reference",
    out: Optional[PathLike] = None,
    progress: bool = False,
) -> Profile: ...
def plan(
    profile: Union[Profile, PathLike],
    *,
    out: PathLike,
    heldout: Union[Profile, PathLike, None] = None,
    rows_per_token: Iterable[float] = ...,
    mean_rows: Iterable[float] = ...,
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
) -> dict[str, Any]: ...

class PackedModel:
    path: str
    config: dict[str, Any]
    def __init__(self, path: PathLike) -> None: ...
    def __enter__(self) -> PackedModel: ...
    def __exit__(self, *exc: Any) -> None: ...
    def close(self) -> None: ...
    @property
    def layers(self) -> list[dict[str, Any]]: ...
    @property
    def dtype(self) -> str: ...
    @property
    def vocab_size(self) -> int: ...
    def bounds(self, layer: Union[int, str] = 0) -> npt.NDArray[np.int64]: ...
    def rows(self, layer: Union[int, str], token: int) -> npt.NDArray[Any]: ...
    def check(self, progress: bool = False) -> dict[str, Any]: ...
    def to_state_dict(self) -> dict[str, npt.NDArray[Any]]: ...

def read_checkpoint(path: PathLike) -> dict[str, npt.NDArray[Any]]: ...
def pack(
    source: PathLike,
    out: PathLike,
    *,
    dialect: Optional[str] = None,
    map: Optional[PathLike] = None,
    allocation: Optional[PathLike] = None,
    dtype: Optional[str] = None,
    other_dtype: Optional[str] = None,
    max_shard_size: Size = "5GB",
    allow_nonfinite: bool = False,
    force: bool = False,
    progress: bool = False,
) -> dict[str, Any]: ...
def unpack(
    packed: PathLike,
    out: PathLike,
    *,
    max_shard_size: Size = "5GB",
    force: bool = False,
    no_check: bool = False,
    progress: bool = False,
) -> dict[str, Any]: ...
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
) -> dict[str, Any]: ...
