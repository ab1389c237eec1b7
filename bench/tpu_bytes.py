"""Where a step's HBM bytes go, by the TPU compiler (libtpu; no TPU needed): per-op bytes of the
optimized program, and the attention KL alone at a run's per-chip shapes.

    PYTHONPATH=. .venv/bin/python bench/tpu_bytes.py kl [--topology v6e:2x2]
        [--shape B,T,H,HD] [--blocks 2048,256] [--hlo DIR]
    PYTHONPATH=. .venv/bin/python bench/tpu_bytes.py variant TOPOLOGY LS LT CHUNK OUT.hlo
        [key=value ...]
    PYTHONPATH=. .venv/bin/python bench/tpu_bytes.py hlo FILE.hlo [--top N]

kl: the attention KL's loss + gradient (distill/attention_kl.py) for one layer, bf16 q/k, compiled
for one chip of the topology; prints XLA's cost analysis (flops, bytes accessed, transcendentals,
libtpu's optimal_seconds) per block size. Block = T is the one-tile form the step estimate's
variants use; a smaller block is the run's loop, whose cost analysis counts each loop body once
(not a per-step figure).
variant: one loop-free variant of step_estimate.py (TinyWave-Base preset on a hardware overlay:
LS student, LT teacher layers, logit chunk CHUNK), its cost on stdout and optimized HLO in OUT.
hlo: per top-level instruction, operand + output bytes (fusion internals excluded), summed by what
the op_name says it belongs to. An approximation of XLA's own count (it reads whole operands of
slices and async copies), for attribution, not totals.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_DT = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4}
_DT.update(u32=4, f64=8, s64=8, u64=8)
_SHAPE = re.compile(r"\b(" + "|".join(_DT) + r")\[([0-9,]*)\]")
_INSTR = re.compile(r"\s+(?:ROOT )?%(\S+) = (.+?) ([a-z][\w-]*)\((.*?)\)(.*)$")
# container and bookkeeping ops: their bytes are their bodies' or none
_SKIP = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "call"}
_SKIP |= {"conditional", "after-all", "copy-done", "opt-barrier", "partition-id", "replica-id"}


def _bytes(shape: str) -> int:
    total = 0
    for dt, dims in _SHAPE.findall(shape):
        n = _DT[dt]
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n
    return total


def instructions(text: str) -> list[tuple[int, str, str, str]]:
    """(bytes, name, opcode, op_name) of every instruction outside fused computations."""
    out, shapes, fused = [], {}, False
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            comp = "ENTRY" if line.startswith("ENTRY") else line.split()[0].lstrip("%")
            fused = comp.startswith(("fused", "wrapped", "region")) or ".clone" in comp
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        name, shape, op, operands, rest = m.groups()
        shapes[name] = shape
        if fused or op in _SKIP:
            continue
        ins = sum(_bytes(shapes.get(o.strip().lstrip("%"), "")) for o in operands.split(","))
        op_name = re.search(r'op_name="([^"]*)"', rest)
        out.append((ins + _bytes(shape), name, op, op_name.group(1) if op_name else ""))
    return out


def category(name: str, op: str, op_name: str) -> str:
    """What an instruction belongs to, from its jax op_name (jvp(Llama): the student, which is
    differentiated; Llama outside jvp: the frozen teacher)."""
    if "closed_call/while/body/closed_call/cond" in op_name:
        return "attention KL (its tile loops)"
    if "splash" in name:
        return "splash kernels"
    if any(c in op or c in name for c in ("all-gather", "reduce-scatter", "all-reduce")):
        return "collectives"
    if "jvp(Llama)" in op_name:
        if "dynamic_update" in op_name:
            return "student: taps/stacking (dynamic-update-slice)"
        for part in ("mlp", "self_attn"):
            if part in op_name:
                return f"student layer: {part}"
        return "student layer: norms, residuals"
    if "Llama" in op_name:
        return "teacher: taps/stacking" if "dynamic_update" in op_name else "teacher forward"
    if "btd,dv->btv" in op_name:
        return "logit chunk (head, KL, CE)"
    return f"no op_name: {op}" if not op_name else "other"


def hlo_report(path: str, top: int) -> None:
    rows = instructions(Path(path).read_text())
    by = collections.Counter()
    for b, name, op, op_name in rows:
        by[category(name, op, op_name)] += b
    total = sum(by.values())
    print(f"{total / 1e9:.2f} GB over {len(rows)} instructions (operands + outputs)")
    for k, v in by.most_common():
        print(f"  {v / 1e9:8.2f} GB {100 * v / total:5.1f}%  {k}")
    for b, name, op, op_name in sorted(rows, reverse=True)[:top]:
        print(f"  {b / 1e9:7.3f} GB {op:12s} {name[:32]:32s} {op_name[-110:]}")


def _cost(compiled) -> dict:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    keys = ("flops", "bytes accessed", "transcendentals", "optimal_seconds")
    return {k.replace(" ", "_"): float(cost[k]) for k in keys if k in cost}


def kl(args) -> None:
    import jax
    import jax.numpy as jnp

    from tinywave_jax import tpu
    from tinywave_jax.distill.attention_kl import attention_kl

    b, t, h, hd = (int(x) for x in args.shape.split(","))
    sharding = jax.sharding.SingleDeviceSharding(tpu.topology_devices(args.topology)[0])
    qk = jax.ShapeDtypeStruct((b, t, h, hd), jnp.bfloat16, sharding=sharding)
    seg = jax.ShapeDtypeStruct((b, t), jnp.int32, sharding=sharding)
    for block in (int(x) for x in args.blocks.split(",")):

        def loss(sq, sk, tq, tk, s, block=block):
            out = attention_kl(sq, sk, tq, tk, s, block_size=block)
            return out["sum"] / out["count"]

        t0 = time.perf_counter()
        compiled = jax.jit(jax.value_and_grad(loss, (0, 1))).lower(qk, qk, qk, qk, seg).compile()
        row = {"block": block, **_cost(compiled), "compile_s": round(time.perf_counter() - t0)}
        print(json.dumps(row), flush=True)
        if args.hlo:
            Path(args.hlo, f"attention_kl_{args.shape}_{block}.hlo").write_text(compiled.as_text())


def variant(args) -> None:
    from tinywave_jax import tpu
    from tinywave_jax.plan import _compile, load_run_config, resolve_topology
    from tinywave_jax.step_estimate import _variant_cfg
    from tinywave_jax.train.recipes import prepare

    topo = resolve_topology(args.topology)
    preset = ["teacher.path=null", "teacher.shape={}", "data.source=synthetic"]
    cfg = load_run_config(str(REPO / "configs/tinywave_base.yaml"), [*topo.overrides, *preset])
    devices = tpu.topology_devices(topo.tpu)
    topo = dataclasses.replace(topo, devices=len(devices))
    vcfg = _variant_cfg(cfg, prepare(cfg), args.ls, args.lt, args.chunk)
    _, _, compiled, seconds = _compile(vcfg, topo, devices)
    print(json.dumps({**_cost(compiled), "compile_s": round(seconds)}), flush=True)
    Path(args.out).write_text(compiled.as_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("kl")
    k.add_argument("--topology", default="v6e:2x2")
    k.add_argument("--shape", default="4,2048,32,128", help="rows per chip, T, heads, head dim")
    k.add_argument("--blocks", default="2048")
    k.add_argument("--hlo", default=None, help="folder for the optimized HLO")
    v = sub.add_parser("variant")
    v.add_argument("topology")
    v.add_argument("ls", type=int)
    v.add_argument("lt", type=int)
    v.add_argument("chunk", type=int)
    v.add_argument("out")
    h = sub.add_parser("hlo")
    h.add_argument("file")
    h.add_argument("--top", type=int, default=20)
    args = ap.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, str(REPO))
    {"kl": kl, "variant": variant, "hlo": lambda a: hlo_report(a.file, a.top)}[args.cmd](args)


if __name__ == "__main__":
    main()
