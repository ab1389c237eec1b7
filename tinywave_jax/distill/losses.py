"""Output-side losses: cross-entropy, temperature-softened logit KL, and hidden-state alignment.

Every function returns float32 masked SUMS together with the count they should be divided by, so
the caller divides once after summing over microbatches or data shards. Inputs may be bfloat16;
logits and all reductions are float32.

Logits are never materialised for the whole sequence: `chunked_*` take the final post-norm hidden
state `[B, T, D]` and the LM-head kernel `[D, V]` and `lax.scan` over sequence chunks of
`chunk_size` tokens, with `jax.checkpoint` on the chunk body, so at most one chunk's `[B, c, V]`
logits per model are alive, in the forward and in the backward pass. `chunk_size=None` is the
plain unchunked path (the reference the chunked one is tested against).
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax

F32 = jnp.float32


def _logits(hidden: jax.Array, kernel: jax.Array) -> jax.Array:
    return jnp.einsum("btd,dv->btv", hidden, kernel, preferred_element_type=F32).astype(F32)


def _masked_sum(x: jax.Array, mask: jax.Array) -> jax.Array:
    # `where`, not a product, so garbage (inf/nan) at masked positions cannot leak into the sum.
    return jnp.sum(jnp.where(mask > 0, mask * x, 0.0))


def _target_nll(logits: jax.Array, lse: jax.Array, targets: jax.Array) -> jax.Array:
    tgt = jnp.clip(targets, 0, logits.shape[-1] - 1)  # masked positions may hold any id
    return lse - jnp.take_along_axis(logits, tgt[..., None], axis=-1)[..., 0]


def _kl_rows(teacher_logits: jax.Array, student_logits: jax.Array) -> jax.Array:
    """KL(softmax(teacher) || softmax(student)) per position, [B, T]."""
    log_pt = jax.nn.log_softmax(teacher_logits, axis=-1)
    log_ps = jax.nn.log_softmax(student_logits, axis=-1)
    return jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1)


def _sum_over_chunks(body: Callable, seq_arrays: tuple, chunk_size: Optional[int]) -> dict:
    """Sums `body(*chunk)` (a dict of scalars) over sequence chunks of `seq_arrays` (all [B, T, ...]).

    The sequence is zero-padded to a multiple of `chunk_size`; the padded positions must carry a
    zero mask in `seq_arrays` (zero padding does that)."""
    if chunk_size is None:
        return body(*seq_arrays)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive or None, got {chunk_size}")
    t = seq_arrays[0].shape[1]
    chunk_size = min(chunk_size, t)  # one chunk of T, not a padded one, when chunk_size >= T
    n = -(-t // chunk_size)
    pad = n * chunk_size - t

    def split(x):  # [B, T, ...] -> [n, B, c, ...]
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return jnp.moveaxis(x.reshape(x.shape[0], n, chunk_size, *x.shape[2:]), 1, 0)

    chunks = tuple(split(x) for x in seq_arrays)
    body_remat = jax.checkpoint(body, prevent_cse=False)  # backward recomputes the chunk's logits

    def step(acc, chunk):
        return jax.tree.map(jnp.add, acc, body_remat(*chunk)), None

    init = jax.tree.map(
        lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(body, *(c[0] for c in chunks))
    )
    acc, _ = lax.scan(step, init, chunks)
    return acc


def chunked_cross_entropy(
    hidden: jax.Array,
    head_kernel: jax.Array,
    targets: jax.Array,
    loss_mask: jax.Array,
    chunk_size: Optional[int] = 256,
) -> dict:
    """Masked next-token cross-entropy without full logits.

    hidden [B, T, D], head_kernel [D, V], targets [B, T] int, loss_mask [B, T] (0/1 or weights).
    Returns {"ce": sum of masked CE, "num_tokens": sum of the mask} (float32 scalars)."""

    def body(h, tgt, m):
        logits = _logits(h, head_kernel)
        m = m.astype(F32)
        nll = _target_nll(logits, jax.nn.logsumexp(logits, axis=-1), tgt)
        return {"ce": _masked_sum(nll, m), "num_tokens": jnp.sum(m)}

    return _sum_over_chunks(body, (hidden, targets, loss_mask), chunk_size)


def chunked_logit_losses(
    student_hidden: jax.Array,
    student_head_kernel: jax.Array,
    teacher_hidden: jax.Array,
    teacher_head_kernel: jax.Array,
    targets: jax.Array,
    loss_mask: jax.Array,
    temperature: float,
    chunk_size: Optional[int] = 256,
) -> dict:
    """Student CE, logit KL at `temperature` (x T^2), KL at T=1, teacher CE, all as masked sums.

    KL direction is KL(p_teacher || p_student) per position, p = softmax(logits / T). Teacher inputs
    are under stop_gradient. Shapes: hidden [B, T, D_*], kernels [D_*, V] (same V), targets and
    loss_mask [B, T]. Returns float32 scalars {"ce", "logit_kl", "kl_t1", "teacher_ce",
    "num_tokens"}; divide by "num_tokens" for means."""
    temperature = float(temperature)
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if student_head_kernel.shape[-1] != teacher_head_kernel.shape[-1]:
        raise ValueError(
            f"student head kernel {student_head_kernel.shape} and teacher head kernel "
            f"{teacher_head_kernel.shape} have different vocabulary sizes"
        )
    teacher_hidden = lax.stop_gradient(teacher_hidden)
    teacher_head_kernel = lax.stop_gradient(teacher_head_kernel)

    def body(hs, ht, tgt, m):
        s = _logits(hs, student_head_kernel)
        t = _logits(ht, teacher_head_kernel)
        m = m.astype(F32)
        kl1 = _kl_rows(t, s)
        kl_t = kl1 if temperature == 1.0 else _kl_rows(t / temperature, s / temperature)
        return {
            "ce": _masked_sum(_target_nll(s, jax.nn.logsumexp(s, axis=-1), tgt), m),
            "logit_kl": _masked_sum(kl_t, m) * temperature**2,
            "kl_t1": _masked_sum(kl1, m),
            "teacher_ce": _masked_sum(_target_nll(t, jax.nn.logsumexp(t, axis=-1), tgt), m),
            "num_tokens": jnp.sum(m),
        }

    return _sum_over_chunks(body, (student_hidden, teacher_hidden, targets, loss_mask), chunk_size)


def _seq_chunks(x: jax.Array, chunk_size: Optional[int]) -> tuple:
    """[B, T, ...] -> ([n, B, c, ...] zero-padded, n, c)."""
    t = x.shape[1]
    c = t if chunk_size is None else min(chunk_size, t)
    n = -(-t // c)
    x = jnp.pad(x, [(0, 0), (0, n * c - t)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape(x.shape[0], n, c, *x.shape[2:]), 1, 0), n, c


def chunked_token_logprobs(
    hidden: jax.Array, head_kernel: jax.Array, targets: jax.Array, chunk_size: Optional[int] = 256
) -> jax.Array:
    """log p(targets[:, t]) per position, float32 [B, T], without full logits: the scoring
    engine's (scoring.py) per-token log-likelihoods, from the same chunked logits as the losses.
    hidden [B, T, D], head_kernel [D, V], targets [B, T] int."""
    b, t = targets.shape
    h_chunks, _, _ = _seq_chunks(hidden, chunk_size)
    t_chunks, _, _ = _seq_chunks(targets, chunk_size)

    def one(args):
        h, tgt = args
        logits = _logits(h, head_kernel)
        return -_target_nll(logits, jax.nn.logsumexp(logits, axis=-1), tgt)

    lp = lax.map(one, (h_chunks, t_chunks))  # [n, B, c]
    return jnp.moveaxis(lp, 0, 1).reshape(b, -1)[:, :t]


def teacher_topk(
    hidden: jax.Array, head_kernel: jax.Array, k: int, chunk_size: Optional[int] = 256
) -> tuple[jax.Array, jax.Array]:
    """The teacher's k most probable next tokens per position at T = 1, without full logits:
    (ids int32 [B, T, k], log-probs float32 [B, T, k], each row's ids by descending log-prob).
    The log-probs are log-softmax over the WHOLE vocabulary, so any temperature's top-k
    distribution follows from them (`chunked_topk_losses`)."""
    if not 1 <= k <= head_kernel.shape[-1]:
        raise ValueError(f"top-k: k={k} must be in [1, vocab_size={head_kernel.shape[-1]}]")
    t = hidden.shape[1]
    chunks, _, _ = _seq_chunks(lax.stop_gradient(hidden), chunk_size)

    def one(h):
        logits = _logits(h, lax.stop_gradient(head_kernel))
        logp = logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)
        vals, ids = lax.top_k(logp, k)
        return ids.astype(jnp.int32), vals

    ids, vals = lax.map(one, chunks)  # [n, B, c, k]

    def join(x):
        x = jnp.moveaxis(x, 0, 1)
        return x.reshape(x.shape[0], -1, k)[:, :t]

    return join(ids), join(vals)


def chunked_topk_losses(
    student_hidden: jax.Array,
    student_head_kernel: jax.Array,
    topk_ids: jax.Array,
    topk_logprobs: jax.Array,
    targets: jax.Array,
    loss_mask: jax.Array,
    temperature: float,
    chunk_size: Optional[int] = 256,
) -> dict:
    """Student CE and the top-k logit KL (x T^2) as masked sums, without full logits.

    The KL is over the teacher's top-k support only (MaxText's sparse KL): the teacher's
    distribution softmax(logprobs / T) and the student's softmax(logits[ids] / T), both
    renormalised over the k ids. topk_ids [B, T, k] int, topk_logprobs [B, T, k] (any float
    dtype; a cache's 16-bit ones too). Returns {"ce", "topk_kl", "num_tokens"}."""
    temperature = float(temperature)
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    vocab = student_head_kernel.shape[-1]
    topk_ids = lax.stop_gradient(jnp.clip(topk_ids.astype(jnp.int32), 0, vocab - 1))
    topk_logprobs = lax.stop_gradient(topk_logprobs.astype(F32))

    def body(hs, ids, lp, tgt, m):
        s = _logits(hs, student_head_kernel)
        m = m.astype(F32)
        log_q = jax.nn.log_softmax(jnp.take_along_axis(s, ids, axis=-1) / temperature, axis=-1)
        log_p = jax.nn.log_softmax(lp / temperature, axis=-1)
        kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
        return {
            "ce": _masked_sum(_target_nll(s, jax.nn.logsumexp(s, axis=-1), tgt), m),
            "topk_kl": _masked_sum(kl, m) * temperature**2,
            "num_tokens": jnp.sum(m),
        }

    return _sum_over_chunks(
        body, (student_hidden, topk_ids, topk_logprobs, targets, loss_mask), chunk_size
    )


# ----------------------------------------------------------------------------- hidden alignment


def init_hidden_projector(
    key: jax.Array, num_pairs: int, student_dim: int, teacher_dim: int, dtype=F32
) -> dict:
    """Learned student->teacher width projectors, one per mapped layer pair: {"kernel": [P, Ds, Dt]}.

    Identity when the widths are equal (so training starts from the plain loss), else a
    (semi-)orthogonal random matrix, which keeps the student's hidden norms. The caller trains these
    with the student and leaves them out of the exported model."""
    if student_dim == teacher_dim:
        kernel = jnp.broadcast_to(
            jnp.eye(student_dim, dtype=dtype), (num_pairs, student_dim, teacher_dim)
        )
    else:
        init = jax.nn.initializers.orthogonal()
        kernel = jnp.stack(
            [init(k, (student_dim, teacher_dim), dtype) for k in jax.random.split(key, num_pairs)]
        )
    return {"kernel": jnp.asarray(kernel)}


def hidden_alignment(
    student_hidden: jax.Array,
    teacher_hidden: jax.Array,
    valid: jax.Array,
    kind: str = "cosine",
    projector_kernel: Optional[jax.Array] = None,
    eps: float = 1e-8,
) -> dict:
    """Per-token alignment of one mapped layer pair, summed over valid tokens.

    student_hidden [B, T, Ds], teacher_hidden [B, T, Dt] (stop_gradient), valid [B, T] (nonzero for
    real tokens, e.g. segment_ids != 0). `kind`: "cosine" gives 1 - cos(s, t); "mse" gives the
    mean over features of (s - t)^2. `projector_kernel` [Ds, Dt] maps the student first; it is
    required when Ds != Dt. Returns float32 {"sum", "count"}."""
    teacher_hidden = lax.stop_gradient(teacher_hidden).astype(F32)
    s = student_hidden.astype(F32)
    if projector_kernel is not None:
        s = jnp.einsum("btd,de->bte", s, projector_kernel.astype(F32))
    if s.shape != teacher_hidden.shape:
        raise ValueError(
            f"student hidden {tuple(s.shape)} (after any projector) does not match "
            f"teacher hidden {tuple(teacher_hidden.shape)}; widths differ without a "
            "projector?"
        )
    if kind == "cosine":
        # max(|x|^2, eps^2) inside the sqrt keeps the gradient finite at zero vectors.
        def norm(x):
            return jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1), eps * eps))

        per_token = 1.0 - jnp.sum(s * teacher_hidden, axis=-1) / (norm(s) * norm(teacher_hidden))
    elif kind == "mse":
        per_token = jnp.mean(jnp.square(s - teacher_hidden), axis=-1)
    else:
        raise ValueError(f"hidden loss kind must be 'cosine' or 'mse', got {kind!r}")
    valid = (valid != 0).astype(F32)
    return {"sum": _masked_sum(per_token, valid), "count": jnp.sum(valid)}
