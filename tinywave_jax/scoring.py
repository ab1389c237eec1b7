"""Per-token log-likelihoods of token sequences: `tinywave score` and the engine evaluation builds on.

Sequences are grouped into length buckets (powers of two from 16, capped at the model's
`max_position_embeddings`), right-padded, and run in fixed-size batches, so each bucket compiles
once. Log-probabilities come from the final hidden state and the LM head in sequence chunks, so
`[batch, length, vocab]` float32 logits never exist at once.
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import InputError
from .jsonl import iter_jsonl, write_jsonl_atomic

MIN_BUCKET = 16
LOGIT_CHUNK = 256


def bucket_length(n: int, max_len: int) -> int:
    """Smallest power of two >= n (at least MIN_BUCKET), capped at max_len."""
    b = MIN_BUCKET
    while b < n:
        b *= 2
    return min(b, max_len)


def check_ids(
    seqs: Sequence[Sequence[int]], vocab_size: int, max_len: int, what: str = "sequence"
) -> None:
    """Raises InputError naming the sequence (0-based) and the offending ids or length."""
    for i, s in enumerate(seqs):
        if len(s) == 0:
            raise InputError(f"{what} {i}: empty")
        if len(s) > max_len:
            raise InputError(
                f"{what} {i}: {len(s)} tokens, longer than the model's "
                f"max_position_embeddings ({max_len})"
            )
        arr = np.asarray(s)
        if not np.issubdtype(arr.dtype, np.integer):
            raise InputError(f"{what} {i}: ids must be integers")
        bad = arr[(arr < 0) | (arr >= vocab_size)]
        if bad.size:
            raise InputError(
                f"{what} {i}: ids outside the vocabulary [0, {vocab_size}): "
                f"{sorted(set(bad.tolist()))[:10]}"
            )


@functools.lru_cache(maxsize=None)
def _logprob_fn(config):
    import jax
    import jax.numpy as jnp

    from .models import llama

    @jax.jit
    def fn(params, ids, segment_ids):
        out = llama.Llama(config).apply(
            {"params": params}, ids, None, segment_ids, return_logits=False
        )
        head = llama.lm_head_kernel(params, config)
        hidden, targets = out.final_hidden[:, :-1], ids[:, 1:]
        b, t, d = hidden.shape
        chunk = min(LOGIT_CHUNK, t)
        n = -(-t // chunk)
        pad = n * chunk - t
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(b, n, chunk, d).swapaxes(0, 1)
        targets = jnp.pad(targets, ((0, 0), (0, pad))).reshape(b, n, chunk).swapaxes(0, 1)

        def per_chunk(args):
            h, tgt = args
            logits = jnp.einsum("bcd,dv->bcv", h, head, preferred_element_type=jnp.float32)
            lse = jax.nn.logsumexp(logits, axis=-1)
            return jnp.take_along_axis(logits, tgt[..., None], axis=-1)[..., 0] - lse

        lp = jax.lax.map(per_chunk, (hidden, targets))  # [n, B, chunk]
        return lp.swapaxes(0, 1).reshape(b, n * chunk)[:, :t]

    return fn


def score_sequences(
    params, config, seqs: Sequence[Sequence[int]], batch_size: int = 8, progress: bool = False
) -> list[np.ndarray]:
    """log p(ids[t] | ids[:t]) for t >= 1, float32 [len-1] per sequence, in input order."""
    import jax.numpy as jnp

    max_len = config.max_position_embeddings
    check_ids(seqs, config.vocab_size, max_len)
    fn = _logprob_fn(config)
    by_bucket: dict[int, list[int]] = {}
    for i, s in enumerate(seqs):
        by_bucket.setdefault(bucket_length(len(s), max_len), []).append(i)
    results: list = [None] * len(seqs)
    done, start = 0, time.time()
    for length in sorted(by_bucket):
        idx = by_bucket[length]
        for lo in range(0, len(idx), batch_size):
            rows = idx[lo : lo + batch_size]
            ids = np.zeros((batch_size, length), np.int32)
            seg = np.zeros((batch_size, length), np.int32)  # padding rows/columns: segment 0
            for r, i in enumerate(rows):
                ids[r, : len(seqs[i])] = seqs[i]
                seg[r, : len(seqs[i])] = 1
            lp = np.asarray(fn(params, jnp.asarray(ids), jnp.asarray(seg)))
            for r, i in enumerate(rows):
                results[i] = lp[r, : len(seqs[i]) - 1].astype(np.float32)
            done += len(rows)
            if progress:
                rate = done / max(time.time() - start, 1e-9)
                print(
                    f"\rscored {done}/{len(seqs)} sequences ({rate:.1f}/s, bucket {length})",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
    if progress:
        print(file=sys.stderr)
    return results


def read_jsonl(path: str | Path, key: str = "ids") -> list[dict]:
    records = []
    for where, rec in iter_jsonl(path):
        if not isinstance(rec.get(key), list):
            raise InputError(f"{where}: expected an object with a list {key!r}")
        records.append(rec)
    return records


def score_file(
    ckpt_dir: str | Path,
    in_path: str | Path,
    out_path: str | Path,
    batch_size: int = 8,
    dtype: str | None = None,
    progress: bool = True,
    verify: bool = True,
) -> list[dict]:
    from . import storage
    from .checkpoint import load_model, load_model_config

    # gs:// paths are checked (credentials, bucket, write access) before the long load and scoring
    storage.check_gcs(ckpt_dir, what="model checkpoint")
    storage.check_gcs(storage.path(out_path).parent, write=True, what="output file in")
    records = read_jsonl(in_path)
    seqs = [r["ids"] for r in records]
    shape = load_model_config(ckpt_dir)  # ids and lengths are checked before the (long) load
    try:
        check_ids(seqs, shape.vocab_size, shape.max_position_embeddings, what="record")
    except InputError as e:  # name the file, not just the index
        raise InputError(f"{in_path}: {e}") from None
    params, config, _ = load_model(ckpt_dir, dtype=dtype, verify=verify)
    if dtype:
        config = config.replace(dtype=dtype, param_dtype=dtype)
    lps = score_sequences(params, config, seqs, batch_size, progress)
    out = []
    for rec, lp in zip(records, lps):
        rec = dict(
            rec,
            logprobs=[float(x) for x in lp],
            sum_logprob=float(lp.sum()),
            mean_logprob=float(lp.mean()) if lp.size else None,
        )
        out.append(rec)
    write_jsonl_atomic(out_path, out)
    return out


def register(subparsers) -> None:
    from .checkpoint import add_no_verify

    p = subparsers.add_parser(
        "score",
        help="per-token log-likelihoods of token sequences (jsonl in, jsonl out)",
        description='Each input line is {"ids": [...], ...}; each output line adds "logprobs" '
        '(log p(ids[t] | ids[:t]) for t >= 1), "sum_logprob" and "mean_logprob". '
        "Other keys pass through.",
    )
    p.add_argument(
        "ckpt_dir", help="tinywave model checkpoint (from import-hf, init-student, distill)"
    )
    p.add_argument("input", help="input .jsonl")
    p.add_argument("output", help="output .jsonl (written atomically)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default=None,
        help="compute/parameter dtype (default: as stored)",
    )
    add_no_verify(p)
    p.set_defaults(
        func=lambda a: (
            score_file(
                a.ckpt_dir, a.input, a.output, a.batch_size, a.dtype, verify=not a.no_verify
            ),
            0,
        )[1]
    )
