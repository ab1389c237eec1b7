"""A run folder survives misuse: one run at a time (run_dir/.lock; two real processes race for it),
stale and foreign locks, a resume whose config changed, damaged checkpoints, a torn metrics line,
and SIGTERM (exit 143 after the checkpoint). Refusals are one-line errors (exit 2) that leave the
folder exactly as it was."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from train_fixtures import SHARED_OVER, distill_config, distill_dict

from tinywave_jax import cli
from tinywave_jax.checkpoint import load_model
from tinywave_jax.train.loop import run
from tinywave_jax.train.metrics import MetricsWriter, read_metrics
from tinywave_jax.train.resume import checkpoint_manager, read_meta

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, **train) -> tuple[Path, Path]:
    """(config file, run_dir) of the shared 8-step tiny distillation (checkpoints every 3)."""
    run_dir = tmp_path / "run"
    d = distill_dict(run_dir=str(run_dir), **SHARED_OVER)
    d["train"].update(train)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(d))
    return path, run_dir


def _distill(config: Path, *extra) -> int:
    return cli.main(["distill", str(config), "--quiet", *extra])


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("tinywave distill: error: "), err
    return err


def _snapshot(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


def _lock_body(**over) -> str:
    body = {
        "host": socket.gethostname(),
        "pid": 4242,
        "pid_namespace": os.readlink("/proc/self/ns/pid"),
        "started": "2020-01-01T00:00:00+00:00",
        "started_unix": time.time() - 3600,
        "argv": ["tinywave", "distill"],
    }
    return json.dumps({**body, **over})


def _truncate_data(state: Path) -> None:
    """Cuts every OCDBT data file of a checkpoint's state in half (a copy that stopped early)."""
    for p in state.rglob("*"):
        if p.is_file() and p.parent.name == "d":
            os.truncate(p, p.stat().st_size // 2)


# --- one run per folder ----------------------------------------------------------------------


def _cli_proc(config: Path, *extra) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))  # XLA_FLAGS and the compile cache from conftest
    cmd = [sys.executable, "-m", "tinywave_jax.cli", "distill", str(config), "--quiet", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _durable(run_dir: Path, step: int) -> bool:
    d = run_dir / "checkpoints" / str(step)
    return (d / "commit_success.txt").is_file() and (d / "_CHECKPOINT_METADATA").is_file()


@pytest.mark.slow
def test_two_processes_one_run_dir_one_wins_others_refused_sigterm_exits_143(tmp_path):
    config, run_dir = _config(tmp_path, throttle_s=3.0)  # slow steps: the winner stays running
    a, b = _cli_proc(config), _cli_proc(config)  # race for the lock of a fresh folder
    t0 = time.time()
    while a.poll() is None and b.poll() is None:
        assert time.time() - t0 < 240, "neither run stopped"
        time.sleep(0.05)
    loser, winner = (a, b) if a.poll() is not None else (b, a)
    err = loser.communicate(timeout=60)[1].decode().strip()
    assert loser.returncode == 2, err
    assert "in use" in err.splitlines()[-1] and err.splitlines()[-1].startswith("tinywave"), err
    assert winner.poll() is None
    assert json.loads((run_dir / ".lock").read_text())["pid"] == winner.pid

    t0 = time.time()
    while not _durable(run_dir, 3):
        assert winner.poll() is None and time.time() - t0 < 240, "no checkpoint 3"
        time.sleep(0.05)
    resumed = _cli_proc(config, "--resume")  # a resume while the run lives is refused too
    err = resumed.communicate(timeout=240)[1].decode().strip().splitlines()[-1]
    assert resumed.returncode == 2, err
    assert f"in use by pid {winner.pid} on this host" in err, err
    assert winner.poll() is None, "the winner ended before the resume was refused"

    winner.send_signal(signal.SIGTERM)
    out, err = winner.communicate(timeout=240)
    assert winner.returncode == 143, err.decode()[-3000:]  # 128 + SIGTERM, after its checkpoint
    assert "continue with --resume" in out.decode()
    assert not (run_dir / ".lock").exists()  # released
    mngr = checkpoint_manager(run_dir)
    stopped = mngr.latest_step()
    mngr.close()
    assert 3 <= stopped < 8 and not (run_dir / "final").exists()
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, stopped + 1))


def test_a_refused_multi_process_run_stops_on_every_process(tmp_path):
    """Process 0 alone takes the lock; when it cannot, the other process stops too (no process
    left waiting in a collective)."""
    config, run_dir = _config(tmp_path)
    run_dir.mkdir()
    (run_dir / ".lock").write_text(_lock_body(host="elsewhere"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for pid in range(2):
        env = dict(
            os.environ,
            XLA_FLAGS="--xla_force_host_platform_device_count=4",
            TINYWAVE_COORDINATOR=f"127.0.0.1:{port}",
            TINYWAVE_NUM_PROCESSES="2",
            TINYWAVE_PROCESS_ID=str(pid),
            PYTHONPATH=str(ROOT),
        )
        cmd = [sys.executable, "-m", "tinywave_jax.cli", "distill", str(config), "--quiet"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    try:
        errs = [p.communicate(timeout=180)[1].decode().strip().splitlines()[-1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [2, 2], errs
    assert "in use by pid 4242 on host elsewhere" in errs[0], errs
    assert "process 0 could not lock it" in errs[1], errs
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]


def test_stale_lock_is_replaced_live_foreign_or_unreadable_is_refused(tmp_path, capsys, caplog):
    config, run_dir = _config(tmp_path, steps=3)
    run_dir.mkdir()
    lock = run_dir / ".lock"
    # another host: this one cannot check it; refused, the folder untouched, the fix named
    lock.write_text(_lock_body(host="elsewhere"))
    before = _snapshot(run_dir)
    assert _distill(config) == 2
    err = _error_line(capsys)
    assert "in use by pid 4242 on host elsewhere" in err and f"delete {lock}" in err, err
    assert _snapshot(run_dir) == before
    # unreadable (a run between creating and writing it, or damage): refused, named
    lock.write_text('{"host": "')
    assert _distill(config) == 2
    assert f"unreadable lock file {lock}" in _error_line(capsys)
    # this host, a live process that started before the lock was written: refused
    lock.write_text(_lock_body(pid=os.getppid(), started_unix=time.time()))
    assert _distill(config) == 2
    assert f"in use by pid {os.getppid()} on this host" in _error_line(capsys)
    assert _snapshot(run_dir) == {".lock": _snapshot(run_dir)[".lock"]}

    # this host, the process is gone: replaced with a warning, the run goes ahead
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(_lock_body(pid=dead.pid))
    assert _distill(config) == 0
    assert f"replacing a stale lock of pid {dead.pid}" in caplog.text
    assert not lock.exists() and (run_dir / "final").is_dir()
    # a pid now used by a process younger than the lock (pid reuse) is stale too
    young = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.5)
        lock.write_text(_lock_body(pid=young.pid, started_unix=time.time() - 3600))
        assert _distill(config, "--resume") == 0
        assert f"replacing a stale lock of pid {young.pid}" in caplog.text
    finally:
        young.kill()
        young.wait()
    assert not lock.exists()


# --- resume: config changes --------------------------------------------------------------------


def test_resume_refuses_a_changed_config_unless_allowed(tmp_path, capsys):
    config, run_dir = _config(tmp_path, steps=3)
    assert _distill(config) == 0
    before = _snapshot(run_dir)
    changed = ["optimizer.learning_rate=0.02", "distill.temperature=3.0", "data.seq_len=16"]
    assert _distill(config, "--resume", "train.steps=4", *changed) == 2
    err = _error_line(capsys)
    for part in (
        "checkpoint 3",
        "data.seq_len 32 -> 16",
        "distill.temperature 2.0 -> 3.0",
        "optimizer.learning_rate 0.01 -> 0.02",
        "--allow-config-change data.seq_len distill.temperature optimizer.learning_rate",
    ):
        assert part in err, (part, err)
    assert "train.steps" not in err  # on the allow-list
    assert _snapshot(run_dir) == before  # nothing touched, the lock released
    # named on purpose (a key covers the keys under it); overrides may follow the keys
    assert (
        _distill(
            config,
            "--resume",
            "train.steps=4",
            *changed[:2],
            "--allow-config-change",
            "optimizer",
            "distill.temperature",
            "train.log_every=2",
        )
        == 0
    )
    mngr = checkpoint_manager(run_dir)
    saved = read_meta(mngr, 4)["config"]
    mngr.close()
    assert saved["optimizer"]["learning_rate"] == 0.02 and saved["distill"]["temperature"] == 3.0
    assert saved["train"]["log_every"] == 2
    # --allow-config-change without --resume is a mistake
    assert _distill(config, "--allow-config-change", "optimizer") == 2
    assert "only applies to --resume" in _error_line(capsys)


# --- resume: damaged checkpoints ---------------------------------------------------------------


def test_resume_skips_damaged_checkpoints_and_names_them_when_none_is_left(
    tmp_path, capsys, caplog
):
    config, run_dir = _config(tmp_path)
    assert _distill(config) == 0  # checkpoints 3, 6, 8
    straight = load_model(run_dir / "final")[0]
    _truncate_data(run_dir / "checkpoints" / "8" / "state")
    assert _distill(config, "--resume") == 0  # from 6: steps 7 and 8 again
    assert "checkpoint 8 does not restore, skipping it: ValueError: OUT_OF_RANGE" in caplog.text
    assert (run_dir / "corrupt_checkpoints" / "8" / "state").is_dir()  # kept for a look
    jax.tree.map(np.testing.assert_array_equal, load_model(run_dir / "final")[0], straight)
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, 9))

    # every checkpoint damaged: a named error listing each, and nothing moved
    for step in (3, 6):
        _truncate_data(run_dir / "checkpoints" / str(step) / "state")
    meta = run_dir / "checkpoints" / "8" / "meta" / "metadata"
    os.truncate(meta, meta.stat().st_size // 2)
    before = _snapshot(run_dir)
    assert _distill(config, "--resume") == 2
    err = _error_line(capsys)
    assert "no checkpoint restores whole: step 8: meta: JSONDecodeError" in err, err
    assert "; step 6: ValueError: OUT_OF_RANGE" in err and "; step 3: ValueError" in err, err
    assert _snapshot(run_dir) == before


def test_damage_that_still_decodes_in_a_resume_checkpoint_is_found_and_skipped(tmp_path, caplog):
    """A flipped byte that still decodes changed the resumed run silently (exit 0; a flipped bit
    in a large model's out-of-line data chunk turned it into NaN). Each checkpoint's meta now
    records digests of its state and data-iterator state, compared after a restore: the damaged
    steps are set aside and the run resumes from an intact one, exactly. Damage here: one bit of
    step 8's data position (`"index": 8` -> 9), and step 6's state replaced by step 3's (both
    decode; this tiny model's arrays sit in one CRC-checked OCDBT node, which a flip there
    already fails)."""
    config, run_dir = _config(tmp_path)
    assert _distill(config) == 0  # checkpoints 3, 6, 8
    straight = load_model(run_dir / "final")[0]
    ckpts = run_dir / "checkpoints"
    data = ckpts / "8" / "data" / "metadata"
    raw = data.read_bytes()
    assert raw.count(b'"index": 8') == 1
    data.write_bytes(raw.replace(b'"index": 8', b'"index": 9'))  # 0x38 -> 0x39: one bit
    shutil.rmtree(ckpts / "6" / "state")
    shutil.copytree(ckpts / "3" / "state", ckpts / "6" / "state")
    assert _distill(config, "--resume") == 0
    assert "checkpoint 8 does not restore, skipping it: StateDigestError: the data" in caplog.text
    assert "checkpoint 6 does not restore, skipping it: StateDigestError: state" in caplog.text
    assert {p.name for p in (run_dir / "corrupt_checkpoints").iterdir()} == {"6", "8"}
    jax.tree.map(np.testing.assert_array_equal, load_model(run_dir / "final")[0], straight)


def test_a_run_stops_at_the_first_non_finite_loss_and_saves_nothing_of_it(tmp_path, capsys):
    """A diverging run went on to an all-NaN final/ (exit 0). It now stops at the first step whose
    loss or gradient norm is not finite, naming it and its metrics, with no checkpoint or final/
    of that state."""
    config, run_dir = _config(tmp_path, checkpoint_every=2)
    assert _distill(config, "optimizer.learning_rate=1.0e+30", "optimizer.clip_norm=null") == 2
    err = _error_line(capsys)
    assert "training diverged at step " in err and "non-finite" in err, err
    bad = int(err.split("training diverged at step ")[1].split(":")[0])
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, bad))  # logged every step until then
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["grad_norm"]) for r in rows)
    mngr = checkpoint_manager(run_dir)
    assert all(s < bad for s in mngr.all_steps())
    mngr.close()
    assert not (run_dir / "final").exists() and not (run_dir / ".lock").exists()


def test_resume_notes_and_a_misspelt_allow_config_change_key_is_refused(tmp_path, capsys, caplog):
    config, run_dir = _config(tmp_path, steps=3)
    # --resume of an empty folder, or past the end, says so
    assert _distill(config, "--resume") == 0
    assert f"resume: {run_dir} holds no checkpoint; starting" in caplog.text
    assert _distill(config, "--resume", "train.steps=2") == 0
    assert "checkpoint 3 is at or past train.steps=2" in caplog.text
    # nothing else changed: the typo used to pass unnoticed (exit 0), allowing nothing
    assert _distill(config, "--resume", "train.steps=4", "--allow-config-change", "optimiser") == 2
    err = _error_line(capsys)
    assert "--allow-config-change optimiser: no such config key (did you mean optimizer?)" in err
    # a shape changed on purpose: the intact checkpoints cannot take it; no advice to delete them
    before = _snapshot(run_dir)
    wider = ["student.shape.intermediate_size=48", "--allow-config-change", "student"]
    assert _distill(config, "--resume", "train.steps=4", *wider) == 2
    err = _error_line(capsys)
    assert "--allow-config-change student may have changed the shape" in err, err
    assert "delete it" not in err and _snapshot(run_dir) == before


# --- resume: metrics.jsonl ---------------------------------------------------------------------


def test_a_torn_last_metrics_line_is_dropped_a_damaged_one_is_named(tmp_path, capsys, caplog):
    config, run_dir = _config(tmp_path, steps=3)
    assert _distill(config) == 0
    metrics = run_dir / "metrics.jsonl"
    with metrics.open("a") as f:
        f.write('{"step": 4, "loss": 4.1')  # killed while writing step 4's row
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3]  # readers skip it too
    assert _distill(config, "--resume", "train.steps=4") == 0
    assert "dropped its torn last line" in caplog.text
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3, 4]

    lines = metrics.read_text().splitlines()
    lines[1] = lines[1][:20]  # damage inside the file is not a torn write: named, not guessed
    metrics.write_text("\n".join(lines) + "\n")
    assert _distill(config, "--resume", "train.steps=5") == 2
    assert f"{metrics}:2: not a metrics row" in _error_line(capsys)
    assert metrics.read_text().splitlines() == lines


def test_truncate_after_keeps_rows_up_to_the_step(tmp_path):
    writer = MetricsWriter(tmp_path, tensorboard=False)
    for step in range(1, 6):
        writer.write(step, {"loss": float(step)})
    writer.truncate_after(3)
    assert read_metrics(tmp_path) == [{"step": s, "loss": float(s)} for s in (1, 2, 3)]


def test_run_reports_a_sigterm_stop(tmp_path, monkeypatch):
    """SIGTERM before the first step (during start-up): run() returns stopped=True, not an
    exported model, and releases the lock."""
    from tinywave_jax.train import loop

    real = loop.Session

    def session_then_sigterm(*a, **k):
        s = real(*a, **k)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the run sets up
        return s

    monkeypatch.setattr(loop, "Session", session_then_sigterm)
    cfg = distill_config(run_dir=str(tmp_path / "run"), **SHARED_OVER)
    out = run(cfg, echo=False)
    assert out == {"step": 0, "final_dir": None, "stopped": True, "signal": "SIGTERM"}
    assert not (tmp_path / "run" / ".lock").exists()


@pytest.mark.slow
def test_ctrl_c_checkpoints_like_sigterm_and_a_second_one_stops_at_once(tmp_path):
    """Ctrl-C (SIGINT) ended a run with a KeyboardInterrupt traceback and no checkpoint. Now the
    step in flight finishes, a checkpoint is saved and the CLI exits 130; a second Ctrl-C
    stops at once (no save, one line, 130)."""
    config, run_dir = _config(tmp_path, throttle_s=0.5, checkpoint_every=100)
    proc = _cli_proc(config)

    def wait_for_step(step):
        path = run_dir / "metrics.jsonl"
        rows = path.read_text().splitlines() if path.is_file() else []
        return any(json.loads(l)["step"] >= step for l in rows if l.strip())

    t0 = time.time()
    while not wait_for_step(2):
        assert proc.poll() is None and time.time() - t0 < 240, proc.stderr.read().decode()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()[-3000:]
    assert "Traceback" not in err.decode() and "by SIGINT; continue with --resume" in out.decode()
    mngr = checkpoint_manager(run_dir)
    stopped = mngr.latest_step()
    mngr.close()
    assert (
        2 <= stopped < 8 and not (run_dir / "final").exists() and not (run_dir / ".lock").exists()
    )

    proc = _cli_proc(config, "--resume", "train.throttle_s=5")  # long sleeps between steps
    while not wait_for_step(stopped + 1):
        assert proc.poll() is None and time.time() - t0 < 480, proc.stderr.read().decode()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    t1 = time.time()
    proc.send_signal(signal.SIGINT)  # the second: now, not after the 5 s sleep and a save
    out, err = proc.communicate(timeout=60)
    assert time.time() - t1 < 4 and proc.returncode == 130, err.decode()[-3000:]
    assert "interrupted (Ctrl-C)" in err.decode() and "Traceback" not in err.decode()


def test_a_teacher_inside_the_run_folders_final_is_refused_before_training(tmp_path, capsys):
    """run_dir/final is replaced at the end of a run: a teacher (or student) read from there (or
    from a folder that holds it) would be deleted, so the run refuses before any work."""
    from train_fixtures import TEACHER

    from tinywave_jax.checkpoint import save_model
    from tinywave_jax.models import llama
    from tinywave_jax.models.config import LlamaConfig

    config, run_dir = _config(tmp_path)
    teacher = LlamaConfig(**TEACHER)
    params = jax.device_get(llama.init_params(teacher, jax.random.key(0)))
    save_model(run_dir / "final", params, teacher)
    before = _snapshot(run_dir)
    assert _distill(config, f"teacher.path={run_dir / 'final'}", "teacher.shape=null") == 2
    assert "run/final is the input" in _error_line(capsys)
    assert _snapshot(run_dir) == before


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda lock: lock.mkdir(), "cannot read the lock"),
        (lambda lock: lock.write_text(_lock_body(started_unix="noon")), "unreadable lock file"),
    ],
)
def test_a_lock_that_is_a_folder_or_holds_a_wrong_field_is_named(tmp_path, capsys, make, needle):
    """A lock path that is a folder, or a field that is not a number, was a traceback."""
    config, run_dir = _config(tmp_path, steps=3)
    run_dir.mkdir()
    make(run_dir / ".lock")
    assert _distill(config) == 2
    assert needle in _error_line(capsys)
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]


# --- the demo's work folder ----------------------------------------------------------------

_SLOW_STAGES = """
import sys, time
from pathlib import Path
from tinywave_jax.demo.settings import DemoSettings
from tinywave_jax.demo.stages import StagedRun

class Slow(StagedRun):
    STAGES = ("a",)

    def stage_a(self):
        (self.dir / "started").write_text("")
        time.sleep(60)
        return {}

Slow(Path(sys.argv[1]), DemoSettings()).run()
"""


def test_a_workdir_is_locked_and_damaged_records_are_named(tmp_path):
    """Two demos on one workdir ran the same stage at once; a damaged settings or stage record
    (written in place) was a JSONDecodeError / KeyError traceback."""
    from tinywave_jax.demo.settings import DemoSettings
    from tinywave_jax.demo.stages import DamagedRecordError, StagedRun
    from tinywave_jax.train.run_lock import RunInUseError

    class Quick(StagedRun):
        STAGES = ("a",)

        def stage_a(self):
            return {"value": 1}

    work = tmp_path / "w"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_STAGES, str(work)], env=env)
    try:
        t0 = time.time()
        while not (work / "started").exists():
            assert proc.poll() is None and time.time() - t0 < 60
            time.sleep(0.05)
        with pytest.raises(RunInUseError, match=f"in use by pid {proc.pid} on this host"):
            Quick(work, DemoSettings()).run()
    finally:
        proc.kill()
        proc.wait()
    # the killed run's lock is stale: replaced; records are written whole (renamed into place)
    assert Quick(work, DemoSettings()).run()["a"]["value"] == 1
    assert not list(work.rglob(".*.tmp-*")) and not (work / ".lock").exists()

    record = work / "stages" / "a.json"
    record.write_text(record.read_text()[:10])
    with pytest.raises(DamagedRecordError, match=f"{record}: the record of stage a is damaged"):
        Quick(work, DemoSettings()).run()
    record.write_text('{"stage": "a"}')
    with pytest.raises(DamagedRecordError, match="it has no 'seconds'"):
        Quick(work, DemoSettings()).run()
    (work / "settings.json").write_text('{"seed": ')
    with pytest.raises(DamagedRecordError, match="settings.json: the settings record is damaged"):
        Quick(work, DemoSettings())


def test_the_final_listing_names_only_outputs_that_exist(tmp_path):
    """`demo --stages speech` listed results.md, student_hf/ ... which it never writes."""
    from tinywave_jax.demo.commands import outputs_there

    assert outputs_there(tmp_path) == []
    (tmp_path / "results.md").write_text("")
    (tmp_path / "student_hf").mkdir()
    assert outputs_there(tmp_path) == ["results.md", "student_hf/"]


def test_a_demo_stage_stopped_by_sigterm_saves_then_exits_143_in_one_line(
    tmp_path, monkeypatch, capsys
):
    """The demo's stages train through their runner (demo/training.train_runs): SIGTERM used to
    end `tinywave demo-teacher` with a RuntimeError traceback. The runner passes it on, the run
    saves its checkpoint, the stage raises RunStopped, and the CLI prints one line and exits 143,
    as `tinywave distill` does."""
    import argparse
    import threading

    from tinywave_jax.config import from_dict
    from tinywave_jax.demo.training import train_runs
    from tinywave_jax.errors import RunStopped
    from tinywave_jax.train.config import DistillConfig

    d = distill_dict(run_dir=str(tmp_path / "run"), **SHARED_OVER)
    d["train"].update(throttle_s=0.5, checkpoint_every=100)
    metrics = tmp_path / "run" / "metrics.jsonl"

    def stop_after_step_two():
        t0 = time.time()
        while time.time() - t0 < 900:  # the run is a subprocess: its start is slow under load
            rows = metrics.read_text().splitlines() if metrics.is_file() else []
            if any(json.loads(r)["step"] >= 2 for r in rows if r.strip()):
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)

    threading.Thread(target=stop_after_step_two, daemon=True).start()
    with pytest.raises(RunStopped) as stopped:
        train_runs([("student/pretrain", from_dict(DistillConfig, d))], lambda m: None, pin=False)
    assert stopped.value.signal == "SIGTERM" and "rerun the same command" in str(stopped.value)
    mngr = checkpoint_manager(tmp_path / "run")
    assert 2 <= mngr.latest_step() < 8
    mngr.close()

    def stage(args):
        raise stopped.value

    parser = argparse.ArgumentParser()
    parser.add_argument("command")
    parser.set_defaults(func=stage)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    capsys.readouterr()
    assert cli.main(["demo-teacher"]) == 143
    err = capsys.readouterr().err.strip()
    assert err.startswith("tinywave demo-teacher: student/pretrain: stopped by SIGTERM at step")
    assert len(err.splitlines()) == 1


def test_resume_errors_name_the_python_parameter(tmp_path):
    """From Python the resume check names `allow_config_change`, the parameter a caller passes;
    the CLI writes it as --allow-config-change (the tests above)."""
    from tinywave_jax.errors import ConfigError
    from tinywave_jax.train.resume import check_resume_config

    saved = {"optimizer": {"learning_rate": 0.01}, "train": {"steps": 3}}
    new = {"optimizer": {"learning_rate": 0.02}, "train": {"steps": 3}}
    with pytest.raises(ConfigError) as e:
        check_resume_config(saved, new, (), "run (checkpoint 3)")
    assert "or allow_config_change optimizer.learning_rate to change" in str(e.value)
    assert "--" not in str(e.value) and e.value.param == (None, "allow_config_change")
    with pytest.raises(ConfigError, match="^allow_config_change optimiser: no such config key"):
        check_resume_config(saved, new, ("optimiser",), "run (checkpoint 3)")
    check_resume_config(saved, new, ("optimizer",), "run (checkpoint 3)")  # allowed on purpose


def test_a_run_dir_with_checkpoints_names_resume(tmp_path, capsys):
    """A second run into a run_dir with checkpoints is refused: from Python naming `resume`,
    on the command line --resume (a run_dir named like the parameter is left alone)."""
    from tinywave_jax.config import load_config
    from tinywave_jax.errors import OutputExistsError
    from tinywave_jax.train.config import DistillConfig

    (tmp_path / "resume").mkdir()
    config, run_dir = _config(tmp_path / "resume", steps=3)
    assert _distill(config) == 0
    assert _distill(config) == 2
    err = _error_line(capsys)
    assert f"{run_dir} already holds checkpoints (latest step 3); continue it with --resume," in err
    with pytest.raises(OutputExistsError, match="continue it with resume, or choose another"):
        run(load_config(DistillConfig, str(config), []))
