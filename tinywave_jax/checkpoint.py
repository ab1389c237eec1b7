"""Tinywave model checkpoint: one self-contained folder per model.

    CKPT/config.json    the model config in Hugging Face form (LlamaConfig.write_hf_file)
    CKPT/tinywave.json  format version, parameter dtype, creation time, package version, the
                        tokenizer files included, and provenance (e.g. the source HF folder)
    CKPT/params/        orbax checkpoint of the params tree (layout: models/param_layout.py)
    CKPT/tokenizer/     optional tokenizer / generation-config files from the source model

Saves are atomic (outputs.atomic_output_dir): a half-written checkpoint never replaces a good one.
The parameter layout is models/param_layout.py.
"""

from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConversionError, MissingInputError
from .models.config import LlamaConfig
from .models.param_layout import check_params, flatten, param_shapes, set_path
from .outputs import atomic_output_dir, is_primary_process

FORMAT = "tinywave-model"
FORMAT_VERSION = 1
INFO_FILE = "tinywave.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "generation_config.json",
)


def copy_tokenizer_files(src_dir: str | Path | None, dst_dir: Path) -> list[str]:
    """Copies the TOKENIZER_FILES present in `src_dir` into `dst_dir`; returns their names."""
    if src_dir is None:
        return []
    found = [name for name in TOKENIZER_FILES if (Path(src_dir) / name).is_file()]
    if found:
        dst_dir.mkdir(parents=True, exist_ok=True)
        for name in found:
            shutil.copy2(Path(src_dir) / name, dst_dir / name)
    return found


def _dtype_of(params: dict) -> str:
    names = {np.dtype(leaf.dtype).name for leaf in flatten(params).values()}
    return names.pop() if len(names) == 1 else "mixed"


def _params_checkpointer():
    """A synchronous orbax checkpointer that writes host arrays without extra copies.

    Orbax's defaults deep-copy numpy arrays before writing and compress chunks in memory, which
    measured ~1.8x the params in extra host memory (and 10x the time) for float weights that
    barely compress; a model import must not hold more than one copy."""
    import jax
    import orbax.checkpoint as ocp

    handlers = ocp.type_handlers
    registry = handlers.create_type_handler_registry(
        (np.ndarray, handlers.NumpyHandler(deepcopy_host_arrays=False)),
        (jax.Array, handlers.ArrayHandler()),
    )
    return ocp.Checkpointer(
        ocp.PyTreeCheckpointHandler(type_handler_registry=registry, use_compression=False)
    )


def save_model(
    out_dir: str | Path,
    params: dict,
    config: LlamaConfig,
    provenance: dict | None = None,
    overwrite: bool = False,
    tokenizer_dir: str | Path | None = None,
) -> Path:
    """Writes params (numpy or jax arrays, layout of models/param_layout.py) and config as a
    checkpoint folder; tokenizer files found in `tokenizer_dir` are copied in."""
    import orbax.checkpoint as ocp

    from . import __version__

    out_dir = Path(out_dir)
    check_params(params, config, where=f"saving {out_dir}")
    primary = is_primary_process()  # several processes: all write params, process 0 the rest
    with atomic_output_dir(out_dir, overwrite) as tmp:
        ckptr = _params_checkpointer()
        try:
            ckptr.save((tmp / "params").resolve(), args=ocp.args.PyTreeSave(params))
        finally:
            ckptr.close()
        if primary:
            config.write_hf_file(tmp / "config.json")
        tokenizer_files = copy_tokenizer_files(tokenizer_dir, tmp / "tokenizer") if primary else []
        info = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "package_version": __version__,
            "dtype": _dtype_of(params),
            "num_params": config.num_params(),
            "tokenizer_files": tokenizer_files,
            "provenance": provenance or {},
        }
        if primary:
            (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return out_dir


def load_model_info(ckpt_dir: str | Path) -> dict:
    """The checkpoint's tinywave.json, checked for format and version."""
    path = Path(ckpt_dir) / INFO_FILE
    if not path.is_file():
        raise MissingInputError(f"{ckpt_dir}: not a tinywave model checkpoint (no {INFO_FILE})")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ConversionError(f"{path}: format is not {FORMAT!r}")
    version = info.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ConversionError(
            f"{path}: format_version {version!r} is not supported by this "
            f"tinywave_jax (reads up to {FORMAT_VERSION})"
        )
    return info


def load_model_config(ckpt_dir: str | Path) -> LlamaConfig:
    return LlamaConfig.from_hf_file(Path(ckpt_dir) / "config.json")


def _stored_params(params_dir: Path) -> dict[tuple[str, ...], Any]:
    import orbax.checkpoint as ocp

    if not params_dir.is_dir():
        raise MissingInputError(f"{params_dir}: parameter folder missing")
    ckptr = ocp.StandardCheckpointer()
    try:
        meta = ckptr.metadata(params_dir).item_metadata
    finally:
        ckptr.close()
    return flatten(meta.tree if hasattr(meta, "tree") else meta)


def load_model(
    ckpt_dir: str | Path, dtype: Any = None, shardings: Any = None, as_numpy: bool = False
) -> tuple[dict, LlamaConfig, dict]:
    """Reads a checkpoint: (params, config, info).

    dtype: cast every parameter to it on restore (None: as stored).
    shardings: a pytree of `jax.sharding.Sharding` matching params, or one Sharding for all;
      this is also how a checkpoint saved on one mesh is restored onto another. None: arrays
      on the default device. as_numpy: host numpy arrays instead (no device memory).
    Only the Llama layout of config.json is restored; anything else stored is ignored.
    """
    import jax
    import orbax.checkpoint as ocp

    ckpt_dir = Path(ckpt_dir)
    info = load_model_info(ckpt_dir)
    config = load_model_config(ckpt_dir)
    params_dir = (ckpt_dir / "params").resolve()
    stored = _stored_params(params_dir)
    expected = flatten(param_shapes(config))
    if shardings is None and not as_numpy:
        shardings = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    if shardings is None or isinstance(shardings, jax.sharding.Sharding):
        sharding_of = dict.fromkeys(expected, shardings)
    else:
        sharding_of = flatten(shardings)
        for path in expected:
            if path not in sharding_of:
                raise ValueError(f"shardings: no entry for parameter {'/'.join(path)}")
        for path in sharding_of:
            if path not in expected:
                raise ValueError(f"shardings: {'/'.join(path)} is not a parameter of {ckpt_dir}")
    target, restore_args = {}, {}
    for path, shape in expected.items():
        name = "/".join(path)
        if path not in stored:
            raise ConversionError(f"{params_dir}: parameter {name} {list(shape)} is missing")
        if tuple(stored[path].shape) != shape:
            raise ConversionError(
                f"{params_dir}: parameter {name} has shape "
                f"{list(stored[path].shape)}, config.json implies {list(shape)}"
            )
        dt = np.dtype(dtype) if dtype is not None else np.dtype(stored[path].dtype)
        if as_numpy:
            set_path(target, path, jax.ShapeDtypeStruct(shape, dt))
            set_path(restore_args, path, ocp.RestoreArgs(restore_type=np.ndarray, dtype=dt))
        else:
            sh = sharding_of[path]
            set_path(target, path, jax.ShapeDtypeStruct(shape, dt, sharding=sh))
            set_path(restore_args, path, ocp.ArrayRestoreArgs(sharding=sh, dtype=dt))
    ckptr = ocp.PyTreeCheckpointer()
    try:
        params = ckptr.restore(
            params_dir,
            args=ocp.args.PyTreeRestore(
                item=target, restore_args=restore_args, partial_restore=True
            ),
        )
    finally:
        ckptr.close()
    loaded_dtype = _dtype_of(params)
    if loaded_dtype in ("float32", "bfloat16", "float16"):
        config = config.replace(param_dtype=loaded_dtype)
    return params, config, info
