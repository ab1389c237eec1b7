"""The tinywave model checkpoint: save/load round trip, dtype casts, restoring onto a mesh,
atomic and refusing saves, and clear errors."""

import json
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tinywave_jax import __version__
from tinywave_jax.checkpoint import (
    CheckpointIntegrityError,
    load_model,
    load_model_config,
    load_model_info,
    save_model,
)
from tinywave_jax.convert import export_hf
from tinywave_jax.errors import ConversionError
from tinywave_jax.models.config import tiny_config
from tinywave_jax.models.param_layout import param_shapes

# Divisible by the 2x4 mesh below; untied with attention bias so every kind of leaf appears.
CONFIG = tiny_config(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    attention_bias=True,
)


def _random_params(config, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda shape: rng.standard_normal(shape).astype(dtype),
        param_shapes(config),
        is_leaf=lambda x: isinstance(x, tuple),
    )


def _flat(tree, prefix=()):
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, (*prefix, k)) if isinstance(v, dict) else {(*prefix, k): v})
    return out


def test_layout_is_the_documented_one():
    c = tiny_config(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=40,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        mlp_bias=True,
    )
    L, D, V, F, Q, KV = 3, 32, 100, 40, 4 * 16, 2 * 16
    want = {
        ("embed_tokens", "embedding"): (V, D),
        ("layers", "input_layernorm", "scale"): (L, D),
        ("layers", "post_attention_layernorm", "scale"): (L, D),
        ("layers", "self_attn", "q_proj", "kernel"): (L, D, Q),
        ("layers", "self_attn", "k_proj", "kernel"): (L, D, KV),
        ("layers", "self_attn", "v_proj", "kernel"): (L, D, KV),
        ("layers", "self_attn", "o_proj", "kernel"): (L, Q, D),
        ("layers", "mlp", "gate_proj", "kernel"): (L, D, F),
        ("layers", "mlp", "up_proj", "kernel"): (L, D, F),
        ("layers", "mlp", "down_proj", "kernel"): (L, F, D),
        ("layers", "mlp", "gate_proj", "bias"): (L, F),
        ("layers", "mlp", "up_proj", "bias"): (L, F),
        ("layers", "mlp", "down_proj", "bias"): (L, D),
        ("norm", "scale"): (D,),
        ("lm_head", "kernel"): (D, V),
    }
    got = _flat(param_shapes(c))
    assert got == want
    assert sum(int(np.prod(s)) for s in got.values()) == c.num_params()
    tied = _flat(param_shapes(c.replace(tie_word_embeddings=True, mlp_bias=False)))
    assert ("lm_head", "kernel") not in tied and ("layers", "mlp", "up_proj", "bias") not in tied


def test_save_load_round_trip(tmp_path):
    params = _random_params(CONFIG)
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.model").write_bytes(b"\x00spm")
    (tok / "unrelated.txt").write_text("not copied")
    out = save_model(
        tmp_path / "m", params, CONFIG, provenance={"source": "unit test"}, tokenizer_dir=tok
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "params",
        "tinywave.json",
        "tokenizer",
    ]
    assert [p.name for p in (out / "tokenizer").iterdir()] == ["tokenizer.model"]
    info = json.loads((out / "tinywave.json").read_text())
    assert info["format_version"] == 1 and info["dtype"] == "float32"
    assert info["package_version"] == __version__ and info["tokenizer_files"] == ["tokenizer.model"]
    assert info["provenance"] == {"source": "unit test"} and info["created"].startswith("20")
    assert load_model_info(out) == info
    assert load_model_config(out) == CONFIG
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"

    loaded, config, info2 = load_model(out)
    assert config == CONFIG and info2 == info
    flat, want = _flat(loaded), _flat(params)
    assert set(flat) == set(want)
    for k, v in want.items():
        assert isinstance(flat[k], jax.Array) and flat[k].dtype == np.float32
        assert flat[k].sharding.device_set == {jax.devices()[0]}
        np.testing.assert_array_equal(np.asarray(flat[k]), v, err_msg=str(k))

    host, _, _ = load_model(out, as_numpy=True)
    assert all(type(v) is np.ndarray for v in _flat(host).values())


def test_dtype_cast_on_load(tmp_path):
    params = _random_params(CONFIG, seed=1)
    save_model(tmp_path / "m", params, CONFIG)
    loaded, config, _ = load_model(tmp_path / "m", dtype="bfloat16")
    assert config.param_dtype == "bfloat16"
    for k, v in _flat(params).items():
        got = np.asarray(_flat(loaded)[k])
        assert got.dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(
            got.view(np.uint16), v.astype(ml_dtypes.bfloat16).view(np.uint16)
        )
    # A bfloat16 checkpoint restores as bfloat16, and up-casts exactly.
    save_model(tmp_path / "b", jax.tree.map(lambda a: a.astype(ml_dtypes.bfloat16), params), CONFIG)
    assert load_model_info(tmp_path / "b")["dtype"] == "bfloat16"
    up, config, _ = load_model(tmp_path / "b", dtype=np.float32)
    assert config.param_dtype == "float32"
    for k, v in _flat(params).items():
        np.testing.assert_array_equal(
            np.asarray(_flat(up)[k]), v.astype(ml_dtypes.bfloat16).astype(np.float32)
        )


def test_restore_onto_mesh(tmp_path):
    assert len(jax.devices()) == 8, "tests/conftest.py sets 8 CPU devices"
    mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 4), ("a", "b"))
    params = _random_params(CONFIG, seed=2)
    # Save from device arrays sharded one way, restore onto another layout.
    on_device = jax.tree.map(
        lambda a: jax.device_put(a, NamedSharding(mesh, P(*[None] * (a.ndim - 1), "b"))), params
    )
    save_model(tmp_path / "m", on_device, CONFIG)

    def spec(path, shape):
        if path[-1] == "kernel" and len(shape) == 3:
            return P(None, "a", "b")
        if len(shape) == 2:
            return P("a", "b") if path[0] != "layers" else P(None, "b")
        return P("b")

    shapes = param_shapes(CONFIG)
    shardings = jax.tree_util.tree_map_with_path(
        lambda kp, shape: NamedSharding(mesh, spec(tuple(k.key for k in kp), shape)),
        shapes,
        is_leaf=lambda x: isinstance(x, tuple),
    )
    loaded, _, _ = load_model(tmp_path / "m", shardings=shardings, dtype="bfloat16")
    flat_sh = _flat(shardings)
    for k, v in _flat(params).items():
        got = _flat(loaded)[k]
        assert got.sharding.is_equivalent_to(flat_sh[k], v.ndim), k
        assert got.dtype == ml_dtypes.bfloat16
        assert len(got.addressable_shards) == 8
        np.testing.assert_array_equal(
            np.asarray(got).view(np.uint16), v.astype(ml_dtypes.bfloat16).view(np.uint16)
        )
    # One sharding for every leaf (replicated).
    replicated, _, _ = load_model(tmp_path / "m", shardings=NamedSharding(mesh, P()))
    emb = replicated["embed_tokens"]["embedding"]
    assert emb.sharding.is_fully_replicated and len(emb.sharding.device_set) == 8
    # A shardings tree that does not match the params names the parameter.
    del shardings["norm"]
    with pytest.raises(ValueError, match="norm/scale"):
        load_model(tmp_path / "m", shardings=shardings)


def test_save_refuses_non_empty_and_overwrites_atomically(tmp_path, monkeypatch):
    first, second = _random_params(CONFIG, seed=3), _random_params(CONFIG, seed=4)
    save_model(tmp_path / "m", first, CONFIG)
    with pytest.raises(FileExistsError, match="not empty"):
        save_model(tmp_path / "m", second, CONFIG)

    def broken_save(self, *a, **k):
        raise RuntimeError("crash while writing (simulated)")

    monkeypatch.setattr(ocp.Checkpointer, "save", broken_save)
    with pytest.raises(RuntimeError, match="simulated"):
        save_model(tmp_path / "m", second, CONFIG, overwrite=True)
    monkeypatch.undo()
    kept, _, _ = load_model(tmp_path / "m", as_numpy=True)
    np.testing.assert_array_equal(kept["norm"]["scale"], first["norm"]["scale"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary leftovers

    save_model(tmp_path / "m", second, CONFIG, overwrite=True)
    now, _, _ = load_model(tmp_path / "m", as_numpy=True)
    np.testing.assert_array_equal(now["norm"]["scale"], second["norm"]["scale"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    (tmp_path / "empty").mkdir()
    save_model(tmp_path / "empty", first, CONFIG)  # an existing empty folder is fine
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        save_model(tmp_path / "file", first, CONFIG)


def test_save_rejects_params_that_do_not_fit_the_config(tmp_path):
    params = _random_params(CONFIG)
    del params["layers"]["mlp"]["down_proj"]
    with pytest.raises(ConversionError, match="missing parameter layers/mlp/down_proj/kernel"):
        save_model(tmp_path / "a", params, CONFIG)
    params = _random_params(CONFIG)
    params["layers"]["self_attn"]["k_proj"]["kernel"] = np.zeros((2, 64, 64), np.float32)
    with pytest.raises(
        ConversionError, match=r"layers/self_attn/k_proj/kernel has shape \[2, 64, 64\]"
    ):
        save_model(tmp_path / "b", params, CONFIG)
    params = _random_params(CONFIG)
    params["projector"] = {"kernel": np.zeros((3, 3), np.float32)}
    with pytest.raises(ConversionError, match="unexpected parameter projector/kernel"):
        save_model(tmp_path / "c", params, CONFIG)
    assert list(tmp_path.iterdir()) == []


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="tinywave.json"):
        load_model(tmp_path)
    save_model(tmp_path / "m", _random_params(CONFIG), CONFIG)
    # config.json disagreeing with the stored params: the message names the parameter (an
    # edited config.json fails its sha256 first; without the check the shapes are compared)
    CONFIG.replace(intermediate_size=128).write_hf_file(tmp_path / "m" / "config.json")
    with pytest.raises(ConversionError, match="config.json differs from the sha256"):
        load_model(tmp_path / "m")
    with pytest.raises(
        ConversionError, match=r"layers/mlp/gate_proj/kernel has shape \[2, 64, 160\]"
    ):
        load_model(tmp_path / "m", verify=False)
    CONFIG.replace(mlp_bias=True).write_hf_file(tmp_path / "m" / "config.json")
    with pytest.raises(ConversionError, match="layers/mlp/gate_proj/bias .* missing"):
        load_model(tmp_path / "m", verify=False)
    info = json.loads((tmp_path / "m" / "tinywave.json").read_text())
    (tmp_path / "m" / "tinywave.json").write_text(json.dumps({**info, "format_version": 99}))
    with pytest.raises(ConversionError, match="format_version 99"):
        load_model(tmp_path / "m")


def test_extra_stored_entries_are_ignored_by_load_and_export(tmp_path):
    """Other tooling (e.g. distillation) may store more than the Llama layout; loading and
    exporting the model must neither need nor return it. (Rewriting params/ after the save
    changes its files: the default verified load refuses it, verify=False reads it.)"""
    params = _random_params(CONFIG, seed=5)
    out = save_model(tmp_path / "m", params, CONFIG)
    ckptr = ocp.StandardCheckpointer()
    extended = {**params, "projector": {"kernel": np.ones((64, 128), np.float32)}}
    ckptr.save((out / "params").resolve(), extended, force=True)
    ckptr.wait_until_finished()
    ckptr.close()
    with pytest.raises(CheckpointIntegrityError, match="params/"):
        load_model(out, as_numpy=True)
    loaded, _, _ = load_model(out, as_numpy=True, verify=False)
    assert "projector" not in loaded
    np.testing.assert_array_equal(loaded["lm_head"]["kernel"], params["lm_head"]["kernel"])
    hf = export_hf(out, tmp_path / "hf", verify=False)
    import safetensors.numpy

    tensors = safetensors.numpy.load_file(Path(hf) / "model.safetensors")
    assert len(tensors) == 3 + CONFIG.num_hidden_layers * 13
    np.testing.assert_array_equal(tensors["lm_head.weight"], params["lm_head"]["kernel"].T)
    np.testing.assert_array_equal(
        tensors["model.layers.1.self_attn.o_proj.weight"],
        params["layers"]["self_attn"]["o_proj"]["kernel"][1].T,
    )
