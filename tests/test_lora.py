"""LoRA on the stacked params: zero-init is exact, apply/merge against naive per-layer numpy,
gradients only into the adapters (checked by the chain rule and finite differences), config errors
and logical axes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from tinywave_jax.config import from_dict, load_config
from tinywave_jax.errors import ConfigError
from tinywave_jax.models import llama
from tinywave_jax.models.config import tiny_config
from tinywave_jax.models.param_layout import param_shapes
from tinywave_jax.train.lora import LoraConfig, apply_lora, init_lora, lora_logical_axes, merge_lora

CONFIG = tiny_config(
    vocab_size=61,
    hidden_size=32,
    intermediate_size=40,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    attention_bias=True,
)
ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MODULE = {t: ("mlp" if t in ("gate_proj", "up_proj", "down_proj") else "self_attn") for t in ALL}
LCFG = LoraConfig(rank=3, alpha=5.0, targets=("q_proj", "v_proj", "o_proj", "down_proj"))
IDS = jnp.asarray(np.random.default_rng(0).integers(0, 61, (2, 6)), jnp.int32)


@pytest.fixture(scope="module")
def params():
    """Random base params built in numpy (no init compile): normal(0.02) weights, norms near 1."""
    rng = np.random.default_rng(0)

    def leaf(path, shape):
        x = rng.standard_normal(shape) * (0.1 if path[-1].key == "scale" else 0.02)
        return jnp.asarray(x + (path[-1].key == "scale"), jnp.float32)

    return jax.tree_util.tree_map_with_path(
        leaf, param_shapes(CONFIG), is_leaf=lambda x: isinstance(x, tuple)
    )


def _perturbed(lora, seed=1):
    """Adapters with non-zero B, as after some training."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape) * 0.1, x.dtype), lora)


def _logits(p):
    return llama.forward(p, CONFIG, IDS).logits


def test_init_shapes_and_zero_b_leaves_the_model_unchanged(params):
    lora = init_lora(params, CONFIG, LCFG, jax.random.key(1))
    L, D, F, Q = 2, 32, 40, 32
    shapes = {"q_proj": (D, Q), "v_proj": (D, 16), "o_proj": (Q, D), "down_proj": (F, D)}
    for t, (n_in, n_out) in shapes.items():
        ab = lora["layers"][MODULE[t]][t]
        assert ab["lora_a"].shape == (L, n_in, 3) and ab["lora_b"].shape == (L, 3, n_out)
        assert ab["lora_a"].dtype == jnp.float32 and not np.any(np.asarray(ab["lora_b"]))
        assert 0.5 < float(jnp.std(ab["lora_a"])) * np.sqrt(n_in) < 1.5  # ~N(0, 1/in)
    assert set(lora["layers"]["mlp"]) == {"down_proj"}
    np.testing.assert_array_equal(
        np.asarray(_logits(apply_lora(params, lora, LCFG))), np.asarray(_logits(params))
    )
    # A target's init does not depend on which other targets are adapted.
    only_q = init_lora(
        params, CONFIG, dataclasses.replace(LCFG, targets=("q_proj",)), jax.random.key(1)
    )
    np.testing.assert_array_equal(
        only_q["layers"]["self_attn"]["q_proj"]["lora_a"],
        lora["layers"]["self_attn"]["q_proj"]["lora_a"],
    )


def _naive_effective(params, lora, cfg):
    """Per layer, in float64 numpy: W[l] + (alpha / r) * A[l] @ B[l]."""
    out = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    for t in cfg.targets:
        ab = lora["layers"][MODULE[t]][t]
        w = out["layers"][MODULE[t]][t]["kernel"]
        for layer in range(w.shape[0]):
            a = np.asarray(ab["lora_a"][layer], np.float64)
            b = np.asarray(ab["lora_b"][layer], np.float64)
            w[layer] = w[layer] + (cfg.alpha / cfg.rank) * (a @ b)
    return out


def test_apply_and_merge_match_naive_numpy(params):
    lora = _perturbed(init_lora(params, CONFIG, LCFG, jax.random.key(2)))
    want = _naive_effective(params, lora, LCFG)
    got = jax.jit(lambda p, l: apply_lora(p, l, LCFG))(params, lora)
    assert jax.tree.structure(got) == jax.tree.structure(params)
    for g, w, p in zip(jax.tree.leaves(got), jax.tree.leaves(want), jax.tree.leaves(params)):
        assert g.dtype == p.dtype
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-6)
    changed = [
        not np.array_equal(g, p) for g, p in zip(jax.tree.leaves(got), jax.tree.leaves(params))
    ]
    assert sum(changed) == len(LCFG.targets)  # only the targeted kernels move
    # merged params (plain tree) give the logits of the adapted forward computed inside jit,
    # and of the naive float64 merge.
    merged = merge_lora(params, lora, LCFG)
    adapted = jax.jit(
        lambda p, l: llama.Llama(CONFIG).apply({"params": apply_lora(p, l, LCFG)}, IDS).logits
    )
    np.testing.assert_allclose(
        np.asarray(_logits(merged)), np.asarray(adapted(params, lora)), rtol=1e-5, atol=1e-5
    )
    naive = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), want)
    np.testing.assert_allclose(
        np.asarray(_logits(merged)), np.asarray(_logits(naive)), rtol=1e-4, atol=1e-5
    )
    assert not np.allclose(np.asarray(_logits(merged)), np.asarray(_logits(params)), atol=1e-3)


def test_bfloat16_base_keeps_its_dtype(params):
    p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    lora = _perturbed(init_lora(p16, CONFIG, LCFG, jax.random.key(3)))
    out = apply_lora(p16, lora, LCFG)
    assert {x.dtype for x in jax.tree.leaves(out)} == {jnp.dtype(jnp.bfloat16)}
    k = out["layers"]["self_attn"]["q_proj"]["kernel"]
    want = _naive_effective(p16, lora, LCFG)["layers"]["self_attn"]["q_proj"]["kernel"]
    np.testing.assert_allclose(np.asarray(k, np.float32), want, rtol=1e-2, atol=1e-2)


def _loss(p):
    logp = jax.nn.log_softmax(_logits(p)[:, :-1].astype(jnp.float32))
    return -jnp.mean(jnp.take_along_axis(logp, IDS[:, 1:, None], axis=-1))


def test_gradients_reach_only_the_adapters_and_follow_the_chain_rule(params):
    lora = _perturbed(init_lora(params, CONFIG, LCFG, jax.random.key(4)))
    grad_fn = jax.jit(jax.grad(lambda l, p: _loss(apply_lora(p, l, LCFG)), argnums=(0, 1)))
    g_lora, g_base = grad_fn(lora, params)
    assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(g_base))  # frozen base
    # Chain rule by hand: with G = dL/dW_eff, dL/dA = s G B^T and dL/dB = s A^T G per layer.
    eff = apply_lora(params, lora, LCFG)
    g_w = jax.jit(jax.grad(_loss))(eff)
    s = LCFG.alpha / LCFG.rank
    for t in LCFG.targets:
        ab, gab = lora["layers"][MODULE[t]][t], g_lora["layers"][MODULE[t]][t]
        G = np.asarray(g_w["layers"][MODULE[t]][t]["kernel"], np.float64)
        a, b = np.asarray(ab["lora_a"], np.float64), np.asarray(ab["lora_b"], np.float64)
        np.testing.assert_allclose(
            gab["lora_a"], s * G @ b.transpose(0, 2, 1), rtol=1e-4, atol=1e-7
        )
        np.testing.assert_allclose(
            gab["lora_b"], s * a.transpose(0, 2, 1) @ G, rtol=1e-4, atol=1e-7
        )
        assert np.any(np.asarray(gab["lora_a"])) and np.any(np.asarray(gab["lora_b"]))
    # Finite difference along a random direction in adapter space.
    direction = _perturbed(lora, seed=7)
    eps = 1e-3

    def shift(sign):
        return jax.tree.map(lambda x, d: x + sign * eps * d, lora, direction)

    f = jax.jit(lambda l: _loss(apply_lora(params, l, LCFG)))
    numeric = (float(f(shift(1))) - float(f(shift(-1)))) / (2 * eps)
    analytic = sum(
        float(jnp.vdot(g, d)) for g, d in zip(jax.tree.leaves(g_lora), jax.tree.leaves(direction))
    )
    assert abs(numeric - analytic) < 1e-3 * max(1.0, abs(analytic))
    # At init (B = 0) only B receives gradient: dL/dA = s G B^T = 0.
    g0, _ = grad_fn(init_lora(params, CONFIG, LCFG, jax.random.key(4)), params)
    q = g0["layers"]["self_attn"]["q_proj"]
    assert not np.any(np.asarray(q["lora_a"])) and np.any(np.asarray(q["lora_b"]))


@pytest.mark.parametrize(
    "section,match",
    [
        ({"rnak": 4}, r"lora\.rnak"),
        ({"rank": 0}, r"lora\.rank must be a positive integer"),
        ({"rank": 2.5}, r"lora\.rank: expected an integer"),
        ({"alpha": 0}, r"lora\.alpha must be a positive"),
        ({"targets": ["q_proj", "qkv"]}, r"lora\.targets\[1\]: 'qkv' is not one of"),
        ({"targets": []}, r"lora\.targets is empty"),
        ({"targets": ["q_proj", "q_proj"]}, r"lora\.targets has duplicates"),
    ],
)
def test_bad_config_keys_are_named(section, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(LoraConfig, section, prefix="lora")


def test_config_from_yaml_and_direct_construction(tmp_path):
    path = tmp_path / "lora.yaml"
    path.write_text("rank: 4\ntargets: [q_proj, down_proj]\n")
    cfg = load_config(LoraConfig, path, ["alpha=8"])
    assert cfg == LoraConfig(rank=4, alpha=8.0, targets=["q_proj", "down_proj"])
    assert cfg.scale == 2.0 and cfg.targets == ("q_proj", "down_proj")
    with pytest.raises(ConfigError, match=r"lora\.targets: \['gate'\]"):
        LoraConfig(targets=("gate",))


def test_missing_adapter_or_kernel_is_named(params):
    lora = init_lora(params, CONFIG, LoraConfig(targets=("q_proj",)), jax.random.key(0))
    with pytest.raises(ValueError, match="no adapter layers/mlp/up_proj"):
        apply_lora(params, lora, LoraConfig(targets=("q_proj", "up_proj")))
    with pytest.raises(ValueError, match="layers/self_attn/k_proj/kernel"):
        init_lora(
            {"layers": {"self_attn": {}}},
            CONFIG,
            LoraConfig(targets=("k_proj",)),
            jax.random.key(0),
        )


def test_logical_axes_follow_the_base_kernels(params):
    cfg = LoraConfig(targets=ALL)
    axes = lora_logical_axes(CONFIG, cfg)
    lora = jax.eval_shape(lambda: init_lora(params, CONFIG, cfg, jax.random.key(0)))
    assert jax.tree.structure(axes, is_leaf=lambda x: isinstance(x, P)) == jax.tree.structure(lora)
    want_in_out = {
        "q_proj": ("embed", "heads"),
        "k_proj": ("embed", "kv_heads"),
        "v_proj": ("embed", "kv_heads"),
        "o_proj": ("heads", "embed"),
        "gate_proj": ("embed", "mlp"),
        "up_proj": ("embed", "mlp"),
        "down_proj": ("mlp", "embed"),
    }
    for t, (i, o) in want_in_out.items():
        ax = axes["layers"][MODULE[t]][t]
        assert ax["lora_a"] == P("layers", i, None) and ax["lora_b"] == P("layers", None, o)
    # The specs shard real adapters on a mesh (rules: layers/heads/mlp over "model", embed over "data").
    mesh = jax.make_mesh((2, 4), ("data", "model"))
    rules = (
        ("embed", "data"),
        ("heads", "model"),
        ("kv_heads", "model"),
        ("mlp", "model"),
        ("layers", None),
    )
    import flax.linen as nn

    shardings = nn.logical_to_mesh_sharding(axes, mesh, rules)
    placed = jax.device_put(init_lora(params, CONFIG, cfg, jax.random.key(0)), shardings)
    a = placed["layers"]["self_attn"]["q_proj"]["lora_a"]
    assert a.sharding.spec == P(None, "data", None) and a.addressable_shards[0].data.shape == (
        2,
        16,
        8,
    )
