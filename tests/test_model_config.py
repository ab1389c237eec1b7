"""LlamaConfig <-> HF config.json, the SpiritLM / TinyWave shapes, and bad configs."""

import json

import jax
import pytest
import transformers

from tinywave_jax.errors import ConfigError
from tinywave_jax.models import config as mc
from tinywave_jax.models import llama


def test_spiritlm_and_tinywave_shapes_build_abstractly_with_the_right_counts():
    # Llama-2-7B is 6,738,415,616 parameters at vocab 32000; SpiritLM pads the vocab to 32512.
    teacher = llama.count_params(llama.abstract_params(mc.SPIRITLM_BASE_7B))
    assert teacher == 6_738_415_616 + 2 * 512 * 4096 == mc.SPIRITLM_BASE_7B.num_params()
    student = llama.count_params(llama.abstract_params(mc.TINYWAVE_BASE_2B))
    per_layer = 4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096
    assert student == 10 * per_layer + 2 * 32512 * 4096 + 4096 == 2_290_176_000
    expressive = llama.abstract_params(mc.TINYWAVE_EXPRESSIVE_2B)
    assert expressive["embed_tokens"]["embedding"].shape == (32768, 4096)
    assert expressive["layers"]["self_attn"]["q_proj"]["kernel"].shape == (10, 4096, 4096)


def test_hf_config_round_trip_through_transformers(tmp_path):
    cfg = mc.tiny_config(
        num_key_value_heads=1,
        rope_theta=5000.0,
        tie_word_embeddings=True,
        rope_scaling=mc.RopeScaling("llama3", 8.0, 1.0, 4.0, 512),
    )
    cfg.write_hf_file(tmp_path / "config.json")
    hf = transformers.AutoConfig.from_pretrained(tmp_path)
    assert (
        hf.rope_parameters["rope_theta"] == 5000.0 and hf.rope_parameters["rope_type"] == "llama3"
    )
    back = mc.LlamaConfig.from_hf_dict(hf.to_dict())
    assert back == cfg


def test_reads_transformers_4_style_config(tmp_path):
    legacy = {
        "model_type": "llama",
        "vocab_size": 32512,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "hidden_act": "silu",
        "torch_dtype": "bfloat16",
        "tie_word_embeddings": False,
    }
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    assert mc.LlamaConfig.from_hf_file(tmp_path) == mc.SPIRITLM_BASE_7B
    legacy["rope_scaling"] = {"type": "linear", "factor": 4.0}
    assert mc.LlamaConfig.from_hf_dict(legacy).rope_scaling == mc.RopeScaling("linear", 4.0)


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"model_type": "mistral"}, "model_type"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e4}}, "yarn"),
        ({"hidden_size": "big"}, "hidden_size"),
    ],
)
def test_bad_hf_config_names_the_key(tmp_path, change, needle):
    hf = mc.tiny_config().to_hf_dict()
    hf.update(change)
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ConfigError, match=needle) as e:
        mc.LlamaConfig.from_hf_file(tmp_path)
    assert "config.json" in str(e.value)


def test_bad_hf_shape_names_the_config_json_key():
    hf = dict(mc.tiny_config().to_hf_dict(), num_key_value_heads=3)
    with pytest.raises(ConfigError) as e:
        mc.LlamaConfig.from_hf_dict(hf, where="m/config.json")
    assert str(e.value) == (
        "m/config.json: num_attention_heads: 4 is not a multiple of num_key_value_heads (3)"
    )


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config.json"):
        mc.LlamaConfig.from_hf_file(tmp_path)


def test_tap_layer_out_of_range_is_rejected():
    cfg = mc.tiny_config()
    params = llama.init_params(cfg, jax.random.key(0))
    with pytest.raises(ValueError, match="tap layer 7"):
        llama.forward(params, cfg, jax.numpy.zeros((1, 4), int), tap_layers=(7,), tap_hidden=True)
