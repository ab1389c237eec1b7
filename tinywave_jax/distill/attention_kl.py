"""Attention-map alignment, KL(teacher attention || student attention), computed block by block.

Attention probabilities are `softmax(q k^T * scale)` over the keys a query may see: earlier or equal
positions with the same nonzero segment id (packed documents never see each other; segment 0 is
padding and sees nothing). The map `[B, H, T, T]` is never built: like flash attention we walk over
`block_size` x `block_size` tiles (query block i, key blocks j <= i; tiles above the diagonal are
skipped), so every intermediate is `[B, H, block, block]` plus per-row statistics `[B, H, T]`;
memory is O(T) + O(block^2) per layer, gradients included:

  pass 1  per query row and head, the log-normaliser (online max / sum-exp) of both models;
  pass 2  per row, sum_j pbar_t (log pbar_t - log pbar_s), plus the per-row constant `c` the
          gradient needs when student heads are averaged (see below);
  backward (a `jax.custom_vjp`), one more pass over the tiles: dS = p_s c - r, giving dq per
          query block and dk accumulated (float32) per key block.
With one student and one teacher head per group (no averaging: TinyWave's 32 vs 32) passes 1 and
2 are one: KL = E_{p_t}[t - s] - lse_t + lse_s (t, s the scaled scores), E_{p_t}[t - s]
accumulated online with the normalisers, so the forward computes each tile's scores once, not
twice. On a TPU v6e chip (TinyWave-Base's 4 rows x 2048 x 32 heads x 128, loss + grad, one layer)
this cut the T x T (one-tile) form's HBM bytes from 22.7 to 20.6 GB and a block's FLOPs by a
quarter (docs/scaling.md, "Third attempt").
Scores and all sums are float32 whatever the input dtype; only tiles are upcast.
Measured (B=4, H=32, hd=128, bf16 q/k, loss+grad, one H100, jax 0.11.2): T=2048, block 256:
0.43 GiB of temporaries and 21 ms, against 6 GiB and 12 ms for the dense version; T=4096:
0.75 GiB, 75 ms (block 512: 1.0 GiB, 52 ms), where one dense [B, H, T, T] float32 map is 8 GiB.

Heads. Query head h reads kv head h // (H // KVH) (GQA). The two models' heads are compared in G
groups of consecutive heads: with `heads="grouped"` G = min(H_student, H_teacher) and the model with
more heads averages the PROBABILITY rows of each group of H/G consecutive heads (teacher 32 vs
student 8: student head i <-> mean of teacher heads 4i..4i+3); the larger count must be a multiple
of the smaller, else ValueError. `heads="mean"` (G = 1) averages all heads of each model, which
works for any counts. The loss per query row is the mean over groups of
KL(pbar_t || pbar_s); `attention_kl` returns its sum over valid query rows and their count.

Gradient with student groups of size g (pbar_s = mean_h p_h): d/ds_hj of -sum_j pbar_t,j log pbar_s,j
is p_hj c_h - r_hj with r_hj = pbar_t,j p_hj / (g pbar_s,j) and c_h = sum_j r_hj (c_h = 1 when g = 1,
giving the familiar p_s - p_t).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

F32 = jnp.float32
_NEG = -1e30  # finite "minus infinity": fully masked rows stay finite instead of turning into NaN


class _Static(NamedTuple):
    block: int
    student_scale: float
    teacher_scale: float
    groups: int


def _scores(q, k, scale):
    """q [B, T, H, hd], k [B, bk, KV, hd] -> scores [B, H, T, bk] (query head h uses kv h // (H/KV))."""
    b, t, h, d = q.shape
    kv = k.shape[2]
    # float32 scores from inputs in their own dtype: only tiles are ever upcast, never all of q/k
    s = jnp.einsum(
        "bqgrd,bkgd->bgrqk", q.reshape(b, t, kv, h // kv, d), k, preferred_element_type=F32
    )
    return s.reshape(b, h, t, k.shape[1]) * scale


def _group_logmean(logp, groups):
    """log of the mean probability over each group of consecutive heads: [B, H, ...] -> [B, G, ...]."""
    b, h = logp.shape[:2]
    x = logp.reshape(b, groups, h // groups, *logp.shape[2:])
    if h == groups:
        return x[:, :, 0]
    return jax.nn.logsumexp(x, axis=2) - math.log(h // groups)


def _expand_groups(x, heads):
    """[B, G, ...] -> [B, H, ...], each group value repeated for its heads."""
    return jnp.repeat(x, heads // x.shape[1], axis=1)


def _unblocks(x):
    """Per-block scan outputs [n, B, block, ...] -> [B, n * block, ...]."""
    return jnp.moveaxis(x, 0, 1).reshape(x.shape[1], -1, *x.shape[3:])


def _tile(x, start, block):
    """Positions [start, start + block) of a [B, Tp, ...] array, sliced in place (no blocked copy)."""
    return lax.dynamic_slice_in_dim(x, start, block, axis=1)


def _tile_mask(seg, q_start, k_start, block):
    """[B, bq, bk]: key visible to query (same nonzero segment, key position <= query position)."""
    seg_q, seg_k = _tile(seg, q_start, block), _tile(seg, k_start, block)
    pos = jnp.arange(block)
    return (
        (seg_q[:, :, None] == seg_k[:, None, :])
        & (seg_q[:, :, None] != 0)
        & (k_start + pos[None, None, :] <= q_start + pos[None, :, None])
    )


def _over_visible_keys(opts, n, q_start, body, carry):
    """Runs carry = body(carry, k_start) for the key blocks at or before the query block's
    diagonal; later blocks are fully masked by causality and skipped."""

    def step(c, k_start):
        return lax.cond(
            k_start < q_start + opts.block, lambda c: body(c, k_start), lambda c: c, c
        ), None

    return lax.scan(step, carry, jnp.arange(n) * opts.block)[0]


def _log_normalisers(opts, n, qs, ks, qt, kt, seg, q_start):
    """Pass 1 for one query block: log sum_j exp(score) over visible keys, [B, H, bq], both models."""

    def online(m, l, s, mask):
        s = jnp.where(mask[:, None], s, _NEG)
        m_new = jnp.maximum(m, s.max(-1))
        return m_new, l * jnp.exp(m - m_new) + jnp.sum(jnp.exp(s - m_new[..., None]), -1)

    qs_i, qt_i = _tile(qs, q_start, opts.block), _tile(qt, q_start, opts.block)

    def body(carry, k_start):
        mask = _tile_mask(seg, q_start, k_start, opts.block)
        ms, ls, mt, lt = carry
        ms, ls = online(
            ms, ls, _scores(qs_i, _tile(ks, k_start, opts.block), opts.student_scale), mask
        )
        mt, lt = online(
            mt, lt, _scores(qt_i, _tile(kt, k_start, opts.block), opts.teacher_scale), mask
        )
        return ms, ls, mt, lt

    b, hs, ht = qs.shape[0], qs.shape[2], qt.shape[2]
    init = (
        jnp.full((b, hs, opts.block), _NEG, F32),
        jnp.zeros((b, hs, opts.block), F32),
        jnp.full((b, ht, opts.block), _NEG, F32),
        jnp.zeros((b, ht, opts.block), F32),
    )
    ms, ls, mt, lt = _over_visible_keys(opts, n, q_start, body, init)
    return ms + jnp.log(ls), mt + jnp.log(lt)


def _tile_terms(opts, qs_i, qt_i, ks_j, kt_j, mask, lse_s, lse_t):
    """Per-tile quantities shared by pass 2 and the backward pass."""
    hs = qs_i.shape[2]
    logp_s = _scores(qs_i, ks_j, opts.student_scale) - lse_s[..., None]  # [B, Hs, bq, bk]
    logp_t = _scores(qt_i, kt_j, opts.teacher_scale) - lse_t[..., None]  # [B, Ht, bq, bk]
    logpbar_s = _group_logmean(logp_s, opts.groups)  # [B, G, bq, bk]
    logpbar_t = _group_logmean(logp_t, opts.groups)
    maskg = mask[:, None]
    pbar_t = jnp.where(maskg, jnp.exp(logpbar_t), 0.0)
    if hs == opts.groups:  # r = pbar_t: one student head per group
        r = pbar_t
    else:  # r = pbar_t * p_h / (g * pbar_s)
        g = hs // opts.groups
        resp = jnp.exp(logp_s - math.log(g) - _expand_groups(logpbar_s, hs))
        r = jnp.where(maskg, _expand_groups(pbar_t, hs) * resp, 0.0)
    return logp_s, logpbar_s, logpbar_t, pbar_t, r


def _one_to_one(opts, qs, qt) -> bool:
    """Every group is one student and one teacher head (32 vs 32 in TinyWave): no averaging."""
    return qs.shape[2] == opts.groups == qt.shape[2]


def _forward_one_pass(opts, qs, ks, qt, kt, seg):
    """`_forward` for one-to-one heads in ONE pass over the tiles instead of two: with no head
    averaging, KL(p_t || p_s) = E_{p_t}[t - s] - lse_t + lse_s (t, s the scaled scores), and
    E_{p_t}[t - s] accumulates online like the normalisers (rescaled as the teacher's running
    max moves). Each tile's scores are computed once, not twice."""
    n = qs.shape[1] // opts.block
    b, hs, ht = qs.shape[0], qs.shape[2], qt.shape[2]

    def per_query_block(_, q_start):
        qs_i, qt_i = _tile(qs, q_start, opts.block), _tile(qt, q_start, opts.block)

        def body(carry, k_start):
            ms, ls, mt, lt, acc = carry
            mask = _tile_mask(seg, q_start, k_start, opts.block)[:, None]
            s = _scores(qs_i, _tile(ks, k_start, opts.block), opts.student_scale)
            t = _scores(qt_i, _tile(kt, k_start, opts.block), opts.teacher_scale)
            s, t = jnp.where(mask, s, _NEG), jnp.where(mask, t, _NEG)
            ms_new, mt_new = jnp.maximum(ms, s.max(-1)), jnp.maximum(mt, t.max(-1))
            ls = ls * jnp.exp(ms - ms_new) + jnp.sum(jnp.exp(s - ms_new[..., None]), -1)
            et = jnp.exp(t - mt_new[..., None])  # masked entries: t - s = 0, they add nothing
            lt = lt * jnp.exp(mt - mt_new) + jnp.sum(et, -1)
            acc = acc * jnp.exp(mt - mt_new) + jnp.sum(et * (t - s), -1)
            return ms_new, ls, mt_new, lt, acc

        init = (
            jnp.full((b, hs, opts.block), _NEG, F32),
            jnp.zeros((b, hs, opts.block), F32),
            jnp.full((b, ht, opts.block), _NEG, F32),
            jnp.zeros((b, ht, opts.block), F32),
            jnp.zeros((b, ht, opts.block), F32),
        )
        ms, ls, mt, lt, acc = _over_visible_keys(opts, n, q_start, body, init)
        lse_s, lse_t = ms + jnp.log(ls), mt + jnp.log(lt)
        kl = (acc / lt - lse_t + lse_s).sum(1) / opts.groups  # padding rows: 0 - 0
        return None, (kl, lse_s, lse_t)

    _, (kl, lse_s, lse_t) = lax.scan(per_query_block, None, jnp.arange(n) * opts.block)
    return _unblocks(kl), (qs, ks, qt, kt, seg, lse_s, lse_t, jnp.ones_like(lse_s))


def _forward(opts, qs, ks, qt, kt, seg):
    if _one_to_one(opts, qs, qt):
        return _forward_one_pass(opts, qs, ks, qt, kt, seg)
    n = qs.shape[1] // opts.block
    b, hs = qs.shape[0], qs.shape[2]

    def per_query_block(_, q_start):
        lse_s, lse_t = _log_normalisers(opts, n, qs, ks, qt, kt, seg, q_start)
        qs_i, qt_i = _tile(qs, q_start, opts.block), _tile(qt, q_start, opts.block)

        def body(carry, k_start):  # pass 2
            kl, c = carry
            mask = _tile_mask(seg, q_start, k_start, opts.block)
            _, logpbar_s, logpbar_t, pbar_t, r = _tile_terms(
                opts,
                qs_i,
                qt_i,
                _tile(ks, k_start, opts.block),
                _tile(kt, k_start, opts.block),
                mask,
                lse_s,
                lse_t,
            )
            terms = jnp.where(mask[:, None], pbar_t * (logpbar_t - logpbar_s), 0.0)
            return kl + terms.sum(axis=(1, 3)) / opts.groups, c + r.sum(-1)

        init = (jnp.zeros((b, opts.block), F32), jnp.zeros((b, hs, opts.block), F32))
        kl, c = _over_visible_keys(opts, n, q_start, body, init)
        return None, (kl, lse_s, lse_t, c)

    _, (kl, lse_s, lse_t, c) = lax.scan(per_query_block, None, jnp.arange(n) * opts.block)
    return _unblocks(kl), (qs, ks, qt, kt, seg, lse_s, lse_t, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _kl_rows(opts, qs, ks, qt, kt, seg):
    """Per query row, mean over head groups of KL(pbar_t || pbar_s): [B, Tp] float32."""
    return _forward(opts, qs, ks, qt, kt, seg)[0]


def _kl_rows_bwd(opts, res, g_rows):
    qs, ks, qt, kt, seg, lse_s, lse_t, c = res
    n = qs.shape[1] // opts.block
    b, _, hs, d = qs.shape
    kvs = ks.shape[2]
    bq = opts.block

    def per_query_block(carry, xq):
        dq, dk = carry  # dq in q's dtype, dk accumulated in float32
        q_start, lse_s_i, lse_t_i, c_i = xq
        qs_i, qt_i = _tile(qs, q_start, bq), _tile(qt, q_start, bq)
        q5 = qs_i.reshape(b, bq, kvs, hs // kvs, d).astype(F32)
        g_i = _tile(g_rows, q_start, bq)
        row_scale = (g_i / opts.groups)[:, None, :, None] * opts.student_scale

        def body(carry, k_start):
            dq_i, dk = carry
            ks_j = _tile(ks, k_start, bq).astype(F32)
            mask = _tile_mask(seg, q_start, k_start, bq)
            logp_s, _, _, _, r = _tile_terms(
                opts, qs_i, qt_i, ks_j, _tile(kt, k_start, bq), mask, lse_s_i, lse_t_i
            )
            p_s = jnp.where(mask[:, None], jnp.exp(logp_s), 0.0)
            ds = (p_s * c_i[..., None] - r) * row_scale  # [B, Hs, bq, bk]
            ds5 = ds.reshape(b, kvs, hs // kvs, bq, bq)
            dq_i = dq_i + jnp.einsum("bgrqk,bkgd->bqgrd", ds5, ks_j).reshape(qs_i.shape)
            dk_j = _tile(dk, k_start, bq) + jnp.einsum("bgrqk,bqgrd->bkgd", ds5, q5)
            return dq_i, lax.dynamic_update_slice_in_dim(dk, dk_j, k_start, axis=1)

        dq_i, dk = _over_visible_keys(opts, n, q_start, body, (jnp.zeros(qs_i.shape, F32), dk))
        return (
            lax.dynamic_update_slice_in_dim(dq, dq_i.astype(dq.dtype), q_start, axis=1),
            dk,
        ), None

    xq = (jnp.arange(n) * bq, lse_s, lse_t, c)
    (dq, dk), _ = lax.scan(per_query_block, (jnp.zeros_like(qs), jnp.zeros(ks.shape, F32)), xq)
    return dq, dk.astype(ks.dtype), None, None, None


_kl_rows.defvjp(lambda opts, *args: _forward(opts, *args), _kl_rows_bwd)


def head_groups(student_heads: int, teacher_heads: int, heads: str = "grouped") -> int:
    """Number of compared head groups G (see the module doc); ValueError when counts do not divide."""
    if heads == "mean":
        return 1
    if heads != "grouped":
        raise ValueError(f"heads must be 'grouped' or 'mean', got {heads!r}")
    lo, hi = sorted((student_heads, teacher_heads))
    if hi % lo:
        raise ValueError(
            f"attention KL with heads='grouped' needs one head count to divide the other; student "
            f"has {student_heads} heads, teacher {teacher_heads}. Use heads='mean' instead"
        )
    return lo


def attention_kl(
    student_q: jax.Array,
    student_k: jax.Array,
    teacher_q: jax.Array,
    teacher_k: jax.Array,
    segment_ids: jax.Array,
    *,
    block_size: int = 256,
    heads: str = "grouped",
    student_scale: Optional[float] = None,
    teacher_scale: Optional[float] = None,
) -> dict:
    """KL(teacher attention || student attention) for one mapped layer pair, blockwise.

    student_q [B, T, Hs, hd_s], student_k [B, T, KVs, hd_s] (post-RoPE); teacher_q/k likewise
    (constants: stop_gradient); segment_ids [B, T] int, 0 = padding. Scales default to hd^-0.5.
    Returns float32 {"sum": sum over valid query rows of the group-mean KL, "count": number of
    valid query rows}; the loss is sum / count. Memory O(B * H * (T + block_size^2))."""
    names = ("student_q", "student_k", "teacher_q", "teacher_k")
    arrays = (student_q, student_k, teacher_q, teacher_k)
    for name, x in zip(names, arrays):
        if x.ndim != 4 or x.shape[:2] != segment_ids.shape:
            raise ValueError(
                f"{name} has shape {tuple(x.shape)}; expected [B, T, heads, head_dim] "
                f"with [B, T] = segment_ids shape {tuple(segment_ids.shape)}"
            )
    for who, q, k in (("student", student_q, student_k), ("teacher", teacher_q, teacher_k)):
        if q.shape[3] != k.shape[3] or q.shape[2] % k.shape[2]:
            raise ValueError(
                f"{who} q {tuple(q.shape)} and k {tuple(k.shape)}: head dims must "
                "match and the query head count must be a multiple of the kv heads"
            )
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    groups = head_groups(student_q.shape[2], teacher_q.shape[2], heads)
    t = segment_ids.shape[1]
    block_size = min(int(block_size), t)  # a block larger than T would only add padding
    opts = _Static(
        block_size,
        float(student_q.shape[3] ** -0.5 if student_scale is None else student_scale),
        float(teacher_q.shape[3] ** -0.5 if teacher_scale is None else teacher_scale),
        groups,
    )

    pad = (
        -t % block_size
    )  # ragged last block: pad with segment 0 (padding: sees and is seen by none)

    def padded(x):
        return jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))

    seg = segment_ids.astype(jnp.int32)
    rows = _kl_rows(
        opts,
        padded(student_q),
        padded(student_k),
        padded(lax.stop_gradient(teacher_q)),
        padded(lax.stop_gradient(teacher_k)),
        padded(seg),
    )[:, :t]
    valid = (seg != 0).astype(F32)
    return {"sum": jnp.sum(rows * valid), "count": jnp.sum(valid)}
