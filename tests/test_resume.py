"""Exact resume through the real CLI: N steps straight == k steps, SIGKILL once checkpoint k is
durable, --resume (which replaces the killed run's stale lock; stopped by SIGTERM, which
checkpoints and exits 143), --resume to N. Parameters and logged metrics must be identical on
CPU."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import yaml
from train_fixtures import (
    SHARED_OVER,
    distill_config,
    distill_dict,
    subprocess_env,
    wait_for,
)

from tinywave_jax.checkpoint import load_model
from tinywave_jax.train.loop import run
from tinywave_jax.train.metrics import read_metrics
from tinywave_jax.train.recipes import prepare
from tinywave_jax.train.resume import checkpoint_manager, restore_checkpoint
from tinywave_jax.train.session import Session

N, K = 8, 3
OVER = SHARED_OVER  # teacher + a narrower student with a trained width projector
assert OVER["train"]["steps"] == N and OVER["train"]["checkpoint_every"] == K
TIMING_KEYS = {"tokens_per_s", "mfu"}


def _cli(config: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "tinywave_jax.cli", "distill", str(config), "--quiet", *extra]


def _durable(run_dir: Path, step: int) -> bool:
    d = run_dir / "checkpoints" / str(step)  # orbax renames the finished step folder into place
    return (d / "commit_success.txt").is_file() and (d / "_CHECKPOINT_METADATA").is_file()


def _logged_past(run_dir: Path, step: int) -> bool:
    path = run_dir / "metrics.jsonl"
    return path.is_file() and any(
        json.loads(l)["step"] > step for l in path.read_text().splitlines() if l.strip()
    )


@pytest.mark.slow
def test_resume_after_sigkill_and_sigterm_is_exact(tmp_path):
    straight = run(distill_config(run_dir=str(tmp_path / "straight"), **OVER), echo=False)

    run_dir = tmp_path / "interrupted"
    config = tmp_path / "interrupted.yaml"
    d = distill_dict(run_dir=str(run_dir), **OVER)
    d["train"]["throttle_s"] = 0.7  # slow steps, so the kill lands mid-run
    config.write_text(yaml.safe_dump(d))

    proc = subprocess.Popen(
        _cli(config), env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    wait_for(lambda: _durable(run_dir, K), proc, f"checkpoint {K}")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run_dir / ".lock").is_file()  # left behind by the killed run
    mngr = checkpoint_manager(run_dir)
    assert mngr.latest_step() == K
    mngr.close()

    proc = subprocess.Popen(
        _cli(config, "--resume"),
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_for(lambda: _logged_past(run_dir, K), proc, f"a step past {K}")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, err.decode()[-3000:]  # 128 + SIGTERM, after its checkpoint
    assert "stopped at step" in out.decode()
    assert "stale lock" in err.decode()  # the SIGKILLed run's, replaced
    assert not (run_dir / ".lock").exists()  # released on SIGTERM
    mngr = checkpoint_manager(run_dir)
    stopped = mngr.latest_step()
    mngr.close()
    assert K < stopped < N and not (run_dir / "final").exists(), (out.decode(), stopped)

    done = subprocess.run(
        _cli(config, "--resume", "train.throttle_s=0"),
        env=subprocess_env(),
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]

    a, _, _ = load_model(straight["final_dir"])
    b, _, _ = load_model(run_dir / "final")
    jax.tree.map(np.testing.assert_array_equal, b, a)
    rows_a, rows_b = read_metrics(tmp_path / "straight"), read_metrics(run_dir)
    assert [r["step"] for r in rows_b] == list(range(1, N + 1)) == [r["step"] for r in rows_a]
    for ra, rb in zip(rows_a, rows_b):
        assert {k: v for k, v in ra.items() if k not in TIMING_KEYS} == {
            k: v for k, v in rb.items() if k not in TIMING_KEYS
        }


def test_restore_refuses_another_process_count(tmp_path):
    session = Session(prepare(distill_config()), None)
    _, trainable = session.frozen_and_trainable()
    state = session.init_state(trainable)
    mngr = checkpoint_manager(tmp_path)
    mngr.save(
        0,
        force=True,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state._asdict()),
            data=ocp.args.JsonSave({"index": 0}),
            meta=ocp.args.JsonSave({"kind": "distill", "process_count": 2}),
        ),
    )
    mngr.wait_until_finished()
    with pytest.raises(ValueError, match="saved by 2 processes, this run has 1"):
        restore_checkpoint(mngr, session.abstract_state())
    mngr.close()
