"""Tiny run configs shared by the training tests (dims divisible by every mesh axis used)."""

from __future__ import annotations

import copy
import os
import socket
import time
from pathlib import Path

from tinywave_jax.config import from_dict
from tinywave_jax.train.config import DistillConfig, TrainConfig

TEACHER = {
    "vocab_size": 128,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def distill_dict(**over) -> dict:
    base = {
        "run_dir": "unused",
        "teacher": {"shape": dict(TEACHER), "seed": 1, "dtype": "float32"},
        "student": {"num_layers": 2},
        "distill": {
            "weights": {"ce": 1.0, "logit_kl": 1.0, "hidden": 1.0, "attention": 1.0},
            "temperature": 2.0,
            "layer_map": "uniform",
            "attention_block_size": 8,
            "logit_chunk_size": 16,
        },
        # eps large vs the gradients: Adam's first step is ~lr * sign(g) for tiny |g|, which would
        # turn round-off in near-zero gradients into lr-sized parameter differences.
        "optimizer": {
            "learning_rate": 1e-2,
            "warmup_steps": 0,
            "weight_decay": 0.1,
            "clip_norm": 1.0,
            "eps": 1e-3,
        },
        "train": {"steps": 10, "log_every": 1, "checkpoint_every": 100, "tensorboard": False},
        "mesh": {"data": 1, "fsdp": -1, "tensor": 1},
        "data": {
            "source": "synthetic",
            "seq_len": 32,
            "batch_size": 8,
            "seed": 0,
            "synthetic": {"branching": 3, "min_doc_len": 6, "max_doc_len": 24},
        },
    }
    return _merge(base, over)


def distill_config(**over) -> DistillConfig:
    return from_dict(DistillConfig, distill_dict(**over))


def train_config(**over) -> TrainConfig:
    d = distill_dict()
    base = {k: d[k] for k in ("run_dir", "optimizer", "train", "mesh", "data")}
    base["model"] = {"shape": dict(TEACHER), "seed": 1}
    return from_dict(TrainConfig, _merge(base, over))


def one_step(cfg, mesh_shape=(1, 1, 1), devices=None, steps: int = 1, batch_index: int = 0):
    """(state, metrics, session) after `steps` train steps of `cfg` on a mesh of `mesh_shape`."""
    import jax

    from tinywave_jax.parallel import MeshConfig, make_mesh
    from tinywave_jax.train.data import make_batches
    from tinywave_jax.train.recipes import prepare
    from tinywave_jax.train.session import Session

    n = mesh_shape[0] * mesh_shape[1] * mesh_shape[2]
    mesh = make_mesh(MeshConfig(*mesh_shape), (devices or jax.devices())[:n])
    session = Session(prepare(cfg), mesh)
    frozen, trainable = session.frozen_and_trainable()
    state = session.init_state(trainable)
    batches = make_batches(cfg.data, session.spec.student.vocab_size)
    for _ in range(batch_index):
        next(batches)
    metrics = None
    for _ in range(steps):
        state, metrics = session.step(state, frozen, session.global_batch(next(batches)))
    return state, {k: float(v) for k, v in jax.device_get(metrics).items()}, session


# One config shared by the resume, projector and weight-0 tests so that they reuse one compiled
# step (via the persistent cache): a narrower random student with a width projector, no attention
# term, 8 steps, on all 8 devices (fsdp).
NARROW_STUDENT = dict(TEACHER, hidden_size=16, intermediate_size=32, num_hidden_layers=2)
SHARED_OVER = {
    "student": {"shape": NARROW_STUDENT, "seed": 2, "num_layers": None},
    "projector": True,
    "distill": {"weights": {"attention": 0.0}},
    "train": {"steps": 8, "checkpoint_every": 3, "log_every": 1},
}


def subprocess_env() -> dict:
    """The environment of a CLI subprocess in the tests: this process's (XLA_FLAGS, the compile
    cache, an emulator's endpoints) with exact matmuls and this checkout importable."""
    env = dict(os.environ)
    env["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(pid: int, port: int, devices: int = 4, **extra: str) -> dict:
    """The environment of process `pid` of a two-process run on loopback (the TINYWAVE_* variables
    `parallel.distributed.maybe_initialize` reads; `devices` simulated CPU devices each; this
    checkout importable), plus `extra`. No persistent compile cache: a cache hit in one process
    and a compile in the other skew them by more than gloo's 30 s context set-up timeout on a
    loaded machine."""
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        TINYWAVE_COORDINATOR=f"127.0.0.1:{port}",
        TINYWAVE_NUM_PROCESSES="2",
        TINYWAVE_PROCESS_ID=str(pid),
        PYTHONPATH=str(Path(__file__).resolve().parents[1]),
        **extra,
    )
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    return env


def wait_for(predicate, proc, what: str, timeout: float = 240.0, poll: float = 0.05):
    """Polls `predicate` until true; fails with the process's stderr if it exits first."""
    t0 = time.time()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(
                f"training exited ({proc.returncode}) before {what}:\n"
                + proc.stderr.read().decode()[-3000:]
            )
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll)
