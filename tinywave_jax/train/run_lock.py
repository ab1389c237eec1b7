"""One run at a time per run folder: `run_dir/.lock`, created atomically (O_CREAT | O_EXCL).

The lock file holds JSON {host, pid, pid_namespace, started, argv}. A second `tinywave distill` /
`train` (or a `--resume`) on the same folder finds it and stops with `RunInUseError` before
touching anything:

    held by a live process on this host      refused: wait for it, or stop it (SIGTERM)
    held on another host (or in another      refused: this host cannot check it; the message
    pid namespace: a container)              says to delete the file once that run is dead
    held by a process that is gone (this     replaced, with a warning: it was killed (SIGKILL,
    host: no such pid, or the pid now        OOM, power loss) before it could remove the file
    belongs to a process younger than the
    lock)
    unreadable (being written, or damaged)   refused, naming the file to delete

A run removes its lock on exit: normal end, error, or SIGTERM (the loop checkpoints and returns).
Multi-process runs: process 0 alone takes it (train/loop.py), the others learn the outcome
through a collective, so every process stops together when the folder is in use.

The file system must honour O_EXCL (local disks and NFSv3+ do). Replacing a stale lock moves it
aside and checks it is still the one judged stale, so two runs replacing the same stale lock do
not both win.

On object storage (run_dir=gs://...) the lock is an object created with the precondition "no
object of this name exists yet" (GCS ifGenerationMatch=0: two runs racing for it cannot both
win); a stale one is deleted only while it still holds what was judged stale (a read, then a
delete: not atomic, so two runs replacing the same stale lock in the same instant could both
proceed; docs/reliability.md).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from .. import storage
from ..errors import OutputExistsError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
_HELD: set[str] = set()  # lock paths this process holds (a pid match alone is not enough)


class RunInUseError(OutputExistsError):
    """The run folder is locked by another run (or by a lock file this host cannot check)."""


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _pid_namespace() -> str | None:
    """This process's pid namespace (containers sharing a host name may have different ones)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _process_start_time(pid: int) -> float | None:
    """When `pid` started (Unix time), from /proc; None where /proc is not there."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        with open("/proc/stat") as f:
            btime = next(int(l.split()[1]) for l in f if l.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": field 3 onwards
    return btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime in ticks


def _alive(pid: int, started: float | None) -> bool:
    """Is the process that wrote a lock at `started` still running on this host?"""
    if pid == os.getpid():
        return False  # our own pid, but not one of our locks: left by an earlier process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    began = _process_start_time(pid)
    # pid reused: the process now under that pid started after the lock was written
    return not (began is not None and started is not None and began > started + 2.0)


class RunLock:
    """`with RunLock(run_dir):` holds run_dir/.lock for the block (see the module doc)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = storage.path(run_dir)
        self.remote = storage.is_remote(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._mine: bytes | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        if not self.remote:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        key = self._key()
        if key in _HELD:
            raise RunInUseError(f"{self.run_dir}: already in use by this process")
        body = json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "pid_namespace": _pid_namespace(),
                "started": _now_iso(),
                "started_unix": time.time(),
                "argv": sys.argv,
            }
        ).encode()
        for _ in range(3):
            if self.remote:
                if self._create_remote(body):
                    self._mine = body
                    _HELD.add(key)
                    return
                self._replace_if_stale()
                continue
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._replace_if_stale()
                continue
            try:
                os.write(fd, body)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._mine = body
            _HELD.add(key)
            return
        raise RunInUseError(
            f"{self.run_dir}: could not take {self.path} (other runs keep taking it)"
        )

    def _key(self) -> str:
        return str(self.path) if self.remote else str(self.path.resolve())

    def _create_remote(self, body: bytes) -> bool:
        """Creates the lock object unless one exists (GCS precondition ifGenerationMatch=0);
        False when it exists."""
        if self.path.exists():
            return False
        try:
            storage.fs(self.path).pipe_file(str(self.path), body, mode="create")
        except FileExistsError:
            return False
        return True

    def _replace_if_stale(self) -> None:
        """Removes the lock file if its process is gone; raises RunInUseError if it may live."""
        try:
            seen = self.path.read_bytes()
        except FileNotFoundError:
            return  # released meanwhile: try again
        except OSError as e:  # a folder of that name, no permission
            raise RunInUseError(
                f"{self.run_dir}: cannot read the lock {self.path} ({e.strerror or e}); if no "
                "run uses this folder, delete it"
            ) from None
        try:
            holder = json.loads(seen)
            host, pid = holder["host"], holder["pid"]
            if not isinstance(host, str) or type(pid) is not int:
                raise TypeError("host or pid of the wrong type")
            started_unix = holder.get("started_unix")
            if not isinstance(started_unix, (int, float, type(None))):
                raise TypeError("started_unix is not a number")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise RunInUseError(
                f"{self.run_dir}: in use (unreadable lock file {self.path}: another run may be "
                "writing it); if no run uses this folder, delete that file"
            ) from None
        started = holder.get("started", "?")
        if host != socket.gethostname() or holder.get("pid_namespace") != _pid_namespace():
            where = host if host != socket.gethostname() else f"{host} (another container)"
            raise RunInUseError(
                f"{self.run_dir}: in use by pid {pid} on host {where} (started {started}); "
                f"if that run is dead (check on {where}), delete {self.path} and rerun"
            )
        if _alive(pid, started_unix):
            raise RunInUseError(
                f"{self.run_dir}: in use by pid {pid} on this host (started {started}); "
                "wait for it to finish or stop it (SIGTERM checkpoints it) before rerunning"
            )
        log.warning(
            "%s: replacing a stale lock of pid %d (started %s), which is no longer running",
            self.path,
            pid,
            started,
        )
        self._remove_if_same(seen)

    def _remove_if_same(self, seen: bytes) -> None:
        """Deletes the lock file only if it still holds `seen`: moved aside first, so a lock that
        a third run took meanwhile is put back rather than deleted."""
        if self.remote:
            try:
                if self.path.read_bytes() == seen:
                    self.path.unlink()
            except FileNotFoundError:
                pass
            return
        aside = self.path.with_name(f"{LOCK_NAME}.stale.{socket.gethostname()}.{os.getpid()}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        try:
            if aside.read_bytes() != seen:
                os.link(aside, self.path)  # fails, not replaces, if yet another lock is there
        except OSError:
            pass
        finally:
            aside.unlink(missing_ok=True)

    def release(self) -> None:
        if self._mine is None:
            return
        _HELD.discard(self._key())
        try:
            if self.path.read_bytes() == self._mine:
                self.path.unlink()
        except FileNotFoundError:
            pass
        self._mine = None
