"""Whole-step time of a run on a TPU slice from the TPU compiler's cost model, loops included.

XLA's cost analysis (`compiled.cost_analysis()`: flops, bytes accessed and, on TPU, the cost
model's `optimal_seconds`) counts a while-loop body ONCE, so the real step's figure (layers under
`lax.scan`, microbatches, the chunked losses' scans) is not a step time: on the TinyWave-Base
step it came out 0.09 s on v5p and negative on v6e. Here the step is compiled again as loop-free
variants and the trip counts are put back by arithmetic:

  * layers unrolled (`train.scan_layers=false`) at small depths. A step's cost is linear in its
    layer counts, T = a + b L_s + c L_t (student layers, each with its distillation terms; teacher
    layers up to its last tap), so three variants (L_s, L_t) = (1, 2), (2, 2), (1, 4) give a, b,
    c, evaluated at the run's depths (`tinywave train`: T = a + b L from L = 1, 2);
  * one microbatch of the run's rows per micro step (`data.batch_size / M`, microbatches 1),
    times M (the optimizer update is then counted M times: ~1 ms of elementwise work per copy);
  * the logits' sequence chunks (`logit_chunk_size` c, n = T / c chunks; a scan, forward and
    backward): one more variant at chunk c / 2 gives the chunk body's cost, 2 (T(c) - T(c/2)),
    of which the n - 1 chunks the loop hides are added (unchunked logits of a 128k vocabulary
    would not fit);
  * the attention KL as one causal T x T tile (`attention_block_size = T`): it also computes the
    masked half, which the blockwise loop skips (blocks of 256 at T = 2048 do 36 of 64 tiles),
    but XLA shares its scores between forward and backward, which the loop recomputes per tile
    and pass: neither bound of the run's term, which XLA cannot count (docs/scaling.md, "Third
    attempt": 20.6 GB per layer and v6e chip, near half a student layer's bytes).

Only the variants' costs are used: they hold more memory than the run (one attention tile), and
a variant the compiler refuses for lack of HBM makes the estimate unavailable, said so. The time
is a roofline of the counted FLOPs and HBM bytes, not a measurement: docs/scaling.md compares it
with a published MaxText run of the same shape (`bench/tpu_plan.py`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

from .config import from_dict, to_dict
from .errors import ConfigError
from .models.attention import resolve, splash_block
from .train.metrics import step_flops
from .train.recipes import prepare


@dataclasses.dataclass(frozen=True)
class Variant:
    student_layers: int
    teacher_layers: int  # 0 for a train config or a distill step that needs no teacher
    cost: dict  # the variant's per-device cost analysis


def _logit_chunk(cfg) -> Optional[int]:
    c = cfg.distill.logit_chunk_size if hasattr(cfg, "distill") else cfg.logit_chunk_size
    return None if c is None or c >= cfg.data.seq_len else c


def _variant_cfg(cfg, recipe, ls: int, lt: int, chunk: Optional[int]):
    """`cfg` with layers unrolled at depths (ls, lt), one microbatch, logits in chunks of
    `chunk`, the attention KL in one block."""
    d = to_dict(cfg)
    m = cfg.train.microbatches
    d["train"].update(scan_layers=False, microbatches=1)
    d["data"]["batch_size"] = cfg.data.batch_size // m
    student = to_dict(recipe.spec.student.replace(num_hidden_layers=ls))
    if recipe.kind != "distill":
        d["logit_chunk_size"] = chunk
        d["model"].update(path=None, shape=student)
        return from_dict(type(cfg), d)
    d["distill"].update(logit_chunk_size=chunk, attention_block_size=cfg.data.seq_len)
    d["student"].update(path=None, shape=student, num_layers=None)
    if recipe.spec.runs_teacher:
        teacher = recipe.teacher_full.replace(num_hidden_layers=lt)
        d["teacher"].update(path=None, shape=to_dict(teacher))
        # every student layer is aligned to one teacher layer; the last tap is the teacher's last
        d["distill"].update(layer_map=list(range(lt - ls, lt)), init_layers="mapped")
    return from_dict(type(cfg), d)


def _points(recipe) -> list[tuple[int, int]]:
    if recipe.kind != "distill":
        return [(1, 0), (2, 0)]
    if not recipe.spec.runs_teacher:
        return [(1, 0), (2, 0)]
    return [(1, 2), (2, 2), (1, 4)]


def _solve(variants: list[Variant], key: str, ls: int, lt: int) -> Optional[float]:
    """The cost `key` at depths (ls, lt) from the linear model fitted exactly to the variants."""
    v = [x.cost.get(key) for x in variants]
    if any(x is None or not math.isfinite(x) or x < 0 for x in v):
        return None
    per_student = v[1] - v[0]
    per_teacher = (v[2] - v[0]) / 2 if len(v) == 3 else 0.0
    base = v[0] - per_student - (2 * per_teacher if len(v) == 3 else 0.0)
    return base + per_student * ls + per_teacher * lt


def _add_chunks(total, key: str, full: dict, half: dict, hidden: int) -> Optional[float]:
    """`total` plus `hidden` chunk bodies, a body being 2 (cost at chunk c - cost at c / 2)."""
    body = 2 * (full.get(key, math.nan) - half.get(key, math.nan))
    return None if total is None or not body >= 0 else total + hidden * body


def splash_flops(cfg, spec, teacher_layers: int) -> float:
    """FLOPs of the splash attention kernels in one step (all devices), which XLA's cost analysis
    cannot see (a Pallas kernel is opaque to it): per layer and row, each kernel matmul is
    2 T^2 H hd over the tiles on or below the diagonal ((n + 1) / 2n of n x n tiles). The
    forward has 2 matmuls (q k^T, p v); the student's backward 7 (dq kernel: s, dp, dq; dkv
    kernel: s, dp, dv, dk) plus, under remat, its forward again."""

    t = cfg.data.seq_len
    n = t // splash_block(t)
    tile = 2 * t * t * (n + 1) / (2 * n)

    def per_layer(c) -> float:
        return tile * c.num_attention_heads * c.head_dim

    s = spec.student
    student = 2 + 7 + (2 if s.remat != "none" else 0)
    total = s.num_hidden_layers * student * per_layer(s)
    if teacher_layers:
        total += teacher_layers * 2 * per_layer(spec.teacher)
    return total * cfg.data.batch_size


def breakdown(est: dict, ls: int, lt: int, n_chunks: int, devices: int, peak, bandwidth) -> dict:
    """Where an estimate's roofline goes: per-device seconds per step of compute (FLOPs / peak)
    and of HBM traffic (bytes / bandwidth) of each term of its linear model, from its variants:
    the student layers (each with its distillation terms: hidden, attention KL), the teacher
    layers up to the last tap, the logit chunks (head, logit KL, CE; `n_chunks` of them), the
    rest (embeddings, final norms, optimizer update, whatever else XLA counts once per step;
    the linear fit's residual, so it can come out slightly negative) and the splash kernels
    (FLOPs only). Collectives are in none of them."""
    v = est["variants"]
    n_layered = 3 if lt else 2
    chunked = len(v) > n_layered
    out = {}
    for key, unit in (("flops", peak), ("bytes_accessed", bandwidth)):
        x = [var[key] * est["microbatches"] / unit for var in v]
        student = x[1] - x[0]
        teacher = (x[2] - x[0]) / 2 if lt else 0.0
        body = 2 * (x[0] - x[-1]) if chunked else 0.0
        terms = {f"student layers ({ls})": student * ls}
        if lt:
            terms[f"teacher layers ({lt})"] = teacher * lt
        if chunked:
            terms[f"logit chunks ({n_chunks})"] = body * n_chunks
        terms["rest"] = x[0] - student - 2 * teacher - body
        for name, seconds in terms.items():
            out.setdefault(name, {})["compute_s" if key == "flops" else "memory_s"] = seconds
    for name, flops in est["splash_kernel_flops_by_model"].items():
        if flops:
            out[f"splash kernels ({name})"] = {"compute_s": flops / devices / peak, "memory_s": 0.0}
    return out


def _per_step(micro, m: int) -> Optional[float]:
    return None if micro is None else micro * m


def estimate(cfg, topology, devices, compile_variant) -> dict:
    """Estimated step seconds, tokens/s, MFU and XLA FLOPs of `cfg` on `topology`'s `devices`
    (TPU devices). Two estimates from the same variants, loops counted:

      * roofline (the reported one): per device, max(FLOPs / peak, HBM bytes / bandwidth) of the
        whole step, FLOPs = XLA's plus the splash kernels' (`splash_flops`): a bound a real
        step does not reach (no overlap losses, collectives assumed hidden); docs/scaling.md
        calibrates it on a published MaxText run;
      * cost model: libtpu's `optimal_seconds` (unavailable, with the reason, where a variant's
        figure is negative or the chunk body comes out non-positive, as at full size on v6e).

    `compile_variant(cfg, label) -> cost dict` compiles one variant (plan.py's compile path)."""

    recipe = prepare(cfg)
    spec = recipe.spec
    ls = spec.student.num_hidden_layers
    lt = spec.teacher.num_hidden_layers if recipe.kind == "distill" and spec.runs_teacher else 0
    chunk = _logit_chunk(cfg)
    points = [(vs, vt, chunk) for vs, vt in _points(recipe)]
    if chunk is not None:  # the chunk loop's body, from a variant at half the chunk
        points.append((points[0][0], points[0][1], max(chunk // 2, 1)))
    variants = []
    for vs, vt, c in points:
        try:
            label = f"(student {vs}, teacher {vt} layers, logit chunk {c})"
            cost = compile_variant(_variant_cfg(cfg, recipe, vs, vt, c), label)
        except ConfigError as e:  # a variant that does not fit
            return {"available": False, "reason": f"variant ({vs}, {vt}) layers: {e}"}
        variants.append(Variant(vs, vt, cost))
    layered = variants[: len(_points(recipe))]
    m = spec.microbatches
    micro = {k: _solve(layered, k, ls, lt) for k in ("optimal_seconds", "flops", "bytes_accessed")}
    reason = None if micro["optimal_seconds"] is not None else "a variant's optimal_seconds < 0"
    if chunk is not None:  # n - 1 more chunk bodies than the loop's one
        hidden = -(-cfg.data.seq_len // chunk) - 1
        full, half = variants[0].cost, variants[-1].cost
        for k in micro:
            micro[k] = _add_chunks(micro[k], k, full, half, hidden)
        if micro["optimal_seconds"] is None and reason is None:
            reason = f"optimal_seconds at logit chunk {chunk} is not above that at {chunk // 2}"
    n = topology.devices
    flops, hbm = _per_step(micro["flops"], m), _per_step(micro["bytes_accessed"], m)
    kernel = {"student": 0.0, "teacher": 0.0}
    if resolve(cfg.train.attention, "tpu", cfg.data.seq_len) == "splash":
        kernel["student"] = splash_flops(cfg, spec, 0)
        kernel["teacher"] = splash_flops(cfg, spec, lt) - kernel["student"]
    tokens = cfg.data.batch_size * cfg.data.seq_len
    model_flops = step_flops(spec, cfg.data.seq_len, cfg.data.batch_size)

    def figures(step_s: float) -> dict:
        mfu = None if not topology.peak_flops else model_flops / (n * topology.peak_flops * step_s)
        return {"step_s": step_s, "tokens_per_s": tokens / step_s, "mfu": mfu}

    out = {
        "method": "roofline of loop-free variants' XLA FLOPs and HBM bytes (+ splash kernel "
        "FLOPs), trip counts by arithmetic; libtpu's optimal_seconds alongside",
        "variants": [
            {"student_layers": v[0], "teacher_layers": v[1], "logit_chunk": v[2], **x.cost}
            for v, x in zip(points, variants)
        ],
        "microbatches": m,
        "xla_flops_per_step": None if flops is None else flops * n,
        "splash_kernel_flops_per_step": sum(kernel.values()),
        "splash_kernel_flops_by_model": kernel,
        "xla_hbm_bytes_per_step": None if hbm is None else hbm * n,
    }
    if micro["optimal_seconds"] is None:
        out["cost_model"] = {"available": False, "reason": reason}
    else:
        out["cost_model"] = {"available": True, **figures(micro["optimal_seconds"] * m)}
    why = []
    if flops is None or hbm is None:
        why.append("a variant's flops or bytes accessed is missing or < 0")
    if not topology.peak_flops or not topology.hbm_bandwidth:
        why.append(f"{topology.name} has no peak FLOP/s or HBM bandwidth (hw: section)")
    if why:
        out.update(available=False, reason="no roofline: " + "; ".join(why))
        return out
    compute_s = (flops + sum(kernel.values()) / n) / topology.peak_flops
    memory_s = hbm / topology.hbm_bandwidth
    chunks = 1 if chunk is None else -(-cfg.data.seq_len // chunk)
    terms = breakdown(out, ls, lt, chunks, n, topology.peak_flops, topology.hbm_bandwidth)
    out.update(
        available=True,
        breakdown=terms,
        bound="compute" if compute_s >= memory_s else "HBM bandwidth",
        compute_s=compute_s,
        memory_s=memory_s,
        **figures(max(compute_s, memory_s)),
    )
    return out
