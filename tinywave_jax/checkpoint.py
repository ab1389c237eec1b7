"""Tinywave model checkpoint: one self-contained folder per model.

    CKPT/config.json    the model config in Hugging Face form (LlamaConfig.write_hf_file)
    CKPT/tinywave.json  format version, parameter dtype, creation time, package version, the
                        tokenizer files included, provenance (e.g. the source HF folder), the
                        sha256 and size of every file under params/ ("params_sha256",
                        "params_bytes": path relative to params/ -> hex digest / bytes) and of
                        every other file ("files_sha256": config.json, tokenizer/...)
    CKPT/params/        orbax checkpoint of the params tree (layout: models/param_layout.py)
    CKPT/tokenizer/     optional tokenizer / generation-config files from the source model

Saves are atomic (outputs.atomic_output_dir): a half-written checkpoint never replaces a good one.
Loads check params/ against the recorded hashes first (verify=True, the CLI's default; --no-verify
skips it): a truncated, altered, missing or extra file is a CheckpointIntegrityError naming it,
never a wrong model or a library traceback. Checkpoints saved before hashes were recorded load
with an UnverifiedCheckpointWarning. The parameter layout is models/param_layout.py.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from . import __version__, storage
from .errors import ConversionError, MissingInputError, TinywaveError, first_line
from .models.config import LlamaConfig
from .models.param_layout import check_params, flatten, param_shapes, set_path
from .outputs import COMMIT_MARKER, atomic_output_dir, check_remote_complete, is_primary_process

FORMAT = "tinywave-model"
FORMAT_VERSION = 1
INFO_FILE = "tinywave.json"
HASHES_KEY, SIZES_KEY = "params_sha256", "params_bytes"
# the sha256 of every other file of the checkpoint (config.json, tokenizer/...), keyed by its path
# relative to the checkpoint: a changed rope_theta must not pass unnoticed either
FILES_KEY = "files_sha256"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "generation_config.json",
)


class CheckpointIntegrityError(ConversionError):
    """A file under a checkpoint's params/ is missing, extra, truncated or altered since the save
    (its sha256 differs from the one recorded in tinywave.json), or orbax cannot read it."""


class UnverifiedCheckpointWarning(UserWarning):
    """A checkpoint saved before tinywave.json recorded hashes: its files cannot be checked."""


def _params_files(params_dir: Path) -> list[str]:
    """Every file under params_dir (local or gs://), as sorted '/'-separated relative paths."""
    return storage.rel_files(params_dir)


def hash_params(params_dir: str | Path) -> tuple[dict[str, str], dict[str, int]]:
    """(sha256 hex, size) of every file under `params_dir`, keyed by relative path; files are
    hashed in parallel threads (hashlib releases the GIL)."""
    params_dir = storage.path(params_dir)
    files = _params_files(params_dir)
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1, len(files)))) as ex:
        digests = list(ex.map(lambda rel: storage.sha256_file(params_dir / rel), files))
    sizes = [storage.size(params_dir / rel) for rel in files]
    return dict(zip(files, digests)), dict(zip(files, sizes))


def verify_params(ckpt_dir: str | Path, info: dict | None = None) -> bool:
    """Checks the files under CKPT/params/ against the sha256 (and sizes) recorded in
    tinywave.json at save time. Raises CheckpointIntegrityError naming the first missing,
    extra, truncated or altered file; returns True when every file matches, False (with an
    UnverifiedCheckpointWarning) for a checkpoint that records no hashes."""
    ckpt_dir = storage.path(ckpt_dir)
    info = load_model_info(ckpt_dir) if info is None else info
    recorded, sizes = info.get(HASHES_KEY), info.get(SIZES_KEY) or {}
    if recorded is None:
        warnings.warn(
            f"{ckpt_dir}: tinywave.json records no sha256 of the params/ files (saved by an older "
            "tinywave_jax), so damage to them cannot be detected; save it again to add them",
            UnverifiedCheckpointWarning,
            stacklevel=3,
        )
        return False
    if not (
        isinstance(recorded, dict)
        and isinstance(sizes, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in recorded.items())
    ):
        raise CheckpointIntegrityError(
            f"{ckpt_dir / INFO_FILE}: {HASHES_KEY!r} is not a mapping of file name to sha256"
        )
    params_dir = ckpt_dir / "params"
    if not params_dir.is_dir():
        raise MissingInputError(f"{params_dir}: parameter folder missing")
    present = set(_params_files(params_dir))

    def fail(rel: str, what: str, others: list[str]):
        more = f" (and {len(others) - 1} more)" if len(others) > 1 else ""
        raise CheckpointIntegrityError(
            f"{ckpt_dir}: params/{rel} {what}{more}; the checkpoint is damaged or incomplete: "
            "copy or save it again (verify=False loads it regardless)",
            param=(None, "verify"),
        )

    missing = sorted(set(recorded) - present)
    if missing:
        fail(missing[0], "is missing (tinywave.json lists it)", missing)
    extra = sorted(present - set(recorded))
    if extra:
        fail(extra[0], "was not part of the saved checkpoint", extra)
    short = sorted(
        rel for rel, n in sizes.items() if rel in recorded and storage.size(params_dir / rel) != n
    )
    if short:
        rel = short[0]
        size = storage.size(params_dir / rel)
        fail(rel, f"is {size} bytes, {sizes[rel]} when saved (truncated or altered)", short)
    digests, _ = hash_params(params_dir)
    changed = sorted(rel for rel, digest in recorded.items() if digests[rel] != digest)
    if changed:
        fail(changed[0], "differs from the sha256 recorded in tinywave.json when saved", changed)
    _verify_other_files(ckpt_dir, info)
    return True


def _other_files(ckpt_dir) -> list[str]:
    """The checkpoint's files outside params/ and tinywave.json (relative '/'-separated paths)."""
    return [
        rel
        for rel in storage.rel_files(ckpt_dir)
        if not rel.startswith("params/")
        and rel not in (INFO_FILE, COMMIT_MARKER, storage.MIRROR_MANIFEST)
    ]


def _verify_other_files(ckpt_dir, info: dict) -> None:
    """config.json and tokenizer/ against FILES_KEY (checkpoints saved before it: not checked)."""
    recorded = info.get(FILES_KEY)
    if recorded is None:
        return
    if not isinstance(recorded, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in recorded.items()
    ):
        raise CheckpointIntegrityError(
            f"{ckpt_dir / INFO_FILE}: {FILES_KEY!r} is not a mapping of file name to sha256"
        )
    present = set(_other_files(ckpt_dir))
    for rel in sorted(recorded.keys() | present):
        if rel not in present:
            what = "is missing (tinywave.json lists it)"
        elif rel not in recorded:
            what = "was not part of the saved checkpoint"
        elif (
            storage.sha256_file(ckpt_dir / storage.safe_relpath(rel, str(ckpt_dir / INFO_FILE)))
            != recorded[rel]
        ):
            what = "differs from the sha256 recorded in tinywave.json when saved"
        else:
            continue
        raise CheckpointIntegrityError(
            f"{ckpt_dir}: {rel} {what}; the checkpoint is damaged or was edited: copy or save it "
            "again (verify=False loads it regardless)",
            param=(None, "verify"),
        )


class NonFiniteParamsError(ConversionError):
    """Parameters to save hold NaN or infinity (a diverged run, a damaged source): refused, so
    that no later command takes them for a model."""


def check_finite_params(params: dict, where: str) -> None:
    """Raises NonFiniteParamsError naming the first parameter with a NaN or infinite value."""

    for path, leaf in flatten(params).items():
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            continue
        if isinstance(leaf, jax.Array):
            ok = bool(jnp.all(jnp.isfinite(leaf)))
        else:  # in slices: a bfloat16 tensor is checked without a float32 copy of all of it
            flat = np.asarray(leaf).reshape(-1)
            step = 1 << 24
            ok = all(
                np.isfinite(flat[i : i + step].astype(np.float32)).all()
                for i in range(0, flat.size, step)
            )
        if not ok:
            raise NonFiniteParamsError(
                f"{where}: parameter {'/'.join(path)} holds NaN or infinite values; nothing "
                "was written"
            )


def copy_tokenizer_files(src_dir: str | Path | None, dst_dir: Path) -> list[str]:
    """Copies the TOKENIZER_FILES present in `src_dir` into `dst_dir`; returns their names."""
    if src_dir is None:
        return []
    src_dir = storage.path(src_dir)
    found = [name for name in TOKENIZER_FILES if (src_dir / name).is_file()]
    if found:
        if not storage.is_remote(dst_dir):
            dst_dir.mkdir(parents=True, exist_ok=True)
        for name in found:
            if storage.is_remote(src_dir) or storage.is_remote(dst_dir):
                (dst_dir / name).write_bytes((src_dir / name).read_bytes())
            else:
                shutil.copy2(src_dir / name, dst_dir / name)
    return found


def _dtype_of(params: dict) -> str:
    names = {np.dtype(leaf.dtype).name for leaf in flatten(params).values()}
    return names.pop() if len(names) == 1 else "mixed"


def _params_checkpointer():
    """A synchronous orbax checkpointer that writes host arrays without extra copies.

    Orbax's defaults deep-copy numpy arrays before writing and compress chunks in memory, which
    measured ~1.8x the params in extra host memory (and 10x the time) for float weights that
    barely compress; a model import must not hold more than one copy."""

    handlers = ocp.type_handlers
    registry = handlers.create_type_handler_registry(
        (np.ndarray, handlers.NumpyHandler(deepcopy_host_arrays=False)),
        (jax.Array, handlers.ArrayHandler()),
    )
    return ocp.Checkpointer(
        ocp.PyTreeCheckpointHandler(type_handler_registry=registry, use_compression=False)
    )


def _absolute(p):
    """What orbax is given: an absolute local path, or the gs:// path itself (pathlib's resolve
    would turn it into ./gs:/...)."""
    return storage.path(p) if storage.is_remote(p) else Path(p).resolve()


def save_model(
    out_dir: str | Path,
    params: dict,
    config: LlamaConfig,
    provenance: dict | None = None,
    overwrite: bool = False,
    tokenizer_dir: str | Path | None = None,
    sources: Iterable[str | Path] = (),
) -> Path:
    """Writes params (numpy or jax arrays, layout of models/param_layout.py) and config as a
    checkpoint folder; tokenizer files found in `tokenizer_dir` are copied in. `sources`: the
    inputs `out_dir` must be apart from (outputs.check_not_an_input). tinywave.json records the
    sha256 of every params/ file as written (load_model checks them)."""

    out_dir = storage.path(out_dir)
    check_params(params, config, where=f"saving {out_dir}")
    check_finite_params(params, f"saving {out_dir}")
    primary = is_primary_process()  # several processes: all write params, process 0 the rest
    with atomic_output_dir(out_dir, overwrite, sources) as tmp:
        ckptr = _params_checkpointer()
        try:
            storage.within_deadline(
                lambda: ckptr.save(_absolute(tmp / "params"), args=ocp.args.PyTreeSave(params)),
                "saving the model's params/",
                out_dir,
            )
        finally:
            if not storage.lost():  # close() would wait on the abandoned write
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
            # orbax's save returned once every process's shards are final
            info[HASHES_KEY], info[SIZES_KEY] = hash_params(tmp / "params")
            info[FILES_KEY] = {rel: storage.sha256_file(tmp / rel) for rel in _other_files(tmp)}
            (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return out_dir


def load_model_info(ckpt_dir: str | Path) -> dict:
    """The checkpoint's tinywave.json, checked for format and version."""
    storage.check_gcs(ckpt_dir, what="model checkpoint")
    path = storage.path(ckpt_dir) / INFO_FILE
    if not path.is_file():
        check_remote_complete(ckpt_dir, "model checkpoint")  # a killed commit's partial copy
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
    return LlamaConfig.from_hf_file(storage.path(ckpt_dir) / "config.json")


def _damaged(ckpt_dir: Path, what: str, verified: bool | None) -> CheckpointIntegrityError:
    """The error for params/ that orbax cannot read; `verified`: whether the files were checked
    against their hashes (True), could not be (False: none recorded), or were not (None)."""
    how = {
        True: "",
        False: " (it records no sha256 to tell which file: save or copy it again)",
        None: " (drop verify=False to find the file that changed)",
    }[verified]
    return CheckpointIntegrityError(
        f"{ckpt_dir}: {what}; the checkpoint is damaged or incomplete{how}",
        param=(None, "verify") if verified is None else None,
    )


def _stored_params(ckpt_dir: Path, params_dir: Path, verified) -> dict[tuple[str, ...], Any]:

    if not params_dir.is_dir():
        raise MissingInputError(f"{params_dir}: parameter folder missing")
    # the two files every read starts from, checked so their damage is named, not a traceback
    index = params_dir / "_METADATA"
    if not index.is_file():
        raise _damaged(ckpt_dir, "params/_METADATA is missing", verified)
    try:
        json.loads(index.read_bytes())
    except ValueError:
        raise _damaged(ckpt_dir, "params/_METADATA is truncated or not JSON", verified) from None
    manifest = params_dir / "manifest.ocdbt"
    if not manifest.is_file() or storage.size(manifest) == 0:
        state = "is missing" if not manifest.is_file() else "is empty"
        raise _damaged(ckpt_dir, f"params/manifest.ocdbt {state}", verified)
    ckptr = ocp.StandardCheckpointer()
    try:
        meta = ckptr.metadata(params_dir).item_metadata
    except (ValueError, OSError) as e:
        if storage.storage_failure(e):  # a lost bucket, not damage
            raise
        raise _damaged(
            ckpt_dir,
            f"orbax cannot read the params/ index: {first_line(e, with_type=True)}",
            verified,
        ) from e
    finally:
        ckptr.close()
    if meta is None:  # what orbax returns when manifest.ocdbt or d/ is unreadable
        raise _damaged(
            ckpt_dir,
            "orbax cannot read the params/ index (params/manifest.ocdbt or params/d/)",
            verified,
        )
    return flatten(meta.tree if hasattr(meta, "tree") else meta)


def _quiet_orbax_aftermath() -> None:
    """After a failed restore, tensorstore's pending reads call back into orbax's closed event
    loop, and orbax's abandoned read coroutines are collected at exit: each prints a traceback
    (via sys.unraisablehook) around the one-line error. Drop exactly those, pass the rest on."""

    previous = sys.unraisablehook
    if getattr(previous, "_tinywave_quiet", False):
        return

    def hook(unraisable):
        e, code = unraisable.exc_value, getattr(unraisable.object, "cr_code", None)
        closed_loop = isinstance(e, RuntimeError) and str(e) == "Event loop is closed"
        orbax_read = code is not None and "orbax" in code.co_filename
        if not (closed_loop or orbax_read):
            previous(unraisable)

    hook._tinywave_quiet = True
    sys.unraisablehook = hook


def _read_error(e: BaseException) -> BaseException | None:
    """The file-read error (tensorstore raises ValueError, e.g. OUT_OF_RANGE for a truncated
    file; OSError) in `e` or what caused it, which orbax may wrap in a bare Exception; None for
    anything else (e.g. out of device memory)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (ValueError, OSError)):
            return e
        e = e.__cause__ or e.__context__
    return None


def load_model(
    ckpt_dir: str | Path,
    dtype: Any = None,
    shardings: Any = None,
    as_numpy: bool = False,
    verify: bool = True,
) -> tuple[dict, LlamaConfig, dict]:
    """Reads a checkpoint: (params, config, info).

    dtype: cast every parameter to it on restore (None: as stored).
    shardings: a pytree of `jax.sharding.Sharding` matching params, or one Sharding for all;
      this is also how a checkpoint saved on one mesh is restored onto another. None: arrays
      on the default device. as_numpy: host numpy arrays instead (no device memory).
    verify: first check every params/ file against the sha256 recorded at save time
      (verify_params; each process reads all files once more); False skips it.
    Only the Llama layout of config.json is restored; anything else stored is ignored.
    Damaged or incomplete params/ raise CheckpointIntegrityError naming the checkpoint and file.
    """

    ckpt_dir = storage.path(ckpt_dir)
    info = load_model_info(ckpt_dir)
    verified = verify_params(ckpt_dir, info) if verify else None
    config = load_model_config(ckpt_dir)
    params_dir = _absolute(ckpt_dir / "params")
    stored = _stored_params(ckpt_dir, params_dir, verified)
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
        params = storage.within_deadline(
            lambda: ckptr.restore(
                params_dir,
                args=ocp.args.PyTreeRestore(
                    item=target, restore_args=restore_args, partial_restore=True
                ),
            ),
            "reading the model's params/",
            ckpt_dir,
        )
    except Exception as e:
        cause = _read_error(e)
        if cause is None or isinstance(e, TinywaveError) or storage.storage_failure(e):
            raise
        _quiet_orbax_aftermath()
        if verified:
            # every file is as saved: not damage, but a bug (ours or orbax's) to report
            e.add_note(f"{ckpt_dir}: every params/ file matches its sha256 recorded at save time")
            raise
        raise _damaged(
            ckpt_dir, f"orbax cannot read params/: {first_line(cause, with_type=True)}", verified
        ) from e
    finally:
        if not storage.lost():  # close() would wait on the abandoned read
            ckptr.close()
    loaded_dtype = _dtype_of(params)
    if loaded_dtype in ("float32", "bfloat16", "float16"):
        config = config.replace(param_dtype=loaded_dtype)
    return params, config, info
