"""Greedy generation on this CPU at batch 1: the JAX model (`models.decode.generate`),
`transformers` (float32) and llama.cpp (llama-cpp-python) on GGUF exports (f32, f16, q8_0, q4_0) of
one random Llama-shaped model, with file sizes and each engine's peak RSS.

    .venv/bin/python bench/gguf.py [--layers 12 --hidden 768 --ffn 2048 --heads 12 --prompt 64 --new 128]
        [--threads N]   # compute threads per engine (default: all CPUs)

The parent builds a tinywave checkpoint (random weights, std 0.02 as transformers initialises),
exports it with `export-hf` and `export-gguf`, then runs each engine in its own subprocess (so
peak RSS is that engine's alone): load, one short warm-up call (JAX compiles, torch and
llama.cpp warm up), then ONE timed greedy continuation of the same prompt. tok/s = new tokens /
seconds of that call (prompt processing included). The last line printed is ONE JSON object with
jax_tok_s, hf_tok_s, llamacpp_f32_tok_s, llamacpp_f16_tok_s, llamacpp_q8_0_tok_s,
llamacpp_q4_0_tok_s, the files' sizes (MB), each engine's peak RSS (MB) and load time, the q8_0 /
transformers speed ratio, the ggml-cpu library llama.cpp chose for this CPU (llamacpp_cpu_variant:
"haswell" for AVX2, "zen4" for AVX-512 with VNNI and BF16, ...; null for a one-level build) with
its features, and how many greedy tokens each engine shares with JAX (llama.cpp f32 runs with an
f32 KV cache, the exact reference; on random weights the logits are nearly flat, so reduced
precision flips greedy choices early).
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

# This script is bench/gguf.py and Python puts its folder first on sys.path: take it off, so
# that `import gguf` (in tinywave_jax.convert.gguf_export) finds the gguf package, not this file.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import numpy as np  # noqa: E402

ENGINES = ("jax", "hf", "llamacpp_f32", "llamacpp_f16", "llamacpp_q8_0", "llamacpp_q4_0")
GGUF_TYPES = ("f32", "f16", "q8_0", "q4_0")


def build(args, work: Path) -> dict:
    from tinywave_jax.checkpoint import save_model
    from tinywave_jax.convert.gguf_export import export_gguf
    from tinywave_jax.convert.hf_export import export_hf
    from tinywave_jax.models.config import LlamaConfig
    from tinywave_jax.models.param_layout import flatten, param_shapes, set_path

    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.ffn,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=2048,
    )
    rs = np.random.default_rng(0)
    params: dict = {}
    for path, shape in flatten(param_shapes(config)).items():
        a = (
            np.ones(shape, np.float32)
            if path[-1] == "scale"
            else rs.normal(0.0, 0.02, shape).astype(np.float32)
        )
        set_path(params, path, a)
    save_model(work / "ckpt", params, config, overwrite=True)
    del params
    export_hf(work / "ckpt", work / "hf", overwrite=True)
    sizes = {"num_params": config.num_params()}
    sizes["hf_f32_mb"] = round(sum(p.stat().st_size for p in (work / "hf").iterdir()) / 1e6, 1)
    for t in GGUF_TYPES:
        t0 = time.perf_counter()
        r = export_gguf(work / "ckpt", work / f"model.{t}.gguf", t, overwrite=True)
        sizes[f"gguf_{t}_mb"] = round(r.bytes / 1e6, 1)
        sizes[f"export_{t}_s"] = round(time.perf_counter() - t0, 1)
    return sizes


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM; getrusage's ru_maxrss would include the
    parent's peak, which Linux keeps across fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def run_engine(engine: str, work: Path, prompt: list[int], new: int, threads: int) -> dict:
    """Runs in the child process: load, warm up, one timed greedy continuation, with `threads`
    compute threads (JAX: XLA_FLAGS set by the parent when 1)."""
    t0 = time.perf_counter()
    if engine == "jax":
        import jax
        import jax.numpy as jnp

        from tinywave_jax.checkpoint import load_model
        from tinywave_jax.models import decode

        params, config, _ = load_model(work / "ckpt")
        ids, mask = jnp.asarray([prompt], jnp.int32), jnp.ones((1, len(prompt)), bool)

        def generate(n):
            out = decode.generate(
                params, config, ids, mask, jax.random.key(0), max_new_tokens=n, greedy=True
            )
            return np.asarray(out)[0].tolist()

        load_s = time.perf_counter() - t0
        generate(new)  # compiles for this length (the timed call reuses the program)
    elif engine == "hf":
        import torch
        import transformers

        torch.set_num_threads(threads)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            work / "hf", dtype=torch.float32
        ).eval()
        model.generation_config.eos_token_id = None
        x = torch.tensor([prompt])

        def generate(n):
            with torch.no_grad():
                out = model.generate(
                    x,
                    attention_mask=torch.ones_like(x),
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    pad_token_id=0,
                )
            return out[0, len(prompt) :].tolist()

        load_s = time.perf_counter() - t0
        generate(8)
    else:
        from tinywave_jax.eval.gguf_run import (
            llama_cpp_cpu_backend,
            llama_cpp_greedy,
            load_llama_cpp,
        )

        gguf_type = engine.split("_", 1)[1]
        llm = load_llama_cpp(
            work / f"model.{gguf_type}.gguf",
            n_ctx=1024,
            n_threads=threads,
            logits_all=False,
            f32_kv_cache=gguf_type == "f32",  # the exact reference: f32 weights and cache
        )

        def generate(n):
            return llama_cpp_greedy(llm, prompt, n)

        load_s = time.perf_counter() - t0
        generate(8)
    t = time.perf_counter()
    tokens = generate(new)
    seconds = time.perf_counter() - t
    extra = {}
    if engine.startswith("llamacpp"):  # which ggml-cpu library (instruction-set level) ran
        cpu = llama_cpp_cpu_backend()
        extra = {"cpu_variant": cpu["variant"], "cpu_features": sorted(cpu["features"])}
    return {
        **extra,
        "tok_s": round(new / seconds, 1),
        "seconds": round(seconds, 2),
        "load_s": round(load_s, 1),
        "peak_rss_mb": peak_rss_mb(),
        "tokens": tokens,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--ffn", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=32512)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--workdir", default=None, help="default: a temporary folder")
    ap.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="compute threads of every engine (default: all CPUs; 1 when other jobs hold a "
        "core: a multi-threaded step then waits on its descheduled thread)",
    )
    ap.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)  # child process
    args = ap.parse_args()
    prompt = [1] + np.random.RandomState(0).randint(3, args.vocab, args.prompt - 1).tolist()

    if args.engine is not None:
        print(
            json.dumps(run_engine(args.engine, Path(args.workdir), prompt, args.new, args.threads))
        )
        return

    with tempfile.TemporaryDirectory(prefix="tinywave-bench-gguf-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = {
            "layers": args.layers,
            "hidden": args.hidden,
            "ffn": args.ffn,
            "heads": args.heads,
            "vocab": args.vocab,
            "prompt_tokens": args.prompt,
            "new_tokens": args.new,
            "batch": 1,
            "cpus": len(os.sched_getaffinity(0)),
            "threads": args.threads,
        }
        result.update(build(args, work))
        tokens = {}
        for engine in ENGINES:
            cmd = [sys.executable, __file__, "--engine", engine, "--workdir", str(work)]
            cmd += ["--prompt", str(args.prompt), "--new", str(args.new)]
            cmd += ["--vocab", str(args.vocab), "--threads", str(args.threads)]
            env = dict(os.environ)
            if args.threads == 1:
                single = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
                env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {single}".strip()
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            tokens[engine] = r.pop("tokens")
            result[f"{engine}_tok_s"] = r["tok_s"]
            result[f"{engine}_peak_rss_mb"] = r["peak_rss_mb"]
            result[f"{engine}_load_s"] = r["load_s"]
            if "cpu_variant" in r:
                result["llamacpp_cpu_variant"] = r["cpu_variant"]
                result["llamacpp_cpu_features"] = ",".join(r["cpu_features"])
            print(f"{engine}: {r}", flush=True)
        from tinywave_jax.models.decode import common_prefix

        for engine in ENGINES[1:]:  # how far each greedy continuation agrees with JAX's
            same = common_prefix(tokens["jax"], tokens[engine])
            result[f"{engine}_common_prefix_with_jax"] = same
        result["llamacpp_q8_0_over_hf"] = round(
            result["llamacpp_q8_0_tok_s"] / result["hf_tok_s"], 2
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
