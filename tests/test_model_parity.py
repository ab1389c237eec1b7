"""The Flax Llama against transformers' torch LlamaForCausalLM (eager attention) on tiny random configs.

Tolerance: relative error in the Frobenius norm, ||ours - hf|| / ||hf||, over the valid positions.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hf_reference import jax_config, make_hf_model, params_from_hf, rel_err

from tinywave_jax.models import decode, llama

CONFIGS = {
    "mha_untied": dict(),
    "gqa_tied_theta": dict(num_key_value_heads=2, tie_word_embeddings=True, rope_theta=500000.0),
    "mqa_bias_llama3": dict(
        num_key_value_heads=1,
        attention_bias=True,
        mlp_bias=True,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=256,
        ),
    ),
    "linear_rope_headdim": dict(
        num_key_value_heads=2, head_dim=24, rope_scaling=dict(rope_type="linear", factor=2.0)
    ),
}
T, PAD_FROM = 512, 300  # row 1 is right-padded from PAD_FROM on


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request):
    model = make_hf_model(seed=1, **CONFIGS[request.param])
    cfg = jax_config(model)
    ids = np.random.RandomState(0).randint(0, cfg.vocab_size, (2, T))
    mask = np.ones((2, T), np.int64)
    mask[1, PAD_FROM:] = 0
    with torch.no_grad():
        ref = model(
            torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            output_hidden_states=True,
            output_attentions=True,
        )
    params = params_from_hf(model, cfg)
    layers = tuple(range(cfg.num_hidden_layers))
    out = llama.forward(
        params,
        cfg,
        jnp.asarray(ids),
        segment_ids=jnp.asarray(mask, jnp.int32),
        tap_layers=layers,
        tap_hidden=True,
        tap_qk=True,
    )
    return cfg, ref, out


def _valid(x, row):
    return x[row] if row == 0 else x[row, :PAD_FROM]


def test_logits_match_hf(case):
    _, ref, out = case
    for row in (0, 1):
        assert rel_err(_valid(out.logits, row), _valid(ref.logits.numpy(), row)) < 1e-5


def test_hidden_states_match_hf(case):
    cfg, ref, out = case
    L = cfg.num_hidden_layers
    # HF returns [embeddings, after layer 0, ..., after layer L-2, final-normed output].
    for i in range(L - 1):
        for row in (0, 1):
            assert (
                rel_err(_valid(out.hidden[i], row), _valid(ref.hidden_states[i + 1].numpy(), row))
                < 1e-5
            )
    assert rel_err(out.final_hidden[0], ref.hidden_states[L][0].numpy()) < 1e-5


def test_attention_probs_from_queries_and_keys_match_hf(case):
    cfg, ref, out = case
    g = cfg.num_groups
    for i in range(cfg.num_hidden_layers):
        q = np.asarray(out.queries[i], np.float64)  # [B, T, H, hd]
        k = np.repeat(
            np.asarray(out.keys[i], np.float64), g, axis=2
        )  # GQA: head h uses kv head h // g
        scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(cfg.head_dim)
        seg = np.ones((2, T))
        seg[1, PAD_FROM:] = 0
        allowed = np.tril(np.ones((T, T), bool))[None] & (seg[:, :, None] == seg[:, None, :])
        scores = np.where(allowed[:, None], scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        hf = ref.attentions[i].numpy()
        assert rel_err(probs[0], hf[0]) < 1e-5
        assert rel_err(probs[1, :, :PAD_FROM, :PAD_FROM], hf[1, :, :PAD_FROM, :PAD_FROM]) < 1e-5


def test_packed_segments_equal_separate_documents():
    model = make_hf_model(seed=2, num_key_value_heads=2)
    cfg = jax_config(model)
    params = params_from_hf(model, cfg)
    rs = np.random.RandomState(3)
    a, b = rs.randint(0, cfg.vocab_size, 40), rs.randint(0, cfg.vocab_size, 24)
    packed = np.concatenate([a, b, np.zeros(8, int)])[None]
    seg = np.concatenate([np.full(40, 1), np.full(24, 2), np.zeros(8, int)])[None]
    pos = np.concatenate([np.arange(40), np.arange(24), np.zeros(8, int)])[None]
    out = llama.forward(params, cfg, jnp.asarray(packed), jnp.asarray(pos), jnp.asarray(seg))
    alone_a = llama.forward(params, cfg, jnp.asarray(a[None])).logits
    alone_b = llama.forward(params, cfg, jnp.asarray(b[None])).logits
    assert rel_err(out.logits[0, :40], alone_a[0]) < 1e-6
    assert rel_err(out.logits[0, 40:64], alone_b[0]) < 1e-6


def test_greedy_kv_cache_decoding_matches_hf_generate():
    model = make_hf_model(seed=4, num_key_value_heads=2, init_std=0.1)
    model.generation_config.eos_token_id = None
    cfg = jax_config(model)
    params = params_from_hf(model, cfg)
    rs = np.random.RandomState(5)
    prompts = [
        rs.randint(3, cfg.vocab_size, 500).tolist(),
        rs.randint(3, cfg.vocab_size, 437).tolist(),
    ]
    ids, mask = decode.left_pad(prompts)
    ours = np.asarray(
        decode.generate(
            params,
            cfg,
            jnp.asarray(ids),
            jnp.asarray(mask),
            jax.random.key(0),
            max_new_tokens=64,
            greedy=True,
        )
    )
    for row, prompt in enumerate(
        prompts
    ):  # each prompt alone in HF: padding must not change anything
        with torch.no_grad():
            hf = model.generate(
                torch.tensor([prompt]), max_new_tokens=64, do_sample=False, pad_token_id=0
            )
        np.testing.assert_array_equal(ours[row], hf[0, len(prompt) :].numpy())


@pytest.mark.parametrize("layers", ["scan", "unrolled", "split"])
def test_cache_decode_steps_equal_the_full_forward(layers):
    """`decode_step` (prefill of a left-padded prompt, then one token at a time) gives the same
    logits as the full forward at every column, with the layer scan, unrolled, and per layer."""
    model = make_hf_model(seed=9, num_key_value_heads=2)
    cfg = jax_config(model, scan_layers=layers != "unrolled")
    params = params_from_hf(model, cfg)
    P, T = 8, 20
    ids = jnp.asarray(np.random.RandomState(10).randint(0, cfg.vocab_size, (2, T)))
    mask = np.ones((2, T), bool)
    mask[1, :3] = False  # row 1: 3 pad columns, then its prompt
    pos = jnp.asarray(np.maximum(np.cumsum(mask, axis=1) - 1, 0))
    full = llama.forward(params, cfg, ids, pos, jnp.asarray(mask, jnp.int32)).logits

    step = jax.jit(
        lambda *args: llama.Llama(cfg).apply(
            {"params": params}, *args, method=llama.Llama.decode_step
        )
    )
    cache_mask = jnp.asarray(mask).at[:, P:].set(False)
    logits, cache = step(ids[:, :P], pos[:, :P], decode.init_cache(cfg, 2, T), 0, cache_mask, None)
    got = [logits]
    layer_params = None
    if layers == "split":
        layer_params, cache = llama.unstack_layers(params, cache, cfg)
    for t in range(P, T):
        cache_mask = cache_mask.at[:, t].set(True)
        logits, cache = step(
            ids[:, t : t + 1], pos[:, t : t + 1], cache, t, cache_mask, layer_params
        )
        got.append(logits)
    assert rel_err(jnp.stack(got, axis=1), full[:, P - 1 :]) < 1e-5


def test_scan_unroll_and_remat_policies_agree():
    cfg = jax_config(make_hf_model(seed=6, num_key_value_heads=2, num_hidden_layers=2))
    params = llama.init_params(cfg, jax.random.key(0))
    ids = jax.random.randint(jax.random.key(1), (2, 32), 0, cfg.vocab_size)

    def loss(p, c):
        out = llama.forward(p, c, ids, tap_layers=(1,), tap_hidden=True, tap_qk=True)
        return (
            jnp.mean(out.logits**2) + jnp.mean(out.hidden**2) + jnp.mean(out.queries * out.queries)
        )

    grad_fn = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    ref_val, ref_grad = grad_fn(params, cfg)
    for variant in [dict(scan_layers=False), dict(remat="full"), dict(remat="save_attn_proj")]:
        val, grad = grad_fn(params, cfg.replace(**variant))
        assert abs(float(val - ref_val)) <= 1e-6 * abs(float(ref_val)), variant
        for g, r in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(ref_grad)):
            assert rel_err(g, r) < 1e-5, variant


def test_bfloat16_compute_close_to_float32():
    model = make_hf_model(seed=7)
    cfg = jax_config(model)
    params = params_from_hf(model, cfg)
    ids = jnp.asarray(np.random.RandomState(8).randint(0, cfg.vocab_size, (1, 128)))
    f32 = llama.forward(params, cfg, ids).logits
    bf16 = llama.forward(params, cfg.replace(dtype="bfloat16", param_dtype="bfloat16"), ids).logits
    assert bf16.dtype == jnp.bfloat16
    assert rel_err(bf16, f32) < 3e-2


def test_attention_maps_match_hf_and_the_demo_figure():
    """`llama.attention_maps` (the dense path's softmax on the tapped q/k) equals transformers'
    attention probabilities, a padded row included; the demo's figure averages them over heads."""
    from tinywave_jax.demo.plots import attention_maps as demo_maps

    model = make_hf_model(seed=6, num_key_value_heads=2)
    cfg = jax_config(model)
    params = params_from_hf(model, cfg)
    t, pad_from = 40, 25
    ids = np.random.RandomState(7).randint(0, cfg.vocab_size, (2, t))
    mask = np.ones((2, t), np.int64)
    mask[1, pad_from:] = 0
    with torch.no_grad():
        hf = model(
            torch.tensor(ids), attention_mask=torch.tensor(mask), output_attentions=True
        ).attentions
    layers = (2, 0)  # in the order asked
    maps = np.asarray(
        llama.attention_maps(params, cfg, jnp.asarray(ids), layers, jnp.asarray(mask, jnp.int32))
    )
    assert maps.shape == (2, 2, cfg.num_attention_heads, t, t)
    for i, layer in enumerate(layers):
        ref = hf[layer].numpy()
        assert rel_err(maps[i, 0], ref[0]) < 1e-5
        assert rel_err(maps[i, 1, :, :pad_from, :pad_from], ref[1, :, :pad_from, :pad_from]) < 1e-5
    figure = demo_maps(params, cfg, ids[0], layers)
    np.testing.assert_allclose(
        figure, np.stack([hf[layer].numpy()[0].mean(0) for layer in layers]), atol=1e-6
    )
