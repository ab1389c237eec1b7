"""One bf16 layer-aligned distillation step on an accelerator: step time, tokens/s, MFU, peak memory.

The step is the one `tinywave distill` runs (`train.session.Session`, built from
configs/tinywave_base.yaml): CE + T^2 logit KL + cosine hidden + blockwise attention KL at every
mapped layer pair, the teacher (bf16 params and compute) outside the gradient, the student in
float32 master weights with bf16 compute, AdamW, remat per --remat, one microbatch, mesh = all
local devices as fsdp. Weights and tokens are random: speed does not depend on their values.

MFU counts model FLOPs only (PaLM convention, no remat recomputation):
  student 3 x forward + teacher 1 x forward, forward = 2 * non-embedding params + 2 * D * V
  + 4 * L * T * D (attention scores and values, full T x T) per token.
The denominator is --peak-tflops (default 989: H100 SXM dense bf16 spec).

  python bench/distill_step_accel.py --preset tinywave --batch 2 --seq 2048
  python bench/distill_step_accel.py --preset cpu-smoke      # tiny shapes, for checking the script
Prints one JSON line per measured configuration.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np
import yaml

from tinywave_jax.models import config as mc

PRESETS = {
    # SpiritLM-Base-7B teacher -> TinyWave-Base 2B student, the paper's 32 -> 10 map.
    "tinywave": (mc.SPIRITLM_BASE_7B, mc.TINYWAVE_BASE_2B, "tinywave"),
    # Half width, for cards that cannot hold the full pair.
    "half": (
        mc.SPIRITLM_BASE_7B.replace(
            hidden_size=2048, intermediate_size=5504, num_attention_heads=16, num_key_value_heads=16
        ),
        mc.SPIRITLM_BASE_7B.replace(
            hidden_size=2048,
            intermediate_size=5504,
            num_attention_heads=16,
            num_key_value_heads=16,
            num_hidden_layers=10,
        ),
        "tinywave",
    ),
    "cpu-smoke": (
        mc.tiny_config(num_hidden_layers=6),
        mc.tiny_config(num_hidden_layers=2),
        "uniform",
    ),
}


def forward_flops_per_token(c: mc.LlamaConfig, seq: int) -> float:
    non_embed = c.num_params() - c.vocab_size * c.hidden_size * (1 if c.tie_word_embeddings else 2)
    attn_width = c.num_attention_heads * c.head_dim
    return (
        2 * non_embed
        + 2 * c.hidden_size * c.vocab_size
        + 4 * c.num_hidden_layers * seq * attn_width
    )


def project_config(preset: str, batch: int, seq: int, remat: str):
    """configs/tinywave_base.yaml with random weights of the preset's shapes and synthetic tokens."""
    from tinywave_jax.config import load_config, to_dict
    from tinywave_jax.train.config import DistillConfig

    tbase, sbase, map_name = PRESETS[preset]
    shape = {
        k: v
        for k, v in to_dict(tbase).items()
        if k in mc.LlamaConfig.HF_KEYS or k in ("rope_theta",)
    }
    over = [
        "teacher.path=null",
        f"teacher.shape={yaml.safe_dump(shape, default_flow_style=True, width=10**6).strip()}",
        "teacher.dtype=bfloat16",
        f"student.num_layers={sbase.num_hidden_layers}",
        f"distill.layer_map={map_name}",
        "data.source=synthetic",
        f"data.seq_len={seq}",
        f"data.batch_size={batch}",
        f"data.synthetic.vocab_size={tbase.vocab_size}",
        "train.microbatches=1",
        f"train.remat={remat}",
        "mesh.fsdp=-1",
    ]
    return load_config(DistillConfig, "configs/tinywave_base.yaml", over)


def measure(
    preset: str, batch: int, seq: int, steps: int, peak_tflops: float, remat: str = "full"
) -> dict:
    """Times the project's own compiled step (`train.session.Session`), as `tinywave distill` runs it."""
    from tinywave_jax.train.data import make_batches
    from tinywave_jax.train.recipes import prepare
    from tinywave_jax.train.session import Session

    cfg = project_config(preset, batch, seq, remat)
    recipe = prepare(cfg)
    session = Session(recipe)
    frozen, trainable = session.frozen_and_trainable()
    state = session.init_state(trainable)
    batches = make_batches(cfg.data, recipe.spec.student.vocab_size)
    data = session.global_batch(next(batches))
    t0 = time.perf_counter()
    state, metrics = session.step(state, frozen, data)  # compiles on the first call
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        data = session.global_batch(next(batches))
        t0 = time.perf_counter()
        state, metrics = session.step(state, frozen, data)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    tokens = batch * seq
    ours = tokens * (
        3 * forward_flops_per_token(recipe.spec.student, seq)
        + forward_flops_per_token(recipe.spec.teacher, seq)
    )
    mem = jax.devices()[0].memory_stats() or {}
    return {
        "preset": preset,
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "teacher_params": recipe.spec.teacher.num_params(),
        "student_params": recipe.spec.student.num_params(),
        "batch": batch,
        "seq": seq,
        "remat": remat,
        "first_step_s": round(compile_s, 1),
        "step_s": round(step_s, 4),
        "tokens_per_s": round(tokens / step_s, 1),
        "model_tflop_per_step": round(ours / 1e12, 2),
        "mfu": round(ours / step_s / (peak_tflops * 1e12), 4),
        "peak_tflops": peak_tflops,
        "peak_mem_gib": round(mem.get("peak_bytes_in_use", 0) / 2**30, 2),
        "loss": float(metrics["loss"]),
        "terms": {
            k: round(float(metrics[k]), 4) for k in ("ce", "logit_kl", "hidden", "attention_kl")
        },
    }


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", default="tinywave", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, nargs="+", default=[2])
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--remat", default="full", help="train.remat for the student")
    a = ap.parse_args()
    for b in a.batch:
        try:
            print(
                json.dumps(measure(a.preset, b, a.seq, a.steps, a.peak_tflops, a.remat)), flush=True
            )
        except Exception as e:  # e.g. out of memory at this batch: report and try the next
            print(
                json.dumps(
                    {
                        "preset": a.preset,
                        "batch": b,
                        "seq": a.seq,
                        "error": f"{type(e).__name__}: {str(e)[:300]}",
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
