"""The machine's f32 matmul rate in torch and in jitted JAX (XLA:CPU), to put step throughputs in
proportion (docs/benchmarks.md).

    .venv/bin/python bench/matmul_peak.py [--threads 2] [--repeats 5]

Prints one line per shape, then ONE JSON line {shape: {"torch_gflops", "jax_gflops"}}.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402

SHAPES = {
    "1024x1024x1024": (1024, 1024, 1024),
    "2048x2048x2048": (2048, 2048, 2048),
    "1024x256x688": (1024, 256, 688),
    "1024x688x256": (1024, 688, 256),
}


def rate(fn, flops: float, repeats: int) -> float:
    for _ in range(2):
        fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return flops * repeats / (time.perf_counter() - t) / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = {}
    for name, (m, k, n) in SHAPES.items():
        a, b = torch.randn(m, k), torch.randn(k, n)
        x, y = jnp.asarray(a.numpy()), jnp.asarray(b.numpy())
        matmul = jax.jit(jnp.matmul)
        flops = 2.0 * m * k * n
        out[name] = {
            "torch_gflops": round(rate(lambda a=a, b=b: a @ b, flops, args.repeats), 1),
            "jax_gflops": round(
                rate(lambda f=matmul, x=x, y=y: f(x, y).block_until_ready(), flops, args.repeats), 1
            ),
        }
        print(
            f"{name}: torch {out[name]['torch_gflops']} GFLOP/s, jax {out[name]['jax_gflops']} "
            "GFLOP/s",
            flush=True,
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
