"""The attention of a full-sequence forward: dense XLA, Pallas splash (TPU) or cuDNN (GPU).

`LlamaConfig.attention` picks one for every layer of a model; the run configs' `train.attention`
(`auto`: splash on TPU, dense elsewhere) is resolved against the mesh's platform by
`resolve_attention`. The distillation taps (hidden states, post-RoPE q/k) are taken before the
attention, so a tapped layer runs whichever implementation the model uses: the attention KL
recomputes the maps from the tapped q/k itself (distill/attention_kl.py), and
`llama.attention_maps` builds them with the dense path's `probabilities` (for figures). The KV-cache decode
path is always dense.

  * dense: scores [B, KVH, G, T, T] in float32, softmax, second matmul (HF numerics, any shape);
  * splash: `jax.experimental.pallas.ops.tpu.splash_attention` (jax 0.10), flash-style tiles of
    `block` x `block` that skip the blocks above the causal diagonal, segment ids for packed
    documents, its own backward kernels. It runs per device inside `shard_map` (rows over
    (data, fsdp), heads over tensor), vmapped over the rows of each shard; on a non-TPU mesh it
    runs in Pallas interpret mode (the tests' numerics check on CPU). Needs T a multiple of 128;
  * cudnn: `jax.nn.dot_product_attention(implementation="cudnn")` (bf16/fp16; its own sharding
    rules), causal plus a same-segment mask. Not run here (no GPU): the tests check the same call
    with implementation="xla".
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax._src import mesh as mesh_lib
from jax.experimental.pallas.ops.tpu import splash_attention as sa
from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds
from jax.sharding import PartitionSpec as P

from ..parallel.rules import fit_spec, logical_to_spec

IMPLEMENTATIONS = ("dense", "splash", "cudnn")
SPLASH_MIN_BLOCK = 128  # the kernel's lane width: the sequence must be a multiple of it


def splash_block(t: int) -> int:
    """The splash tile for sequence length t: the largest of 512, 256, 128 dividing it."""
    for b in (512, 256, 128):
        if t % b == 0:
            return b
    raise ValueError(f"splash attention needs the sequence length a multiple of 128, got {t}")


def probabilities(q, k, mask, scale):
    """The dense path's attention map: q [B,Tq,H,hd], k [B,KVH,Tk,hd], mask [B,Tq,Tk] ->
    float32 [B,KVH,G,Tq,Tk] (G = H / KVH: query head h = kv head h // G, group h % G)."""
    b, tq, h, hd = q.shape
    kvh = k.shape[1]
    q = q.reshape(b, tq, kvh, h // kvh, hd)
    scores = jnp.einsum("bqkgd,bksd->bkgqs", q, k) * jnp.asarray(scale, q.dtype)
    scores = jnp.where(mask[:, None, None], scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(scores, axis=-1)


def dense(q, k, v, mask, scale):
    """q [B,Tq,H,hd], k/v [B,KVH,Tk,hd] (heads-major, the KV-cache layout), mask [B,Tq,Tk]
    -> [B,Tq,H*hd]. Softmax in float32 (HF). Heads-major keys make both einsums plain batched
    matmuls: with [B,Tk,KVH,hd] keys XLA on CPU transposes the whole cache per layer per token."""
    b, tq, h, hd = q.shape
    probs = probabilities(q, k, mask, scale).astype(v.dtype)
    out = jnp.einsum("bkgqs,bksd->bqkgd", probs, v)
    return out.reshape(b, tq, h * hd)


@functools.lru_cache(maxsize=16)
def _splash_kernel(heads: int, t: int, interpret: bool):

    b = splash_block(t)
    blocks = sa.BlockSizes(
        block_q=b,
        block_kv=b,
        block_kv_compute=b,
        block_q_dkv=b,
        block_kv_dkv=b,
        block_kv_dkv_compute=b,
        block_q_dq=b,
        block_kv_dq=b,
    )
    mask = sa.MultiHeadMask([sa.CausalMask((t, t))] * heads)
    return sa.make_splash_mha(
        mask, block_sizes=blocks, head_shards=1, q_seq_shards=1, interpret=interpret
    )


def _context_mesh():
    """The concrete mesh of `jax.set_mesh` (None outside one, or when it is empty)."""

    mesh = mesh_lib.get_concrete_mesh()
    return None if mesh is None or mesh.empty else mesh


def splash(q, k, v, segment_ids, scale):
    """q [B,T,H,hd], k/v [B,KVH,T,hd], segment_ids [B,T] -> [B,T,H*hd] (see module doc)."""

    b, t, h, hd = q.shape
    mesh = _context_mesh()
    platform = (mesh.devices.flat[0] if mesh is not None else jax.devices()[0]).platform
    tensor = 1 if mesh is None else mesh.shape.get("tensor", 1)
    if k.shape[1] % tensor:  # too few kv heads to split: give every query head its own
        k, v = (jnp.repeat(x, h // k.shape[1], axis=1) for x in (k, v))
    if platform == "tpu" and precision_refuses_splash():
        raise ValueError(precision_refuses_splash())
    q = (q * jnp.asarray(scale, q.dtype)).transpose(0, 2, 1, 3)  # [B, H, T, hd]

    def local(q, k, v, seg):
        kernel = _splash_kernel(q.shape[1], t, platform != "tpu")
        one = lambda q, k, v, s: kernel(q, k, v, SegmentIds(s, s))  # noqa: E731
        return jax.vmap(one)(q, k, v, seg)

    if mesh is None:
        out = local(q, k, v, segment_ids)
    else:
        rows = logical_to_spec(("batch",))[0]
        heads = fit_spec(mesh, P(rows, "tensor", None, None), q.shape, "splash queries")
        kv = fit_spec(mesh, P(rows, "tensor", None, None), k.shape, "splash keys")
        if heads[1] != kv[1]:  # both split over tensor or neither
            heads = kv = P(heads[0], None, None, None)
        seg = P(heads[0], None)
        out = jax.shard_map(
            local, mesh=mesh, in_specs=(heads, kv, kv, seg), out_specs=heads, check_vma=False
        )(q, k, v, segment_ids)
    return out.transpose(0, 2, 1, 3).reshape(b, t, h * hd)


def cudnn(q, k, v, segment_ids, scale, implementation="cudnn"):
    """q [B,T,H,hd], k/v [B,KVH,T,hd], segment_ids [B,T] -> [B,T,H*hd] through
    `jax.nn.dot_product_attention` (causal, same segment only)."""
    b, t, h, hd = q.shape
    same = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]  # [B, 1, T, T]
    out = jax.nn.dot_product_attention(
        q,
        k.transpose(0, 2, 1, 3),
        v.transpose(0, 2, 1, 3),
        mask=same,
        scale=scale,
        is_causal=True,
        implementation=implementation,
    )
    return out.reshape(b, t, h * hd)


def precision_refuses_splash() -> str:
    """Why splash cannot compile for a TPU in this process ("" if it can): the kernel's dots take
    the process-wide jax_default_matmul_precision, and Mosaic refuses fp32 contract precision on
    bf16 operands ("Bad lhs type", deep inside the step's compile)."""
    # jax's Config declares its flags at run time, which its type stubs cannot show
    precision = jax.config.jax_default_matmul_precision  # type: ignore[attr-defined]
    if precision not in ("highest", "float32"):
        return ""
    return (
        f"splash attention on TPU cannot run under jax_default_matmul_precision={precision} "
        "(Mosaic rejects it for bf16 operands): leave it unset, or train.attention=dense"
    )


def resolve(requested: str, platform: str, seq_len: int) -> str:
    """The implementation `train.attention=requested` means on `platform`: `auto` is splash on a
    TPU where the sequence and the matmul precision allow it, dense elsewhere (cuDNN only when
    asked: not run here)."""
    if requested != "auto":
        return requested
    if platform == "tpu" and seq_len % SPLASH_MIN_BLOCK == 0 and not precision_refuses_splash():
        return "splash"
    return "dense"
