"""Student initialisation from teacher layers: copied tensors, forward equivalences against
independently built references, random students, and the init-student command end to end."""

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tinywave_jax.checkpoint import load_model, save_model
from tinywave_jax.distill import commands
from tinywave_jax.distill.student_init import init_student_from_teacher, random_student
from tinywave_jax.errors import ConfigError
from tinywave_jax.models import llama
from tinywave_jax.models.config import tiny_config
from tinywave_jax.models.param_layout import param_shapes

# Untied head and attention biases so every kind of leaf is exercised.
TEACHER = tiny_config(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    attention_bias=True,
)


def _flat(tree, prefix=()):
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, (*prefix, k)) if isinstance(v, dict) else {(*prefix, k): v})
    return out


def _random_params(config, seed=0):
    """Random numpy params (norm scales around 1, biases non-zero) so a wrong row shows."""
    rng = np.random.default_rng(seed)

    def leaf(path, shape):
        x = 0.2 * rng.standard_normal(shape)
        return (x + (path[-1].key == "scale")).astype(np.float32)

    return jax.tree_util.tree_map_with_path(
        leaf, param_shapes(config), is_leaf=lambda x: isinstance(x, tuple)
    )


def _tokens(config, seed=1, shape=(2, 7)):
    return jnp.asarray(np.random.default_rng(seed).integers(0, config.vocab_size, shape), jnp.int32)


@pytest.fixture(scope="module")
def teacher():
    return _random_params(TEACHER)


def test_copied_tensors_are_the_chosen_teacher_rows(teacher):
    layers = [0, 2, 3]
    student, cfg = init_student_from_teacher(teacher, TEACHER, layers)
    assert cfg == TEACHER.replace(num_hidden_layers=3)
    t, s = _flat(teacher), _flat(student)
    assert set(s) == set(t)
    for path, leaf in t.items():
        if path[0] == "layers":
            want = np.stack([leaf[i] for i in layers])  # row by row, by hand
        else:
            want = leaf
        np.testing.assert_array_equal(np.asarray(s[path]), want, err_msg="/".join(path))
        assert s[path].shape[0] == (3 if path[0] == "layers" else leaf.shape[0])
    # a tied teacher has no LM head, and neither has its student
    tied = {k: v for k, v in teacher.items() if k != "lm_head"}
    tied_student, tied_cfg = init_student_from_teacher(
        tied, TEACHER.replace(tie_word_embeddings=True), [1]
    )
    assert set(tied_student) == set(tied) and tied_cfg.tie_word_embeddings
    assert tied_student["embed_tokens"]["embedding"] is tied["embed_tokens"]["embedding"]
    # jax arrays go through the same way
    student_j, _ = init_student_from_teacher(jax.tree.map(jnp.asarray, teacher), TEACHER, layers)
    for path, leaf in _flat(student_j).items():
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(s[path]))


def test_all_layers_in_order_reproduce_the_teacher_logits(teacher):
    student, cfg = init_student_from_teacher(teacher, TEACHER, range(4))
    ids = _tokens(TEACHER)
    want = llama.forward(teacher, TEACHER, ids).logits
    got = llama.forward(student, cfg, ids).logits
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_skipping_a_layer_equals_the_teacher_with_that_layer_made_an_identity(teacher):
    """Student from layers [0, 2, 3] vs the full 4-layer teacher whose layer 1 writes nothing into
    the residual stream (o_proj, down_proj and their biases zeroed): the same function."""
    student, cfg = init_student_from_teacher(teacher, TEACHER, [0, 2, 3])
    identity1 = jax.tree.map(np.copy, teacher)
    for module, proj in (("self_attn", "o_proj"), ("mlp", "down_proj")):
        for leaf in identity1["layers"][module][proj].values():
            leaf[1] = 0.0
    ids = _tokens(TEACHER, seed=3)
    ref = llama.forward(identity1, TEACHER, ids, tap_layers=(0, 2, 3), tap_hidden=True)
    out = llama.forward(student, cfg, ids, tap_layers=(0, 1, 2), tap_hidden=True)
    np.testing.assert_allclose(np.asarray(out.logits), np.asarray(ref.logits), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.hidden), np.asarray(ref.hidden), rtol=1e-5, atol=1e-5)


def test_two_layer_student_equals_a_two_layer_model_of_the_teacher_rows(teacher):
    student, cfg = init_student_from_teacher(teacher, TEACHER, [0, 2])
    small = TEACHER.replace(num_hidden_layers=2)
    ref_params = jax.tree.map(lambda x: x, teacher)
    ref_params["layers"] = jax.tree.map(
        lambda x: np.concatenate([x[0:1], x[2:3]]), teacher["layers"]
    )
    ids = _tokens(TEACHER, seed=4)
    np.testing.assert_array_equal(
        np.asarray(llama.forward(student, cfg, ids).logits),
        np.asarray(llama.forward(ref_params, small, ids).logits),
    )


@pytest.mark.parametrize(
    "layers,match",
    [
        ([0, 4], r"layers: teacher layer\(s\) \[4\] outside \[0, 4\)"),
        ([1, 1], r"\[1, 1\] must be strictly increasing"),
        ([2, 0], r"\[2, 0\] must be strictly increasing"),
        ([], "no teacher layers"),
        ([0.5], "must be integers"),
    ],
)
def test_bad_layers_are_named(teacher, layers, match):
    with pytest.raises(ConfigError, match=match):
        init_student_from_teacher(teacher, TEACHER, layers)


def test_random_student_shape_and_determinism(tmp_path):
    shape = TEACHER.replace(num_hidden_layers=2).to_hf_dict()  # the CLI test's shape: one compile
    path = tmp_path / "student.json"
    path.write_text(json.dumps(shape))
    p1, cfg = random_student(str(path), 0)
    p2, _ = random_student(shape, jax.random.key(0))
    p3, _ = random_student(cfg, 1)
    assert cfg == TEACHER.replace(num_hidden_layers=2)
    assert {k: np.shape(v) for k, v in _flat(p1).items()} == _flat(param_shapes(cfg))
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    q = p1["layers"]["self_attn"]["q_proj"]["kernel"]
    assert not np.array_equal(
        np.asarray(q), np.asarray(p3["layers"]["self_attn"]["q_proj"]["kernel"])
    )
    assert 0.015 < float(jnp.std(q)) < 0.025  # HF's normal(0.02) init
    with pytest.raises(ConfigError, match="model.hiden_size"):
        random_student({"hiden_size": 8}, 0)


# ---- the init-student command ----------------------------------------------------------------
def _run(argv):
    """Parses and runs `tinywave init-student ...` through the command's own registration."""
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["init-student", *argv])
    return args.func(args)


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory, teacher):
    d = tmp_path_factory.mktemp("teacher") / "ckpt"
    tok = tmp_path_factory.mktemp("tok")
    (tok / "tokenizer_config.json").write_text("{}")
    save_model(d, teacher, TEACHER, provenance={"source": "test"}, tokenizer_dir=tok)
    return d


def test_cli_copies_mapped_layers_and_records_provenance(teacher_ckpt, teacher, tmp_path):
    out = tmp_path / "student"
    assert _run([str(teacher_ckpt), str(out), "--layer-map", "uniform", "--num-layers", "2"]) == 0
    params, cfg, info = load_model(out, as_numpy=True)
    assert cfg.num_hidden_layers == 2 and cfg.hidden_size == TEACHER.hidden_size
    prov = info["provenance"]
    assert prov["teacher_layers"] == [1, 3] and prov["layer_map"] == "uniform"  # (l+1)*4//2-1
    assert prov["teacher"] == str(teacher_ckpt.resolve()) and prov["teacher_num_layers"] == 4
    assert (out / "tokenizer" / "tokenizer_config.json").is_file()
    for path, leaf in _flat(teacher).items():
        want = leaf[[1, 3]] if path[0] == "layers" else leaf
        np.testing.assert_array_equal(_flat(params)[path], want, err_msg="/".join(path))


def test_cli_explicit_layers_bfloat16_and_errors(teacher_ckpt, teacher, tmp_path):
    out = tmp_path / "s"
    assert _run([str(teacher_ckpt), str(out), "--layers", "0,2,3", "--dtype", "bfloat16"]) == 0
    params, cfg, info = load_model(out, as_numpy=True)
    assert info["provenance"]["teacher_layers"] == [0, 2, 3] and info["dtype"] == "bfloat16"
    k = teacher["layers"]["mlp"]["up_proj"]["kernel"]
    np.testing.assert_array_equal(
        params["layers"]["mlp"]["up_proj"]["kernel"], k[[0, 2, 3]].astype(jnp.bfloat16)
    )
    bad = [
        (["--layers", "0,9"], r"--layers: teacher layer\(s\) \[9\]"),
        (["--layers", "1,1"], "--layers: .*strictly increasing"),
        (["--layers", "2,0"], "--layers: .*strictly increasing"),
        (["--layers", "1,x"], "--layers: '1,x' is not"),
        (["--layer-map", "tinywave", "--num-layers", "2"], r"--layer-map: .*\[4, 7\] outside"),
        (["--layer-map", "nope", "--num-layers", "2"], "--layer-map: unknown preset"),
        (["--layer-map", "uniform"], "--num-layers"),
        (["--layers", "0,1", "--num-layers", "3"], "--num-layers 3 disagrees"),
    ]
    for extra, match in bad:
        with pytest.raises(ConfigError, match=match):
            _run([str(teacher_ckpt), str(tmp_path / "never"), *extra])
        assert not (tmp_path / "never").exists()
    with pytest.raises(FileExistsError):  # refuses a non-empty OUT_DIR before loading anything
        _run([str(teacher_ckpt), str(out), "--layers", "0"])


def test_cli_random_student(teacher_ckpt, tmp_path):
    out = tmp_path / "r"
    assert _run([str(teacher_ckpt), str(out), "--random", "--num-layers", "2", "--seed", "5"]) == 0
    params, cfg, info = load_model(out, as_numpy=True)
    assert cfg == TEACHER.replace(num_hidden_layers=2)
    assert info["provenance"]["kind"] == "random-student" and info["provenance"]["seed"] == 5
    want, _ = random_student(cfg, 5)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
        np.testing.assert_array_equal(a, np.asarray(b))
    with pytest.raises(ConfigError, match="--random needs --config"):
        _run([str(tmp_path / "r2"), "--random"])
    with pytest.raises(ConfigError, match="TEACHER_CKPT is required"):
        _run([str(tmp_path / "r3"), "--layers", "0"])
