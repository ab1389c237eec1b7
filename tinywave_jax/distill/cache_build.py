"""`tinywave teacher-cache build`: run the teacher once over a corpus split, store its top-k.

The run config is a distill config: `teacher:` (the model), `data:` (source: corpus; its
corpus_dir, split, mixture kinds and layout), `mesh:` and `data.batch_size` (rows per teacher
call, over the mesh's data x fsdp devices like `eval`), `distill.logit_chunk_size`. Records are
cut into shards of `records_per_shard`; each shard is written whole (its .npy files, then its
.json as the commit), so a killed build resumes at the first unfinished shard and a finished one
is never recomputed. Every process runs the same teacher calls (rows over all devices of all
processes, gathered back); the primary process writes. Format and keys: teacher_cache.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import time
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from .. import storage
from ..data.corpus_read import CorpusSource
from ..data.layout import load_tokenizer
from ..data.streams import BadRecord, sequence_for
from ..errors import ConfigError, naming
from ..models import llama
from ..models.llama import apply_llama, lm_head_kernel
from ..outputs import is_primary_process, write_file_atomic
from ..parallel import axis_rules_context, batch_divisor, batch_sharding, make_mesh, tree_shardings
from ..storage import sha256_file
from ..train.recipes import _source_config, load_or_init
from .losses import teacher_topk
from .teacher_cache import (
    FORMAT,
    ID_DTYPE,
    INFO,
    LP_DTYPE,
    VERSION,
    TeacherCacheError,
    _differences,
    run_identity,
    shard_name,
)

log = logging.getLogger(__name__)


def _teacher(cfg, mesh):

    config = _source_config(cfg.teacher, "teacher").replace(
        dtype=cfg.teacher.dtype, param_dtype=cfg.teacher.dtype, remat="none"
    )
    if config.vocab_size > np.iinfo(ID_DTYPE).max + 1:
        raise ConfigError(
            f"teacher: vocab_size {config.vocab_size} does not fit the cache's 16-bit ids"
        )
    shardings = tree_shardings(
        mesh, llama.param_logical_axes(config), llama.abstract_params(config)
    )
    return config, load_or_init(cfg.teacher, config, shardings), shardings


def _topk_fn(config, k: int, chunk, mesh, param_sh):

    def fn(params, ids, seg, pos):
        out = apply_llama(config, params, ids, pos, seg, return_logits=False)
        return teacher_topk(out.final_hidden, lm_head_kernel(params, config), k, chunk)

    bsh = batch_sharding(mesh)
    jitted = jax.jit(fn, in_shardings=(param_sh, bsh, bsh, bsh), out_shardings=(bsh, bsh))
    compiled: list = []
    timing = {"compile_s": 0.0}  # the first call's compile, timed apart

    def call(params, ids, seg, pos):
        def put(x):
            return jax.make_array_from_callback(x.shape, bsh, lambda idx: x[idx])

        args = (params, put(ids), put(seg), put(pos))
        with jax.set_mesh(mesh), axis_rules_context():
            if not compiled:  # timed apart: the build's tokens/s is the teacher's, not XLA's
                t0 = time.time()
                compiled.append(jitted.lower(*args).compile())
                timing["compile_s"] = time.time() - t0
            out = compiled[0](*args)
        if jax.process_count() > 1:
            out = multihost_utils.process_allgather(out, tiled=True)
        return tuple(np.asarray(x) for x in out)

    return call, timing


def _shard_done(out, s: int) -> bool:
    """A shard whose commit file exists and whose files match its recorded hashes."""
    meta_path = storage.path(out) / f"{shard_name(s)}.json"
    if not meta_path.exists():
        return False
    if storage.is_remote(out):
        return True  # objects are written whole; the reader verifies
    meta = json.loads(meta_path.read_text())
    for name, f in meta["files"].items():
        p = storage.path(out) / name
        if not p.is_file() or p.stat().st_size != f["bytes"] or sha256_file(p) != f["sha256"]:
            log.warning("%s: %s is damaged or truncated; rebuilding the shard", out, name)
            return False
    return True


def _npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


def build_teacher_cache(
    cfg, out, top_k: int = 64, records_per_shard: int = 256, source=None, mesh=None
) -> dict:
    """Builds (or resumes) the teacher cache of `cfg` (a DistillConfig) in `out`; returns
    {"shards", "built", "skipped", "tokens", "bytes", "seconds", "tokens_per_s", "compile_s"}
    (seconds and tokens/s of this call's built shards, the teacher's compilation left out)."""

    if records_per_shard < 1:
        raise ConfigError(
            f"records_per_shard: must be >= 1, got {records_per_shard}", param="records_per_shard"
        )
    cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, top_k=top_k))
    if source is None:
        corpus = cfg.data.corpus_config()
        source = CorpusSource(corpus.corpus_dir, corpus.split)
    identity, corpus = run_identity(cfg, source)
    n = len(source)
    info = {
        "format": FORMAT,
        "version": VERSION,
        **identity,
        "kinds": list(corpus.mixture),
        "window": cfg.data.seq_len,
        "records_per_shard": records_per_shard,
        "num_shards": -(-n // records_per_shard),
        "dtypes": {"ids": np.dtype(ID_DTYPE).name, "logprobs": np.dtype(LP_DTYPE).name},
    }
    with naming("out"):
        storage.check_gcs(out, write=True, what="out")
    root = storage.path(out)
    if (root / INFO).exists():
        saved = json.loads((root / INFO).read_text())
        diff = _differences(saved, info)
        if diff:
            raise TeacherCacheError(
                f"{out} holds a cache built otherwise: " + "; ".join(diff) + "; use another out",
                param=(None, "out"),
            )
    elif is_primary_process():
        if not storage.is_remote(out):
            root.mkdir(parents=True, exist_ok=True)
        write_file_atomic(root / INFO, json.dumps(info, indent=1))

    mesh = make_mesh(cfg.mesh) if mesh is None else mesh
    config, params, param_sh = _teacher(cfg, mesh)
    if top_k > config.vocab_size:
        raise ConfigError(
            f"top_k: {top_k} exceeds the teacher's vocab_size {config.vocab_size}", param="top_k"
        )
    window = cfg.data.seq_len
    if window > config.max_position_embeddings:
        raise ConfigError(
            f"data.seq_len: {window} (the cache's window) exceeds the teacher's "
            f"max_position_embeddings {config.max_position_embeddings}"
        )
    div = batch_divisor(mesh)
    rows = -(-cfg.data.batch_size // div) * div
    call, timing = _topk_fn(config, top_k, cfg.distill.logit_chunk_size, mesh, param_sh)
    layout = corpus.layout.build()
    tokenizer = load_tokenizer(corpus.tokenizer, layout) if corpus.tokenizer else None
    summary: dict[str, Any] = {
        "shards": info["num_shards"],
        "built": 0,
        "skipped": 0,
        "tokens": 0,
        "bytes": 0,
    }
    t0 = time.time()
    for s in range(info["num_shards"]):
        if _shard_done(out, s):
            summary["skipped"] += 1
            continue
        lo, hi = s * records_per_shard, min(n, (s + 1) * records_per_shard)
        seqs = []  # (kind, record, ids) in shard order: kind-major, then record
        for kind in corpus.mixture:
            for i in range(lo, hi):
                try:
                    ids = sequence_for(
                        kind, source[i], layout, tokenizer, None, None, False, corpus.leading_marker
                    )
                except BadRecord as e:  # the training pipeline skips it too
                    log.warning("record %d (%s stream) left out of the cache: %s", i, kind, e)
                    ids = np.zeros(0, np.int32)
                seqs.append((kind, i, np.asarray(ids, np.int32)))
        windows = [(j, a) for j, (_, _, ids) in enumerate(seqs) for a in range(0, len(ids), window)]
        out_ids = [np.zeros((len(x), top_k), ID_DTYPE) for _, _, x in seqs]
        out_lp = [np.zeros((len(x), top_k), LP_DTYPE) for _, _, x in seqs]
        for b in range(0, len(windows), rows):
            batch = windows[b : b + rows]
            ids = np.zeros((rows, window), np.int32)
            seg = np.zeros((rows, window), np.int32)
            for r, (j, a) in enumerate(batch):
                w = seqs[j][2][a : a + window]
                ids[r, : len(w)], seg[r, : len(w)] = w, 1
            pos = np.where(seg > 0, np.arange(window)[None, :], 0).astype(np.int32)
            top_ids, top_lp = call(params, ids, seg, pos)
            for r, (j, a) in enumerate(batch):
                m = min(window, len(seqs[j][2]) - a)
                out_ids[j][a : a + m] = top_ids[r, :m]
                # -65504 is float16's lowest finite value: a log-prob beyond it is 0 probability
                out_lp[j][a : a + m] = np.maximum(top_lp[r, :m], -65504.0)
        offsets = {}
        for kind in corpus.mixture:
            lengths = [len(x) for k, _, x in seqs if k == kind]
            offsets[kind] = np.concatenate([[0], np.cumsum(lengths)]).astype(int).tolist()
        arrays = {
            f"{shard_name(s)}.ids.npy": np.concatenate(out_ids).astype(ID_DTYPE),
            f"{shard_name(s)}.lp.npy": np.concatenate(out_lp).astype(LP_DTYPE),
        }
        tokens = sum(len(x) for _, _, x in seqs)
        if is_primary_process():
            files: dict[str, dict[str, Any]] = {}
            for name, x in arrays.items():
                data = _npy(x)
                write_file_atomic(root / name, data)
                files[name] = {"sha256": _sha256_bytes(data), "bytes": len(data)}
            meta = {"shard": s, "records": [lo, hi], "tokens": tokens, "offsets": offsets}
            write_file_atomic(root / f"{shard_name(s)}.json", json.dumps({**meta, "files": files}))
            summary["bytes"] += sum(f["bytes"] for f in files.values())
        summary["built"] += 1
        summary["tokens"] += tokens
        log.info("teacher cache %s: %s done (%d tokens)", out, shard_name(s), tokens)
    summary["compile_s"] = timing["compile_s"]
    summary["seconds"] = time.time() - t0 - timing["compile_s"]
    summary["tokens_per_s"] = summary["tokens"] / max(summary["seconds"], 1e-9)
    return summary


def _sha256_bytes(data: bytes) -> str:

    return hashlib.sha256(data).hexdigest()
