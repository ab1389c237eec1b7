"""`tinywave plan`'s engine: memory and speed of a run's step on a target mesh, without weights
or hardware. The distill (or train) step of a config is lowered and compiled ahead of time from
ABSTRACT inputs (ShapeDtypeStructs carrying the run's shardings: no parameter is allocated) by the
TPU compiler (libtpu, for a TPU slice's devices from `jax.experimental.topologies`) or the CPU
compiler (N simulated CPU devices). What a plan reports, and what the CPU compile cannot tell:
the command's help (`tinywave plan --help`, train/commands.py).
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import config as jax_config

from . import hw as hw_overlays
from . import tpu
from .config import load_config, read_yaml
from .data.batches import CACHE_KEYS
from .errors import ConfigError
from .parallel import batch_sharding, make_mesh
from .step_estimate import estimate as estimate_step
from .train.config import DistillConfig, TrainConfig
from .train.metrics import step_flops
from .train.recipes import prepare
from .train.session import Session

DEFAULT_DEVICES = 8  # an overlay that names no device count (cpu.yaml): 8 simulated
GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str
    devices: int
    overrides: tuple[str, ...]  # config overrides the topology implies (mesh, dtypes, ...)
    peak_flops: Optional[float]  # per device, FLOP/s
    hbm_bytes: Optional[float]  # per device
    tpu: Optional[str] = None  # libtpu's name of the slice (v5p:4x4x2) for a TPU topology
    hbm_bandwidth: Optional[float] = None  # per device, bytes/s (the roofline's memory side)


def _generation_hw(generation: str) -> dict:
    """The `hw:` section of the packaged overlay whose TPU slice is of `generation` ({} if none)."""
    for name in hw_overlays.names():
        hw = hw_overlays.load(name).get("hw") or {}
        if str(hw.get("topology", "")).split(":")[0] == generation:
            return hw
    return {}


def _hw_figures(hw: dict, peak, hbm):
    if peak is None:
        peak = hw.get("peak_bf16_flops_per_chip") or hw.get("peak_flops_per_chip")
    if hbm is None and hw.get("hbm_gb_per_chip"):
        hbm = float(hw["hbm_gb_per_chip"]) * 1e9  # vendors' GB
    return None if peak is None else float(peak), hbm


def resolve_topology(
    name: str,
    peak_tflops: Optional[float] = None,
    hbm_gib: Optional[float] = None,
    devices: Optional[int] = None,
) -> Topology:
    """`name`: a hardware overlay (tinywave_jax.hw: tpu-v5p-64, h100x8, cpu, ...), a TPU slice
    (v5p:2x2x1) or `DATA,FSDP,TENSOR`."""
    peak = None if peak_tflops is None else peak_tflops * 1e12
    hbm = None if hbm_gib is None else hbm_gib * GiB
    m = re.fullmatch(r"\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*", name)
    if m:
        d, f, t = (int(x) for x in m.groups())
        if min(d, f, t) < 1:
            raise ConfigError(f"topology {name!r}: mesh sizes must be >= 1", param="topology")
        if peak is None or hbm is None:
            raise ConfigError(
                f"topology {name!r}: an explicit mesh shape needs peak_tflops and hbm_gib (per "
                "device)",
                param=("topology", "peak_tflops", "hbm_gib"),
            )
        return Topology(
            f"mesh {d}x{f}x{t}",
            d * f * t,
            (f"mesh.data={d}", f"mesh.fsdp={f}", f"mesh.tensor={t}"),
            peak,
            hbm,
        )
    if tpu.is_topology_name(name):
        hw = _generation_hw(tpu.generation(name))
        peak, hbm = _hw_figures(hw, peak, hbm)
        bw = hw.get("hbm_bytes_per_s_per_chip")
        return Topology(name, tpu.chips(name), (), peak, hbm, tpu=name, hbm_bandwidth=bw)
    if name not in hw_overlays.names():
        raise ConfigError(
            f"topology {name!r}: no such hardware overlay (overlays: "
            f"{', '.join(hw_overlays.names())}), nor DATA,FSDP,TENSOR, nor {tpu.FORMS}",
            param="topology",
        )
    overlay = hw_overlays.load(name)
    hw = overlay.get("hw") or {}
    slice_name = hw.get("topology")
    if slice_name is not None and (
        not tpu.is_topology_name(str(slice_name)) or tpu.chips(str(slice_name)) != hw.get("chips")
    ):
        raise ConfigError(
            f"hardware overlay {name!r}: hw.topology {slice_name!r} is not a TPU slice of its "
            f"hw.chips={hw.get('chips')} chips ({tpu.FORMS})"
        )
    n = devices or hw.get("chips") or hw.get("gpus_per_node") or DEFAULT_DEVICES
    peak, hbm = _hw_figures(hw, peak, hbm)
    return Topology(
        name,
        int(n),
        tuple(hw_overlays.to_overrides(overlay)),
        peak,
        hbm,
        tpu=None if slice_name is None else str(slice_name),
        hbm_bandwidth=hw.get("hbm_bytes_per_s_per_chip"),
    )


def load_run_config(path: str, overrides: list[str]):
    """DistillConfig (the YAML has `teacher:`) or TrainConfig (it has `model:`)."""

    data = read_yaml(path)
    if "teacher" in data:
        return load_config(DistillConfig, path, overrides)
    if "model" in data:
        return load_config(TrainConfig, path, overrides)
    raise ConfigError(f"{path}: neither a distill config (teacher:) nor a train config (model:)")


def _per_device_bytes(abstract_tree, sharding_tree) -> int:

    leaves = jax.tree_util.tree_leaves(abstract_tree)
    shardings = jax.tree_util.tree_leaves(sharding_tree)
    return int(
        sum(
            math.prod(sh.shard_shape(a.shape)) * np.dtype(a.dtype).itemsize
            for a, sh in zip(leaves, shardings)
        )
    )


def _with_shardings(abstract_tree, sharding_tree):

    return jax.tree.map(
        lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
        abstract_tree,
        sharding_tree,
    )


def abstract_inputs(session):
    """(state, frozen params, batch) of the session's step as sharded ShapeDtypeStructs."""

    cfg = session.cfg
    state = session.abstract_state()
    frozen = _with_shardings(session.frozen_abstract, session.frozen_shardings)
    bsh = batch_sharding(session.mesh)
    shape = (cfg.data.batch_size, cfg.data.seq_len)
    topk = shape + (cfg.distill.top_k,) if session.spec.teacher_cached else ()
    kinds = {"loss_mask": (shape, jnp.float32), "topk_ids": (topk, jnp.uint16)}
    kinds["topk_logprobs"] = (topk, jnp.float16)  # a teacher cache's rows (CACHE_KEYS)
    batch = {
        k: jax.ShapeDtypeStruct(*kinds.get(k, (shape, jnp.int32)), sharding=bsh)
        for k in session.spec.batch_keys
    }
    assert set(CACHE_KEYS) <= set(kinds)
    return state, frozen, batch


def _xla_cost(compiled) -> dict:
    """flops, bytes accessed and (TPU cost model only) optimal_seconds of the per-device program,
    each loop body counted once ({} where the backend has no cost analysis)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends have none
        return {}
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    keys = ("flops", "bytes accessed", "transcendentals", "optimal_seconds")
    return {k.replace(" ", "_"): float(cost[k]) for k in keys if k in (cost or {})}


def _xla_flops(compiled) -> Optional[float]:
    flops = _xla_cost(compiled).get("flops")
    return None if flops is None or flops < 0 else flops


def _compiler_name(platform: str) -> str:
    if platform == "tpu":
        return f"TPU compiler (libtpu {tpu.libtpu_version()})"
    return f"{platform.upper()} compiler"


def _does_not_fit(topology: Topology, error: str, session, state, frozen) -> str:
    """The TPU compiler's out-of-memory refusal as one message: its own figures (required vs
    available HBM), the largest per-chip arrays we know exactly, and what to change."""

    reason = next((ln for ln in error.splitlines() if "RESOURCE_EXHAUSTED" in ln), error)
    reason = reason.split("RESOURCE_EXHAUSTED:", 1)[-1].strip().rstrip(".")
    trees = {"student": (state.params, session.state_shardings.params)}
    trees["optimizer"] = (state.opt_state, session.state_shardings.opt_state)
    for k in frozen:
        trees[k] = (frozen[k], session.frozen_shardings[k])
    arrays = []
    for owner, (tree, shardings) in trees.items():
        flat, _ = jax.tree_util.tree_flatten_with_path(tree)
        for (path, a), sh in zip(flat, jax.tree_util.tree_leaves(shardings)):
            n = math.prod(sh.shard_shape(a.shape)) * np.dtype(a.dtype).itemsize
            arrays.append((n, f"{owner}{jax.tree_util.keystr(path)} {a.dtype}{list(a.shape)}"))
    largest = ", ".join(f"{what}: {_gib(n).strip()}" for n, what in sorted(arrays)[::-1][:3])
    return (
        f"does not fit on {topology.name}: the TPU compiler says: {reason}. Largest arrays per "
        f"chip: {largest}; the rest is temporaries (activations, gradients, gathered weights). "
        "Raise train.microbatches, use train.remat=full (or dots_no_batch), or shard over more "
        "chips"
    )


def _compile(cfg, topology: Topology, devices):
    """(session, (state, frozen, batch), compiled, seconds) of cfg's step on `devices`."""

    # a TPU executable compiled without a TPU client cannot be read back from jax's persistent
    # compilation cache (jax 0.10: "PjRtCompiler must be constructed with a Client"): no cache
    no_cache = jax_config.enable_compilation_cache(devices[0].platform != "tpu")
    with no_cache:
        session = Session(prepare(cfg), make_mesh(cfg.mesh, devices))
        state, frozen, batch = abstract_inputs(session)
    t0 = time.perf_counter()
    try:
        with no_cache:
            compiled = session.step.lower(state, frozen, batch).compile()
    except Exception as e:  # the TPU compiler refuses a program larger than HBM
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        raise ConfigError(_does_not_fit(topology, str(e), session, state, frozen)) from e
    return session, (state, frozen, batch), compiled, time.perf_counter() - t0


def make_plan(cfg, topology: Topology, mfu: float = 0.4, devices=None, estimate=False) -> dict:
    """The plan of `cfg` on `topology` (see module doc). `devices`: the jax devices to build the
    mesh on (default: the first `topology.devices` of this process; any platform). `estimate`:
    also the whole-step time from the TPU cost model (TPU devices only; step_estimate.py)."""

    if not 0 < mfu <= 1:
        raise ConfigError(f"mfu: must be in (0, 1], got {mfu}", param="mfu")
    devices = list(jax.devices()[: topology.devices] if devices is None else devices)
    if len(devices) != topology.devices:
        raise ValueError(f"plan for {topology.devices} devices, this process has {len(devices)}")
    platform = devices[0].platform
    if estimate and platform != "tpu":
        raise ConfigError(
            "estimate: needs the TPU compiler (a TPU topology and libtpu)", param="estimate"
        )
    session, (state, frozen, batch), compiled, compile_s = _compile(cfg, topology, devices)
    recipe, spec = session.recipe, session.spec
    ma = compiled.memory_analysis()
    xla = {
        k: int(getattr(ma, f"{k}_size_in_bytes"))
        for k in ("argument", "output", "alias", "temp", "generated_code")
    }
    xla["peak"] = xla["argument"] + xla["output"] - xla["alias"] + xla["temp"]

    sh = session.state_shardings
    frozen_bytes = {k: _per_device_bytes(frozen[k], session.frozen_shardings[k]) for k in frozen}
    memory = {
        "student_params": _per_device_bytes(state.params, sh.params),
        "optimizer_state": _per_device_bytes(state.opt_state, sh.opt_state),
        "teacher_params": frozen_bytes.get("teacher", 0),
        "frozen_base_params": frozen_bytes.get("base", 0),
        "batch": _per_device_bytes(batch, {k: v.sharding for k, v in batch.items()}),
    }
    tokens = cfg.data.batch_size * cfg.data.seq_len
    model_flops = step_flops(spec, cfg.data.seq_len, cfg.data.batch_size)
    xla_flops = _xla_flops(compiled)
    t, loss = cfg.data.seq_len, spec.loss
    loops = (
        spec.student.scan_layers
        or spec.microbatches > 1
        or (loss.logit_chunk_size is not None and loss.logit_chunk_size < t)
        or (spec.tap_qk and loss.attention_block_size < t)
    )
    plan = {
        "config_kind": recipe.kind,
        "topology": topology.name,
        "devices": topology.devices,
        "mesh": dict(session.mesh.shape),
        "backend_compiled_for": platform,
        "compiler": _compiler_name(platform),
        "batch_rows": cfg.data.batch_size,
        "seq_len": cfg.data.seq_len,
        "microbatches": spec.microbatches,
        "tokens_per_step": tokens,
        "dtype": spec.student.dtype,
        "param_dtype": spec.student.param_dtype,
        "remat": spec.student.remat,
        "attention": spec.student.attention,
        "compile_s": round(compile_s, 2),
        "memory_per_device_bytes": memory,
        "xla_memory_per_device_bytes": xla,
        "hbm_per_device_bytes": topology.hbm_bytes,
        "fits": None if topology.hbm_bytes is None else xla["peak"] <= topology.hbm_bytes,
        "model_flops_per_step": model_flops,
        "xla_flops_per_step": None if xla_flops is None else xla_flops * topology.devices,
        "xla_cost_per_device": _xla_cost(compiled),
        "xla_flops_loops_counted_once": loops,
        "peak_flops_per_device": topology.peak_flops,
        "mfu": mfu,
    }
    if topology.peak_flops:
        step_s = model_flops / (topology.devices * topology.peak_flops * mfu)
        plan.update(step_s=step_s, tokens_per_s=tokens / step_s)
    if estimate:

        def compile_variant(variant_cfg, label: str) -> dict:
            _, _, compiled, seconds = _compile(variant_cfg, topology, devices)
            print(f"tinywave plan: variant {label} compiled in {seconds:.0f} s", file=sys.stderr)
            return _xla_cost(compiled)

        print(
            f"tinywave plan: step compiled in {compile_s:.0f} s; compiling the estimate's variants",
            file=sys.stderr,
        )
        plan["estimate"] = estimate_step(cfg, topology, devices, compile_variant)
    return plan


def _gib(n) -> str:
    """Bytes, right-aligned, in GiB (or MiB below 1 GiB)."""
    return f"{n / GiB:8.2f} GiB" if n >= GiB else f"{n / 2**20:8.2f} MiB"


def _compiled_for(p: dict) -> str:
    if p["backend_compiled_for"] == "tpu":
        return f"the slice's {p['devices']} TPU devices (no TPU attached)"
    return f"{p['devices']} simulated {p['backend_compiled_for']} devices"


def format_plan(p: dict, name: Callable[[str], str] = str) -> str:
    """The plan as text; `name(param)`: how its reader sets resolve_topology's parameter `param`
    (`tinywave plan` gives its flags)."""
    m, x = p["memory_per_device_bytes"], p["xla_memory_per_device_bytes"]
    mesh = " x ".join(f"{k} {v}" for k, v in p["mesh"].items())
    lines = [
        f"plan: {p['config_kind']} step on {p['topology']} ({p['devices']} devices: {mesh}), "
        f"compiled by the {p['compiler']} for {_compiled_for(p)} in {p['compile_s']:.1f} s",
        f"  batch {p['batch_rows']} x {p['seq_len']} tokens ({p['tokens_per_step']:,} per step), "
        f"microbatches {p['microbatches']}, compute {p['dtype']}, master {p['param_dtype']}, "
        f"remat {p['remat']}, attention {p['attention']}",
        "memory per device:",
        f"  student params      {_gib(m['student_params'])}",
        f"  optimizer state     {_gib(m['optimizer_state'])}",
    ]
    if m["teacher_params"]:
        lines.append(f"  teacher params      {_gib(m['teacher_params'])}")
    if m["frozen_base_params"]:
        lines.append(f"  frozen base params  {_gib(m['frozen_base_params'])}")
    lines += [
        f"  batch               {_gib(m['batch'])}",
        f"  XLA arguments       {_gib(x['argument'])}   (all of the above)",
        f"  XLA outputs         {_gib(x['output'])}   of which {_gib(x['alias']).strip()} reuse "
        "donated arguments",
        f"  XLA temporaries     {_gib(x['temp'])}   (activations, gradients, gathered weights)",
        f"  peak (arg+out-alias+temp) {_gib(x['peak']).strip()}",
    ]
    hbm = p["hbm_per_device_bytes"]
    if hbm is None:
        lines.append(f"  device memory unknown (give {name('hbm_gib')}): fit not checked")
    elif p["fits"]:
        lines.append(f"  fits: {100 * x['peak'] / hbm:.0f}% of {_gib(hbm).strip()} per device")
    else:
        lines.append(
            f"  DOES NOT FIT: needs {_gib(x['peak']).strip()} per device, the device has "
            f"{_gib(hbm).strip()} (raise train.microbatches, train.remat=full, more "
            "fsdp/tensor devices)"
        )
    lines.append("compute per step:")
    lines.append(
        f"  model FLOPs         {p['model_flops_per_step']:.4g}  (PaLM convention, no "
        "remat recomputation)"
    )
    if p["xla_flops_per_step"] is not None:
        note = (
            "; loop bodies counted once: a lower bound" if p["xla_flops_loops_counted_once"] else ""
        )
        lines.append(f"  XLA cost analysis   {p['xla_flops_per_step']:.4g}  (all devices{note})")
    if p.get("step_s"):
        lines.append(
            f"  at {p['peak_flops_per_device'] / 1e12:.1f} TFLOP/s per device and "
            f"{100 * p['mfu']:.0f}% MFU: {p['step_s']:.3f} s per step, "
            f"{p['tokens_per_s']:,.0f} tokens/s"
        )
    else:
        lines.append(f"  no peak FLOP/s known (give {name('peak_tflops')}): no step time")
    e = p.get("estimate")
    if e and e["available"]:
        mfu = "" if e["mfu"] is None else f", MFU {100 * e['mfu']:.1f}%"
        lines.append(
            f"  roofline of the TPU compiler's FLOPs and HBM bytes ({len(e['variants'])} loop-free "
            f"variants, trip counts put back; {e['bound']}-bound): {e['step_s']:.3f} s per step, "
            f"{e['tokens_per_s']:,.0f} tokens/s{mfu} (a bound: docs/scaling.md calibrates it)"
        )
        for name, t in e["breakdown"].items():
            lines.append(
                f"    {name}: compute {t['compute_s']:.3f} s, HBM {t['memory_s']:.3f} s per device"
            )
    elif e:
        lines.append(f"  no step-time estimate: {e['reason']}")
    cm = (e or {}).get("cost_model")
    if cm and cm["available"]:
        mfu = "" if cm["mfu"] is None else f", MFU {100 * cm['mfu']:.1f}%"
        lines.append(f"  libtpu cost model (optimal_seconds): {cm['step_s']:.3f} s per step{mfu}")
    elif cm:
        lines.append(f"  libtpu cost model: no usable figure ({cm['reason']})")
    return "\n".join(lines)


def choose_compiler(topo: Topology, compiler: str = "auto") -> str:
    """'tpu' or 'cpu' for `topo` (see the module doc); ConfigError where `compiler` cannot be."""
    if compiler not in ("auto", "tpu", "cpu"):
        raise ConfigError(f"compiler: auto, tpu or cpu, got {compiler!r}", param="compiler")
    if compiler == "cpu":
        return "cpu"
    if topo.tpu is None:
        if compiler == "tpu":
            raise ConfigError(
                f"compiler tpu: {topo.name} is not a TPU topology ({tpu.FORMS})", param="compiler"
            )
        return "cpu"
    if tpu.libtpu_available():
        return "tpu"
    if compiler == "tpu":
        raise ConfigError(f"compiler tpu: libtpu is not installed: {tpu.EXTRA}", param="compiler")
    return "cpu"
