"""Output folders that never lose data: refuse to clobber a non-empty folder or one that is (or
holds, or lies inside) an input of the same command, and write a new one atomically (a temporary
sibling renamed into place once complete), with every jax process agreeing on the folder when
several write shards of one save. Temporary siblings a killed run left behind are removed (or, for
an interrupted replacement, the previous folder put back) by the next write into the same folder.

On object storage (gs://) there are no folder renames: the temporary sibling is copied into place
object by object with a commit marker (COMMIT_MARKER) written last, and an old folder is first
copied aside whole (its marker last), so that a killed commit can always be rolled back to a
complete folder (`_commit_remote`, `_clean_remote`; docs/reliability.md says what a reader may see
meanwhile).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import shutil
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from jax.experimental import multihost_utils

from . import storage
from .errors import ConfigError, InputError, OutputExistsError

# A stale sibling whose writer ran on another host is removed only once nothing in it changed for
# this long (its process cannot be asked whether it is alive).
STALE_AFTER_S = 24 * 3600

# On object storage: the object written last into a committed folder (and into a complete copy set
# aside while a folder is replaced). A folder without it is mid-commit or mid-removal.
COMMIT_MARKER = ".tinywave-complete"
# copied last, in this order: a reader's own completeness marker (TFDS: a corpus version folder
# counts once dataset_info.json is there), then ours
_LAST = ("dataset_info.json", COMMIT_MARKER)


def _shown(path: str | Path) -> str:
    """The path as given, plus where it really is when symlinks lead elsewhere."""
    real = os.path.realpath(path)
    return str(path) if real == os.path.abspath(path) else f"{path} (= {real})"


def _same(a: Path, b: Path) -> bool:
    """Whether two paths name one file or folder (also through bind mounts or hard links)."""
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def check_not_an_input(
    out_dir: str | Path, sources: Iterable[str | Path], what: str = "output folder"
) -> None:
    """Raises ConfigError when `out_dir` (a folder or file to write) is one of `sources`,
    contains one, or lies inside one (symlinks resolved): writing it, or replacing it with
    --overwrite, would delete or alter that input (a checkpoint's files, the command's own
    input file)."""
    sources = [s for s in sources if s is not None]
    if storage.is_remote(out_dir) or any(storage.is_remote(s) for s in sources):
        return _check_not_an_input_remote(out_dir, sources, what)
    out_real = Path(os.path.realpath(out_dir))
    for src in sources:
        if src is None:
            continue
        src_real = Path(os.path.realpath(src))
        if _same(out_real, src_real):
            relation = "is the input"
        elif any(_same(out_real, p) for p in src_real.parents):
            relation = "contains the input"
        elif any(_same(src_real, p) for p in out_real.parents):
            relation = "lies inside the input"
        else:
            continue
        raise ConfigError(
            f"{what} {_shown(out_dir)} {relation} {_shown(src)}: writing it would "
            f"replace or alter that input; choose an {what} outside it"
        )


def check_output_files(
    files: Iterable[str | Path], sources: Iterable[str | Path], what: str = "output file"
) -> None:
    """check_not_an_input for each file a command writes (score OUT, generate --out, eval's
    files in --out): none may be, or lie inside, an input (a checkpoint folder, an input file)."""
    for f in files:
        check_not_an_input(f, sources, what)


def _check_not_an_input_remote(out_dir, sources, what: str = "output folder") -> None:
    """check_not_an_input when a path is remote: object keys have no links, so the comparison is
    of the normalised names (a local path never equals a remote one)."""

    def norm(p) -> str:
        p = os.fspath(p)
        return p.rstrip("/") if storage.is_remote(p) else os.path.realpath(p)

    out = norm(out_dir)
    for src in sources:
        if src is None:
            continue
        s = norm(src)
        if out == s:
            relation = "is the input"
        elif s.startswith(out + "/"):
            relation = "contains the input"
        elif out.startswith(s + "/"):
            relation = "lies inside the input"
        else:
            continue
        raise ConfigError(
            f"{what} {out_dir} {relation} {src}: writing it would "
            f"replace or alter that input; choose an {what} outside it"
        )


def write_file_atomic(path, data: str | bytes) -> None:
    """Writes `path` through a temporary sibling and a rename: a reader sees the old content or
    the new, never half, and a killed write leaves no file. On object storage one object write
    is atomic by itself."""
    data = data.encode() if isinstance(data, str) else data
    if storage.is_remote(path):
        storage.path(path).write_bytes(data)
        return
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_output_dir(
    out_dir: str | Path, overwrite: bool = False, sources: Iterable[str | Path] = ()
) -> None:
    """Raises unless `out_dir` is absent, empty, or `overwrite` is set (OutputExistsError), and
    unless it is apart from every input folder or file in `sources` (ConfigError, even with
    `overwrite`)."""
    check_not_an_input(out_dir, sources)
    if storage.is_remote(out_dir):
        storage.check_scheme(out_dir)
        if "/" not in str(out_dir).split("://", 1)[1].strip("/"):
            raise ConfigError(
                f"output folder {out_dir}: a bucket root cannot be replaced as a folder; name a "
                f"folder inside it ({str(out_dir).rstrip('/')}/NAME)"
            )
        # credentials, bucket and write access before the long work, not at the save
        storage.check_gcs(storage.path(out_dir).parent, write=True, what="output folder in")
    if is_primary_process():
        # a write killed earlier is rolled back or completed first: the folder judged below is
        # a complete one, never a partial copy (without --overwrite too)
        clean_stale_siblings(out_dir)
    out_dir = storage.path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir} exists and is not a folder")
    if not overwrite and out_dir.is_dir() and any(out_dir.iterdir()):
        raise OutputExistsError(
            f"{out_dir} is not empty (pass overwrite=True to replace it)",
            param=(None, "overwrite"),
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
        multihost_utils.sync_global_devices(name)


def _host() -> str:
    """This machine's name as it appears in temporary-folder tags (no '-', at most 63 chars)."""
    return re.sub(r"[^A-Za-z0-9._]", "_", socket.gethostname())[:63] or "host"


def _shared_tag() -> str:
    """A temporary-folder tag every process agrees on (process 0's): HOST-PID-RANDOM, so a later
    run can tell whether the writer of a leftover folder is still alive."""
    tag = f"{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if _multiprocess() is not None:
        raw = np.frombuffer(tag.encode().ljust(96), np.uint8)
        tag = (
            bytes(np.asarray(multihost_utils.broadcast_one_to_all(raw), np.uint8)).decode().strip()
        )
    return tag


def _tag_pattern(name: str) -> re.Pattern:
    # HOST-PID-RANDOM, or PID-RANDOM as written before hosts were recorded
    return re.compile(
        rf"\.{re.escape(name)}\.(?P<kind>tmp|old)-(?:(?P<host>[A-Za-z0-9._]+)-)?"
        r"(?P<pid>\d+)-[0-9a-f]{8}"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:
        return True  # cannot tell: assume alive
    return True


def _last_change(path: Path) -> float:
    """The newest mtime of `path` and everything under it."""
    newest = path.lstat().st_mtime
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(OSError):
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


def _abandoned(host: str | None, pid: int, path: Path, now: float) -> str | None:
    """Why the writer of the leftover `path` is known to be gone, or None if it may be alive."""
    if host == _host():
        if pid == os.getpid() or _pid_alive(pid):
            return None
        return f"its writer, process {pid} on this host, is gone"
    try:
        idle = now - _last_change(path)
    except OSError:
        return None
    if idle < STALE_AFTER_S:
        return None
    where = f"on host {host}" if host else "(host not recorded)"
    return f"its writer, process {pid} {where}, left it unchanged for {idle / 3600:.0f} h"


def clean_stale_siblings(out_dir: str | Path, log=None) -> list[Path]:
    """Removes the `.NAME.tmp-*` / `.NAME.old-*` siblings of `out_dir` that a killed write left
    behind, and reports each (to stderr, or `log`). A sibling is touched only when its writer is
    known to be gone: a process on this host that no longer runs, or, for another host, nothing
    changed in it for STALE_AFTER_S. If the kill fell between moving the old `out_dir` aside and
    moving the new one in (so `out_dir` is missing), the old folder is put back instead. Returns
    the leftovers it removed or restored."""
    if storage.is_remote(out_dir):
        return _clean_remote(storage.path(out_dir), log)
    out_dir = Path(os.path.abspath(out_dir))
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    pattern = _tag_pattern(out_dir.name)
    try:
        siblings = sorted(out_dir.parent.iterdir())
    except OSError:
        return []
    now, done = time.time(), []
    # "old" last: a leftover "tmp" is never complete enough to stand in for out_dir
    for path in sorted(siblings, key=lambda p: p.name.startswith(f".{out_dir.name}.old-")):
        m = pattern.fullmatch(path.name)
        if m is None or not path.is_dir() or path.is_symlink():
            continue
        why = _abandoned(m["host"], int(m["pid"]), path, now)
        if why is None:
            continue
        if m["kind"] == "old" and not out_dir.exists():
            try:
                path.rename(out_dir)
            except OSError:  # another run got there first
                continue
            log(f"restored {out_dir} from {path.name}, left by an interrupted replacement ({why})")
        else:
            shutil.rmtree(path, ignore_errors=True)
            if path.exists():
                continue
            log(f"removed stale temporary folder {path} ({why})")
        done.append(path)
    return done


@contextlib.contextmanager
def atomic_output_dir(
    out_dir: str | Path, overwrite: bool = False, sources: Iterable[str | Path] = ()
) -> Iterator[Path]:
    """Yields a fresh temporary sibling of `out_dir` to fill; on success it becomes `out_dir`
    (an old `out_dir` is removed only after the new one is in place), on error it is deleted.
    Refuses a non-empty `out_dir` unless `overwrite`, and an `out_dir` that is, holds or lies
    inside one of `sources` (the command's inputs) always. Leftovers of earlier killed writes
    into `out_dir` are cleaned up first (clean_stale_siblings). With several jax processes all
    of them get the same folder (to write their shards into) and only process 0 creates,
    renames or removes."""
    out_dir = storage.absolute(out_dir)  # normalises "." and "..", which have no siblings
    remote = storage.is_remote(out_dir)
    if remote:
        storage.check_gcs(out_dir.parent, write=True, what="output folder in")
    sources = tuple(s for s in sources if s is not None)
    primary = is_primary_process()
    check_not_an_input(out_dir, sources)
    if primary:
        clean_stale_siblings(out_dir)
    _sync(f"tinywave-save-cleaned-{out_dir}")
    check_output_dir(out_dir, overwrite, sources)
    tag = _shared_tag()
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{tag}")
    if primary and not remote:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    _sync(f"tinywave-save-begin-{tag}")
    try:
        yield tmp
        _sync(f"tinywave-save-written-{tag}")
        if primary:
            # someone may have written there meanwhile
            check_output_dir(out_dir, overwrite, sources)
            old = None
            if remote:
                _commit_remote(tmp, out_dir, tag)
            elif out_dir.exists():
                old = out_dir.with_name(f".{out_dir.name}.old-{tag}")
                out_dir.rename(old)
            if not remote:
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
        if primary and remote and not storage.lost():  # past a deadline the bucket is
            storage.rmtree(tmp)  # lost: the next write into out_dir removes the leftover
        elif primary and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _complete(folder) -> bool:
    return (folder / COMMIT_MARKER).is_file()


def _commit_remote(tmp, out_dir, tag: str) -> None:
    """Object storage: puts the finished `tmp` in place as `out_dir` by copying.

    1. an existing out_dir is copied whole to `.NAME.old-TAG` (its marker last), then removed
       (its marker first);
    2. tmp is copied into out_dir, COMMIT_MARKER last;
    3. tmp and the old copy are removed.
    A kill at any point leaves either a complete out_dir or a complete `.old` copy, which
    `_clean_remote` puts back (a leftover `.tmp` is removed: it was never committed)."""
    storage.fs(tmp).pipe_file(str(tmp / COMMIT_MARKER), b"")  # tmp is complete
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{tag}")
        if not _complete(out_dir):  # written by another tool: mark it, so that its copy counts
            storage.fs(out_dir).pipe_file(str(out_dir / COMMIT_MARKER), b"")
        storage.copy_tree(out_dir, old, last=_LAST)
        _remove_remote(out_dir)
    storage.copy_tree(tmp, out_dir, last=_LAST)
    storage.rmtree(tmp)
    if old is not None:
        _remove_remote(old)


def _remove_remote(folder) -> None:
    """Removes a remote folder, its commit marker first (so that a partial one never counts)."""
    marker = folder / COMMIT_MARKER
    if marker.exists():
        marker.unlink()
    storage.rmtree(folder)


def _partial_copy_of(out_dir, tmp) -> bool:
    """Whether `out_dir` (remote) is an unfinished copy of the complete `tmp`: no marker, and
    every object in it also in `tmp` with the same size (so finishing the copy loses nothing)."""
    if _complete(out_dir):
        return False
    have = {rel: storage.size(out_dir / rel) for rel in storage.rel_files(out_dir)}
    return all((tmp / rel).is_file() and storage.size(tmp / rel) == n for rel, n in have.items())


def _remote_last_change(folder) -> float:
    newest = 0.0
    for info in storage.fs(folder).find(str(folder), detail=True).values():
        t = info.get("mtime") or info.get("updated")
        if hasattr(t, "timestamp"):
            t = t.timestamp()
        elif isinstance(t, str):
            t = datetime.datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()
        newest = max(newest, float(t or 0.0))
    return newest


class PartialFolderError(InputError):
    """A bucket folder that an interrupted commit (outputs._commit_remote) left partial."""


def check_remote_complete(folder, what: str = "folder") -> None:
    """Refuses to read a remote `folder` that a killed commit left partial: no COMMIT_MARKER while
    a `.NAME.tmp-*` / `.NAME.old-*` sibling of that commit is there. Named by the user's path
    (a local mirror of it would otherwise be named, with a misleading reason such as "no
    tinywave.json"). Folders never written by a commit (no such sibling) pass."""
    if not storage.is_remote(folder):
        return
    folder = storage.path(str(folder).rstrip("/"))
    pattern = _tag_pattern(folder.name)
    try:
        if _complete(folder):
            return
        leftovers = [p.name for p in folder.parent.iterdir() if pattern.fullmatch(p.name)]
    except OSError:
        return
    if leftovers:
        raise PartialFolderError(
            f"{what} {folder}: partial, a write into it was interrupted or is still running "
            f"(its commit marker {COMMIT_MARKER} is missing; that write's "
            f"{sorted(leftovers)[0]} is beside it); rerun the command that wrote it: its next "
            "write completes or rolls back the folder first (once that writer is gone)"
        )


def _clean_remote(out_dir, log) -> list:
    """clean_stale_siblings on object storage: leftovers of a killed `_commit_remote`."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    pattern = _tag_pattern(out_dir.name)
    try:
        siblings = sorted(out_dir.parent.iterdir()) if out_dir.parent.exists() else []
    except OSError:
        return []
    now, done = time.time(), []
    for p in sorted(siblings, key=lambda p: p.name.startswith(f".{out_dir.name}.old-")):
        m = pattern.fullmatch(p.name)
        if m is None:
            continue
        host, pid = m["host"], int(m["pid"])
        if host == _host():
            why = (
                None
                if (pid == os.getpid() or _pid_alive(pid))
                else (f"its writer, process {pid} on this host, is gone")
            )
        else:
            idle = now - _remote_last_change(p)
            why = (
                None
                if idle < STALE_AFTER_S
                else f"its writer, process {pid} on host {host}, left it unchanged for "
                f"{idle / 3600:.0f} h"
            )
        if why is None:
            continue
        if m["kind"] == "old" and _complete(p) and not _complete(out_dir):
            _remove_remote(out_dir)
            storage.copy_tree(p, out_dir, last=_LAST)
            log(f"restored {out_dir} from {p.name}, left by an interrupted replacement ({why})")
        elif m["kind"] == "tmp" and _complete(p) and _partial_copy_of(out_dir, p):
            # killed while copying a finished folder into place: finish the copy (the old
            # folder, if any, was already removed; a leftover .old copy is dropped next)
            storage.copy_tree(p, out_dir, last=_LAST)
            log(f"completed {out_dir} from {p.name}, left by an interrupted commit ({why})")
        else:
            log(f"removed stale temporary folder {p} ({why})")
        _remove_remote(p)
        done.append(p)
    return done
