"""Mesh, logical-axis rules and sharded training: a train step on 8 simulated CPU devices with
mesh shapes (data, fsdp, tensor) = 8x1x1, 1x8x1, 2x2x2 equals the step on one device; a checkpoint
saved on one mesh restores onto another with the same values."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from train_fixtures import distill_config, one_step

from tinywave_jax.errors import ConfigError
from tinywave_jax.parallel import (
    LOGICAL_AXIS_RULES,
    MeshConfig,
    fit_spec,
    logical_to_spec,
    make_mesh,
)
from tinywave_jax.train.recipes import prepare
from tinywave_jax.train.resume import checkpoint_manager, restore_checkpoint, save_checkpoint
from tinywave_jax.train.session import Session


def test_rules_table_maps_logical_axes():
    rules = dict(LOGICAL_AXIS_RULES)
    assert rules["batch"] == ("data", "fsdp") and rules["embed"] == "fsdp"
    assert all(rules[k] == "tensor" for k in ("heads", "kv_heads", "mlp", "vocab"))
    assert all(rules[k] is None for k in ("layers", "length", "norm"))
    assert logical_to_spec(P("layers", "embed", "heads")) == P(None, "fsdp", "tensor")
    # An activation: fsdp is taken by the batch, so embed stays unsharded.
    assert logical_to_spec(("batch", "length", "embed")) == P(("data", "fsdp"), None, None)


def test_indivisible_dims_fall_back_to_replication():
    mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2), jax.devices())
    assert fit_spec(mesh, P("fsdp", "tensor"), (64, 211)) == P("fsdp", None)
    assert fit_spec(mesh, P("fsdp", "tensor"), (6, 8)) == P(None, "tensor")


def test_mesh_config_resolution_and_errors():
    assert MeshConfig(data=2, fsdp=-1, tensor=2).shape(8) == {"data": 2, "fsdp": 2, "tensor": 2}
    with pytest.raises(ConfigError, match="mesh"):
        MeshConfig(data=3, fsdp=1, tensor=1).shape(8)
    with pytest.raises(ConfigError, match="mesh.fsdp"):
        MeshConfig(data=3, fsdp=-1, tensor=1).shape(8)
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.fixture(scope="module")
def reference_step():
    """One step of the full objective (CE, logit KL, hidden, attention) on one device."""
    cfg = distill_config()
    state, metrics, _ = one_step(cfg, (1, 1, 1))
    return cfg, jax.device_get(state.params), metrics


@pytest.mark.slow
@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (1, 8, 1), (2, 2, 2)])
def test_sharded_step_equals_single_device(reference_step, mesh_shape):
    cfg, ref_params, ref_metrics = reference_step
    state, metrics, session = one_step(cfg, mesh_shape)
    # float32 at "highest" matmul precision; sharded reductions sum in another order.
    for k in (
        "loss",
        "ce",
        "logit_kl",
        "kl_t1",
        "teacher_ce",
        "hidden",
        "attention_kl",
        "grad_norm",
    ):
        np.testing.assert_allclose(metrics[k], ref_metrics[k], rtol=2e-5, atol=1e-7, err_msg=k)
    got = jax.device_get(state.params)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, ref_params
    )
    # the params really are sharded as the rules say
    q = state.params["model"]["layers"]["self_attn"]["q_proj"]["kernel"]
    assert (
        q.sharding.spec
        == session.param_shardings["model"]["layers"]["self_attn"]["q_proj"]["kernel"].spec
    )
    if mesh_shape[1] > 1:
        assert q.sharding.spec[1] == "fsdp"
    if mesh_shape[2] > 1:
        assert q.sharding.spec[2] == "tensor"


def test_checkpoint_restores_onto_another_mesh(tmp_path):
    cfg = distill_config()
    recipe = prepare(cfg)
    src = Session(recipe, make_mesh(MeshConfig(data=1, fsdp=8, tensor=1)))
    _, trainable = src.frozen_and_trainable()
    state = src.init_state(trainable)
    # make the optimizer state non-trivial so a mix-up would show
    state = state._replace(
        opt_state=jax.tree.map(lambda x: x + 0.5 if x.dtype == np.float32 else x, state.opt_state)
    )
    expected = jax.device_get(state)
    mngr = checkpoint_manager(tmp_path, keep=2)
    save_checkpoint(mngr, state, {"index": 0}, {"kind": "distill"})
    mngr.wait_until_finished()
    dst = Session(recipe, make_mesh(MeshConfig(data=2, fsdp=2, tensor=2)))
    restored, data_state, meta = restore_checkpoint(mngr, dst.abstract_state())
    mngr.close()
    assert data_state == {"index": 0} and meta["process_count"] == 1
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), expected)
    k = restored.params["model"]["layers"]["mlp"]["up_proj"]["kernel"]
    assert k.sharding == dst.state_shardings.params["model"]["layers"]["mlp"]["up_proj"]["kernel"]
    assert k.sharding.spec == P(None, "fsdp", "tensor")
