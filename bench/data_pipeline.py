"""Packed-batch throughput of the data pipeline on one host.

Builds a synthetic corpus (per-frame HuBERT/pitch/style streams at SpiritLM's rates with word
alignments, written through `build_corpus` to ArrayRecord) in a temp dir, then times
`make_train_iterator` after a warm-up. Counts non-padding tokens of the contract batches.

  python bench/data_pipeline.py                                  # expressive stream
  python bench/data_pipeline.py --mixture speech=1,expressive=1,interleaved=1,text=0.5 --workers 2

Ends by printing ONE JSON line: tokens_per_s, seq_len, batch, workers, mixture, ...
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def synthetic_manifest(path: Path, n: int, seconds: float, seed: int = 0) -> float:
    """n utterances of about `seconds` each; returns total hours."""
    rng = np.random.default_rng(seed)
    total = 0.0
    with open(path, "w") as f:
        for k in range(n):
            sec = rng.uniform(0.5, 1.5) * seconds
            total += sec
            nh, npi, ns = int(sec * 25), int(sec * 12.5), max(1, int(sec))
            hubert = np.repeat(rng.integers(0, 501, nh), rng.integers(1, 4, nh))[:nh]
            pitch = np.repeat(rng.integers(0, 64, npi), rng.integers(1, 5, npi))[:npi]
            t, words = 0.1, []
            while t < sec - 0.6:
                d = rng.uniform(0.15, 0.5)
                words.append([f"w{rng.integers(0, 100)}", round(t, 3), round(t + d, 3)])
                t += d + rng.choice([0.0, 0.1])
            f.write(
                json.dumps(
                    {
                        "id": f"utt{k:06d}",
                        "speaker": f"spk{k % 50}",
                        "split": "train",
                        "units": {
                            "hubert": hubert.tolist(),
                            "pitch": pitch.tolist(),
                            "style": rng.integers(0, 100, ns).tolist(),
                        },
                        "words": words,
                        "transcript": " ".join(w for w, _, _ in words),
                    }
                )
                + "\n"
            )
    return total / 3600


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--utterances", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=10.0, help="mean utterance length")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--read-threads", type=int, default=8)
    p.add_argument("--mixture", default="expressive=1")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args(argv)

    from data_fixtures import make_tokenizer

    from tinywave_jax.data import DataConfig, build_corpus, make_train_iterator

    mixture = {k: float(v) for k, v in (kv.split("=") for kv in args.mixture.split(","))}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hours = synthetic_manifest(tmp / "units.jsonl", args.utterances, args.seconds)
        t0 = time.perf_counter()
        build_corpus(
            tmp / "corpus",
            manifest=tmp / "units.jsonl",
            shard_size=500,
            workers=1,
            log=lambda m: None,
        )
        build_s = time.perf_counter() - t0
        cfg = DataConfig(
            corpus_dir=str(tmp / "corpus"),
            mixture=mixture,
            seq_len=args.seq_len,
            batch_size=args.batch,
            worker_count=args.workers,
            read_threads=args.read_threads,
            tokenizer=make_tokenizer(tmp / "tok"),
        )
        it = make_train_iterator(cfg, 0, 1)
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            next(it)
        warm_s = time.perf_counter() - t0
        tokens = 0
        t0 = time.perf_counter()
        for _ in range(args.steps):
            tokens += int((next(it)["segment_ids"] > 0).sum())
        dt = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "bench": "data_pipeline",
                "tokens_per_s": round(tokens / dt),
                "batches_per_s": round(args.steps / dt, 2),
                "seq_len": args.seq_len,
                "batch": args.batch,
                "workers": args.workers,
                "read_threads": args.read_threads,
                "mixture": mixture,
                "corpus_hours": round(hours, 2),
                "utterances": args.utterances,
                "corpus_build_s": round(build_s, 1),
                "warmup_s": round(warm_s, 1),
                "steps": args.steps,
            }
        )
    )


if __name__ == "__main__":
    main()
