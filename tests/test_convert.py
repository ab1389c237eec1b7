"""HF <-> tinywave conversion: round trips against HF torch models, the safetensors reader/writer
against the `safetensors` package, error messages on bad input, atomic export, and the CLI."""

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
import transformers
from hf_reference import make_hf_model, params_from_hf
from huggingface_hub import split_torch_state_dict_into_shards

from tinywave_jax import cli
from tinywave_jax.checkpoint import load_model
from tinywave_jax.convert import export_hf, hf_export, import_hf
from tinywave_jax.convert import safetensors_io as stio
from tinywave_jax.errors import ConfigError, ConversionError

# Tiny shapes; vocab 211 is not a multiple of 128.
SMALL = dict(vocab_size=211, hidden_size=32, intermediate_size=48, num_hidden_layers=2)
VARIANTS = {
    "mha_untied": dict(num_attention_heads=4, num_key_value_heads=4),
    "gqa_tied_attnbias": dict(
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, attention_bias=True
    ),
    "gqa_untied_allbias": dict(
        num_attention_heads=4, num_key_value_heads=1, attention_bias=True, mlp_bias=True
    ),
}
FORMATS = ["safetensors", "sharded_safetensors", "bin", "sharded_bin"]
TOKENIZER_FILE = {"tokenizer.json": '{"version": "1.0", "fake": true}\n'}


def _save_hf(model, out: Path, fmt: str) -> Path:
    """Writes `model` the way the hub ships models: transformers' save_pretrained (single or
    sharded safetensors) or torch.save of the state dict (single or sharded .bin + index)."""
    out.mkdir(parents=True)
    if fmt == "safetensors":
        model.save_pretrained(out)
    elif fmt == "sharded_safetensors":
        model.save_pretrained(out, max_shard_size="20KB")
        assert (out / "model.safetensors.index.json").is_file()
    else:
        model.config.save_pretrained(out)
        state = dict(model.state_dict())  # has lm_head.weight even when tied: must be ignored
        # Older checkpoints stored the RoPE table; it is not a parameter and must be ignored.
        state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
        if fmt == "bin":
            torch.save(state, out / "pytorch_model.bin")
        else:
            names = list(state)
            parts = {
                "pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
                "pytorch_model-00002-of-00002.bin": names[len(names) // 2 :],
            }
            for fname, part in parts.items():
                torch.save({k: state[k].clone() for k in part}, out / fname)
            index = {"metadata": {}, "weight_map": {k: f for f, p in parts.items() for k in p}}
            (out / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    for name, text in TOKENIZER_FILE.items():
        (out / name).write_text(text)
    return out


@pytest.fixture(scope="module")
def models():
    return {
        name: make_hf_model(seed=i, **SMALL, **kw) for i, (name, kw) in enumerate(VARIANTS.items())
    }


def _read_hf_folder(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors folder, read with the `safetensors` package."""
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(safetensors.torch.load_file(f))
    return out


def _expected_hf_tensors(model) -> dict[str, torch.Tensor]:
    sd = model.state_dict()
    if model.config.tie_word_embeddings:
        sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}
    return sd


def _logits(model, seed=0, length=96):
    ids = torch.randint(
        0, SMALL["vocab_size"], (2, length), generator=torch.Generator().manual_seed(seed)
    )
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_round_trip_is_bit_exact(models, tmp_path, variant, fmt):
    model = models[variant]
    hf_dir = _save_hf(model, tmp_path / "hf", fmt)
    import_hf(hf_dir, tmp_path / "ckpt")

    # The checkpoint holds the documented layout (reference mapping written independently).
    params, config, info = load_model(tmp_path / "ckpt", as_numpy=True)
    reference = params_from_hf(model, config)
    flat_ref = _flat(reference)
    assert set(_flat(params)) == set(flat_ref)
    for k, v in flat_ref.items():
        np.testing.assert_array_equal(params_leaf(params, k), v, err_msg=k)
    # save_pretrained also writes generation_config.json, which travels with the tokenizer files
    expected_files = {"tokenizer.json"} | (
        {"generation_config.json"} if "safetensors" in fmt else set()
    )
    assert set(info["tokenizer_files"]) == expected_files
    assert (tmp_path / "ckpt" / "tokenizer" / "tokenizer.json").read_text() == TOKENIZER_FILE[
        "tokenizer.json"
    ]
    assert info["provenance"]["source_dir"] == str(hf_dir.resolve())

    export_hf(tmp_path / "ckpt", tmp_path / "out")
    got, want = _read_hf_folder(tmp_path / "out"), _expected_hf_tensors(model)
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == torch.float32 and torch.equal(got[k], want[k]), k
    assert (tmp_path / "out" / "tokenizer.json").read_text() == TOKENIZER_FILE["tokenizer.json"]

    back = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "out", attn_implementation="eager"
    )
    torch.testing.assert_close(_logits(back), _logits(model), rtol=0, atol=0)


def _flat(tree, prefix=()):
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, (*prefix, k)) if isinstance(v, dict) else {(*prefix, k): v})
    return out


def params_leaf(params, path):
    for k in path:
        params = params[k]
    return params


def test_bfloat16_export_and_import(models, tmp_path):
    model = models["gqa_tied_attnbias"]
    hf_dir = _save_hf(model, tmp_path / "hf", "safetensors")
    import_hf(hf_dir, tmp_path / "ckpt")
    export_hf(tmp_path / "ckpt", tmp_path / "bf16", dtype="bfloat16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    got, want = _read_hf_folder(tmp_path / "bf16"), _expected_hf_tensors(model)
    for k in want:
        assert got[k].dtype == torch.bfloat16 and torch.equal(got[k], want[k].to(torch.bfloat16)), k
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "bf16", attn_implementation="eager"
    )
    for k, v in loaded.state_dict().items():
        assert v.dtype == torch.bfloat16 and torch.equal(
            v, model.state_dict()[k].to(torch.bfloat16)
        ), k

    # A bfloat16 checkpoint: params are the bf16 cast, and export keeps bf16 by default.
    import_hf(hf_dir, tmp_path / "ckpt16", dtype="bfloat16")
    params, config, info = load_model(tmp_path / "ckpt16", as_numpy=True)
    assert info["dtype"] == "bfloat16" and config.param_dtype == "bfloat16"
    emb = params["embed_tokens"]["embedding"]
    assert emb.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(
        emb.view(np.uint16),
        model.state_dict()["model.embed_tokens.weight"]
        .to(torch.bfloat16)
        .view(torch.int16)
        .numpy()
        .view(np.uint16),
    )
    export_hf(tmp_path / "ckpt16", tmp_path / "bf16b")
    got = _read_hf_folder(tmp_path / "bf16b")
    assert all(torch.equal(got[k], want[k].to(torch.bfloat16)) for k in want)


def test_multi_shard_export_index(models, tmp_path):
    model = models["gqa_untied_allbias"]
    import_hf(_save_hf(model, tmp_path / "hf", "safetensors"), tmp_path / "ckpt")
    max_size = 12_000
    export_hf(tmp_path / "ckpt", tmp_path / "out", max_shard_size="12KB")
    out = tmp_path / "out"
    assert not (out / "model.safetensors").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    want = _expected_hf_tensors(model)
    assert set(index["weight_map"]) == set(want)
    assert list(index["weight_map"]) == sorted(index["weight_map"])
    assert index["metadata"]["total_size"] == sum(v.numel() * 4 for v in want.values())
    assert index["metadata"]["total_parameters"] == sum(v.numel() for v in want.values())
    files = sorted(set(index["weight_map"].values()))
    n = len(files)
    assert n > 3 and files == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert sorted(p.name for p in out.glob("*.safetensors")) == files
    # Same split as huggingface_hub's, for the tensors in transformers' state-dict order.
    split = split_torch_state_dict_into_shards(want, max_shard_size=max_size)
    assert {f: sorted(t) for f, t in split.filename_to_tensors.items()} == {
        f: sorted(k for k, v in index["weight_map"].items() if v == f) for f in files
    }
    for f in files:
        with safetensors.safe_open(out / f, "pt") as sf:
            names = set(sf.keys())
            assert sf.metadata() == {"format": "pt"}
        assert names == {k for k, v in index["weight_map"].items() if v == f}
        data_bytes = sum(want[k].numel() * 4 for k in names)
        assert data_bytes <= max_size or len(names) == 1
    back = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
    torch.testing.assert_close(_logits(back), _logits(model), rtol=0, atol=0)


# ---- safetensors reader / writer against the reference implementation -------------------------


def _sample_arrays():
    rng = np.random.default_rng(0)
    return {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "f16": rng.standard_normal((7,)).astype(np.float16),
        "f64": rng.standard_normal((2, 2)),
        "i64": rng.integers(-(2**40), 2**40, (4, 1)),
        "i32": rng.integers(-100, 100, (2, 3, 2)).astype(np.int32),
        "u8": rng.integers(0, 255, (5,)).astype(np.uint8),
        "bool": rng.integers(0, 2, (3,)).astype(bool),
        "scalar": np.array(3.5, np.float32),
        "empty": np.zeros((0, 4), np.float32),
    }


def test_safetensors_writer_matches_reference_reader(tmp_path):
    arrays = _sample_arrays()
    stio.save_file(arrays, tmp_path / "a.safetensors", metadata={"format": "pt"})
    back = safetensors.numpy.load_file(tmp_path / "a.safetensors")
    assert set(back) == set(arrays)
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        np.testing.assert_array_equal(back[k], v)
    # bfloat16 (numpy cannot hold it, torch can): our ml_dtypes cast == torch's rounding.
    f32 = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
    stio.save_file({"w": f32.astype(ml_dtypes.bfloat16)}, tmp_path / "b.safetensors")
    w = safetensors.torch.load_file(tmp_path / "b.safetensors")["w"]
    assert w.dtype == torch.bfloat16 and torch.equal(w, torch.from_numpy(f32).to(torch.bfloat16))


def test_safetensors_reader_matches_reference_writer(tmp_path):
    arrays = _sample_arrays()
    safetensors.numpy.save_file(arrays, tmp_path / "a.safetensors")
    f = stio.SafetensorsFile(tmp_path / "a.safetensors")
    assert set(f) == set(arrays)
    for k, v in arrays.items():
        assert f[k].dtype == v.dtype
        np.testing.assert_array_equal(f[k], v)
    t = torch.randn(3, 8)
    safetensors.torch.save_file(
        {"w": t.to(torch.bfloat16), "h": t.half()},
        tmp_path / "b.safetensors",
        metadata={"format": "pt"},
    )
    g = stio.load_file(tmp_path / "b.safetensors")
    assert g["w"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(g["w"].astype(np.float32), t.to(torch.bfloat16).float().numpy())
    np.testing.assert_array_equal(g["h"], t.half().numpy())
    assert stio.SafetensorsFile(tmp_path / "b.safetensors").metadata == {"format": "pt"}


# ---- bad input -----------------------------------------------------------------------------


@pytest.fixture
def hf_single(models, tmp_path):
    return _save_hf(models["gqa_untied_allbias"], tmp_path / "hf", "safetensors")


def _rewrite_weights(hf_dir: Path, edit):
    path = hf_dir / "model.safetensors"
    tensors = dict(safetensors.numpy.load_file(path))
    edit(tensors)
    safetensors.numpy.save_file(tensors, path, metadata={"format": "pt"})


def _import_fails(hf_dir, out, exc, *fragments):
    with pytest.raises(exc) as e:
        import_hf(hf_dir, out)
    for fragment in fragments:
        assert fragment in str(e.value), (fragment, str(e.value))
    assert not out.exists() and not [
        p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")
    ]


def test_missing_config(hf_single, tmp_path):
    (hf_single / "config.json").unlink()
    _import_fails(hf_single, tmp_path / "ckpt", ConfigError, str(hf_single / "config.json"))


def test_model_type_not_llama(hf_single, tmp_path):
    cfg = json.loads((hf_single / "config.json").read_text())
    cfg["model_type"] = "mistral"
    (hf_single / "config.json").write_text(json.dumps(cfg))
    _import_fails(hf_single, tmp_path / "ckpt", ConfigError, "config.json", "model_type", "mistral")


def test_missing_weight_file_named_in_index(models, tmp_path):
    hf_dir = _save_hf(models["mha_untied"], tmp_path / "hf", "sharded_safetensors")
    shard = json.loads((hf_dir / "model.safetensors.index.json").read_text())["weight_map"][
        "model.layers.1.mlp.up_proj.weight"
    ]
    (hf_dir / shard).unlink()
    _import_fails(
        hf_dir, tmp_path / "ckpt", FileNotFoundError, "model.safetensors.index.json", shard
    )


def test_wrong_shape(hf_single, tmp_path):
    name = "model.layers.1.mlp.up_proj.weight"
    _rewrite_weights(hf_single, lambda t: t.update({name: t[name][:-1]}))
    _import_fails(
        hf_single,
        tmp_path / "ckpt",
        ConversionError,
        str(hf_single / "model.safetensors"),
        name,
        "shape",
        "[47, 32]",
        "[48, 32]",
    )


def test_unexpected_tensor(hf_single, tmp_path):
    name = "model.layers.0.self_attn.q_norm.weight"
    _rewrite_weights(hf_single, lambda t: t.update({name: np.ones(8, np.float32)}))
    _import_fails(
        hf_single,
        tmp_path / "ckpt",
        ConversionError,
        str(hf_single / "model.safetensors"),
        "unexpected",
        name,
    )


def test_missing_tensor(hf_single, tmp_path):
    name = "model.layers.1.self_attn.v_proj.bias"
    _rewrite_weights(hf_single, lambda t: t.pop(name))
    _import_fails(
        hf_single,
        tmp_path / "ckpt",
        ConversionError,
        str(hf_single / "model.safetensors"),
        "missing",
        name,
    )


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_bin_that_would_run_code_is_refused(models, tmp_path, capsys):
    hf_dir = _save_hf(models["mha_untied"], tmp_path / "hf", "bin")
    state = torch.load(hf_dir / "pytorch_model.bin", weights_only=True)
    torch.save(
        {**state, "model.norm.weight": _RunsCodeWhenUnpickled()}, hf_dir / "pytorch_model.bin"
    )
    _import_fails(hf_dir, tmp_path / "ckpt", ConversionError, str(hf_dir / "pytorch_model.bin"))
    assert "this must never run" not in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["garbage_json", "huge_length", "bad_offsets", "truncated"])
def test_corrupt_safetensors_header(hf_single, tmp_path, damage):
    path = hf_single / "model.safetensors"
    raw = bytearray(path.read_bytes())
    if damage == "garbage_json":
        raw[8:12] = b"#!?x"
    elif damage == "huge_length":
        raw[:8] = (len(raw) * 2).to_bytes(8, "little")
    elif damage == "bad_offsets":
        n = int.from_bytes(raw[:8], "little")
        header = raw[8 : 8 + n].decode().replace('"data_offsets":[0,', '"data_offsets":[4,', 1)
        assert header != raw[8 : 8 + n].decode()
        raw[8 : 8 + n] = header.encode()
    else:
        raw = raw[:-100]
    path.write_bytes(bytes(raw))
    _import_fails(
        hf_single, tmp_path / "ckpt", stio.SafetensorsError, str(path), "corrupt safetensors header"
    )


# ---- atomic export --------------------------------------------------------------------------


@pytest.fixture
def ckpt(hf_single, tmp_path):
    return import_hf(hf_single, tmp_path / "ckpt")


def _siblings(out: Path):
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}"))


def test_export_refuses_non_empty_target(ckpt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not empty"):
        export_hf(ckpt, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (
        out / "keep.txt"
    ).read_text() == "precious"
    export_hf(ckpt, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert _siblings(out) == []


@pytest.mark.parametrize("existing", [False, True])
def test_failed_export_leaves_no_partial_target(ckpt, tmp_path, monkeypatch, existing):
    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "keep.txt").write_text("precious")
    calls = []
    real_write = hf_export.write_file

    def failing_write(path, tensors, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real_write(path, tensors, metadata)

    monkeypatch.setattr(hf_export, "write_file", failing_write)
    with pytest.raises(OSError, match="simulated"):
        export_hf(ckpt, out, overwrite=True, max_shard_size="12KB")
    assert len(calls) == 2 and calls[0].is_relative_to(tmp_path)
    if existing:
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()
    assert _siblings(out) == []


# ---- CLI ------------------------------------------------------------------------------------


@pytest.fixture
def cli_main(monkeypatch):
    # Only this area's sub-commands: the test must not depend on other areas' modules.
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["tinywave_jax.convert.commands"])
    return cli.main


def test_cli_import_and_export(cli_main, models, tmp_path, capsys):
    model = models["mha_untied"]
    hf_dir = _save_hf(model, tmp_path / "hf", "sharded_bin")
    assert cli_main(["import-hf", str(hf_dir), str(tmp_path / "ckpt"), "--dtype", "bfloat16"]) == 0
    assert "tensors" in capsys.readouterr().err
    assert (
        cli_main(
            ["export-hf", str(tmp_path / "ckpt"), str(tmp_path / "out"), "--max-shard-size", "20KB"]
        )
        == 0
    )
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
    got = _read_hf_folder(tmp_path / "out")
    want = _expected_hf_tensors(model)
    assert all(torch.equal(got[k], want[k].to(torch.bfloat16)) for k in want)
    gen = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"]) == (
        model.config.bos_token_id,
        model.config.eos_token_id,
    )
    # Export again into the now non-empty folder: refused, then allowed with --overwrite.
    capsys.readouterr()
    assert cli_main(["export-hf", str(tmp_path / "ckpt"), str(tmp_path / "out")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (
        cli_main(
            [
                "export-hf",
                str(tmp_path / "ckpt"),
                str(tmp_path / "out"),
                "--overwrite",
                "--dtype",
                "float32",
            ]
        )
        == 0
    )
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_cli_bad_paths(cli_main, tmp_path, capsys):
    missing = tmp_path / "no_such_model"
    assert cli_main(["import-hf", str(missing), str(tmp_path / "ckpt")]) == 2
    assert str(missing) in capsys.readouterr().err
    assert cli_main(["export-hf", str(missing), str(tmp_path / "out")]) == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "out").exists()


# ---- helpers for other areas' tests, and the transformers 4.x config form --------------------


def test_state_dict_helpers_round_trip(models):
    from tinywave_jax.convert import hf_state_to_params, params_to_hf_state
    from tinywave_jax.models.config import LlamaConfig

    model = models["gqa_tied_attnbias"]
    config = LlamaConfig.from_hf_dict(model.config.to_dict())
    params = hf_state_to_params(model.state_dict(), config)  # torch tensors in, numpy out
    for k, v in _flat(params_from_hf(model, config)).items():
        np.testing.assert_array_equal(params_leaf(params, k), v, err_msg=str(k))
    back = dict(params_to_hf_state(params, config, dtype="bfloat16"))
    want = _expected_hf_tensors(model)
    assert list(back) == list(want)  # transformers' state-dict order
    for k, v in want.items():
        np.testing.assert_array_equal(
            back[k].view(np.uint16), v.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        )


def test_transformers_4_config_form_with_llama3_rope(models, tmp_path):
    """SpiritLM ships the 4.x form (top-level rope_theta / rope_scaling, torch_dtype); the
    export writes the 5.x form, and both load into the same transformers model."""
    model = models["mha_untied"]
    hf_dir = _save_hf(model, tmp_path / "hf", "bin")
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg.pop("rope_parameters", None)
    cfg.pop("dtype", None)
    cfg.update(
        rope_theta=50000.0,
        torch_dtype="float32",
        rope_scaling={
            "rope_type": "llama3",
            "factor": 4.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    )
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    import_hf(hf_dir, tmp_path / "ckpt")
    _, config, _ = load_model(tmp_path / "ckpt", as_numpy=True)
    assert config.rope_theta == 50000.0 and config.rope_scaling.rope_type == "llama3"
    assert config.rope_scaling.original_max_position_embeddings == 32
    export_hf(tmp_path / "ckpt", tmp_path / "out")
    rope = json.loads((tmp_path / "out" / "config.json").read_text())["rope_parameters"]
    assert rope["rope_type"] == "llama3" and rope["rope_theta"] == 50000.0 and rope["factor"] == 4.0
    original = transformers.AutoModelForCausalLM.from_pretrained(
        hf_dir, attn_implementation="eager"
    )
    back = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "out", attn_implementation="eager"
    )
    assert back.config.rope_parameters["rope_type"] == "llama3"
    torch.testing.assert_close(
        _logits(back, length=200), _logits(original, length=200), rtol=0, atol=0
    )
    # The RoPE settings took effect: the same weights with the default RoPE give other logits.
    assert not torch.allclose(_logits(back, length=200), _logits(model, length=200))
