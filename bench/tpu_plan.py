"""TinyWave-Base on TPU slices, from the real TPU compiler (libtpu; no TPU needed), next to the
CPU compiler's plan, and the step estimate calibrated on a published run.

    PYTHONPATH=. .venv/bin/python bench/tpu_plan.py [--skip-cpu] [--only v5p|v6e|calibration]
        [--factor F] [--estimate-only]

Each full-size variant compiles in 20-30 min on a loaded 2-core machine: the in-process
compiles (calibration, --estimate-only) keep every variant's cost in
$TPU_PLAN_LOG/variant_costs.json as it finishes, so a stopped run resumes from the first
variant missing (same TPU_PLAN_LOG).

Needs the `tpu` extra (pip install 'tinywave_jax[tpu]'). First the calibration, in this process:
the estimator (step_estimate.py: roofline of the TPU compiler's FLOPs and HBM bytes over
loop-free variants, plus the splash kernels' FLOPs) on `tinywave train` of Llama-3.1-8B's shape
as in MaxText's published v6e-8 benchmark (tpu-recipes Llama3.1-8B-MaxText v6e-8: per-device
batch 3 x 8192 tokens, bf16, 7193.6 tokens/s/device = 45.4% MFU of 918 TFLOP/s in our FLOP
convention); calibration_factor = published MFU / roofline MFU. Then each preset as one
`tinywave plan --estimate` (a subprocess, --json; the step, then 4 loop-free variants), its
roofline scaled by the factor (est_*), and the CPU compiler's plan (unless --skip-cpu).

Prints one line per plan (each plan's whole JSON goes to $TPU_PLAN_LOG/TOPOLOGY.json, default
the temp folder, the calibration's to calibration.json), then ONE JSON line: tpu_peak_gib,
cpu_peak_gib, est_step_s, est_tokens_per_s, est_mfu (tpu-v5p-64), the same with _v6e
(tpu-v6e-64), calibration_est_mfu, calibration_published_mfu, and the raw roofline (with its terms,
roofline_breakdown: [compute s, HBM s] per device of each, step_estimate.breakdown) and
cost-model figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PRESET = [str(REPO / "configs/tinywave_base.yaml"), "teacher.path=null", "teacher.shape={}"]
PRESET += ["data.source=synthetic"]
GiB = 2**30
LOG = Path(os.environ.get("TPU_PLAN_LOG", tempfile.gettempdir()))  # each plan's full JSON

# Llama-3.1-8B (MaxText's llama3.1-8b) and the published v6e-8 run of it
LLAMA31_8B = {
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 8192,
    "rope_theta": 500000.0,
}
# tpu-recipes Llama3.1-8B-MaxText on v6e-8: per-device batch 3 x 8192 tokens, bf16,
# "TFLOP/s/device: 416.601, Tokens/s/device: 7193.579" (their TFLOP/s count the attention over the
# full T x T, as our step_flops does: 7193.579 x 57.9 GFLOP/token = 416.6 TFLOP/s)
PUBLISHED = {"tokens_per_s_per_device": 7193.579, "topology": "v6e:2x4"}
CALIBRATION = {
    "run_dir": "unused",
    "model": {"shape": LLAMA31_8B},
    # one row per chip per micro step (3 micro steps: MaxText's 3 rows per chip), splash attention
    # (train.attention auto on a TPU), full remat
    "train": {"dtype": "bfloat16", "param_dtype": "float32", "remat": "full", "microbatches": 3},
    "mesh": {"data": 1, "fsdp": 8, "tensor": 1},
    "data": {"source": "synthetic", "seq_len": 8192, "batch_size": 24},  # 3 rows x 8 chips
    "logit_chunk_size": 1024,
}


def plan(*argv: str, required: bool = True) -> dict:
    t = time.perf_counter()
    path = [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    proc = subprocess.run(
        [sys.executable, "-m", "tinywave_jax.cli", "plan", *argv, "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode and required:
        sys.exit(f"tinywave plan {' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
    if proc.returncode:
        print(proc.stderr[-3000:], file=sys.stderr)
        return {"error": proc.stderr.strip().splitlines()[-1]}
    print(proc.stderr, file=sys.stderr, end="")
    out = json.loads(proc.stdout)
    (LOG / f"{out['topology'].replace(':', '_')}.json").write_text(json.dumps(out, indent=1))
    est = out.get("estimate") or {}
    print(
        f"{out['topology']} ({out['compiler']}): peak "
        f"{out['xla_memory_per_device_bytes']['peak'] / GiB:.2f} GiB/device"
        + (f", est {est['step_s']:.3f} s/step, MFU {est['mfu']:.3f}" if est.get("step_s") else "")
        + (f", no estimate: {est['reason']}" if est.get("reason") else "")
        + f" [{time.perf_counter() - t:.0f} s]",
        file=sys.stderr,
        flush=True,
    )
    return out


def _terms(est: dict) -> dict:
    """The roofline's terms (step_estimate.breakdown): name -> [compute s, HBM s] per device."""
    return {
        k: [round(t["compute_s"], 4), round(t["memory_s"], 4)] for k, t in est["breakdown"].items()
    }


def _preset(topology: str, suffix: str, skip_cpu: bool, factor) -> dict:
    tpu = plan(*PRESET, "--topology", topology, "--compiler", "tpu", "--estimate")
    est = tpu["estimate"]
    out = {"tpu_peak_gib": round(tpu["xla_memory_per_device_bytes"]["peak"] / GiB, 2)}
    out["attention"] = tpu["attention"]
    if est.get("available"):
        out.update(
            roofline_step_s=round(est["step_s"], 4),
            roofline_mfu=round(est["mfu"], 4),
            roofline_bound=est["bound"],
            roofline_breakdown=_terms(est),
        )
    cm = est.get("cost_model") or {}
    out["cost_model_step_s"] = cm.get("step_s") and round(cm["step_s"], 4)
    if est.get("available") and factor:  # the roofline scaled by the calibration run's ratio
        step = est["step_s"] / factor
        out.update(
            est_step_s=round(step, 3),
            est_tokens_per_s=round(tpu["tokens_per_step"] / step),
            est_mfu=round(est["mfu"] * factor, 4),
        )
    if not skip_cpu:
        cpu = plan(*PRESET, "--topology", topology, "--compiler", "cpu")
        out["cpu_peak_gib"] = round(cpu["xla_memory_per_device_bytes"]["peak"] / GiB, 2)
    return {k + suffix: v for k, v in out.items()}


def cached_cost(path: Path, key: dict, compile_cost) -> dict:
    """`compile_cost()` once per `key` (a variant's whole config, topology, compiler versions
    and source digest): each cost is kept in the JSON file `path` as soon as it is compiled, so a bench
    stopped after some of its 20-30 min variants starts again from the first one missing."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    done = json.loads(path.read_text()) if path.exists() else {}
    if digest in done:
        return done[digest]["cost"]
    cost = compile_cost()
    done = json.loads(path.read_text()) if path.exists() else {}  # another run may have added
    done[digest] = {"key": key, "cost": cost}
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(done, indent=1))
    os.replace(tmp, path)
    return cost


def source_digest() -> str:
    """Digest of the package's Python sources: a cached variant cost is only valid for the code
    that compiled it (a change to, say, the attention KL changes the program, not the config)."""
    h = hashlib.sha256()
    for path in sorted((REPO / "tinywave_jax").rglob("*.py")):
        h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def estimate_only(cfg, topology_name: str, log_name: str):
    """(topology, the estimate) of `cfg` in this process: only the loop-free variants are
    compiled, not the whole step (whose own long compile gives memory, no figure used here).
    Each variant's cost is kept in $TPU_PLAN_LOG/variant_costs.json (cached_cost)."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    from tinywave_jax import tpu
    from tinywave_jax.config import to_dict
    from tinywave_jax.plan import _compile, _xla_cost, resolve_topology
    from tinywave_jax.step_estimate import estimate

    topo = resolve_topology(topology_name)
    devices = tpu.topology_devices(topo.tpu)
    topo = dataclasses.replace(topo, devices=len(devices))
    versions = {"jax": jax.__version__, "libtpu": tpu.libtpu_version(), "code": source_digest()}

    def compile_variant(variant_cfg, label):
        t = time.perf_counter()
        key = {"config": to_dict(variant_cfg), "topology": topo.tpu, **versions}
        cost = cached_cost(
            LOG / "variant_costs.json",
            key,
            lambda: _xla_cost(_compile(variant_cfg, topo, devices)[2]),
        )
        print(f"{log_name} variant {label}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
        return cost

    est = estimate(cfg, topo, devices, compile_variant)
    (LOG / f"{log_name}.json").write_text(json.dumps(est, indent=1))
    return topo, est


def _preset_estimate_only(topology: str, suffix: str, factor) -> dict:
    from tinywave_jax.plan import load_run_config, resolve_topology

    overrides = list(resolve_topology(topology).overrides) + PRESET[1:]
    cfg = load_run_config(PRESET[0], overrides)
    _, est = estimate_only(cfg, topology, f"estimate-{topology}")
    out = {"attention": None}
    if est.get("available"):
        out.update(
            roofline_step_s=round(est["step_s"], 4),
            roofline_mfu=round(est["mfu"], 4),
            roofline_bound=est["bound"],
            roofline_breakdown=_terms(est),
        )
        if factor:
            step = est["step_s"] / factor
            tokens = cfg.data.batch_size * cfg.data.seq_len
            out.update(
                est_step_s=round(step, 3),
                est_tokens_per_s=round(tokens / step),
                est_mfu=round(est["mfu"] * factor, 4),
            )
    else:
        out["estimate_error"] = est.get("reason")
    cm = est.get("cost_model") or {}
    out["cost_model_step_s"] = cm.get("step_s") and round(cm["step_s"], 4)
    from tinywave_jax.models.attention import resolve

    out["attention"] = resolve(cfg.train.attention, "tpu", cfg.data.seq_len)
    return {k + suffix: v for k, v in out.items()}


def calibration() -> dict:
    """The estimator on the published run's shape (estimate_only)."""
    from tinywave_jax.config import from_dict
    from tinywave_jax.train.config import TrainConfig
    from tinywave_jax.train.metrics import step_flops
    from tinywave_jax.train.recipes import prepare

    cfg = from_dict(TrainConfig, CALIBRATION)
    topo, est = estimate_only(cfg, PUBLISHED["topology"], "calibration")
    tokens = cfg.data.batch_size * cfg.data.seq_len
    per_token = step_flops(prepare(cfg).spec, cfg.data.seq_len, cfg.data.batch_size) / tokens
    published = PUBLISHED["tokens_per_s_per_device"] * per_token / topo.peak_flops
    out = {"calibration_published_mfu": round(published, 4)}
    if est.get("available"):
        out.update(
            calibration_est_mfu=round(est["mfu"], 4),
            calibration_factor=round(published / est["mfu"], 4),
            calibration_bound=est["bound"],
        )
    else:
        out["calibration_error"] = est.get("reason")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skip-cpu", action="store_true", help="no CPU-compiler plans")
    ap.add_argument("--only", choices=("v5p", "v6e", "calibration"), default=None)
    ap.add_argument(
        "--factor",
        type=float,
        default=None,
        help="calibration factor from an earlier run (skips the calibration compiles)",
    )
    ap.add_argument(
        "--estimate-only",
        action="store_true",
        help="presets: only the estimate's variants, in this process (no whole-step compile: "
        "no memory figures)",
    )
    args = ap.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, str(REPO))
    out = {}
    if args.factor is None and args.only in (None, "calibration"):
        out.update(calibration())
        print(json.dumps(out), file=sys.stderr, flush=True)
    factor = args.factor or out.get("calibration_factor")
    for name, topology, suffix in (("v5p", "tpu-v5p-64", ""), ("v6e", "tpu-v6e-64", "_v6e")):
        if args.only not in (None, name):
            continue
        if args.estimate_only:
            out.update(_preset_estimate_only(topology, suffix, factor))
        else:
            out.update(_preset(topology, suffix, args.skip_cpu, factor))
        print(json.dumps(out), file=sys.stderr, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
