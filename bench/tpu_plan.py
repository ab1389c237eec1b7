"""TinyWave-Base on TPU slices, from the real TPU compiler (libtpu; no TPU needed), next to the
CPU compiler's plan, and the TPU cost model's step estimate calibrated on a published run.

    PYTHONPATH=. .venv/bin/python bench/tpu_plan.py [--skip-cpu] [--only v5p|v6e|calibration]

Needs the `tpu` extra (pip install 'tinywave_jax[tpu]'). Each figure is one `tinywave plan` run
(a subprocess, --json): the preset's TPU plan with --estimate (the step, then 3 loop-free
variants: ~10 min on 2 cores for v5p-64, ~4 for v6e-64), the preset's CPU plan (~1-2 min each),
and the calibration: `tinywave train` of Llama-3.1-8B's shape at MaxText's published v6e-8
benchmark (tpu-recipes, Llama3.1-8B-MaxText v6e-8: per-device batch 3 x 8192 tokens, bf16,
"TFLOP/s/device: 416.601, Tokens/s/device: 7193.579" on a 918 TFLOP/s chip = 45.4% MFU, with
the non-causal attention FLOPs our step_flops also counts).

Prints one line per plan (each plan's whole JSON goes to $TPU_PLAN_LOG/TOPOLOGY.json, default
the temp folder), then ONE JSON line: tpu_peak_gib, cpu_peak_gib, est_step_s,
est_tokens_per_s, est_mfu (tpu-v5p-64), the same with _v6e (tpu-v6e-64), calibration_est_mfu,
calibration_published_mfu.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

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
PUBLISHED = {"tflops_per_device": 416.601, "peak_tflops": 918.0, "topology": "v6e:2x4"}
CALIBRATION = {
    "run_dir": "unused",
    "model": {"shape": LLAMA31_8B},
    # Our dense attention's [32, 8192, 8192] float32 scores are 8.6 GB per row (MaxText's splash
    # attention holds no such tile): one row per chip per micro step needs 31.35 of v6e's 31.25
    # GB. Heads split over tensor=2 and 6 microbatches (one row per fsdp shard, half the heads per
    # chip) keep the per-chip work of 3 rows x 8192 tokens and halve the tile.
    "train": {"dtype": "bfloat16", "param_dtype": "float32", "remat": "full", "microbatches": 6},
    "mesh": {"data": 1, "fsdp": 4, "tensor": 2},
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


def _preset(topology: str, suffix: str, skip_cpu: bool) -> dict:
    tpu = plan(*PRESET, "--topology", topology, "--compiler", "tpu", "--estimate")
    est = tpu["estimate"]
    out = {
        "tpu_peak_gib": round(tpu["xla_memory_per_device_bytes"]["peak"] / GiB, 2),
        "est_step_s": est.get("step_s") and round(est["step_s"], 3),
        "est_tokens_per_s": est.get("tokens_per_s") and round(est["tokens_per_s"]),
        "est_mfu": est.get("mfu") and round(est["mfu"], 4),
    }
    if not skip_cpu:
        cpu = plan(*PRESET, "--topology", topology, "--compiler", "cpu")
        out["cpu_peak_gib"] = round(cpu["xla_memory_per_device_bytes"]["peak"] / GiB, 2)
    return {k + suffix: v for k, v in out.items()}


def _calibration() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "llama31_8b.yaml"
        cfg.write_text(yaml.safe_dump(CALIBRATION))
        p = plan(str(cfg), "--topology", PUBLISHED["topology"], "--estimate", required=False)
    est = p.get("estimate") or {}
    return {
        "calibration_est_mfu": est.get("mfu") and round(est["mfu"], 4),
        "calibration_error": p.get("error") or est.get("reason"),
        "calibration_published_mfu": round(
            PUBLISHED["tflops_per_device"] / PUBLISHED["peak_tflops"], 4
        ),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skip-cpu", action="store_true", help="no CPU-compiler plans")
    ap.add_argument("--only", choices=("v5p", "v6e", "calibration"), default=None)
    args = ap.parse_args()
    out = {}
    if args.only in (None, "v5p"):
        out.update(_preset("tpu-v5p-64", "", args.skip_cpu))
    if args.only in (None, "v6e"):
        out.update(_preset("tpu-v6e-64", "_v6e", args.skip_cpu))
    if args.only in (None, "calibration"):
        out.update(_calibration())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
