"""A run of named stages in a work folder, each recorded when done so a rerun resumes.

`StagedRun` subclasses (`Demo`, `TeacherBuild`) define STAGES and a `stage_<name>()` method per
stage returning a JSON-able dict; the folder's `settings.json` pins the settings, so a rerun with
other settings is refused instead of mixing two runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Callable

from ..errors import ConfigError, OutputExistsError, TinywaveError
from ..outputs import write_file_atomic
from .settings import settings_dict


def _defaults(settings) -> dict:
    """The settings dataclass's field defaults, in settings.json's JSON form."""
    return json.loads(json.dumps(settings_dict(type(settings)())))


class DamagedRecordError(TinywaveError, ValueError):
    """A workdir's settings.json or stage record that cannot be read (the message names it)."""


def _damaged(path: Path, what: str, why: str) -> DamagedRecordError:
    return DamagedRecordError(
        f"{path}: the {what} is damaged ({why}); delete it (the stage runs again) or use another "
        "--workdir"
    )


def _read_record(path: Path, what: str) -> dict:
    try:
        rec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise _damaged(path, what, f"{type(e).__name__}: {str(e)[:120]}") from None
    if not isinstance(rec, dict):
        raise _damaged(path, what, "not a JSON object")
    return rec


class MissingToolError(TinywaveError, RuntimeError):
    """An executable or Python module a pending stage needs is not installed; the message says
    how to install it."""


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (load-independent cost)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class StagedRun:
    STAGES: tuple[str, ...] = ()
    OPTIONAL: tuple[str, ...] = ()  # stages no later stage depends on
    NEEDS: dict[str, list[str]] = {}  # stage -> executables / modules it needs

    def __init__(self, workdir: str | Path, settings, log: Callable = print):
        self.dir = Path(workdir)
        self.settings = settings
        self.log = log
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock, self._lock_depth = None, 0
        stamp = self.dir / "settings.json"
        if stamp.exists():
            saved, mine = _read_record(stamp, "settings record"), settings_dict(settings)
            # a setting added after the folder was made ran there at what is now its default
            added = {k: v for k, v in _defaults(settings).items() if k not in saved}
            diff = sorted(
                k for k in set(saved) | set(mine) if {**added, **saved}.get(k) != mine.get(k)
            )
            if diff:
                raise OutputExistsError(
                    f"{self.dir} holds a run with other settings "
                    f"({', '.join(diff)}); use another --workdir (or delete "
                    "this one)"
                )

    def record(self, stage: str) -> Path:
        return self.dir / "stages" / f"{stage}.json"

    def done(self, stage: str) -> dict | None:
        path = self.record(stage)
        if not path.exists():
            return None
        rec = _read_record(path, f"record of stage {stage}")
        if not isinstance(rec.get("seconds"), (int, float)):
            raise _damaged(path, f"record of stage {stage}", "it has no 'seconds'")
        return rec

    @contextlib.contextmanager
    def locked(self):
        """Holds WORKDIR/.lock (train/run_lock.py: one process at a time; a lock left by a killed
        run is replaced) for the block; nestable within one StagedRun."""
        from ..train.run_lock import RunLock

        if self._lock_depth == 0:
            self._lock = RunLock(self.dir)
            self._lock.acquire()
        self._lock_depth += 1
        try:
            yield
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0:
                self._lock.release()
                self._lock = None

    def preflight(self, stages) -> None:
        """Fails before any work when something a pending stage needs is missing."""
        import importlib.util
        import shutil

        missing = []
        for stage in (s for s in stages if self.done(s) is None):
            for what in self.NEEDS.get(stage, []):
                found = (
                    shutil.which(what) if what == "espeak-ng" else importlib.util.find_spec(what)
                )
                if not found:
                    missing.append(f"{what} (stage {stage})")
        if missing:
            raise MissingToolError(
                "this needs " + ", ".join(missing) + ": run `make demo`, "
                "or `make espeak` and `pip install -e '.[test]'`"
            )

    def check(self, stages) -> None:
        """Hook: inputs a pending stage needs, checked before any stage runs."""

    def run(self, stages=None) -> dict:
        with self.locked():  # two runs in one workdir would run the same stage at once
            return self._run(stages)

    def _run(self, stages=None) -> dict:
        stages = self.STAGES if stages is None else stages
        for k, stage in enumerate(self.STAGES):
            if stage in stages:
                missing = [
                    s
                    for s in self.STAGES[:k]
                    if s not in stages and s not in self.OPTIONAL and self.done(s) is None
                ]
                if missing:
                    raise ConfigError(
                        f"--stages: stage {stage} needs stage(s) {missing} first "
                        f"(run them, or leave --stages out)"
                    )
        self.preflight(stages)
        self.check(stages)
        # pinned only once the inputs passed their checks: a refused run leaves no stamp behind
        write_file_atomic(
            self.dir / "settings.json", json.dumps(settings_dict(self.settings), indent=1)
        )
        t0 = time.time()
        out = {}
        n = len(self.STAGES)
        for k, stage in enumerate(self.STAGES, 1):
            if stage not in stages:
                continue
            rec = self.done(stage)
            if rec is not None:
                self.log(f"[{k}/{n}] {stage}: cached ({rec['seconds']:.0f} s when run)")
            else:
                self.log(f"[{k}/{n}] {stage} ...")
                t, cpu = time.time(), cpu_seconds()
                info = getattr(self, f"stage_{stage}")()
                rec = {
                    "stage": stage,
                    "seconds": round(time.time() - t, 1),
                    "cpu_seconds": round(cpu_seconds() - cpu, 1),
                    **info,
                }
                self.record(stage).parent.mkdir(parents=True, exist_ok=True)
                write_file_atomic(self.record(stage), json.dumps(rec, indent=1))
                self.log(f"[{k}/{n}] {stage}: done in {rec['seconds']:.0f} s")
            out[stage] = rec
        out["wall_seconds"] = round(time.time() - t0, 1)
        return out
