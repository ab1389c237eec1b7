"""The parameter layout of a Llama model: the one table of every tensor's path in the params tree,
its shape, and its Hugging Face name (the checkpoint format checks against it; HF conversion maps
through it both ways).

tinywave params (nested dicts; per-layer tensors stacked on a leading layer axis L):
  embed_tokens/embedding [V, D]            <- model.embed_tokens.weight [V, D]
  layers/<module>/<proj>/kernel [L, in, out] <- model.layers.{i}.<module>.<proj>.weight [out, in] (.T)
  layers/<module>/<proj>/bias [L, out]     <- model.layers.{i}.<module>.<proj>.bias (if enabled)
  layers/{input,post_attention}_layernorm/scale [L, D] <- model.layers.{i}.*_layernorm.weight
  norm/scale [D]                           <- model.norm.weight
  lm_head/kernel [D, V]                    <- lm_head.weight [V, D] (.T); absent when tied
RoPE is in HF's rotate_half layout on both sides, so q/k need no permutation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import cast

import ml_dtypes  # noqa: F401  (registers "bfloat16" as a numpy dtype name)
import numpy as np

from ..errors import ConversionError
from .config import LlamaConfig


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """One HF tensor and where it lives in tinywave params."""

    hf_name: str
    path: tuple[str, ...]  # keys into the params tree
    layer: int | None  # index into the stacked layer axis; None for unstacked leaves
    transpose: bool  # HF Linear weight [out, in] vs our kernel [in, out]
    hf_shape: tuple[int, ...]

    def param_slice_shape(self) -> tuple[int, ...]:
        return self.hf_shape[::-1] if self.transpose else self.hf_shape


def _layer_tensors(c: LlamaConfig) -> list[tuple[str, tuple[str, ...], bool, tuple[int, ...]]]:
    """(HF suffix, params path under "layers", transpose, HF shape) of one decoder layer."""
    d, f = c.hidden_size, c.intermediate_size
    hd = cast(int, c.head_dim)  # set by LlamaConfig.__post_init__
    q, kv = c.num_attention_heads * hd, c.num_key_value_heads * hd
    out: list[tuple[str, tuple[str, ...], bool, tuple[int, ...]]] = []

    def linear(module, proj, n_in, n_out, bias):
        out.append((f"{module}.{proj}.weight", (module, proj, "kernel"), True, (n_out, n_in)))
        if bias:
            out.append((f"{module}.{proj}.bias", (module, proj, "bias"), False, (n_out,)))

    for proj, n_in, n_out in (
        ("q_proj", d, q),
        ("k_proj", d, kv),
        ("v_proj", d, kv),
        ("o_proj", q, d),
    ):
        linear("self_attn", proj, n_in, n_out, c.attention_bias)
    for proj, n_in, n_out in (("gate_proj", d, f), ("up_proj", d, f), ("down_proj", f, d)):
        linear("mlp", proj, n_in, n_out, c.mlp_bias)
    for norm in ("input_layernorm", "post_attention_layernorm"):
        out.append((f"{norm}.weight", (norm, "scale"), False, (d,)))
    return out


def tensor_maps(config: LlamaConfig) -> list[TensorMap]:
    """Every HF tensor of `config`, in the order transformers writes its state dict."""
    v, d = config.vocab_size, config.hidden_size
    maps = [
        TensorMap("model.embed_tokens.weight", ("embed_tokens", "embedding"), None, False, (v, d))
    ]
    layer_tensors = _layer_tensors(config)
    for i in range(config.num_hidden_layers):
        maps += [
            TensorMap(f"model.layers.{i}.{suffix}", ("layers", *path), i, transpose, shape)
            for suffix, path, transpose, shape in layer_tensors
        ]
    maps.append(TensorMap("model.norm.weight", ("norm", "scale"), None, False, (d,)))
    if not config.tie_word_embeddings:
        maps.append(TensorMap("lm_head.weight", ("lm_head", "kernel"), None, True, (v, d)))
    return maps


def param_shapes(config: LlamaConfig) -> dict:
    """The params tree of `config` with shape tuples as leaves (stacked layer axis included)."""
    tree: dict = {}
    for m in tensor_maps(config):
        if m.layer not in (None, 0):
            continue
        shape = m.param_slice_shape()
        if m.layer is not None:
            shape = (config.num_hidden_layers, *shape)
        set_path(tree, m.path, shape)
    return tree


def get_path(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def set_path(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
    """{path: leaf} of nested mappings."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = v
    return out


def check_params(
    params: Mapping, config: LlamaConfig, where: str = "params", allow_extra: bool = False
) -> None:
    """Raises ConversionError naming the first missing, mis-shaped or (unless `allow_extra`)
    extra parameter."""
    expected: dict = flatten(param_shapes(config))
    actual: dict = flatten(params)
    for path, shape in expected.items():
        if path not in actual:
            raise ConversionError(f"{where}: missing parameter {'/'.join(path)} {list(shape)}")
        if tuple(np.shape(actual[path])) != shape:
            raise ConversionError(
                f"{where}: parameter {'/'.join(path)} has shape "
                f"{list(np.shape(actual[path]))}, expected {list(shape)}"
            )
    extra = sorted("/".join(p) for p in actual if p not in expected)
    if extra and not allow_extra:
        raise ConversionError(
            f"{where}: unexpected parameter {extra[0]} (a model checkpoint "
            f"holds only the Llama layout of its config; {len(extra)} extra)"
        )
