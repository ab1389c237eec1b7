"""The attention kernels (models/attention.py) against the dense path, on CPU: Pallas splash in
interpret mode (forward and gradients, packed documents with padding, GQA, sharded over a mesh
inside the model), the cuDNN call's arguments through jax's XLA implementation, the choice of
`train.attention`, and splash compiled by the real TPU compiler for a v5p slice."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from train_fixtures import TEACHER, distill_config, distill_dict

from tinywave_jax import cli
from tinywave_jax.errors import ConfigError
from tinywave_jax.models import attention
from tinywave_jax.models.config import LlamaConfig
from tinywave_jax.models.llama import attention_mask, forward, init_params
from tinywave_jax.parallel import MeshConfig, make_mesh
from tinywave_jax.train.recipes import prepare
from tinywave_jax.train.session import with_attention


def _packed_segments(b: int, t: int) -> np.ndarray:
    """Rows of 2-3 documents of unequal lengths, then padding (segment 0)."""
    rng = np.random.default_rng(1)
    seg = np.zeros((b, t), np.int32)
    for r in range(b):
        cuts = np.sort(rng.choice(np.arange(8, t - 8), size=2, replace=False))
        seg[r, : cuts[0]], seg[r, cuts[0] : cuts[1]] = 1, 2
        seg[r, cuts[1] : t - 5 * r] = 3
    return seg


def _qkv(b, t, h, kvh, hd, seed=0):
    ks = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(ks[0], (b, t, h, hd), jnp.float32)
    k = jax.random.normal(ks[1], (b, kvh, t, hd), jnp.float32)
    v = jax.random.normal(ks[2], (b, kvh, t, hd), jnp.float32)
    return q, k, v


def _loss_and_grads(fn, q, k, v):
    w = jax.random.normal(jax.random.key(7), (q.shape[0], q.shape[1], q.shape[2] * q.shape[3]))
    return jax.value_and_grad(lambda q, k, v: jnp.sum(fn(q, k, v) * w), argnums=(0, 1, 2))(q, k, v)


@pytest.mark.parametrize("kernel", ["splash", "cudnn"])
def test_kernel_matches_dense_with_packed_documents_and_gqa(kernel):
    b, t, h, kvh, hd = 2, 256, 4, 2, 32
    q, k, v = _qkv(b, t, h, kvh, hd)
    seg = jnp.asarray(_packed_segments(b, t))
    scale = hd**-0.5
    ref = _loss_and_grads(
        lambda q, k, v: attention.dense(q, k, v, attention_mask(seg), scale), q, k, v
    )
    if kernel == "splash":  # Pallas interpret mode on this CPU
        got = _loss_and_grads(lambda q, k, v: attention.splash(q, k, v, seg, scale), q, k, v)
    else:  # the same call as on a GPU, computed by jax's XLA implementation
        got = _loss_and_grads(
            lambda q, k, v: attention.cudnn(q, k, v, seg, scale, implementation="xla"), q, k, v
        )
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5)
    for g, r, name in zip(got[1], ref[1], "qkv"):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5, err_msg=f"d{name}")


def test_splash_in_the_model_on_a_mesh_matches_dense_taps_and_gradients():
    """The whole Llama forward with splash (shard_map over fsdp x tensor, interpret mode) against
    the dense one: logits, the tapped q/k/hidden states and the parameters' gradients."""
    dense_cfg = LlamaConfig(**dict(TEACHER, num_hidden_layers=2))
    splash_cfg = dense_cfg.replace(attention="splash")
    params = init_params(dense_cfg, jax.random.key(0))
    b, t = 4, 128
    ids = jax.random.randint(jax.random.key(1), (b, t), 3, TEACHER["vocab_size"])
    seg = jnp.asarray(_packed_segments(b, t))
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))

    def run(cfg):
        def loss(p):
            out = forward(p, cfg, ids, pos, seg, tap_layers=(0, 1), tap_hidden=True, tap_qk=True)
            return jnp.mean(out.logits**2), out

        with jax.set_mesh(mesh):
            return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

    (l_d, out_d), g_d = run(dense_cfg)
    (l_s, out_s), g_s = run(splash_cfg)
    np.testing.assert_allclose(l_s, l_d, rtol=1e-5)
    for name in ("logits", "hidden", "queries", "keys"):
        np.testing.assert_allclose(
            getattr(out_s, name), getattr(out_d, name), rtol=1e-4, atol=1e-5, err_msg=name
        )
    for (path, a), c in zip(jax.tree_util.tree_leaves_with_path(g_s), jax.tree.leaves(g_d)):
        np.testing.assert_allclose(a, c, rtol=1e-3, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_train_attention_is_resolved_per_platform():
    cfg = distill_config(data={"seq_len": 128}, teacher={"shape": {"max_position_embeddings": 256}})
    spec = prepare(cfg).spec
    on = lambda c, p: with_attention(spec, c, p)  # noqa: E731
    with jax.default_matmul_precision("default"):  # a run's
        assert on(cfg, "tpu").student.attention == on(cfg, "tpu").teacher.attention == "splash"
    assert on(cfg, "cpu").student.attention == "dense"
    assert on(cfg, "gpu").student.attention == "dense"  # cuDNN only when asked
    short = distill_config()  # seq_len 32: no splash tile fits
    assert with_attention(prepare(short).spec, short, "tpu").student.attention == "dense"
    forced = distill_config(train={"attention": "splash"})
    with pytest.raises(ConfigError, match="train.attention: splash needs data.seq_len a multiple"):
        with_attention(prepare(forced).spec, forced, "tpu")
    cudnn = distill_config(train={"attention": "cudnn"})
    with pytest.raises(ConfigError, match="train.attention: cudnn needs bfloat16 or float16"):
        with_attention(prepare(cudnn).spec, cudnn, "gpu")
    with pytest.raises(ConfigError, match="train.attention"):
        distill_config(train={"attention": "flash"})
    # conftest's process-wide matmul precision "highest", which Mosaic refuses for bf16 operands:
    # auto falls back to dense, a forced splash names the setting
    assert jax.config.jax_default_matmul_precision == "highest"
    assert on(cfg, "tpu").student.attention == "dense"
    splash = distill_config(data={"seq_len": 128}, train={"attention": "splash"})
    with pytest.raises(ConfigError, match="jax_default_matmul_precision=highest"):
        with_attention(prepare(splash).spec, splash, "tpu")


def test_splash_distill_step_compiles_for_a_v5p_slice(tmp_path, capsys):
    """train.attention=auto on a TPU slice is splash: the TPU compiler takes the Pallas kernels
    (Mosaic custom calls in the program) in the bf16 distill step with all four loss terms, the
    student's layers under remat and scan."""
    from tinywave_jax import plan as plan_mod

    teacher = dict(TEACHER, max_position_embeddings=256)
    path = tmp_path / "tiny.yaml"
    path.write_text(
        yaml.safe_dump(
            distill_dict(
                teacher={"dtype": "bfloat16", "shape": teacher},
                train={"dtype": "bfloat16", "remat": "dots_no_batch"},  # the presets'
                data={"seq_len": 128},
            )
        )
    )
    seen = {}
    real = plan_mod._compile

    def spy(cfg, topology, devices):
        out = real(cfg, topology, devices)
        seen["spec"], seen["hlo"] = out[0].spec, out[2].as_text()
        return out

    plan_mod._compile, old = spy, plan_mod._compile
    try:  # a run's default precision
        with jax.default_matmul_precision("default"):
            assert cli.main(["plan", str(path), "--topology", "v5p:2x2x1", "--json"]) == 0
    finally:
        plan_mod._compile = old
    plan = json.loads(capsys.readouterr().out)
    assert plan["backend_compiled_for"] == "tpu" and plan["fits"] is True
    assert seen["spec"].student.attention == seen["spec"].teacher.attention == "splash"
    assert "tpu_custom_call" in seen["hlo"]
