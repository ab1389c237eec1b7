"""A small safetensors reader/writer on numpy, with bfloat16 via ml_dtypes.

File layout: 8-byte little-endian header length N, N bytes of JSON header
(`{"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end]}}`, offsets
relative to the byte after the header), then the raw little-endian tensor bytes, back to back.
Reading memory-maps the file, so a tensor costs no host memory until it is copied somewhere.
We carry our own because numpy has no bfloat16 and the safetensors package's numpy API goes
through full in-memory copies.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import ml_dtypes
import numpy as np

from .. import storage
from ..errors import InputError

DTYPES: dict[str, np.dtype] = {
    name: np.dtype(t).newbyteorder("<")
    for name, t in {
        "F64": np.float64,
        "F32": np.float32,
        "F16": np.float16,
        "BF16": ml_dtypes.bfloat16,
        "F8_E4M3": ml_dtypes.float8_e4m3fn,
        "F8_E5M2": ml_dtypes.float8_e5m2,
        "I64": np.int64,
        "I32": np.int32,
        "I16": np.int16,
        "I8": np.int8,
        "U64": np.uint64,
        "U32": np.uint32,
        "U16": np.uint16,
        "U8": np.uint8,
        "BOOL": np.bool_,
    }.items()
}
_NAMES = {dt.newbyteorder("="): name for name, dt in DTYPES.items()}
MAX_HEADER_BYTES = 100_000_000  # the reference implementation's limit


class SafetensorsError(InputError):
    """A malformed safetensors file or an unsupported tensor; the message names file and tensor."""


def dtype_name(dtype) -> str:
    """The safetensors dtype string ("F32", "BF16", ...) of a numpy dtype."""
    dt = np.dtype(dtype).newbyteorder("=")
    if dt not in _NAMES:
        raise SafetensorsError(f"dtype {dtype} has no safetensors equivalent")
    return _NAMES[dt]


class TensorInfo(NamedTuple):
    dtype: str  # safetensors name, e.g. "BF16"
    shape: tuple[int, ...]
    begin: int  # byte offsets into the data section
    end: int


def read_header(path: str | Path) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """Parses and checks the header: (tensors, metadata, byte offset of the data section)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SafetensorsError(
                f"{path}: corrupt safetensors header: file has only {size} bytes"
            )
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise SafetensorsError(
                f"{path}: corrupt safetensors header: header length {n} does not fit a file of "
                f"{size} bytes"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(
            f"{path}: corrupt safetensors header: not valid JSON ({e})"
        ) from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: corrupt safetensors header: not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    data_size = size - 8 - n
    tensors = {}
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = (
                entry["dtype"],
                tuple(entry["shape"]),
                entry["data_offsets"],
            )
            ok = all(isinstance(d, int) and d >= 0 for d in (*shape, begin, end))
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise SafetensorsError(
                f"{path}: corrupt safetensors header: bad entry for tensor {name!r}: {entry!r}"
            )
        if dtype not in DTYPES:
            raise SafetensorsError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}")
        if end - begin != math.prod(shape) * DTYPES[dtype].itemsize or end > data_size:
            raise SafetensorsError(
                f"{path}: corrupt safetensors header: tensor {name!r} ({dtype}{list(shape)}) has "
                f"data_offsets [{begin}, {end}] inconsistent with its size or the file size"
            )
        tensors[name] = TensorInfo(dtype, shape, begin, end)
    # Like the reference implementation: tensors tile the data section without gaps or overlaps.
    position = 0
    for name, info in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if info.begin != position:
            raise SafetensorsError(
                f"{path}: corrupt safetensors header: tensor {name!r} starts "
                f"at byte {info.begin} of the data, expected {position}"
            )
        position = info.end
    if position != data_size:
        raise SafetensorsError(
            f"{path}: corrupt safetensors header: tensors cover {position} "
            f"bytes but the file holds {data_size} data bytes"
        )
    return tensors, metadata, 8 + n


class SafetensorsFile(Mapping):
    """Read-only, memory-mapped view of one .safetensors file: `f[name]` is a numpy array."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tensors, self.metadata, self._data_start = read_header(self.path)
        self._mmap = None

    def __getitem__(self, name: str) -> np.ndarray:
        info = self.tensors[name]
        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        start = self._data_start + info.begin
        raw = self._mmap[start : start + info.end - info.begin]
        return raw.view(DTYPES[info.dtype]).reshape(info.shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)


def load_file(path: str | Path) -> dict[str, np.ndarray]:
    """All tensors of a file, memory-mapped."""
    f = SafetensorsFile(path)
    return {name: f[name] for name in f}


class TensorToWrite(NamedTuple):
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    fetch: Callable[[], np.ndarray]  # called once, while writing; lets callers build tensors lazily


def write_file(
    path: str | Path, tensors: Iterable[TensorToWrite], metadata: Mapping[str, str] | None = None
) -> int:
    """Writes tensors in the given order, producing each only when its bytes are due, so at most
    one tensor is materialised at a time. Returns the number of data bytes written."""
    path = storage.path(path)  # a gs:// file is streamed up (gcsfs), never held whole
    tensors = list(tensors)
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for t in tensors:
        nbytes = math.prod(t.shape) * np.dtype(t.dtype).itemsize
        header[t.name] = {
            "dtype": dtype_name(t.dtype),
            "shape": list(t.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # pad so the data section starts 8-byte aligned
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t in tensors:
            arr = np.asarray(t.fetch())
            if arr.shape != tuple(t.shape) or arr.dtype.newbyteorder("=") != np.dtype(t.dtype):
                raise SafetensorsError(
                    f"{path}: tensor {t.name!r} was declared {np.dtype(t.dtype)}{list(t.shape)} "
                    f"but produced {arr.dtype}{list(arr.shape)}"
                )
            arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).reshape(-1)
            f.write(arr.view(np.uint8).data)
    return offset


def save_file(
    tensors: Mapping[str, np.ndarray], path: str | Path, metadata: Mapping[str, str] | None = None
) -> int:
    """Writes a dict of arrays (already in memory)."""
    arrays = {k: np.asarray(v) for k, v in tensors.items()}
    return write_file(
        path,
        [TensorToWrite(k, a.dtype, a.shape, lambda a=a: a) for k, a in arrays.items()],
        metadata,
    )
