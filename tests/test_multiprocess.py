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
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from data_fixtures import synthetic_utterance, write_units_manifest
from train_fixtures import TEACHER, distill_dict

ROOT = Path(__file__).resolve().parent.parent

# `tinywave distill` exactly as each host runs it (the CLI calls maybe_initialize() itself).
_LAUNCH = """
import sys
from tinywave_jax.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(args: list[str], tmp: Path, tag: str) -> None:
    port = _free_port()
    procs = []
    for pid in range(2):
        env = dict(
            os.environ,
            XLA_FLAGS="--xla_force_host_platform_device_count=4",
            JAX_PLATFORMS="cpu",
            TINYWAVE_COORDINATOR=f"127.0.0.1:{port}",
            TINYWAVE_NUM_PROCESSES="2",
            TINYWAVE_PROCESS_ID=str(pid),
            PYTHONPATH=str(ROOT),
        )
        # No persistent compile cache: a cache hit in one process and a compile in the other
        # skew them by more than gloo's 30 s context set-up timeout on a loaded machine.
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
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
    codes = []
    for p, log in procs:
        try:
            codes.append(p.wait(timeout=240))
        finally:
            if p.poll() is None:
                p.kill()
            log.close()
    logs = "\n".join((tmp / f"{tag}-{i}.log").read_text()[-3000:] for i in range(2))
    assert codes == [0, 0], f"{tag}: exit codes {codes}\n{logs}"


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


def test_two_processes_checkpoint_resume_match_one_process(tmp_path, monkeypatch):
    import jax

    from tinywave_jax.data.corpus_build import build_corpus
    from tinywave_jax.train import data as train_data
    from tinywave_jax.train import loop

    rng = np.random.default_rng(7)
    manifest = write_units_manifest(
        tmp_path / "units.jsonl", [synthetic_utterance(rng, k) for k in range(24)]
    )
    build_corpus(tmp_path / "corpus", manifest=manifest, shard_size=8, log=lambda *a: None)
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
                "corpus_dir": str(tmp_path / "corpus"),
                "read_threads": 1,
                "layout": {"preset": "spiritlm_expressive"},
            },
        },
    )
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    multi = tmp_path / "multi"
    args = ["distill", str(config_file), f"run_dir={multi}", "--quiet"]
    # two processes: steps 1-2, checkpoint, exit; then --resume for steps 3-4
    t0 = time.time()
    _two_processes(args + ["train.steps=2"], tmp_path, "first")
    print(f"two processes, steps 1-2: {time.time() - t0:.1f} s")
    assert sorted(p.name for p in (multi / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]
    data_state = json.loads((multi / "checkpoints" / "2" / "data" / "metadata").read_text())
    assert [s["process_index"] for s in data_state["processes"]] == [0, 1]
    assert all(s["process_count"] == 2 for s in data_state["processes"])
    assert (multi / "final" / "tinywave.json").is_file()  # exported by both processes together
    t0 = time.time()
    _two_processes(args + ["--resume"], tmp_path, "resume")
    print(f"two processes, resume, steps 3-4: {time.time() - t0:.1f} s")

    # one process, 8 devices, the same global batches, 4 steps straight
    from tinywave_jax.config import from_dict
    from tinywave_jax.train.config import DistillConfig

    single = tmp_path / "single"
    ref_cfg = from_dict(DistillConfig, {**cfg, "run_dir": str(single)})
    assert jax.device_count() == 8 and jax.process_count() == 1
    monkeypatch.setattr(
        loop,
        "make_batches",
        lambda data, vocab, index, count: _Concat(
            [train_data.make_batches(data, vocab, p, 2) for p in range(2)]
        ),
    )
    t0 = time.time()
    loop.run(ref_cfg, echo=False)
    print(f"one process, steps 1-4: {time.time() - t0:.1f} s")

    got, want = _metrics(multi), _metrics(single)
    assert [r["step"] for r in got] == [1, 2, 3, 4] == [r["step"] for r in want]
    for g, w in zip(got, want):
        assert g["num_tokens"] == w["num_tokens"] > 0
        for k in ("loss", "ce", "logit_kl", "hidden", "attention_kl", "grad_norm"):
            np.testing.assert_allclose(
                g[k], w[k], rtol=2e-5, atol=1e-6, err_msg=f"step {g['step']} {k}"
            )
    assert got[-1]["loss"] != got[0]["loss"]  # it trained
    # the student state of step 4 as both runs checkpointed it, restored onto this process's mesh
    import orbax.checkpoint as ocp

    from tinywave_jax.train.recipes import prepare
    from tinywave_jax.train.resume import checkpoint_manager
    from tinywave_jax.train.session import Session

    target = Session(prepare(ref_cfg)).abstract_state()._asdict()

    def params_at_4(run_dir):
        mngr = checkpoint_manager(run_dir, async_save=False)
        try:
            got = mngr.restore(4, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
        finally:
            mngr.close()
        return jax.device_get(got.state["params"])

    p_multi, p_single = params_at_4(multi), params_at_4(single)
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(p_multi), jax.tree_util.tree_leaves(p_single)
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5, err_msg=jax.tree_util.keystr(path))

    # final/ (overwritten by the resumed run, written by both processes together) loads whole
    from tinywave_jax.checkpoint import load_model

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
