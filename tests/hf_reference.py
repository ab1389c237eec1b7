"""Independent reference for model tests: tiny random `transformers` Llama models and a direct
state-dict -> params mapping written here (not the project's converter), so model parity does not
depend on the conversion code it is meant to check."""

import numpy as np
import torch
import transformers

from tinywave_jax.models.config import LlamaConfig


def make_hf_model(seed=0, init_std=0.08, **overrides):
    """A random eager-attention LlamaForCausalLM; larger init std than HF's 0.02 so attention is peaked."""
    kw = dict(
        vocab_size=211,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        initializer_range=init_std,
        tie_word_embeddings=False,
    )
    kw.update(overrides)
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(**kw)
    model = transformers.LlamaForCausalLM._from_config(
        cfg, attn_implementation="eager", dtype=torch.float32
    )
    with torch.no_grad():  # norms at 1.0 make every layer look alike; randomise them a little
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    return model.eval()


def jax_config(model, **jax_options) -> LlamaConfig:
    return LlamaConfig.from_hf_dict(model.config.to_dict(), where="test", **jax_options)


def params_from_hf(model, config: LlamaConfig) -> dict:
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    L = config.num_hidden_layers

    def stack(fmt, transpose):
        arrs = [sd[fmt.format(i)] for i in range(L)]
        return np.stack([a.T if transpose else a for a in arrs])

    def proj(prefix, names, bias):
        out = {}
        for n in names:
            out[n] = {"kernel": stack(f"model.layers.{{}}.{prefix}.{n}.weight", True)}
            if bias:
                out[n]["bias"] = stack(f"model.layers.{{}}.{prefix}.{n}.bias", False)
        return out

    params = {
        "embed_tokens": {"embedding": sd["model.embed_tokens.weight"]},
        "layers": {
            "input_layernorm": {"scale": stack("model.layers.{}.input_layernorm.weight", False)},
            "post_attention_layernorm": {
                "scale": stack("model.layers.{}.post_attention_layernorm.weight", False)
            },
            "self_attn": proj(
                "self_attn", ["q_proj", "k_proj", "v_proj", "o_proj"], config.attention_bias
            ),
            "mlp": proj("mlp", ["gate_proj", "up_proj", "down_proj"], config.mlp_bias),
        },
        "norm": {"scale": sd["model.norm.weight"]},
    }
    if not config.tie_word_embeddings:
        params["lm_head"] = {"kernel": sd["lm_head.weight"].T}
    return params


def rel_err(a, b) -> float:
    """Frobenius-norm relative error ||a - b|| / ||b||."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))
