"""`tinywave plan`: AOT memory/FLOPs plan from abstract inputs on 8 simulated CPU devices."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from train_fixtures import TEACHER, distill_dict

from tinywave_jax import cli
from tinywave_jax.errors import ConfigError
from tinywave_jax.plan import format_plan, make_plan, resolve_topology

GiB = 2**30
# ~1B teacher (16 layers x 2048; compile time does not grow with depth: the layers are scanned),
# 4-layer student cut from it. Nothing is allocated: the plan compiles from ShapeDtypeStructs.
BIG = {
    "vocab_size": 32000,
    "hidden_size": 2048,
    "intermediate_size": 5504,
    "num_hidden_layers": 16,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "max_position_embeddings": 512,
}


def _matmul_params(c, layers):
    h, hd = c["hidden_size"], c["hidden_size"] // c["num_attention_heads"]
    attn = h * hd * (2 * c["num_attention_heads"] + 2 * c["num_key_value_heads"])
    return layers * (attn + 3 * h * c["intermediate_size"]) + c["vocab_size"] * h


def _num_params(c, layers):  # + input embedding + 2 norms per layer + final norm
    h = c["hidden_size"]
    return _matmul_params(c, layers) + c["vocab_size"] * h + (2 * layers + 1) * h


def test_topologies_from_overlays_and_shapes():
    v5p = resolve_topology("tpu-v5p-64")
    assert (v5p.devices, v5p.peak_flops, v5p.hbm_bytes) == (32, 4.59e14, 95e9)
    assert "mesh.fsdp=-1" in v5p.overrides and "train.remat=dots_no_batch" in v5p.overrides
    h100 = resolve_topology("h100x8", hbm_gib=79.0)
    assert h100.devices == 8 and h100.hbm_bytes == 79 * GiB and "mesh.fsdp=8" in h100.overrides
    shape = resolve_topology("2,4,1", peak_tflops=100, hbm_gib=16)
    assert shape.devices == 8 and shape.overrides == ("mesh.data=2", "mesh.fsdp=4", "mesh.tensor=1")
    with pytest.raises(ConfigError, match="needs peak_tflops and hbm_gib"):
        resolve_topology("1,8,1")
    with pytest.raises(ConfigError, match="tpu-v5p-64"):  # lists the known overlays
        resolve_topology("tpu-v9")


def _installed_copy(site: Path) -> Path:
    """What `pip install` puts in site-packages: the package's .py files and its package_data."""
    repo = Path(__file__).resolve().parent.parent
    cfg = configparser.ConfigParser()
    cfg.read(repo / "setup.cfg")
    files = set((repo / "tinywave_jax").rglob("*.py"))
    for pkg, patterns in cfg["options.package_data"].items():
        pkg_dir = repo.joinpath(*pkg.split("."))
        files |= {f for pat in patterns.split(",") for f in pkg_dir.glob(pat.strip())}
    for f in files:
        if "__pycache__" not in f.parts:
            dest = site / f.relative_to(repo)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dest)
    return site


def test_plan_runs_from_an_installed_package_without_the_checkout(tmp_path):
    """The overlays are package data read through importlib.resources: a copy of what an install
    holds (no configs/ or launch/ beside it), run from elsewhere, resolves them and plans."""
    site = _installed_copy(tmp_path / "site")
    cfg = tmp_path / "tiny.yaml"
    # CE only, one student layer: the smallest step to compile (~10 s)
    cfg.write_text(
        yaml.safe_dump(
            distill_dict(
                student={"num_layers": 1},
                distill={"weights": {"ce": 1.0, "logit_kl": 0.0, "hidden": 0.0, "attention": 0.0}},
            )
        )
    )
    script = (
        f"import tinywave_jax, sys\n"
        f"assert tinywave_jax.__file__.startswith({str(site)!r}), tinywave_jax.__file__\n"
        f"from tinywave_jax import cli\n"
        f"sys.exit(cli.main(['plan', {str(cfg)!r}, '--topology', 'cpu', '--devices', '1', '--json']))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(site))
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = json.loads(proc.stdout)
    assert plan["topology"] == "cpu" and plan["devices"] == 1
    assert plan["dtype"] == "float32"  # from the overlay's train.dtype


def test_plan_1b_distill_on_8_devices(tmp_path, capsys):
    seq, rows, s_layers = 128, 16, 4
    cfg = distill_dict(
        teacher={"shape": BIG, "dtype": "bfloat16"},
        student={"num_layers": s_layers},
        distill={"attention_block_size": 64, "logit_chunk_size": 64},
        data={"seq_len": seq, "batch_size": rows},
    )
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(cfg))
    # options after the overrides, a tiny HBM: the plan must say it does not fit
    assert (
        cli.main(
            [
                "plan",
                str(path),
                "train.microbatches=2",
                "--topology",
                "1,8,1",
                "--peak-tflops",
                "100",
                "--hbm-gib",
                "0.05",
                "--mfu",
                "0.5",
                "--json",
            ]
        )
        == 0
    )
    plan = json.loads(capsys.readouterr().out)
    mem, xla = plan["memory_per_device_bytes"], plan["xla_memory_per_device_bytes"]

    student_total = 4 * _num_params(BIG, s_layers)  # float32 master weights
    teacher_total = 2 * _num_params(BIG, 16)  # bfloat16, frozen
    assert plan["devices"] == 8 and plan["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    # fsdp shards everything but the (tiny, replicated) norm scales
    np.testing.assert_allclose(mem["student_params"], student_total / 8, rtol=0.01)
    np.testing.assert_allclose(
        mem["optimizer_state"], 2 * student_total / 8, rtol=0.01
    )  # Adam m, v
    np.testing.assert_allclose(mem["teacher_params"], teacher_total / 8, rtol=0.01)
    assert mem["batch"] == 5 * 4 * rows * seq // 8
    # XLA's arguments are exactly those inputs (+ the step counter and RNG key)
    inputs = sum(mem.values())
    assert inputs <= xla["argument"] <= inputs + 1024
    assert xla["temp"] > 0 and xla["output"] > 0
    assert xla["alias"] >= mem["student_params"] + mem["optimizer_state"]  # donated state reused
    assert xla["peak"] == xla["argument"] + xla["output"] - xla["alias"] + xla["temp"]
    assert plan["fits"] is False and xla["peak"] > 0.05 * GiB

    # model FLOPs: 6 N_s + 12 L_s d T (student) + 2 N_t + 4 L_t d T (teacher) per token
    d = BIG["hidden_size"]
    per_token = (
        6 * _matmul_params(BIG, s_layers)
        + 12 * s_layers * d * seq
        + 2 * _matmul_params(BIG, 16)
        + 4 * 16 * d * seq
    )
    # rtol: the trainer counts the 2 RMSNorm scales per layer as matmul parameters (7e-5 here)
    np.testing.assert_allclose(plan["model_flops_per_step"], per_token * rows * seq, rtol=2e-4)
    assert plan["xla_flops_per_step"] > 0 and plan["xla_flops_loops_counted_once"]
    np.testing.assert_allclose(plan["step_s"], plan["model_flops_per_step"] / (8 * 100e12 * 0.5))
    np.testing.assert_allclose(plan["tokens_per_s"], rows * seq / plan["step_s"])

    text = format_plan(plan)
    assert "DOES NOT FIT" in text and "teacher params" in text
    plan["hbm_per_device_bytes"], plan["fits"] = 80 * GiB, True
    assert "fits:" in format_plan(plan) and "DOES NOT FIT" not in format_plan(plan)


def test_plan_memory_matches_a_real_step(tmp_path):
    """The plan (abstract inputs) against a real run's step: the bytes of the arrays the trainer
    actually allocates on device 0, and the buffer assignment of the step it actually compiles."""
    import jax

    from tinywave_jax.config import from_dict
    from tinywave_jax.parallel import MeshConfig, batch_sharding, make_mesh
    from tinywave_jax.plan import Topology
    from tinywave_jax.train.config import DistillConfig
    from tinywave_jax.train.data import make_batches
    from tinywave_jax.train.recipes import prepare
    from tinywave_jax.train.session import Session

    cfg = from_dict(
        DistillConfig,
        distill_dict(
            teacher={"shape": dict(TEACHER, vocab_size=256)},
            mesh={"data": 2, "fsdp": 4, "tensor": 1},
        ),
    )
    plan = make_plan(cfg, Topology("test", 8, (), 1e12, 1e9))

    session = Session(prepare(cfg), make_mesh(MeshConfig(2, 4, 1)))
    frozen, trainable = session.frozen_and_trainable()
    state = session.init_state(trainable)
    bsh = batch_sharding(session.mesh)
    batch = {
        k: jax.make_array_from_process_local_data(bsh, v)
        for k, v in next(make_batches(cfg.data, 256)).items()
    }
    dev0 = jax.devices()[0]

    def on_dev0(tree):
        return sum(
            s.data.nbytes
            for x in jax.tree_util.tree_leaves(tree)
            for s in x.addressable_shards
            if s.device == dev0
        )

    mem = plan["memory_per_device_bytes"]
    assert mem["student_params"] == on_dev0(state.params)
    assert mem["optimizer_state"] == on_dev0(state.opt_state)
    assert mem["teacher_params"] == on_dev0(frozen["teacher"])
    assert mem["batch"] == on_dev0(batch)
    real_args = on_dev0((state, frozen, batch))
    xla = plan["xla_memory_per_device_bytes"]
    assert xla["argument"] == real_args

    state, _ = session.step(state, frozen, batch)  # the trainer's own compiled step
    real = session.step._compiled.memory_analysis()
    for k in ("argument", "output", "alias", "temp"):
        got, want = xla[k], getattr(real, f"{k}_size_in_bytes")
        assert abs(got - want) <= 0.01 * want, (k, got, want)  # identical when measured
