"""The offline teacher cache on a >= 100M-parameter student: online top-k KD step vs cached step.

Bench model (defaults): vocab 32000, hidden 1024, FFN 2816, 8 heads (MHA), student 3 layers
(~104M parameters with embeddings and untied head), teacher 3x its layers (9, ~181M), float32,
batch 2 x seq 128, top-k 64, temperature 2. The data: in-memory speech records (random HuBERT
units, 60-300 frames) through the real corpus pipeline (packing, shuffling, token keys).

  build_tok_s             `teacher-cache build` (build_teacher_cache) over the records: teacher
                          forward + top-k + shard writes, tokens per second (after compile)
  cache_bytes_per_token   the cache's shard bytes (ids + log-probs + .npy headers) / tokens
  online_tok_s            the distill step with distill.terms.topk_kl=1, weights.ce=1 (others 0):
                          student fwd+bwd, the teacher forward and its top-k in the step
  cached_tok_s            the same step with teacher.cache: the batch joined on the host to its
                          cached top-k rows (CacheJoin, timed with the step), no teacher
  *_flops_per_step        model FLOPs per step of each mode (train.metrics.step_flops, what
                          `tinywave plan` and metrics.jsonl report)

Both steps run side by side in this one process, alternating step by step on the same batches
(the first step of each, with its compilation, untimed; the median of --steps). Prints progress
on stderr and ONE JSON line on stdout.

  nice -n 10 python bench/teacher_cache.py               # ~5-10 min on 2 shared CPU cores
  python bench/teacher_cache.py --hidden 256 --ffn 688 --vocab 4096 --steps 2   # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("JAX_PLATFORMS", "cpu")


class Records:
    """In-memory speech records (the dict form CorpusSource returns), with an identity."""

    def __init__(self, n: int, units: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.recs = []
        for i in range(n):
            k = int(rng.integers(60, 300))
            u = rng.integers(0, units, k).astype(np.int32)
            self.recs.append(
                {
                    "id": f"r{i}",
                    "speaker": "s",
                    "transcript": "",
                    "duration": k / 25,
                    "words": None,
                    "where": f"bench record {i}",
                    "streams": {"hubert": (u, np.arange(k) / 25.0)},
                }
            )

    def __len__(self):
        return len(self.recs)

    def __getitem__(self, i):
        return self.recs[int(i)]

    def identity(self) -> str:
        return f"bench-records-{len(self)}"


def config(a, cache=None):
    from tinywave_jax.config import from_dict
    from tinywave_jax.train.config import DistillConfig

    shape = dict(
        vocab_size=a.vocab,
        hidden_size=a.hidden,
        intermediate_size=a.ffn,
        num_hidden_layers=3 * a.student_layers,
        num_attention_heads=a.heads,
        num_key_value_heads=a.heads,
        max_position_embeddings=max(1024, a.seq),
    )
    layout = {
        "preset": None,
        "text_vocab_size": a.vocab - 503,
        "num_units": 501,
        "vocab_size": a.vocab,
    }
    return from_dict(
        DistillConfig,
        {
            "run_dir": "unused",
            "teacher": {"shape": shape, "seed": 1, "dtype": "float32", "cache": cache},
            "student": {"num_layers": a.student_layers},
            "distill": {
                "weights": {"ce": 1.0, "logit_kl": 0.0, "hidden": 0.0, "attention": 0.0},
                "terms": {"topk_kl": 1.0},
                "top_k": a.top_k,
                "layer_map": "uniform",
                "logit_chunk_size": 128,
            },
            "train": {"dtype": "float32", "param_dtype": "float32"},
            "mesh": {"data": 1, "fsdp": -1, "tensor": 1},
            "data": {
                "source": "corpus",
                "seq_len": a.seq,
                "batch_size": a.batch,
                "corpus": {"corpus_dir": "in-memory", "layout": layout, "read_threads": 1},
            },
        },
    )


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def step_once(session, state, frozen, host) -> tuple[float, object, float]:
    """(seconds, new state, loss) of one step on host batch `host` (host join done by caller)."""
    import jax

    t0 = time.perf_counter()
    state, m = session.step(state, frozen, session.global_batch(host))
    jax.block_until_ready(m["loss"])
    return time.perf_counter() - t0, state, float(m["loss"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--ffn", type=int, default=2816)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--student-layers", type=int, default=3)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--top-k", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--records", type=int, default=24)
    a = p.parse_args()

    import jax

    from tinywave_jax.data.pipeline import make_train_iterator
    from tinywave_jax.distill.cache_build import build_teacher_cache
    from tinywave_jax.distill.teacher_cache import CacheJoin, open_for_run
    from tinywave_jax.train.metrics import step_flops
    from tinywave_jax.train.recipes import prepare
    from tinywave_jax.train.session import Session

    src = Records(a.records, 501)
    online_cfg = config(a)
    recipe = prepare(online_cfg)
    n_student = recipe.spec.student.num_params()
    n_teacher = recipe.teacher_full.num_params()
    log(f"student {n_student / 1e6:.1f}M params, teacher {n_teacher / 1e6:.1f}M, {jax.devices()}")

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cache")
        log("building the cache")
        s = build_teacher_cache(online_cfg, out, a.top_k, records_per_shard=8, source=src)
        build_tok_s = s["tokens_per_s"]
        bytes_per_token = s["bytes"] / s["tokens"]
        log(
            f"  {s['tokens']} tokens at {build_tok_s:.0f} tok/s (compile {s['compile_s']:.1f}s "
            f"apart), {bytes_per_token:.1f} B/token"
        )

        cached_cfg = config(a, cache=out)
        corpus = online_cfg.data.corpus_config()
        runs = {}
        for mode, cfg in (("online", online_cfg), ("cached", cached_cfg)):
            session = Session(prepare(cfg))
            frozen, trainable = session.frozen_and_trainable()
            state = session.init_state(trainable)
            del trainable
            runs[mode] = [session, state, frozen, []]
        joiner = CacheJoin(iter(()), open_for_run(cached_cfg, source=src), ["speech"])
        it = make_train_iterator(corpus, 0, 1, source=src, keys=True)
        # the two modes alternate on the same batches, so load from other processes on this
        # machine falls on both alike; the first step of each (compilation) is not timed
        for i in range(a.steps + 1):
            keyed = next(it)
            for mode, r in runs.items():
                t0 = time.perf_counter()
                if mode == "cached":
                    joiner.batches = iter([keyed])
                    host = next(joiner)
                else:
                    host = {k: v for k, v in keyed.items() if k not in CacheJoin.KEYS}
                join_s = time.perf_counter() - t0
                sec, r[1], loss = step_once(r[0], r[1], r[2], host)
                log(f"  step {i} {mode}: {sec + join_s:.2f}s (join {join_s:.3f}s) loss {loss:.4f}")
                if i:
                    r[3].append(sec + join_s)
        results = {
            mode: (
                a.batch * a.seq / float(np.median(r[3])),
                step_flops(r[0].spec, a.seq, a.batch),
            )
            for mode, r in runs.items()
        }

    print(
        json.dumps(
            {
                "online_tok_s": round(results["online"][0], 2),
                "cached_tok_s": round(results["cached"][0], 2),
                "speedup": round(results["cached"][0] / results["online"][0], 3),
                "cache_bytes_per_token": round(bytes_per_token, 2),
                "build_tok_s": round(build_tok_s, 2),
                "online_flops_per_step": results["online"][1],
                "cached_flops_per_step": results["cached"][1],
                "student_params": n_student,
                "teacher_params": n_teacher,
                "batch": a.batch,
                "seq": a.seq,
                "top_k": a.top_k,
                "steps": a.steps,
                "devices": jax.device_count(),
            }
        )
    )


def _drop_keys(batch: dict) -> dict:
    return {
        k: v for k, v in batch.items() if k not in ("stream_ids", "record_ids", "token_positions")
    }


def _join(joiner, batch: dict) -> dict:
    joiner.batches = iter([batch])
    return next(joiner)


if __name__ == "__main__":
    main()
