"""`tinywave plan` with the real TPU compiler (libtpu, the `tpu` extra; no TPU attached): a tiny
distill step compiled for a 4-chip v5p slice, so a TPU-only compile failure shows up here."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from bench_module import load_bench
from train_fixtures import distill_dict

from tinywave_jax import cli, tpu
from tinywave_jax.errors import ConfigError
from tinywave_jax.plan import choose_compiler, format_plan, resolve_topology
from tinywave_jax.step_estimate import breakdown


def _write(tmp_path, **over):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(distill_dict(**over)))
    return str(path)


def _plan(capsys, *argv) -> dict:
    assert cli.main(["plan", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_tiny_distill_step_compiles_for_a_v5p_slice(tmp_path, capsys):
    cfg = _write(tmp_path, teacher={"dtype": "bfloat16"}, train={"dtype": "bfloat16"})
    tpu_plan = _plan(capsys, cfg, "--topology", "v5p:2x2x1")
    assert tpu_plan["backend_compiled_for"] == "tpu" and tpu_plan["devices"] == 4
    assert tpu_plan["compiler"].startswith("TPU compiler (libtpu 0.0.")
    assert tpu_plan["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    # peak FLOP/s and HBM of a bare slice come from the overlay of its generation (tpu-v5p-64)
    assert tpu_plan["peak_flops_per_device"] == 4.59e14 and tpu_plan["hbm_per_device_bytes"] == 95e9
    x = tpu_plan["xla_memory_per_device_bytes"]
    assert x["temp"] > 0 and x["peak"] == x["argument"] + x["output"] - x["alias"] + x["temp"]
    assert tpu_plan["fits"] is True
    cost = tpu_plan["xla_cost_per_device"]
    assert cost["flops"] > 0 and "optimal_seconds" in cost  # the TPU cost model's own figure

    # the same step for 4 simulated CPU devices: the same exact per-device state, another program
    cpu_plan = _plan(capsys, cfg, "--topology", "1,4,1", "--peak-tflops", "1", "--hbm-gib", "1")
    assert cpu_plan["backend_compiled_for"] == "cpu" and cpu_plan["compiler"] == "CPU compiler"
    assert cpu_plan["memory_per_device_bytes"] == tpu_plan["memory_per_device_bytes"]
    assert cpu_plan["model_flops_per_step"] == tpu_plan["model_flops_per_step"]
    assert "optimal_seconds" not in cpu_plan["xla_cost_per_device"]


def test_estimate_puts_the_loop_trip_counts_back(tmp_path, capsys):
    """The estimator's arithmetic (variants at 1-2 student and 2-4 teacher layers, extrapolated
    to the run's depths) against a step that has no loop at all (layers unrolled, one logit
    chunk, one attention-KL block, one microbatch), whose own cost analysis is therefore whole."""
    cfg = _write(
        tmp_path,
        teacher={"dtype": "bfloat16"},
        train={"dtype": "bfloat16", "scan_layers": False},
        distill={"logit_chunk_size": None, "attention_block_size": 32},
    )
    plan = _plan(capsys, cfg, "--topology", "v5p:2x2x1", "--estimate")
    est, whole = plan["estimate"], plan["xla_cost_per_device"]
    assert est["available"] and len(est["variants"]) == 3  # (1, 2), (2, 2), (1, 4) layers
    assert plan["xla_flops_loops_counted_once"] is False
    np.testing.assert_allclose(est["xla_flops_per_step"], 4 * whole["flops"], rtol=0.01)
    np.testing.assert_allclose(est["cost_model"]["step_s"], whole["optimal_seconds"], rtol=0.05)
    # the roofline of the whole loop-free program (dense attention at T = 32: no kernel FLOPs)
    assert est["splash_kernel_flops_per_step"] == 0
    bound = max(whole["flops"] / 4.59e14, whole["bytes_accessed"] / 2.765e12)
    np.testing.assert_allclose(est["step_s"], bound, rtol=0.02)
    assert est["mfu"] == pytest.approx(
        plan["model_flops_per_step"] / (4 * 4.59e14 * est["step_s"]), rel=1e-9
    )
    # the breakdown's terms add up to the roofline's two sides
    terms = est["breakdown"].values()
    assert sum(t["compute_s"] for t in terms) == pytest.approx(est["compute_s"], rel=1e-9)
    assert sum(t["memory_s"] for t in terms) == pytest.approx(est["memory_s"], rel=1e-9)
    text = format_plan(plan)  # the text plan lists them under the estimate
    for name, t in est["breakdown"].items():
        assert f"    {name}: compute {t['compute_s']:.3f} s, HBM {t['memory_s']:.3f} s" in text


def test_breakdown_recovers_each_term_of_the_linear_model():
    """Variants made from known per-term costs (base, per student / teacher layer, logit chunk
    body) at the estimator's points: the breakdown gives each term back, times its count."""
    base, student, teacher, body = 5.0, 7.0, 3.0, 2.0  # per device, per micro step

    def cost(ls, lt, chunk_scale):  # the variant's loop runs its chunk body once
        return base + student * ls + teacher * lt + body * chunk_scale

    points = [(1, 2, 1.0), (2, 2, 1.0), (1, 4, 1.0), (1, 2, 0.5)]  # last: half the chunk
    est = {
        "microbatches": 2,
        "variants": [{"flops": 10 * cost(*p), "bytes_accessed": 100 * cost(*p)} for p in points],
        "splash_kernel_flops_by_model": {"student": 80.0, "teacher": 0.0},
    }
    terms = breakdown(est, ls=10, lt=32, n_chunks=4, devices=4, peak=10.0, bandwidth=100.0)
    expect = {
        "student layers (10)": 2 * student * 10,
        "teacher layers (32)": 2 * teacher * 32,
        "logit chunks (4)": 2 * body * 4,
        "rest": 2 * base,
    }
    for name, seconds in expect.items():
        assert terms[name]["compute_s"] == pytest.approx(seconds)
        assert terms[name]["memory_s"] == pytest.approx(seconds)
    assert terms["splash kernels (student)"] == {"compute_s": 2.0, "memory_s": 0.0}
    assert "splash kernels (teacher)" not in terms

    # a train step: no teacher, variants at 1 and 2 layers, then the half chunk
    est["variants"] = [est["variants"][i] for i in (0, 1, 3)]  # teacher cost is per variant
    terms = breakdown(est, ls=10, lt=0, n_chunks=4, devices=4, peak=10.0, bandwidth=100.0)
    assert set(terms) == {
        "student layers (10)",
        "logit chunks (4)",
        "rest",
        "splash kernels (student)",
    }
    assert terms["student layers (10)"]["compute_s"] == pytest.approx(2 * student * 10)
    assert terms["rest"]["memory_s"] == pytest.approx(2 * (base + 2 * teacher))


def test_overlays_name_their_slices():
    for name, slice_name, chips in (
        ("tpu-v5p-64", "v5p:4x4x2", 32),
        ("tpu-v5e-64", "v5e:8x8", 64),
        ("tpu-v6e-64", "v6e:8x8", 64),
    ):
        topo = resolve_topology(name)
        assert (topo.tpu, topo.devices) == (slice_name, chips)
        assert choose_compiler(topo) == "tpu"
    assert resolve_topology("h100x8").tpu is None
    assert choose_compiler(resolve_topology("h100x8")) == "cpu"
    bare = resolve_topology("v6e:2x2", hbm_gib=8)
    assert (bare.devices, bare.overrides, bare.hbm_bytes) == (4, (), 8 * 2**30)
    assert bare.peak_flops == 9.18e14  # from tpu-v6e-64's hw: section
    assert resolve_topology("v4:2x2x1").peak_flops is None  # no v4 overlay: give --peak-tflops


@pytest.mark.parametrize("name", ["v5p:3x3x1", "v9:2x2"])
def test_a_slice_libtpu_cannot_build_names_it_and_the_forms(tmp_path, name):
    with pytest.raises(ConfigError, match=rf"topology '{name}'.*v5p:4x4x2.*v6e:8x8"):
        cli_run(tmp_path, "--topology", name)


def test_unknown_topology_lists_every_form():
    with pytest.raises(ConfigError) as e:
        resolve_topology("v5p-64")
    for form in ("tpu-v5p-64", "DATA,FSDP,TENSOR", "v5p:2x2x1", "v6e:8x8"):
        assert form in str(e.value)


def test_devices_cannot_resize_a_tpu_slice(tmp_path):
    with pytest.raises(ConfigError, match="--devices: the TPU slice v5p:4x4x2 fixes"):
        cli_run(tmp_path, "--topology", "tpu-v5p-64", "--devices", "12")


def cli_run(tmp_path, *argv):
    """The plan command's own function, so that its ConfigError reaches the test."""
    args = cli.build_parser().parse_args(["plan", _write(tmp_path), *argv])
    return args.func(args)


def test_without_libtpu_auto_uses_the_cpu_and_tpu_names_the_extra(monkeypatch):
    monkeypatch.setattr(tpu, "libtpu_available", lambda: False)
    topo = resolve_topology("tpu-v5p-64")
    assert choose_compiler(topo) == "cpu"
    with pytest.raises(
        ConfigError, match=r"libtpu is not installed: pip install 'tinywave_jax\[tpu\]'"
    ):
        choose_compiler(topo, "tpu")
    with pytest.raises(ConfigError, match=r"needs libtpu: pip install 'tinywave_jax\[tpu\]'"):
        tpu.topology_devices("v5p:2x2x1")


def test_a_step_larger_than_hbm_names_the_peak_the_largest_arrays_and_remedies(tmp_path):
    # 64 rows x 2048 tokens of unchunked float32 logits over a 256k vocabulary: ~34 GB per chip
    # of a 4-chip v5e slice (16 GB each); the model itself is tiny
    big_vocab = dict(
        distill_dict()["teacher"]["shape"], vocab_size=262144, max_position_embeddings=2048
    )
    path = tmp_path / "big.yaml"
    path.write_text(
        yaml.safe_dump(
            distill_dict(
                teacher={"shape": big_vocab},
                student={"num_layers": 1},
                distill={
                    "logit_chunk_size": None,
                    "weights": {"ce": 1.0, "logit_kl": 0.0, "hidden": 0.0, "attention": 0.0},
                },
                data={"seq_len": 2048, "batch_size": 64},
            )
        )
    )
    args = cli.build_parser().parse_args(["plan", str(path), "--topology", "v5e:2x2"])
    with pytest.raises(ConfigError) as e:
        args.func(args)
    msg = str(e.value)
    assert msg.startswith("does not fit on v5e:2x2: the TPU compiler says:")
    assert "exceeds available HBM" in msg  # libtpu's own required-vs-available figures
    assert "Largest arrays per chip: " in msg and "embed" in msg  # the [262144, 32] tables
    assert "train.microbatches" in msg and "train.remat=full" in msg


def test_libtpu_installed_does_not_start_a_tpu_backend_in_ordinary_runs():
    """On this TPU-less machine with libtpu installed, a fresh process with no JAX_PLATFORMS (jax
    0.10 would try libtpu's TPU client there, which prints a screen of host-discovery warnings)
    is pinned to the CPU by the guard the CLI calls first, before jax's first use."""
    assert tpu.libtpu_available() and not tpu.machine_has_tpu()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "TPU_"))}
    script = (
        "import jax\n"
        "from jax._src import config\n"
        "from tinywave_jax.tpu import keep_jax_off_absent_tpu\n"
        "before = config.jax_platforms.value\n"
        "keep_jax_off_absent_tpu()\n"
        "print(repr(before), repr(config.jax_platforms.value), jax.devices()[0].platform)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["None", "'cpu'", "cpu"]
    assert "TPU" not in run.stderr, run.stderr[-2000:]
    # an explicit choice is left alone
    env["JAX_PLATFORMS"] = ""
    run = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0 and run.stdout.split()[:2] == ["''", "''"], run.stderr[-2000:]


def _bench():
    return load_bench("tpu_plan")


def test_bench_keeps_each_variant_cost_so_a_stopped_run_resumes(tmp_path):
    cached_cost = _bench().cached_cost
    path, calls = tmp_path / "variant_costs.json", []

    def compile_cost(flops):
        def run():
            calls.append(flops)
            return {"flops": flops}

        return run

    key = {"config": {"train": {"microbatches": 1}}, "topology": "v6e:8x8", "libtpu": "0.0.42"}
    assert cached_cost(path, key, compile_cost(1.0)) == {"flops": 1.0}
    # a later process (the file is all it shares): the same key is not compiled again
    assert cached_cost(path, dict(key), compile_cost(2.0)) == {"flops": 1.0}
    other = dict(key, topology="v5p:4x4x2")
    assert cached_cost(path, other, compile_cost(3.0)) == {"flops": 3.0}
    assert calls == [1.0, 3.0]
    assert len(json.loads(path.read_text())) == 2


def test_bench_cache_key_changes_with_the_package_sources(tmp_path, monkeypatch):
    """A cached variant cost belongs to the code that compiled it: editing any module of the
    package (the attention KL, say) gives a new key, so the variant is compiled again."""
    bench = _bench()
    pkg = tmp_path / "tinywave_jax" / "distill"
    pkg.mkdir(parents=True)
    (pkg / "attention_kl.py").write_text("X = 1\n")
    monkeypatch.setattr(bench, "REPO", tmp_path)
    before = bench.source_digest()
    assert bench.source_digest() == before
    (pkg / "attention_kl.py").write_text("X = 2\n")
    assert bench.source_digest() != before
