"""Llama-family decoder in Flax Linen with Hugging Face `LlamaForCausalLM` numerics.

One implementation serves teacher and student. Parameters mirror HF names (kernels are HF weights
transposed) and are ALWAYS stacked over layers (`params["layers"][...]` has a leading axis of
`num_hidden_layers`): `scan_layers=False` unrolls the same scan instead of changing the layout, so
conversion, student initialisation and checkpoints see one layout.

Two entry points share the modules: `Llama.__call__` (`forward`, jitted) runs whole sequences with
taps, for training and scoring; `Llama.decode_step` runs tokens through a KV cache, for
`decode.generate`.

Distillation taps: `tap_layers` names the layers whose output hidden state (`tap_hidden`) and
post-RoPE queries/keys (`tap_qk`) are returned, stacked in the order given. Inside the layer scan they
are written into a carried buffer with one extra "discard" slot that untapped layers write to, so no
per-layer outputs are materialised for layers nobody asked about.

Masking: token i attends to j iff j <= i and segment_ids[i] == segment_ids[j] (packed documents never
see each other; padding has segment 0). In `decode_step` the caller passes which cache slots hold
real tokens (`cache_mask`) and the slot the new tokens are written at (`cache_slot`).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Optional, Sequence, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from . import attention as attention_impl
from .config import LlamaConfig

Array = jax.Array

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # Keep the q/k/v/o and MLP projections, recompute norms, RoPE, softmax and activations.
    "save_attn_proj": jax.checkpoint_policies.save_only_these_names(
        "query_proj", "key_proj", "value_proj", "attn_out", "mlp_out"
    ),
}


class LlamaOutput(NamedTuple):
    logits: Optional[Array]  # [B, T, V] (None when return_logits=False)
    final_hidden: Array  # [B, T, D] after the final norm: logits = final_hidden @ head
    hidden: Optional[Array]  # [n_taps, B, T, D] hidden state after each tapped layer
    queries: Optional[Array]  # [n_taps, B, T, H, hd] post-RoPE queries of tapped layers
    keys: Optional[Array]  # [n_taps, B, T, KVH, hd] post-RoPE keys of tapped layers


def _dtype(name: str):
    return jnp.dtype(name)


# ---- RoPE (HF rotate-half layout) -------------------------------------------------------------
def rope_inv_freq(config: LlamaConfig) -> np.ndarray:
    """Inverse frequencies exactly as transformers computes them (float32), incl. rope scaling."""
    dim = config.head_dim
    inv = (
        1.0
        / (
            np.float32(config.rope_theta)
            ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))
        )
    ).astype(np.float32)
    rs = config.rope_scaling
    if rs is None or rs.rope_type == "default":
        return inv
    if rs.rope_type == "linear":
        return (inv / np.float32(rs.factor)).astype(np.float32)
    # llama3: keep high frequencies, divide low ones by `factor`, interpolate in between.
    old = rs.original_max_position_embeddings
    low_wavelen, high_wavelen = old / rs.low_freq_factor, old / rs.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / rs.factor, inv)
    smooth = (old / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_cos_sin(config: LlamaConfig, positions: Array, dtype) -> tuple[Array, Array]:
    """cos/sin [B, T, hd] for integer positions [B, T], in float32 then cast, as HF does."""
    inv = jnp.asarray(rope_inv_freq(config))
    freqs = positions.astype(jnp.float32)[..., None] * inv
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """x [B, T, heads, hd]; HF's q*cos + rotate_half(q)*sin."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


def attention_mask(segment_ids: Array) -> Array:
    """[B, T, T] bool: causal within equal segment ids."""
    t = segment_ids.shape[1]
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return causal[None] & same


def dot_product_attention(q: Array, k: Array, v: Array, mask: Array, scale: float) -> Array:
    """The dense path (models/attention.py): q [B,Tq,H,hd], k/v [B,KVH,Tk,hd], mask [B,Tq,Tk]."""
    return attention_impl.dense(q, k, v, mask, scale)


# ---- modules ---------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    eps: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
            (x.shape[-1],),
            self.param_dtype,
        )
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        # flax returns the unboxed array (its stubs say LogicallyPartitioned)
        return cast(Array, scale).astype(self.dtype) * y.astype(self.dtype)


def _dense(features: int, axes: tuple[str, str], bias: bool, cfg: LlamaConfig, name: str):
    init = nn.initializers.normal(0.02)
    return nn.Dense(
        features,
        use_bias=bias,
        dtype=_dtype(cfg.dtype),
        param_dtype=_dtype(cfg.param_dtype),
        kernel_init=nn.with_logical_partitioning(init, axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]),
        name=name,
    )


class Attention(nn.Module):
    config: LlamaConfig

    def setup(self):
        c = self.config
        hd = cast(int, c.head_dim)  # set by LlamaConfig.__post_init__
        self.q_proj = _dense(
            c.num_attention_heads * hd, ("embed", "heads"), c.attention_bias, c, "q_proj"
        )
        self.k_proj = _dense(
            c.num_key_value_heads * hd, ("embed", "kv_heads"), c.attention_bias, c, "k_proj"
        )
        self.v_proj = _dense(
            c.num_key_value_heads * hd, ("embed", "kv_heads"), c.attention_bias, c, "v_proj"
        )
        self.o_proj = _dense(c.hidden_size, ("heads", "embed"), c.attention_bias, c, "o_proj")

    def __call__(self, x, cos, sin, mask, cache_kv=None, cache_slot=None):
        c = self.config
        b, t, _ = x.shape
        q = checkpoint_name(self.q_proj(x), "query_proj").reshape(
            b, t, c.num_attention_heads, c.head_dim
        )
        k = checkpoint_name(self.k_proj(x), "key_proj").reshape(
            b, t, c.num_key_value_heads, c.head_dim
        )
        v = checkpoint_name(self.v_proj(x), "value_proj").reshape(
            b, t, c.num_key_value_heads, c.head_dim
        )
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k_heads, v_heads = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, KVH, T, hd]
        if cache_kv is not None:  # write the new tokens into the cache, attend over all slots
            ck, cv = cache_kv
            ck = jax.lax.dynamic_update_slice_in_dim(
                ck, k_heads.astype(ck.dtype), cache_slot, axis=2
            )
            cv = jax.lax.dynamic_update_slice_in_dim(
                cv, v_heads.astype(cv.dtype), cache_slot, axis=2
            )
            keys, values, new_cache = ck.astype(q.dtype), cv.astype(q.dtype), (ck, cv)
        else:
            keys, values, new_cache = k_heads, v_heads, None
        scale = cast(int, c.head_dim) ** -0.5
        if cache_kv is not None or c.attention == "dense":
            out = dot_product_attention(q, keys, values, mask, scale)
        else:  # a kernel: `mask` is the segment ids [B, T] (Llama.__call__)
            kernel = getattr(attention_impl, c.attention)
            out = kernel(q, keys, values, mask, scale)
        return checkpoint_name(self.o_proj(out), "attn_out"), q, k, new_cache


class MLP(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        gate = _dense(c.intermediate_size, ("embed", "mlp"), c.mlp_bias, c, "gate_proj")(x)
        up = _dense(c.intermediate_size, ("embed", "mlp"), c.mlp_bias, c, "up_proj")(x)
        out = _dense(c.hidden_size, ("mlp", "embed"), c.mlp_bias, c, "down_proj")(
            nn.silu(gate) * up
        )
        return checkpoint_name(out, "mlp_out")


class DecoderLayer(nn.Module):
    """One pre-norm block, written as the body of the layer scan: (carry, xs) -> (carry, ys).

    Training: xs["slot"] is this layer's tap slot; the carry holds the hidden state "h" and the
    tap buffers the caller asked for ("tap_h", "tap_q", "tap_k"). Decoding: xs["cache"] is this
    layer's (k, v) cache, the new tokens are written at `cache_slot`, ys["cache"] is the result."""

    config: LlamaConfig

    def setup(self):
        c = self.config
        dt, pdt = _dtype(c.dtype), _dtype(c.param_dtype)
        self.input_layernorm = RMSNorm(c.rms_norm_eps, dt, pdt)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.rms_norm_eps, dt, pdt)
        self.mlp = MLP(c)

    def block(self, x, cos, sin, mask, cache_kv, cache_slot):
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        attn, q, k, new_cache = self.self_attn(
            self.input_layernorm(x), cos, sin, mask, cache_kv, cache_slot
        )
        x = x + attn
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, q, k, new_cache

    def __call__(self, carry, xs, cos, sin, mask, cache_slot):
        policy = self.config.remat
        block = DecoderLayer.block
        if policy != "none":
            block = nn.remat(block, policy=REMAT_POLICIES[policy], prevent_cse=False)
        x, q, k, new_cache = block(self, carry["h"], cos, sin, mask, xs.get("cache"), cache_slot)
        carry = dict(carry, h=x)
        # Tap writes stay outside remat so the buffers are never saved as per-layer residuals.
        if "tap_h" in carry:
            carry["tap_h"] = jax.lax.dynamic_update_index_in_dim(carry["tap_h"], x, xs["slot"], 0)
        if "tap_q" in carry:
            carry["tap_q"] = jax.lax.dynamic_update_index_in_dim(carry["tap_q"], q, xs["slot"], 0)
            carry["tap_k"] = jax.lax.dynamic_update_index_in_dim(carry["tap_k"], k, xs["slot"], 0)
        return carry, ({"cache": new_cache} if new_cache is not None else {})


def cache_attention_mask(cache_mask: Array, cache_slot, t: int) -> Array:
    """[B, T, S] bool for T new tokens written at slots cache_slot..cache_slot+T-1: a query sees
    the slots up to its own that hold real tokens (cache_mask [B, S], new tokens included)."""
    query_slot = cache_slot + jnp.arange(t)
    causal = jnp.arange(cache_mask.shape[1])[None, None, :] <= query_slot[None, :, None]
    return cache_mask.astype(bool)[:, None, :] & causal


def unstack_layers(params: dict, cache: tuple, config: LlamaConfig) -> tuple[list, list]:
    """Stacked `params["layers"]` and cache (k, v) [L, ...] -> per-layer lists, for
    `Llama.decode_step(..., layer_params=...)`."""
    n = config.num_hidden_layers
    layer_params = [jax.tree_util.tree_map(lambda x, l=l: x[l], params["layers"]) for l in range(n)]
    return layer_params, [(cache[0][l], cache[1][l]) for l in range(n)]


class Llama(nn.Module):
    """`LlamaForCausalLM`: embed -> decoder layers (one scanned `DecoderLayer`) -> norm -> LM head.

    Two entry points over the same modules and parameters: `__call__`, the full-sequence forward
    with taps (training, scoring), and `decode_step`, tokens through a KV cache (generation)."""

    config: LlamaConfig

    def setup(self):
        c = self.config
        dt, pdt = _dtype(c.dtype), _dtype(c.param_dtype)
        init = nn.initializers.normal(0.02)
        self.embed_tokens = nn.Embed(
            c.vocab_size,
            c.hidden_size,
            dtype=dt,
            param_dtype=pdt,
            embedding_init=nn.with_logical_partitioning(init, ("vocab", "embed")),
        )
        # Always scanned so the parameters are stacked; scan_layers=False only unrolls it.
        self.layers = nn.scan(
            DecoderLayer,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
            length=c.num_hidden_layers,
            unroll=1 if c.scan_layers else c.num_hidden_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(c)
        self.norm = RMSNorm(c.rms_norm_eps, dt, pdt)
        if not c.tie_word_embeddings:
            self.lm_head = nn.Dense(
                c.vocab_size,
                use_bias=False,
                dtype=dt,
                param_dtype=pdt,
                kernel_init=nn.with_logical_partitioning(init, ("embed", "vocab")),
            )

    def logits(self, final_hidden: Array) -> Array:
        """[..., D] final-norm hidden states -> [..., V] logits."""
        if self.config.tie_word_embeddings:
            return self.embed_tokens.attend(final_hidden)
        return self.lm_head(final_hidden)

    def __call__(
        self,
        input_ids: Array,
        positions: Optional[Array] = None,
        segment_ids: Optional[Array] = None,
        *,
        tap_layers: Sequence[int] = (),
        tap_hidden: bool = False,
        tap_qk: bool = False,
        return_logits: bool = True,
    ) -> LlamaOutput:
        """Full-sequence forward; positions default to 0..T-1, segment_ids to one document."""
        c = self.config
        dt = _dtype(c.dtype)
        b, t = input_ids.shape
        tap_layers = tuple(int(i) for i in tap_layers)
        for i in tap_layers:
            if not 0 <= i < c.num_hidden_layers:
                raise ValueError(f"tap layer {i} out of range for {c.num_hidden_layers} layers")
        if len(set(tap_layers)) != len(tap_layers):
            raise ValueError(f"tap_layers has duplicates: {tap_layers}")
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        if segment_ids is None:
            segment_ids = jnp.ones((b, t), jnp.int32)
        # the kernels take the segment ids and never build the [B, T, T] mask
        mask = attention_mask(segment_ids) if c.attention == "dense" else segment_ids
        cos, sin = rope_cos_sin(c, positions, dt)

        n_taps = len(tap_layers)
        tap_hidden, tap_qk = tap_hidden and n_taps > 0, tap_qk and n_taps > 0
        slot_of_layer = np.full(c.num_hidden_layers, n_taps, np.int32)  # n_taps = discard slot
        slot_of_layer[list(tap_layers)] = np.arange(n_taps, dtype=np.int32)
        carry = {"h": self.embed_tokens(input_ids)}
        if tap_hidden:
            carry["tap_h"] = jnp.zeros((n_taps + 1, b, t, c.hidden_size), dt)
        if tap_qk:
            carry["tap_q"] = jnp.zeros((n_taps + 1, b, t, c.num_attention_heads, c.head_dim), dt)
            carry["tap_k"] = jnp.zeros((n_taps + 1, b, t, c.num_key_value_heads, c.head_dim), dt)
        carry, _ = self.layers(carry, {"slot": jnp.asarray(slot_of_layer)}, cos, sin, mask, None)

        final = self.norm(carry["h"])
        return LlamaOutput(
            logits=self.logits(final) if return_logits else None,
            final_hidden=final,
            hidden=carry["tap_h"][:n_taps] if tap_hidden else None,
            queries=carry["tap_q"][:n_taps] if tap_qk else None,
            keys=carry["tap_k"][:n_taps] if tap_qk else None,
        )

    def decode_step(
        self,
        input_ids: Array,
        positions: Array,
        cache,
        cache_slot,
        cache_mask: Array,
        layer_params: Optional[list] = None,
    ) -> tuple[Array, Any]:
        """Tokens [B, T] (a prompt or one new token) through the KV cache: their keys/values are
        written at slots cache_slot..cache_slot+T-1, and they attend to the slots up to theirs
        that `cache_mask` [B, S] marks as real tokens (the new ones included). Returns the last
        column's logits [B, V] and the new cache.

        `cache` is (k, v), each [L, B, KVH, S, hd], run by the layer scan; or, with `layer_params`
        (per-layer weights, see `unstack_layers`), a list of per-layer (k, v) run layer by layer
        from separate arrays: the scan slices the stacked weights and caches and restacks the
        caches on every call, which XLA on CPU copies, whereas separate caches update in place."""
        dt = _dtype(self.config.dtype)
        h = self.embed_tokens(input_ids)
        cos, sin = rope_cos_sin(self.config, positions, dt)
        mask = cache_attention_mask(cache_mask, cache_slot, input_ids.shape[1])
        if layer_params is None:
            carry, ys = self.layers({"h": h}, {"cache": tuple(cache)}, cos, sin, mask, cache_slot)
            h, cache = carry["h"], ys["cache"]
        else:
            layer = DecoderLayer(self.config, parent=None)  # unbound: each call gets its weights
            new_cache = []
            for w, kv in zip(layer_params, cache):
                carry, ys = layer.apply(
                    {"params": w}, {"h": h}, {"cache": kv}, cos, sin, mask, cache_slot
                )
                h = carry["h"]
                new_cache.append(ys["cache"])
            cache = new_cache
        # Only the last column's logits: a prompt's [B, P, V] would dominate prefill.
        return self.logits(self.norm(h[:, -1])), cache


# ---- functional helpers ----------------------------------------------------------------------
@functools.lru_cache(maxsize=32)
def _jitted_init(config: LlamaConfig):
    # Eager Flax init dispatches op by op (seconds even for tiny models); one compile is faster.
    return jax.jit(
        lambda rng: nn.meta.unbox(Llama(config).init(rng, jnp.zeros((1, 8), jnp.int32))["params"])
    )


def init_params(config: LlamaConfig, rng: Array) -> dict:
    """Random parameters (HF's init: normal(0.02) weights, unit norms), as a plain pytree."""
    return _jitted_init(config)(rng)


def abstract_params(config: LlamaConfig) -> dict:
    """ShapeDtypeStruct pytree of the parameters, without allocating anything."""
    boxed = jax.eval_shape(
        lambda: Llama(config).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    )
    return nn.meta.unbox(boxed["params"])


def param_logical_axes(config: LlamaConfig) -> dict:
    """Pytree of logical-axis PartitionSpecs, e.g. ('layers', 'embed', 'heads') for q_proj."""
    boxed = jax.eval_shape(
        lambda: Llama(config).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    )
    return nn.get_partition_spec(boxed["params"])


def count_params(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


def lm_head_kernel(params: dict, config: LlamaConfig) -> Array:
    """[D, V] matrix with logits = final_hidden @ kernel (the embedding transposed when tied)."""
    if config.tie_word_embeddings:
        return params["embed_tokens"]["embedding"].T
    return params["lm_head"]["kernel"]


def apply_llama(
    config: LlamaConfig,
    params: dict,
    input_ids: Array,
    positions: Optional[Array] = None,
    segment_ids: Optional[Array] = None,
    **kwargs,
) -> LlamaOutput:
    """`Llama(config).apply({'params': params}, input_ids, positions, segment_ids, **kwargs)`, typed:
    flax's `apply` is declared to return Any or (output, variables)."""
    out = Llama(config).apply({"params": params}, input_ids, positions, segment_ids, **kwargs)
    return cast(LlamaOutput, out)


@functools.partial(
    jax.jit, static_argnames=("config", "tap_layers", "tap_hidden", "tap_qk", "return_logits")
)
def forward(
    params: dict,
    config: LlamaConfig,
    input_ids: Array,
    positions: Optional[Array] = None,
    segment_ids: Optional[Array] = None,
    **kwargs,
) -> LlamaOutput:
    """Jitted `Llama(config).apply({'params': params}, input_ids, positions, segment_ids, **kwargs)`;
    `tap_layers` must be a tuple."""
    return apply_llama(config, params, input_ids, positions, segment_ids, **kwargs)


def attention_maps(
    params: dict,
    config: LlamaConfig,
    input_ids: Array,
    layers: Sequence[int],
    segment_ids: Optional[Array] = None,
) -> Array:
    """Attention probabilities float32 [len(layers), B, H, T, T] of `layers` (in that order):
    the tapped post-RoPE queries and keys through the dense path's softmax
    (`attention.probabilities`), the map every implementation attends with. For figures and
    checks: it builds the whole [T, T] map, which training never does."""
    out = forward(
        params,
        config,
        input_ids,
        segment_ids=segment_ids,
        tap_layers=tuple(int(i) for i in layers),
        tap_qk=True,
        return_logits=False,
    )
    assert out.queries is not None and out.keys is not None  # tap_qk with layers given
    b, t = input_ids.shape
    mask = attention_mask(jnp.ones((b, t), jnp.int32) if segment_ids is None else segment_ids)
    scale = cast(int, config.head_dim) ** -0.5

    def one(q, k):  # k [B, T, KVH, hd] -> heads-major, as the dense path takes it
        p = attention_impl.probabilities(q, k.transpose(0, 2, 1, 3), mask, scale)
        return p.reshape(b, config.num_attention_heads, t, t)

    return jnp.stack([one(q, k) for q, k in zip(out.queries, out.keys)])
