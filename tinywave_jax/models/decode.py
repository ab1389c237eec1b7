"""KV-cached generation: one prefill over the (left-padded) prompt, then a compiled loop of one-token steps.

Prompts are left-padded to a common length P, as `transformers.generate` does; positions come from the
prompt mask (cumsum - 1), so a padded row continues exactly as it would alone. The cache has
P + max_new_tokens slots; slot s of every row holds the token at array column s.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence, cast

import jax
import jax.numpy as jnp
import numpy as np

from .config import LlamaConfig
from .llama import Llama, unstack_layers


def init_cache(config: LlamaConfig, batch: int, length: int, dtype=None) -> tuple:
    shape = (config.num_hidden_layers, batch, config.num_key_value_heads, length, config.head_dim)
    dtype = dtype or jnp.dtype(config.dtype)
    return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token lists -> (ids [B, P], mask [B, P]) left-padded to the longest prompt."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad_id, np.int32)
    mask = np.zeros((len(prompts), width), bool)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = p
        mask[i, width - len(p) :] = True
    return ids, mask


def filter_logits(
    logits: jax.Array, temperature: float, top_k: int, top_p: float, banned: Optional[jax.Array]
) -> jax.Array:
    """Temperature, banned ids, top-k and nucleus (top-p) filtering on float32 logits [B, V]."""
    neg = jnp.finfo(jnp.float32).min
    logits = logits.astype(jnp.float32)
    if banned is not None:
        logits = jnp.where(banned[None, :], neg, logits)
    if temperature > 0:
        logits = logits / temperature
    if top_k and top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, neg, logits)
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # keep a token if the mass strictly before it is < top_p (so the top token is always kept)
        keep_sorted = (jnp.cumsum(probs, axis=-1) - probs) < top_p
        keep = (
            jnp.zeros_like(keep_sorted)
            .at[jnp.arange(logits.shape[0])[:, None], order]
            .set(keep_sorted)
        )
        logits = jnp.where(keep, logits, neg)
    return logits


@functools.partial(
    jax.jit,
    static_argnames=(
        "config",
        "max_new_tokens",
        "greedy",
        "temperature",
        "top_k",
        "top_p",
        "stop_ids",
        "pad_id",
        "split_layers",
    ),
)
def generate(
    params: dict,
    config: LlamaConfig,
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    rng: jax.Array,
    *,
    max_new_tokens: int,
    greedy: bool = True,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    banned: Optional[jax.Array] = None,
    stop_ids: tuple = (),
    pad_id: int = 0,
    split_layers: bool = True,
) -> jax.Array:
    """Returns new tokens [B, max_new_tokens]; after a stop id a row emits `pad_id`.

    split_layers (default): the one-token steps run the layers from per-layer copies of the
    layer weights and caches (about 1x the layer weights of extra memory, several times faster
    on CPU); False runs the layer scan over the stacked layout (no extra memory). Both are
    `Llama.decode_step`."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    model = Llama(config)
    b, p = prompt_ids.shape
    prompt_mask = prompt_mask.astype(bool)
    total = p + max_new_tokens
    cache_mask = jnp.zeros((b, total), bool).at[:, :p].set(prompt_mask)
    positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0).astype(jnp.int32)
    first_logits, caches = model.apply(
        {"params": params},
        prompt_ids,
        positions,
        init_cache(config, b, total),
        0,
        cache_mask,
        method=Llama.decode_step,
    )
    lengths = prompt_mask.sum(axis=1).astype(jnp.int32)
    layer_params = None
    if split_layers:  # split once, outside the token loop
        layer_params, caches = unstack_layers(params, cast(tuple, caches), config)

    def forward(token, position, caches, cache_mask, slot):
        return model.apply(
            {"params": params},
            token,
            position,
            caches,
            slot,
            cache_mask,
            layer_params,
            method=Llama.decode_step,
        )

    def pick(logits, key):
        if greedy:
            masked = filter_logits(logits, 0.0, 0, 1.0, banned)
            return jnp.argmax(masked, axis=-1).astype(jnp.int32)
        return jax.random.categorical(
            key, filter_logits(logits, temperature, top_k, top_p, banned)
        ).astype(jnp.int32)

    def choose(logits, done, key):
        key, sub = jax.random.split(key)
        token = jnp.where(done, pad_id, pick(logits, sub))
        if stop_ids:
            done = done | jnp.isin(token, jnp.asarray(stop_ids))
        return token, done, key

    def step(carry, i):
        caches, cache_mask, logits, done, key = carry
        token, done, key = choose(logits, done, key)
        slot = p + i
        cache_mask = cache_mask.at[:, slot].set(True)
        logits, caches = forward(token[:, None], (lengths + i)[:, None], caches, cache_mask, slot)
        return (caches, cache_mask, logits, done, key), token

    carry = (caches, cache_mask, first_logits, jnp.zeros((b,), bool), rng)
    # The last token needs no forward pass: max_new_tokens - 1 model steps, then one choice.
    (_, _, logits, done, key), tokens = jax.lax.scan(step, carry, jnp.arange(max_new_tokens - 1))
    last, _, _ = choose(logits, done, key)
    return jnp.concatenate([tokens.T, last[:, None]], axis=1)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two continuations share (how export checks compare engines)."""
    return next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def greedy(params: dict, config: LlamaConfig, prompt: Sequence[int], new_tokens: int) -> list[int]:
    """One prompt's greedy continuation (`new_tokens` ids), as the export checks compare it."""
    ids, mask = left_pad([[int(i) for i in prompt]])
    out = generate(
        params,
        config,
        jnp.asarray(ids),
        jnp.asarray(mask),
        jax.random.key(0),
        max_new_tokens=new_tokens,
        greedy=True,
    )
    return np.asarray(out)[0].tolist()
