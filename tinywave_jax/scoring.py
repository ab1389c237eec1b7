"""Per-token log-likelihoods of token sequences: `tinywave score` and the engine evaluation builds on.

Sequences are grouped into length buckets (powers of two from 16, capped at the model's
`max_position_embeddings`), right-padded, and run in fixed-size batches, so each bucket compiles
once. Log-probabilities come from the final hidden state and the LM head in sequence chunks
(distill/losses.py `chunked_token_logprobs`, the losses' own chunked logits), so
`[batch, length, vocab]` float32 logits never exist at once.

Sharded (`mesh`, what `tinywave score` and `tinywave eval` use: `scoring_mesh()`, every device of
every process): the rows of each batch are split over the mesh's (data, fsdp) axes by the training
rules (`parallel/rules.py`), the parameters replicated (fsdp=1) or sharded along `embed` over fsdp.
`batch_size` is the GLOBAL number of rows per step, rounded up to a multiple of the data-parallel
device count; the padding rows are segment 0 and dropped. Every process holds the whole list of
sequences and builds the same batches; each puts only the rows of its own devices on the mesh
(`make_array_from_callback`), and the per-row log-probabilities are gathered back to every host
(`process_allgather` across processes) into input order. Each row is computed alone on its
device, so the numbers equal a one-device run's to float32 round-off (XLA picks kernels by the
per-device shape: 8 CPU devices vs one differ by up to ~5e-7 in a log-probability), and any two
runs on the same mesh shape, one process or several, agree exactly.
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from . import storage
from .checkpoint import load_model, load_model_config
from .distill.losses import chunked_token_logprobs
from .errors import ConfigError, InputError
from .jsonl import iter_jsonl, write_jsonl_atomic
from .models import llama
from .outputs import check_output_files, is_primary_process
from .parallel import (
    MeshConfig,
    axis_rules_context,
    batch_divisor,
    batch_sharding,
    make_mesh,
    tree_shardings,
)

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
        # JSON's true/false would pass as 1/0 inside a list of numbers
        boolean = isinstance(s, (list, tuple)) and any(isinstance(x, bool) for x in s)
        arr = np.asarray(s)
        if boolean or not np.issubdtype(arr.dtype, np.integer):
            raise InputError(f"{what} {i}: ids must be integers")
        bad = arr[(arr < 0) | (arr >= vocab_size)]
        if bad.size:
            raise InputError(
                f"{what} {i}: ids outside the vocabulary [0, {vocab_size}): "
                f"{sorted(set(bad.tolist()))[:10]}"
            )


def _logprob_body(config):
    """(params, ids [B, T], segment_ids [B, T]) -> log p(ids[:, t] | ids[:, :t]) [B, T-1]."""

    def fn(params, ids, segment_ids):
        out = llama.Llama(config).apply(
            {"params": params}, ids, None, segment_ids, return_logits=False
        )
        head = llama.lm_head_kernel(params, config)
        return chunked_token_logprobs(out.final_hidden[:, :-1], head, ids[:, 1:], LOGIT_CHUNK)

    return fn


@functools.lru_cache(maxsize=None)
def _logprob_fn(config):
    """The one-device scoring function (jitted; inputs on the default device)."""

    return jax.jit(_logprob_body(config))


@functools.lru_cache(maxsize=None)
def _sharded_logprob_fn(config, mesh):
    """The scoring function on `mesh`: rows over (data, fsdp), parameters by the training rules,
    log-probabilities left row-sharded (gathered on the host side)."""

    bsh = batch_sharding(mesh)
    return jax.jit(
        _logprob_body(config),
        in_shardings=(param_shardings(mesh, config), bsh, bsh),
        out_shardings=bsh,
    )


def scoring_mesh(fsdp: int = 1, devices=None):
    """The mesh `score` and `eval` run on: all devices of all processes (`devices`: these only)
    on (data, fsdp); `fsdp` > 1 shards the parameters over groups of that many devices (for a
    model too large to replicate on each), fsdp=1 replicates them."""

    devices = list(jax.devices() if devices is None else devices)
    if not isinstance(fsdp, int) or fsdp < 1 or len(devices) % fsdp:
        raise ConfigError(
            f"fsdp {fsdp}: must be a positive divisor of the device count ({len(devices)})",
            param="fsdp",
        )
    return make_mesh(MeshConfig(data=-1, fsdp=fsdp, tensor=1), devices)


def param_shardings(mesh, config):
    """NamedShardings of a model's parameters on `mesh` (the training rules: replicated unless
    the mesh has fsdp > 1 or tensor > 1); pass them to `checkpoint.load_model(shardings=...)`."""

    return tree_shardings(mesh, llama.param_logical_axes(config), llama.abstract_params(config))


def _place_params(params, shardings):
    """`params` as global arrays with `shardings` (kept when already so: a checkpoint loaded with
    them). Host values are cut per device, so each process only places its own shards."""

    def put(x, sh):
        if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sh, x.ndim):
            return x
        if jax.process_count() == 1:
            return jax.device_put(x, sh)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sh, lambda idx: host[idx])

    return jax.tree.map(put, params, shardings)


def _to_host(x) -> np.ndarray:
    """A (row-sharded) global array as one host array, on every process."""
    if x.is_fully_addressable:
        return np.asarray(x)

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def rows_per_step(batch_size: int, mesh=None) -> int:
    """Rows of each scoring step: `batch_size` (global), rounded up to a multiple of the
    data-parallel devices of `mesh` (data x fsdp)."""

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(
            f"batch_size: must be a positive integer, got {batch_size!r}", param="batch_size"
        )
    if mesh is None:
        return batch_size

    dp = batch_divisor(mesh)
    return -(-batch_size // dp) * dp


def score_sequences(
    params,
    config,
    seqs: Sequence[Sequence[int]],
    batch_size: int = 8,
    progress: bool = False,
    mesh=None,
) -> list[np.ndarray]:
    """log p(ids[t] | ids[:t]) for t >= 1, float32 [len-1] per sequence, in input order.

    mesh: None scores on the default device (`batch_size` rows per step); a mesh
    (`scoring_mesh()`) splits each step's rows over its data-parallel devices, `batch_size` then
    being the global rows per step rounded up to a multiple of them (see the module doc). With
    several processes every process passes the same `seqs` and gets all results back."""

    max_len = config.max_position_embeddings
    check_ids(seqs, config.vocab_size, max_len)
    batch_size = rows_per_step(batch_size, mesh)
    if mesh is None:
        fn = _logprob_fn(config)
    else:
        sharded_fn = _sharded_logprob_fn(config, mesh)
        bsh = batch_sharding(mesh)
        params = _place_params(params, param_shardings(mesh, config))

        def fn(params, ids, seg):
            ids, seg = (
                jax.make_array_from_callback(a.shape, bsh, lambda idx, a=a: a[idx])
                for a in (ids, seg)
            )
            with jax.set_mesh(mesh), axis_rules_context():
                return sharded_fn(params, ids, seg)

    progress = progress and jax.process_index() == 0
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
            if mesh is None:
                lp = np.asarray(fn(params, jnp.asarray(ids), jnp.asarray(seg)))
            else:
                lp = _to_host(fn(params, ids, seg))
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
    if not records:
        raise InputError(f"{path}: holds no records (every line is blank)")
    return records


def score_file(
    ckpt_dir: str | Path,
    in_path: str | Path,
    out_path: str | Path,
    batch_size: int = 8,
    dtype: str | None = None,
    progress: bool = True,
    verify: bool = True,
    fsdp: int = 1,
    mesh=None,
) -> list[dict]:
    """Scores every record of `in_path` and writes `out_path` (process 0 only, atomically).
    mesh: default `scoring_mesh(fsdp)` (every device of every process); `batch_size` is the
    global rows per step (see `score_sequences`)."""

    check_output_files([out_path], [ckpt_dir, in_path], "score OUT")
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
    mesh = scoring_mesh(fsdp) if mesh is None else mesh
    rows_per_step(batch_size, mesh)  # a bad --batch-size fails before the load
    params, config, _ = load_model(
        ckpt_dir, dtype=dtype, shardings=param_shardings(mesh, shape), verify=verify
    )
    if dtype:
        config = config.replace(dtype=dtype, param_dtype=dtype)
    lps = score_sequences(params, config, seqs, batch_size, progress, mesh=mesh)
    out = []
    for rec, lp in zip(records, lps):
        rec = dict(
            rec,
            logprobs=[float(x) for x in lp],
            sum_logprob=float(lp.sum()),
            mean_logprob=float(lp.mean()) if lp.size else None,
        )
        out.append(rec)
    if is_primary_process():  # every process has every result; one writes them
        write_jsonl_atomic(out_path, out)
    if jax.process_count() > 1:  # no process returns before the file is there
        multihost_utils.sync_global_devices("tinywave score written")
    return out
