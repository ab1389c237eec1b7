"""One bf16 layer-aligned distillation step on an accelerator: step time, tokens/s, MFU, peak memory.

The step is the project's objective (`distill.distill_loss`: CE + T^2 logit KL + cosine hidden +
blockwise attention KL at every mapped layer pair) on the Flax model, with the teacher (bf16 params
and compute) outside the gradient and the student in float32 master weights with bf16 compute,
AdamW, full remat. Weights are random: speed does not depend on their values.

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
import jax.numpy as jnp
import numpy as np
import optax

from tinywave_jax.distill import DistillLossConfig, distill_loss
from tinywave_jax.distill.layer_map import resolve_layer_map
from tinywave_jax.models import config as mc
from tinywave_jax.models import llama

PRESETS = {
    # SpiritLM-Base-7B teacher -> TinyWave-Base 2B student, the paper's 32 -> 10 map.
    "tinywave": (mc.SPIRITLM_BASE_7B, mc.TINYWAVE_BASE_2B, "tinywave"),
    # Half width, for cards that cannot hold the full pair.
    "half": (mc.SPIRITLM_BASE_7B.replace(hidden_size=2048, intermediate_size=5504, num_attention_heads=16,
                                         num_key_value_heads=16),
             mc.SPIRITLM_BASE_7B.replace(hidden_size=2048, intermediate_size=5504, num_attention_heads=16,
                                         num_key_value_heads=16, num_hidden_layers=10), "tinywave"),
    "cpu-smoke": (mc.tiny_config(num_hidden_layers=6), mc.tiny_config(num_hidden_layers=2), "uniform"),
}


def forward_flops_per_token(c: mc.LlamaConfig, seq: int) -> float:
    non_embed = c.num_params() - c.vocab_size * c.hidden_size * (1 if c.tie_word_embeddings else 2)
    attn_width = c.num_attention_heads * c.head_dim
    return 2 * non_embed + 2 * c.hidden_size * c.vocab_size + 4 * c.num_hidden_layers * seq * attn_width


def build_step(tcfg, scfg, loss_cfg, t_layers, optimizer):
    teacher, student = llama.Llama(tcfg), llama.Llama(scfg)
    s_layers = tuple(range(scfg.num_hidden_layers))

    def features(out, params, cfg):
        return {"final_hidden": out.final_hidden, "head_kernel": llama.lm_head_kernel(params, cfg),
                "hidden": out.hidden, "q": out.queries, "k": out.keys}

    def step(s_params, opt_state, t_params, batch):
        args = (batch["input_ids"], batch["positions"], batch["segment_ids"])
        t_out = teacher.apply({"params": t_params}, *args, tap_layers=t_layers, tap_hidden=True,
                              tap_qk=True, return_logits=False)
        t_feat = jax.lax.stop_gradient(features(t_out, t_params, tcfg))

        def loss_fn(p):
            s_out = student.apply({"params": p}, *args, tap_layers=s_layers, tap_hidden=True,
                                  tap_qk=True, return_logits=False)
            return distill_loss(loss_cfg, batch, features(s_out, p, scfg), t_feat)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(s_params)
        updates, opt_state = optimizer.update(grads, opt_state, s_params)
        metrics["grad_norm"] = optax.global_norm(grads)
        return optax.apply_updates(s_params, updates), opt_state, metrics

    return jax.jit(step, donate_argnums=(0, 1))


def measure(preset: str, batch: int, seq: int, steps: int, peak_tflops: float) -> dict:
    tbase, sbase, map_name = PRESETS[preset]
    tcfg = tbase.replace(dtype="bfloat16", param_dtype="bfloat16", remat="none")
    scfg = sbase.replace(dtype="bfloat16", param_dtype="float32", remat="full")
    lmap = resolve_layer_map(map_name, tcfg.num_hidden_layers, scfg.num_hidden_layers)
    t_layers = tuple(int(t) for t in lmap.teacher_for_student)
    loss_cfg = DistillLossConfig(layer_map=map_name)
    optimizer = optax.adamw(1e-4, weight_decay=0.01)

    t_params = jax.jit(lambda k: llama.init_params(tcfg, k))(jax.random.key(0))
    s_params = jax.jit(lambda k: llama.init_params(scfg, k))(jax.random.key(1))
    opt_state = jax.jit(optimizer.init)(s_params)
    rs = np.random.RandomState(0)
    data = {
        "input_ids": jnp.asarray(rs.randint(3, tcfg.vocab_size, (batch, seq)), jnp.int32),
        "positions": jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq)),
        "segment_ids": jnp.ones((batch, seq), jnp.int32),
        "loss_mask": jnp.ones((batch, seq), jnp.float32).at[:, -1].set(0.0),
    }
    data["targets"] = jnp.roll(data["input_ids"], -1, axis=1)
    step = build_step(tcfg, scfg, loss_cfg, t_layers, optimizer)

    t0 = time.perf_counter()
    compiled = step.lower(s_params, opt_state, t_params, data).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    s_params, opt_state, metrics = compiled(s_params, opt_state, t_params, data)  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        s_params, opt_state, metrics = compiled(s_params, opt_state, t_params, data)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    tokens = batch * seq
    model_flops = tokens * (3 * forward_flops_per_token(scfg, seq) + forward_flops_per_token(tcfg, seq))
    mem = jax.devices()[0].memory_stats() or {}
    return {
        "preset": preset, "device": jax.devices()[0].device_kind, "jax": jax.__version__,
        "teacher_params": tcfg.num_params(), "student_params": scfg.num_params(),
        "batch": batch, "seq": seq, "compile_s": round(compile_s, 1), "step_s": round(step_s, 4),
        "tokens_per_s": round(tokens / step_s, 1),
        "model_tflop_per_step": round(model_flops / 1e12, 2),
        "mfu": round(model_flops / step_s / (peak_tflops * 1e12), 4), "peak_tflops": peak_tflops,
        "xla_tflop_per_step": round(float(cost.get("flops", 0.0)) / 1e12, 2) if cost else None,
        "peak_mem_gib": round(mem.get("peak_bytes_in_use", 0) / 2**30, 2),
        "loss": float(metrics["loss"]), "terms": {k: round(float(metrics[k]), 4) for k in
                                                  ("ce", "logit_kl", "hidden", "attention_kl")},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tinywave", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, nargs="+", default=[2])
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    a = ap.parse_args()
    for b in a.batch:
        try:
            print(json.dumps(measure(a.preset, b, a.seq, a.steps, a.peak_tflops)), flush=True)
        except Exception as e:  # e.g. out of memory at this batch: report and try the next
            print(json.dumps({"preset": a.preset, "batch": b, "seq": a.seq,
                              "error": f"{type(e).__name__}: {str(e)[:300]}"}), flush=True)


if __name__ == "__main__":
    main()
