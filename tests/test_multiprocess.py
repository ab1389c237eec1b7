"""A real two-process distillation run on one machine matches a one-process run on 8 devices.

Two processes on loopback (`jax.distributed.initialize` from TINYWAVE_COORDINATOR /
TINYWAVE_NUM_PROCESSES / TINYWAVE_PROCESS_ID through `maybe_initialize`, gloo CPU collectives,
4 simulated CPU devices each, one 8-device fsdp mesh) run `tinywave distill` on a tiny grain
corpus (each process reads its own records and builds its half of every batch), checkpoint at
step 2, stop, and resume to step 4. The reference is a one-process run on the 8 devices of this
pytest process, fed the same global batches: process 0's rows followed by process 1's, which is
how `make_array_from_process_local_data` lays the halves onto the mesh (process 0 owns devices
0-3). Losses and metrics per step and the student parameters of the step-4 checkpoint must agree
to float32 round-off (the only difference is the order of the cross-process gradient sums).
Data: the real grain corpus pipeline (`data.source: corpus`), each process its own records.

Preemption: the same two-process run, slowed by `train.throttle_s`, gets SIGTERM in one process
only; both must stop after the same step, save that one checkpoint and exit 143, and `--resume`
must end where the one-process reference does. The reference (and corpus) is built once per
module and shared by both tests.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from data_fixtures import synthetic_utterance, write_units_manifest
from train_fixtures import TEACHER, distill_dict, free_port, process_env

ROOT = Path(__file__).resolve().parent.parent

# `tinywave distill` exactly as each host runs it (the CLI calls maybe_initialize() itself).
_LAUNCH = """
import sys
from tinywave_jax.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _start_two(args: list[str], tmp: Path, tag: str, cache: Path | None = None) -> list:
    """Starts `tinywave ARGS` as processes 0 and 1 of one run; [(Popen, log file)]. `cache`: a
    compile cache of two-process runs only (see below)."""
    port = free_port()
    procs = []
    for pid in range(2):
        env = process_env(pid, port)
        # Not the tests' compile cache (process_env drops it). A cache that only two-process runs
        # of this module fill holds the same programs for both processes, so later runs hit it in
        # both (only compiles over 5 s are kept: one process compiling a program that the other
        # found is then a skew of seconds).
        if cache is not None:
            env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
            env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "5"
        log = open(tmp / f"{tag}-{pid}.log", "w")
        procs.append(
            (
                subprocess.Popen(
                    [sys.executable, "-c", _LAUNCH] + args,
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                log,
            )
        )
    return procs


def _logs(tmp: Path, tag: str) -> str:
    return "\n".join((tmp / f"{tag}-{i}.log").read_text()[-3000:] for i in range(2))


def _wait_two(procs: list, tmp: Path, tag: str, want=(0, 0), timeout: float = 300) -> None:
    """Waits for both processes (killing any still running after `timeout` s in all); their exit
    codes must be `want`."""
    codes = []
    t_end = time.time() + timeout
    for p, log in procs:
        try:
            codes.append(p.wait(timeout=max(t_end - time.time(), 1)))
        except subprocess.TimeoutExpired:
            codes.append("timeout")
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()
    assert codes == list(want), f"{tag}: exit codes {codes}\n{_logs(tmp, tag)}"


def _two_processes(args: list[str], tmp: Path, tag: str, cache: Path | None = None) -> None:
    _wait_two(_start_two(args, tmp, tag, cache), tmp, tag)


class _Concat:
    """Global batches of a 2-process run, built in one process: both hosts' rows, in order."""

    def __init__(self, parts):
        self.parts = parts

    def __iter__(self):
        return self

    def __next__(self):
        got = [next(p) for p in self.parts]
        return {k: np.concatenate([g[k] for g in got]) for k in got[0]}

    def get_state(self):
        return {"parts": [p.get_state() for p in self.parts]}


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The corpus, the run config and the one-process reference run of 4 steps (shared)."""
    import jax

    from tinywave_jax.config import from_dict
    from tinywave_jax.data.corpus_build import build_corpus
    from tinywave_jax.train import data as train_data
    from tinywave_jax.train import loop
    from tinywave_jax.train.config import DistillConfig

    tmp = tmp_path_factory.mktemp("multiprocess")
    rng = np.random.default_rng(7)
    manifest = write_units_manifest(
        tmp / "units.jsonl", [synthetic_utterance(rng, k) for k in range(24)]
    )
    build_corpus(tmp / "corpus", manifest=manifest, shard_size=8, log=lambda *a: None)
    cfg = distill_dict(
        teacher={"shape": dict(TEACHER, vocab_size=32768)},  # spiritlm ids of the corpus
        train={"steps": 4, "checkpoint_every": 2, "async_checkpoint": False},
        # constant LR: the first invocation (train.steps=2) then has the same schedule as 4 steps
        optimizer={"min_lr_ratio": 1.0},
        mesh={"data": 1, "fsdp": 8, "tensor": 1},
        data={
            "source": "corpus",
            "seq_len": 32,
            "batch_size": 8,
            "corpus": {
                "corpus_dir": str(tmp / "corpus"),
                "read_threads": 1,
                "layout": {"preset": "spiritlm_expressive"},
            },
        },
    )
    config_file = tmp / "run.yaml"
    config_file.write_text(yaml.safe_dump(cfg))

    # one process, 8 devices, the same global batches as two processes, 4 steps straight
    single = tmp / "single"
    ref_cfg = from_dict(DistillConfig, {**cfg, "run_dir": str(single)})
    assert jax.device_count() == 8 and jax.process_count() == 1
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            loop,
            "make_batches",
            lambda data, vocab, index, count, keys=False: _Concat(
                [train_data.make_batches(data, vocab, p, 2) for p in range(2)]
            ),
        )
        t0 = time.time()
        loop.run(ref_cfg, echo=False)
        print(f"one process, steps 1-4: {time.time() - t0:.1f} s")
    cache = tmp / "xla-cache-two-processes"
    return {"config_file": config_file, "cfg": ref_cfg, "single": single, "cache": cache}


def _params_at_4(ref_cfg, run_dir: Path):
    """The student parameters of checkpoint 4, restored onto this process's 8-device mesh."""
    import jax
    import orbax.checkpoint as ocp

    from tinywave_jax.train.recipes import prepare
    from tinywave_jax.train.resume import checkpoint_manager
    from tinywave_jax.train.session import Session

    target = Session(prepare(ref_cfg)).abstract_state()._asdict()
    mngr = checkpoint_manager(run_dir, async_save=False)
    try:
        got = mngr.restore(4, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    finally:
        mngr.close()
    return jax.device_get(got.state["params"])


def _assert_matches_reference(reference, multi: Path) -> None:
    """Metrics of steps 1-4, checkpoint 4's parameters and final/ of the two-process run `multi`
    equal the one-process reference's to float32 round-off."""
    import jax

    from tinywave_jax.checkpoint import load_model

    single = reference["single"]
    got, want = _metrics(multi), _metrics(single)
    assert [r["step"] for r in got] == [1, 2, 3, 4] == [r["step"] for r in want]
    for g, w in zip(got, want):
        assert g["num_tokens"] == w["num_tokens"] > 0
        for k in ("loss", "ce", "logit_kl", "hidden", "attention_kl", "grad_norm"):
            np.testing.assert_allclose(
                g[k], w[k], rtol=2e-5, atol=1e-6, err_msg=f"step {g['step']} {k}"
            )
    assert got[-1]["loss"] != got[0]["loss"]  # it trained
    # the student state of step 4 as both runs checkpointed it
    p_multi = _params_at_4(reference["cfg"], multi)
    p_single = _params_at_4(reference["cfg"], single)
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(p_multi), jax.tree_util.tree_leaves(p_single)
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5, err_msg=jax.tree_util.keystr(path))

    # final/ (written by both processes together) loads whole
    final_multi, _, _ = load_model(multi / "final", as_numpy=True)
    final_single, _, _ = load_model(single / "final", as_numpy=True)
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(final_multi), jax.tree_util.tree_leaves(final_single)
    ):
        np.testing.assert_allclose(
            a, b, rtol=1e-4, atol=2e-5, err_msg="final/" + jax.tree_util.keystr(path)
        )
    assert not [
        p.name for p in multi.iterdir() if p.name.startswith(".final")
    ]  # no temporaries left


def test_two_processes_checkpoint_resume_match_one_process(reference, tmp_path):
    multi = tmp_path / "multi"
    args = ["distill", str(reference["config_file"]), f"run_dir={multi}", "--quiet"]
    # two processes: steps 1-2, checkpoint, exit; then --resume for steps 3-4
    t0 = time.time()
    _two_processes(args + ["train.steps=2"], tmp_path, "first", reference["cache"])
    print(f"two processes, steps 1-2: {time.time() - t0:.1f} s")
    assert sorted(p.name for p in (multi / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]
    data_state = json.loads((multi / "checkpoints" / "2" / "data" / "metadata").read_text())
    assert [s["process_index"] for s in data_state["processes"]] == [0, 1]
    assert all(s["process_count"] == 2 for s in data_state["processes"])
    assert (multi / "final" / "tinywave.json").is_file()  # exported by both processes together
    t0 = time.time()
    _two_processes(args + ["--resume"], tmp_path, "resume", reference["cache"])
    print(f"two processes, resume, steps 3-4: {time.time() - t0:.1f} s")
    # final/ is the resumed run's (it replaced the one of step 2)
    _assert_matches_reference(reference, multi)


def _checkpoint_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


def test_sigterm_to_one_process_stops_all_at_one_step_and_resumes_exactly(reference, tmp_path):
    """SIGTERM to process 1 only (as a preempted host gets it): both processes agree on one step
    (jax's preemption sync point), save it and exit 143; `--resume` then ends where the
    one-process reference does. Before the agreement, process 1 saved alone while process 0
    went on to the next step: process 1 aborted on a gloo error (-6) and process 0 hung until
    killed."""
    multi = tmp_path / "multi"
    args = ["distill", str(reference["config_file"]), f"run_dir={multi}", "--quiet"]
    t0 = time.time()
    # no scheduled checkpoint before step 4; slow steps (2 s), so that the agreed step (about a
    # second after the signal) comes well before the end
    procs = _start_two(
        args + ["train.checkpoint_every=100", "train.throttle_s=2"],
        tmp_path,
        "preempt",
        reference["cache"],
    )
    metrics = multi / "metrics.jsonl"  # process 0 writes it, after each step
    while not (metrics.is_file() and metrics.read_text().strip()):
        if any(p.poll() is not None for p, _ in procs) or time.time() - t0 > 240:
            _wait_two(procs, tmp_path, "preempt", want=("running", "running"), timeout=1)
        time.sleep(0.05)
    procs[1][0].send_signal(signal.SIGTERM)
    _wait_two(procs, tmp_path, "preempt", want=(143, 143))
    print(f"two processes, SIGTERM to process 1 after step 1: {time.time() - t0:.1f} s")
    steps = _checkpoint_steps(multi)
    assert len(steps) == 1 and 1 <= steps[0] < 4, steps  # one step, saved by both
    stopped = steps[0]
    for i in range(2):
        assert (
            f"stopped at step {stopped} by SIGTERM" in (tmp_path / f"preempt-{i}.log").read_text()
        )
    assert [r["step"] for r in _metrics(multi)] == list(range(1, stopped + 1))
    assert not (multi / "final").exists() and not (multi / ".lock").exists()

    t0 = time.time()
    _two_processes(
        args + ["--resume", "train.throttle_s=0"], tmp_path, "resume", reference["cache"]
    )
    print(f"two processes, resume, steps {stopped + 1}-4: {time.time() - t0:.1f} s")
    assert _checkpoint_steps(multi) == [stopped, 4]
    _assert_matches_reference(reference, multi)


# The loop's SIGTERM check alone, in two processes: "ready" after `begin(START)` (a resumed run
# reporting its checkpoint's step), then steps (each with a collective, as a train step has) once
# the file GO exists.
_STOP_FLAG = """
import os, sys, time
import numpy as np
from tinywave_jax.parallel.distributed import maybe_initialize
maybe_initialize()
from jax.experimental import multihost_utils
from tinywave_jax.train.loop import _StopFlag
start, go = int(sys.argv[1]), sys.argv[2]
with _StopFlag() as stop:
    stop.begin(start)
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.05)
    for step in range(start + 1, start + 41):
        multihost_utils.process_allgather(np.array([step]))
        if stop.after_step(step):
            print("stopped at", step, flush=True)
            sys.exit(143)
        time.sleep(0.1)
print("finished", flush=True)
"""


@pytest.mark.parametrize("service", ["sync", "allgather"])
def test_sigterm_before_the_first_step_of_a_resumed_run(tmp_path, service):
    """SIGTERM to process 1 while a resumed run (from step 7) restores and compiles: both stop
    after step 8. "sync": jax's preemption sync manager, which settles on a step as soon as the
    notice arrives: without the run's `begin(7)` report the step would be 1 and the run would never
    stop. "allgather": the preemption service off (JAX_ENABLE_PREEMPTION_SERVICE=false), flags
    all-gathered after each step."""
    port = free_port()
    go = tmp_path / "go"
    procs = []
    for pid in range(2):
        # TF_CPP_MIN_LOG_LEVEL 0: the sync manager's INFO lines
        env = process_env(pid, port, devices=1, TF_CPP_MIN_LOG_LEVEL="0")
        if service == "allgather":
            env["JAX_ENABLE_PREEMPTION_SERVICE"] = "false"
        log = open(tmp_path / f"flag-{pid}.log", "w")
        cmd = [sys.executable, "-c", _STOP_FLAG, "7", str(go)]
        procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log))

    def log_has(pid: int, text: str) -> bool:
        return text in (tmp_path / f"flag-{pid}.log").read_text()

    def wait_until(pred, what: str) -> None:
        t0 = time.time()
        while not pred():
            if any(p.poll() is not None for p, _ in procs) or time.time() - t0 > 120:
                _wait_two(procs, tmp_path, "flag", want=(what, what), timeout=1)
            time.sleep(0.05)

    wait_until(lambda: log_has(0, "ready") and log_has(1, "ready"), "ready")
    procs[1][0].send_signal(signal.SIGTERM)
    if service == "sync":  # the step is agreed before any step is taken
        wait_until(lambda: all(log_has(i, "sync counter is set") for i in range(2)), "agreed")
    go.touch()
    _wait_two(procs, tmp_path, "flag", want=(143, 143), timeout=120)
    for i in range(2):
        assert log_has(i, "stopped at 8"), _logs(tmp_path, "flag")
