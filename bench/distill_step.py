"""CPU benchmark of one layer-aligned distillation step: ours (JAX) vs a plain PyTorch/transformers one.

Part 1, throughput and memory, on one CPU-sized pair (default: teacher 6 layers, student 2 layers cut
from it by the "uniform" map (student l <-> teacher 2, 5), hidden 256, 4 heads (no GQA), FFN 688,
vocab 512, batch 4 x seq 256, float32, no remat; small enough to run in seconds on 2 cores, large
enough that the step is compute-bound rather than dispatch-bound):
  ours   the step `tinywave distill` runs (`train.session.Session`, configs/tinywave_base.yaml with
         overrides): CE + T^2 logit KL (T=2) + cosine hidden + blockwise attention KL at the mapped
         pairs, all weights 1, AdamW with clipping, jitted.
  torch  what a user would write with `transformers`: teacher and student `LlamaForCausalLM`
         (eager attention), teacher under no_grad, both with output_attentions=True, the same four
         losses written plainly (full logits, dense attention-map KL from the returned
         [B, H, T, T] maps; mapped-layer hidden states via forward hooks on the decoder layers,
         since HF's output_hidden_states applies the final norm to the last entry),
         clip_grad_norm_ + torch.optim.AdamW, torch threads = os.cpu_count().
  Both start from the same weights (ours exported with `convert.params_to_hf_state`) and the same
  batch (one document per row); their first-step losses are printed side by side.
  Each framework runs in its own subprocess; peak memory = ru_maxrss at the end minus ru_maxrss
  after imports, model, optimizer-state and batch creation. For JAX that delta includes XLA
  compilation, so XLA's own `memory_analysis()` of the compiled step is reported too.

Part 2, attention-loss memory (batch 1, seq 512/1024/2048, same models): our step is compiled with
distill.weights.attention = 1 and = 0 and with the attention KL swapped for a dense JAX version
(materialising [B, H, T, T] float32 log-probabilities of both models); peak = temp + argument +
output - alias bytes of `compiled.memory_analysis()`. attn_loss_mem_overhead_<T> =
(peak with the term - peak without) / peak with the term; dense_* the same for the dense version.

  python bench/distill_step.py                      # ~2-5 min on 2 shared cores
  python bench/distill_step.py --batch 2 --seq 128 --mem-seqs 512 --steps 3   # quick check
Prints progress lines, then ONE JSON line with every number.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def make_batch(batch: int, seq: int, vocab: int, seed: int = 0) -> dict:
    """One random document per row (segment 1 everywhere), the batch contract of the trainer."""
    from tinywave_jax.data.batches import contract_batch

    ids = np.random.default_rng(seed).integers(1, vocab, size=(batch, seq))
    return contract_batch(ids, np.ones((batch, seq), np.int32))


# ------------------------------------------------------------------------------------------ JAX


def project_config(a, batch: int, seq: int, attention_weight: float = 1.0):
    import yaml

    from tinywave_jax.config import load_config
    from tinywave_jax.train.config import DistillConfig

    shape = dict(
        vocab_size=a.vocab,
        hidden_size=a.hidden,
        intermediate_size=a.ffn,
        num_hidden_layers=a.teacher_layers,
        num_attention_heads=a.heads,
        num_key_value_heads=a.heads,
        max_position_embeddings=max(4096, seq),
    )
    over = [
        "teacher.path=null",
        "teacher.dtype=float32",
        f"teacher.shape={yaml.safe_dump(shape, default_flow_style=True, width=10**6).strip()}",
        f"student.num_layers={a.student_layers}",
        "distill.layer_map=uniform",
        f"distill.weights.attention={attention_weight}",
        "data.source=synthetic",
        f"data.seq_len={seq}",
        f"data.batch_size={batch}",
        "train.microbatches=1",
        "train.dtype=float32",
        "train.param_dtype=float32",
        f"train.remat={a.remat}",
        "mesh.fsdp=-1",
    ]
    return load_config(DistillConfig, os.path.join(ROOT, "configs/tinywave_base.yaml"), over)


def jax_worker(a, out_dir: str) -> dict:
    import jax

    from tinywave_jax.convert.hf_export import hf_config_dict, params_to_hf_state
    from tinywave_jax.train.recipes import prepare
    from tinywave_jax.train.session import Session

    recipe = prepare(project_config(a, a.batch, a.seq))
    session = Session(recipe)
    frozen, trainable = session.frozen_and_trainable()
    state = session.init_state(trainable)
    host = make_batch(a.batch, a.seq, a.vocab)
    for name, params, config in (
        ("teacher", frozen["teacher"], recipe.teacher_full),
        ("student", trainable["model"], recipe.spec.student),
    ):
        np.savez(
            os.path.join(out_dir, f"{name}.npz"),
            **dict(params_to_hf_state(params, config, "float32")),
        )
        with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
            json.dump(hf_config_dict(config, "float32"), f)
    np.savez(os.path.join(out_dir, "batch.npz"), **host)
    with open(os.path.join(out_dir, "pairs.json"), "w") as f:
        json.dump(
            {
                "student": list(recipe.spec.student_taps),
                "teacher": list(recipe.spec.teacher_taps),
                "temperature": recipe.spec.loss.temperature,
            },
            f,
        )
    data = session.global_batch(host)
    jax.block_until_ready((state, frozen, data))
    base = rss_mib()

    t0 = time.perf_counter()
    compiled = session.step.lower(state, frozen, data).compile()
    compile_s = time.perf_counter() - t0
    state, m = compiled(state, frozen, data)
    first = {k: float(m[k]) for k in ("loss", "ce", "logit_kl", "hidden", "attention_kl")}
    for _ in range(2):  # warm-up
        state, m = compiled(state, frozen, data)
    jax.block_until_ready(m)
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        state, m = compiled(state, frozen, data)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    return {
        "first_losses": first,
        "step_s": step_s,
        "step_min_s": min(times),
        "compile_s": compile_s,
        "tokens_per_s": a.batch * a.seq / step_s,
        "peak_rss_delta_mib": rss_mib() - base,
        "step_mem_xla_mib": mem_bytes(compiled) / 2**20,
        "devices": len(jax.devices()),
        "jax": jax.__version__,
    }


def mem_bytes(compiled) -> int:
    ma = compiled.memory_analysis()
    return (
        ma.temp_size_in_bytes
        + ma.argument_size_in_bytes
        + ma.output_size_in_bytes
        - ma.alias_size_in_bytes
    )


def dense_attention_kl(
    student_q,
    student_k,
    teacher_q,
    teacher_k,
    segment_ids,
    *,
    block_size=None,
    heads="grouped",
    student_scale=None,
    teacher_scale=None,
):
    """Dense reference of `distill.attention_kl.attention_kl` (equal head counts): builds [B,H,T,T]."""
    import jax
    import jax.numpy as jnp

    if student_q.shape[2] != teacher_q.shape[2]:
        raise ValueError("dense variant: student and teacher need equal head counts")
    seg = segment_ids
    t = seg.shape[1]
    causal = jnp.arange(t)[:, None] >= jnp.arange(t)[None, :]
    mask = (causal[None] & (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] > 0))[:, None]

    def logp(q, k, scale):
        k = jnp.repeat(k, q.shape[2] // k.shape[2], axis=2)
        s = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        s = s * (scale or q.shape[-1] ** -0.5)
        return jax.nn.log_softmax(jnp.where(mask, s, -1e30), axis=-1)

    lt = logp(jax.lax.stop_gradient(teacher_q), jax.lax.stop_gradient(teacher_k), teacher_scale)
    ls = logp(student_q, student_k, student_scale)
    row = jnp.mean(jnp.sum(jnp.where(mask, jnp.exp(lt) * (lt - ls), 0.0), axis=-1), axis=1)
    valid = seg != 0
    return {"sum": jnp.sum(jnp.where(valid, row, 0.0)), "count": jnp.sum(valid).astype(jnp.float32)}


def mem_worker(a, out_dir: str) -> dict:
    """Compiled-step peak bytes at batch 1 for each sequence: no attention term / blockwise / dense."""
    import jax
    import jax.numpy as jnp

    from tinywave_jax.distill import objective
    from tinywave_jax.train.recipes import prepare
    from tinywave_jax.train.session import Session

    blockwise = objective.attention_kl
    out = {}
    for seq in a.mem_seqs:
        host = make_batch(1, seq, a.vocab)
        peaks = {}
        for variant in ("none", "blockwise", "dense"):
            objective.attention_kl = dense_attention_kl if variant == "dense" else blockwise
            recipe = prepare(project_config(a, 1, seq, 0.0 if variant == "none" else 1.0))
            session = Session(recipe)
            batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in host.items()}
            t0 = time.perf_counter()
            compiled = session.step.lower(
                session.abstract_state(), session.frozen_abstract, batch
            ).compile()
            peaks[variant] = mem_bytes(compiled)
            print(
                f"  mem seq {seq} {variant}: {peaks[variant] / 2**20:.1f} MiB "
                f"(compiled in {time.perf_counter() - t0:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
        objective.attention_kl = blockwise
        out[seq] = {k: v / 2**20 for k, v in peaks.items()}
    del jnp
    return out


# ---------------------------------------------------------------------------------------- torch


def torch_worker(a, out_dir: str) -> dict:
    import torch
    import torch.nn.functional as F
    import transformers

    torch.set_num_threads(a.torch_threads or os.cpu_count())

    def load(name):
        with open(os.path.join(out_dir, f"{name}.json")) as f:
            cfg = transformers.LlamaConfig(**json.load(f))
        model = transformers.LlamaForCausalLM._from_config(
            cfg, attn_implementation="eager", dtype=torch.float32
        )
        sd = {
            k: torch.from_numpy(v) for k, v in np.load(os.path.join(out_dir, f"{name}.npz")).items()
        }
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if unexpected or [k for k in missing if "rotary" not in k]:
            raise RuntimeError(f"{name}: missing {missing} unexpected {unexpected}")
        return model

    teacher, student = load("teacher").eval(), load("student").train()
    for p in teacher.parameters():
        p.requires_grad_(False)
    with open(os.path.join(out_dir, "pairs.json")) as f:
        pairs = json.load(f)
    temp = pairs["temperature"]
    b = {k: torch.from_numpy(v) for k, v in np.load(os.path.join(out_dir, "batch.npz")).items()}
    ids, targets, mask = b["input_ids"].long(), b["targets"].long(), b["loss_mask"].float()
    pos = b["positions"].long()
    opt = torch.optim.AdamW(
        student.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1
    )

    def hooks(model, layers):
        store = {}
        for i in layers:

            def keep(mod, inp, out, i=i):
                store[i] = out[0] if isinstance(out, tuple) else out

            model.model.layers[i].register_forward_hook(keep)
        return store

    t_hidden, s_hidden = hooks(teacher, pairs["teacher"]), hooks(student, pairs["student"])
    tiny = torch.finfo(torch.float32).tiny

    def losses():
        with torch.no_grad():
            t_out = teacher(input_ids=ids, position_ids=pos, output_attentions=True)
        s_out = student(input_ids=ids, position_ids=pos, output_attentions=True)
        n = mask.sum()
        ce = (
            F.cross_entropy(s_out.logits.flatten(0, 1), targets.flatten(), reduction="none")
            * mask.flatten()
        ).sum() / n
        lpt = F.log_softmax(t_out.logits / temp, -1)
        lps = F.log_softmax(s_out.logits / temp, -1)
        kl = ((lpt.exp() * (lpt - lps)).sum(-1) * mask).sum() / n * temp**2
        hid, att = [], []
        for sl, tl in zip(pairs["student"], pairs["teacher"]):
            hid.append(
                (1 - F.cosine_similarity(s_hidden[sl], t_hidden[tl], dim=-1, eps=1e-8)).mean()
            )
            pt, ps = t_out.attentions[tl], s_out.attentions[sl]  # [B, H, T, T]
            row = (pt * (pt.clamp_min(tiny).log() - ps.clamp_min(tiny).log())).sum(-1)
            att.append(row.mean())  # heads, then rows
        hidden, attn = torch.stack(hid).mean(), torch.stack(att).mean()
        return ce + kl + hidden + attn, {
            "ce": ce,
            "logit_kl": kl,
            "hidden": hidden,
            "attention_kl": attn,
        }

    def step():
        loss, parts = losses()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        return loss, parts

    base = rss_mib()
    loss, parts = step()
    first = {"loss": loss.item(), **{k: v.item() for k, v in parts.items()}}
    step()  # warm-up
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    return {
        "first_losses": first,
        "step_s": step_s,
        "step_min_s": min(times),
        "tokens_per_s": a.batch * a.seq / step_s,
        "peak_rss_delta_mib": rss_mib() - base,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


# ----------------------------------------------------------------------------------------- main

WORKERS = {"jax": jax_worker, "torch": torch_worker, "mem": mem_worker}


def run_worker(name: str, argv: list, out_dir: str) -> dict:
    res = os.path.join(out_dir, f"{name}.result.json")
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, os.path.abspath(__file__), *argv, "--worker", name, "--work-dir", out_dir],
        check=True,
        cwd=ROOT,
    )
    print(f"[{name}] done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    with open(res) as f:
        return json.load(f)


def r(x, n=4):
    return round(float(x), n)


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--teacher-layers", type=int, default=6)
    ap.add_argument("--student-layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=688)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating jax/torch runs; best kept")
    ap.add_argument("--torch-threads", type=int, default=0, help="0: os.cpu_count()")
    ap.add_argument("--remat", default="none", help="train.remat of our student")
    ap.add_argument("--mem-seqs", type=int, nargs="*", default=[512, 1024, 2048])
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--work-dir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        sys.path.insert(0, ROOT)
        result = WORKERS[a.worker](a, a.work_dir)
        with open(os.path.join(a.work_dir, f"{a.worker}.result.json"), "w") as f:
            json.dump(result, f)
        return

    argv = list(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        # Alternating rounds, best (lowest median) round of each: the machine is shared, and a
        # burst of someone else's load during one framework's run would otherwise decide the ratio.
        ours_runs, ref_runs = [], []
        for _ in range(a.rounds):
            ours_runs.append(run_worker("jax", argv, tmp))  # also writes weights + batch for torch
            ref_runs.append(run_worker("torch", argv, tmp))
        mem = run_worker("mem", argv, tmp) if a.mem_seqs else {}
    ours = min(ours_runs, key=lambda x: x["step_s"])
    ref = min(ref_runs, key=lambda x: x["step_s"])
    print("first-step losses (ours | torch):", file=sys.stderr)
    for k in ours["first_losses"]:
        print(
            f"  {k:13s} {ours['first_losses'][k]:.6f} | {ref['first_losses'][k]:.6f}",
            file=sys.stderr,
        )
    out = {
        "jax_tokens_per_s": r(ours["tokens_per_s"], 1),
        "torch_tokens_per_s": r(ref["tokens_per_s"], 1),
        "speedup": r(ours["tokens_per_s"] / ref["tokens_per_s"], 3),
        "jax_step_s": r(ours["step_s"]),
        "torch_step_s": r(ref["step_s"]),
        "jax_step_s_rounds": [r(x["step_s"]) for x in ours_runs],
        "torch_step_s_rounds": [r(x["step_s"]) for x in ref_runs],
        "jax_step_s_min": r(ours["step_min_s"]),
        "torch_step_s_min": r(ref["step_min_s"]),
        "jax_compile_s": r(ours["compile_s"], 1),
        "jax_peak_rss_delta_mib": r(ours["peak_rss_delta_mib"], 1),
        "jax_step_mem_xla_mib": r(ours["step_mem_xla_mib"], 1),
        "torch_peak_rss_delta_mib": r(ref["peak_rss_delta_mib"], 1),
        "first_losses_jax": {k: r(v, 6) for k, v in ours["first_losses"].items()},
        "first_losses_torch": {k: r(v, 6) for k, v in ref["first_losses"].items()},
    }
    for seq, p in mem.items():
        out[f"attn_loss_mem_overhead_{seq}"] = r((p["blockwise"] - p["none"]) / p["blockwise"])
        out[f"dense_attn_loss_mem_overhead_{seq}"] = r((p["dense"] - p["none"]) / p["dense"])
        out[f"step_mem_mib_{seq}"] = {k: r(v, 1) for k, v in p.items()}
    out["config"] = {
        k: getattr(a, k)
        for k in (
            "teacher_layers",
            "student_layers",
            "hidden",
            "heads",
            "ffn",
            "vocab",
            "batch",
            "seq",
            "steps",
            "rounds",
            "remat",
            "mem_seqs",
        )
    }
    out["config"].update(
        layer_map="uniform",
        dtype="float32",
        mem_batch=1,
        cpus=os.cpu_count(),
        torch_threads=ref["threads"],
        jax=ours["jax"],
        torch=ref["torch"],
        transformers=ref["transformers"],
    )
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
