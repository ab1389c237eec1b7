"""tinywave params / model checkpoint -> Hugging Face Llama folder (safetensors).

Writes exactly what `transformers.AutoModelForCausalLM.from_pretrained` reads: config.json,
generation_config.json, `model.safetensors` or `model-0000i-of-0000n.safetensors` shards with
`model.safetensors.index.json`, and any tokenizer files. Only the Llama layout of the config is
exported; other entries of a params tree are ignored. Tensors are built one at a time while
their shard is written, and the folder appears atomically when complete.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from .. import storage
from ..checkpoint import copy_tokenizer_files, load_model
from ..errors import ConfigError, MissingInputError
from ..models.config import LlamaConfig
from ..models.param_layout import TensorMap, check_params, flatten, tensor_maps
from ..outputs import atomic_output_dir, check_output_dir
from .hf_import import Progress
from .safetensors_io import TensorToWrite, write_file

DEFAULT_MAX_SHARD_SIZE = "5GB"
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(size: int | str) -> int:
    """Bytes in "5GB" (decimal units, like transformers), "500MiB", "10KB" or an int."""
    if isinstance(size, int):
        n = size
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(size))
        if not m or m.group(2).upper() not in _UNITS:
            raise ConfigError(f"max shard size {size!r} is not a size like 5GB, 500MB or 10KB")
        n = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if n <= 0:
        raise ConfigError(f"max shard size must be positive, got {size!r}")
    return n


def plan_shards(sizes: list[tuple[str, int]], max_bytes: int) -> list[list[str]]:
    """Greedy split in order, as huggingface_hub does: a new shard starts when the next tensor
    would overflow the current one; a tensor larger than max_bytes gets a shard of its own."""
    shards: list[list[str]] = []
    current: list[str] = []
    current_bytes = 0
    for name, nbytes in sizes:
        if nbytes > max_bytes:
            shards.append([name])
            continue
        if current and current_bytes + nbytes > max_bytes:
            shards.append(current)
            current, current_bytes = [], 0
        current.append(name)
        current_bytes += nbytes
    if current or not shards:
        shards.append(current)
    return shards


def _host_leaves(params: Mapping, config: LlamaConfig) -> dict[tuple[str, ...], np.ndarray]:
    check_params(params, config, where="export", allow_extra=True)
    wanted = {m.path for m in tensor_maps(config)}
    return {path: np.asarray(leaf) for path, leaf in flatten(params).items() if path in wanted}


def _hf_tensor(leaves: dict, m: TensorMap, dtype: np.dtype) -> np.ndarray:
    src = leaves[m.path]
    if m.layer is not None:
        src = src[m.layer]
    out = np.empty(m.hf_shape, dtype)
    out[...] = src.T if m.transpose else src
    return out


def _uniform_dtype(leaves: dict) -> np.dtype:
    dtypes = {leaf.dtype for leaf in leaves.values()}
    return dtypes.pop() if len(dtypes) == 1 else np.dtype(np.float32)


def params_to_hf_state(
    params: Mapping, config: LlamaConfig, dtype=None
) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (HF name, numpy array) in transformers' state-dict order, one tensor at a time.
    dtype None: the params' dtype (float32 if mixed)."""
    leaves = _host_leaves(params, config)
    dtype = np.dtype(dtype) if dtype is not None else _uniform_dtype(leaves)
    for m in tensor_maps(config):
        yield m.hf_name, _hf_tensor(leaves, m, dtype)


def hf_config_dict(config: LlamaConfig, dtype) -> dict:
    # transformers 5 reads "dtype", 4.x (SpiritLM's world) reads "torch_dtype".
    name = np.dtype(dtype).name
    return {**config.to_hf_dict(), "dtype": name, "torch_dtype": name}


def generation_config_dict(config: LlamaConfig) -> dict:
    out = {"_from_model_config": True}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(config, key) is not None:
            out[key] = getattr(config, key)
    return out


def write_hf_dir(
    params: Mapping,
    config: LlamaConfig,
    out_dir: str | Path,
    dtype=None,
    overwrite: bool = False,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    tokenizer_dir: str | Path | None = None,
    progress: Progress | None = None,
    sources: Iterable[str | Path] = (),
) -> Path:
    """Writes params as a Hugging Face Llama folder (see module doc). dtype None: as stored.
    `sources`: the inputs `out_dir` must be apart from (outputs.check_not_an_input)."""

    leaves = _host_leaves(params, config)
    dtype = np.dtype(dtype) if dtype is not None else _uniform_dtype(leaves)
    maps = {m.hf_name: m for m in tensor_maps(config)}
    nbytes = {name: math.prod(m.hf_shape) * dtype.itemsize for name, m in maps.items()}
    total_bytes = sum(nbytes.values())
    shards = plan_shards(list(nbytes.items()), parse_size(max_shard_size))
    n = len(shards)
    names = (
        ["model.safetensors"]
        if n == 1
        else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    )
    done = [0, 0]

    def fetch(m: TensorMap) -> np.ndarray:
        out = _hf_tensor(leaves, m, dtype)
        done[0] += 1
        done[1] += out.nbytes
        if progress is not None:
            progress(done[0], len(maps), done[1], total_bytes)
        return out

    with atomic_output_dir(out_dir, overwrite, sources) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf_config_dict(config, dtype), indent=2) + "\n")
        for fname, shard in zip(names, shards):
            write_file(
                tmp / fname,
                [
                    TensorToWrite(name, dtype, maps[name].hf_shape, lambda m=maps[name]: fetch(m))
                    for name in shard
                ],
                metadata={"format": "pt"},
            )
        if n > 1:
            index = {
                "metadata": {
                    "total_parameters": sum(math.prod(m.hf_shape) for m in maps.values()),
                    "total_size": total_bytes,
                },
                "weight_map": dict(
                    sorted((name, fname) for fname, shard in zip(names, shards) for name in shard)
                ),
            }
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        copied = copy_tokenizer_files(tokenizer_dir, tmp)
        if "generation_config.json" not in copied:
            (tmp / "generation_config.json").write_text(
                json.dumps(generation_config_dict(config), indent=2) + "\n"
            )
    return storage.path(out_dir)


def export_hf(
    ckpt_dir: str | Path,
    out_dir: str | Path,
    dtype=None,
    overwrite: bool = False,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    progress: Progress | None = None,
    verify: bool = True,
) -> Path:
    """Writes the tinywave model checkpoint `ckpt_dir` as a Hugging Face folder `out_dir`.
    dtype None: the checkpoint's dtype. verify: check the params files against their recorded
    sha256 (checkpoint.load_model)."""

    storage.check_gcs(ckpt_dir, what="tinywave checkpoint folder")
    ckpt_dir = storage.path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise MissingInputError(f"tinywave checkpoint folder not found: {ckpt_dir}")
    parse_size(max_shard_size)  # fail before the (long) load
    check_output_dir(out_dir, overwrite, sources=[ckpt_dir])
    params, config, _ = load_model(ckpt_dir, as_numpy=True, verify=verify)
    tokenizer_dir = ckpt_dir / "tokenizer"
    return write_hf_dir(
        params,
        config,
        out_dir,
        dtype=dtype,
        overwrite=overwrite,
        max_shard_size=max_shard_size,
        tokenizer_dir=tokenizer_dir if tokenizer_dir.is_dir() else None,
        progress=progress,
        sources=[ckpt_dir],
    )
