"""Output folders that never lose data: refuse to clobber a non-empty folder, and write a new one
atomically (a temporary sibling renamed into place once complete), with every jax process agreeing
on the folder when several write shards of one save.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import OutputExistsError


def check_output_dir(out_dir: str | Path, overwrite: bool = False) -> None:
    """Raises OutputExistsError unless `out_dir` is absent, empty, or `overwrite` is set."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir} exists and is not a folder")
    if not overwrite and out_dir.is_dir() and any(out_dir.iterdir()):
        raise OutputExistsError(
            f"{out_dir} is not empty (pass --overwrite / overwrite=True to replace it)"
        )


def _multiprocess():
    """The running jax when several processes share this save, else None (jax is only consulted
    when the caller already imported it: a converter run is always one process)."""
    jax = sys.modules.get("jax")
    return jax if jax is not None and jax.process_count() > 1 else None


def is_primary_process() -> bool:
    jax = _multiprocess()
    return jax is None or jax.process_index() == 0


def _sync(name: str) -> None:
    if _multiprocess() is not None:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _shared_tag() -> str:
    """A temporary-folder tag every process agrees on (process 0's)."""
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if _multiprocess() is not None:
        from jax.experimental import multihost_utils

        raw = np.frombuffer(tag.ljust(32).encode(), np.uint8)
        tag = (
            bytes(np.asarray(multihost_utils.broadcast_one_to_all(raw), np.uint8)).decode().strip()
        )
    return tag


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yields a fresh temporary sibling of `out_dir` to fill; on success it becomes `out_dir`
    (an old `out_dir` is removed only after the new one is in place), on error it is deleted.
    Refuses a non-empty `out_dir` unless `overwrite`. With several jax processes all of them get
    the same folder (to write their shards into) and only process 0 creates, renames or removes."""
    out_dir = Path(os.path.abspath(out_dir))  # normalises "." and "..", which have no siblings
    check_output_dir(out_dir, overwrite)
    primary = is_primary_process()
    tag = _shared_tag()
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{tag}")
    if primary:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    _sync(f"tinywave-save-begin-{tag}")
    try:
        yield tmp
        _sync(f"tinywave-save-written-{tag}")
        if primary:
            check_output_dir(out_dir, overwrite)  # someone may have written there meanwhile
            old = None
            if out_dir.exists():
                old = out_dir.with_name(f".{out_dir.name}.old-{tag}")
                out_dir.rename(old)
            try:
                tmp.rename(out_dir)
            except BaseException:
                if old is not None:
                    old.rename(out_dir)
                raise
            if old is not None:
                shutil.rmtree(old)
        _sync(f"tinywave-save-done-{tag}")
    finally:
        if primary and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
