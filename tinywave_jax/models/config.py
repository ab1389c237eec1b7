"""`LlamaConfig`: the model's shape and numerics, read from / written to Hugging Face `config.json`.

Reads both the transformers 4.x form (`rope_theta`, `rope_scaling` at top level, as SpiritLM
ships) and the 5.x form (`rope_parameters`); writes the 5.x form plus `rope_theta` at top level.
Fields that only steer our JAX implementation (dtypes, scan, remat) are not written to HF files.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal, Optional, cast

from ..config import building_key, from_dict
from ..errors import ConfigError
from ..storage import path as _path

RematPolicy = Literal["none", "full", "dots", "dots_no_batch", "save_attn_proj"]
Attention = Literal["dense", "splash", "cudnn"]  # models/attention.py
DType = Literal["float32", "bfloat16", "float16"]


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """HF `rope_scaling` / `rope_parameters` other than the plain default."""

    rope_type: Literal["default", "linear", "llama3"] = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0  # llama3 only
    high_freq_factor: float = 4.0  # llama3 only
    original_max_position_embeddings: int = 8192  # llama3 only


def _check_rope_agrees(hf: dict, where: str) -> None:
    """A config.json may state RoPE twice (transformers 4.x `rope_theta` / `rope_scaling`, 5.x
    `rope_parameters`); where both are given they must agree: one of them is read, and ignoring
    the other without a word would change the model's positions silently."""
    params, scaling = hf.get("rope_parameters"), hf.get("rope_scaling")
    if params is not None and not isinstance(params, dict):
        raise ConfigError(f"{where}: rope_parameters must be a mapping, got {params!r}")
    if scaling is not None and not isinstance(scaling, dict):
        raise ConfigError(f"{where}: rope_scaling must be a mapping, got {scaling!r}")
    params = params or {}
    if "rope_theta" in params and hf.get("rope_theta") is not None:
        if float(params["rope_theta"]) != float(hf["rope_theta"]):
            raise ConfigError(
                f"{where}: rope_parameters.rope_theta {params['rope_theta']} and rope_theta "
                f"{hf['rope_theta']} disagree; keep one of them (or make them equal)"
            )
    if params and scaling:

        def norm(r: dict) -> dict:
            r = dict(r)
            r.pop("rope_theta", None)
            kind = r.pop("rope_type", r.pop("type", "default"))
            return {"rope_type": kind, **r} if kind != "default" else {"rope_type": kind}

        if norm(params) != norm(scaling):
            raise ConfigError(
                f"{where}: rope_parameters {json.dumps(params)} and rope_scaling "
                f"{json.dumps(scaling)} disagree; keep one of them (or make them equal)"
            )


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """A Llama-family decoder. Defaults are SpiritLM-Base-7B (Llama-2-7B shape, vocab 32512)."""

    vocab_size: int = 32512
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    head_dim: Optional[int] = None  # None: hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: Optional[RopeScaling] = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: Optional[int] = 1
    eos_token_id: Optional[int] = 2
    pad_token_id: Optional[int] = None
    # JAX-side choices, not part of the HF file:
    dtype: DType = "float32"  # activations / matmul compute dtype
    param_dtype: DType = "float32"  # parameter storage dtype
    scan_layers: bool = True  # one compiled layer body under lax.scan
    remat: RematPolicy = "none"  # what the backward pass keeps (see models/llama.py)
    attention: Attention = "dense"  # full-sequence attention implementation (models/attention.py)

    def __post_init__(self):
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        self.validate(building_key())

    def validate(self, key: str = ""):
        """`key`: where this config sits in its file (`teacher.shape` in a run config)."""

        def at(name: str) -> str:
            return f"{key}.{name}" if key else name

        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{at(name)}: must be positive, got {getattr(self, name)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"{at('num_attention_heads')}: {self.num_attention_heads} is not a multiple of "
                f"{at('num_key_value_heads')} ({self.num_key_value_heads})"
            )
        if self.attention not in ("dense", "splash", "cudnn"):
            raise ConfigError(f"{at('attention')}: dense, splash or cudnn, got {self.attention!r}")
        if cast(int, self.head_dim) % 2:  # set by __post_init__
            raise ConfigError(f"{at('head_dim')}: must be even for RoPE, got {self.head_dim}")

    @property
    def num_groups(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    def replace(self, **kw) -> "LlamaConfig":
        return dataclasses.replace(self, **kw)

    def num_params(self) -> int:
        """Exact parameter count (embedding and head counted separately when untied)."""
        d, f, hd = self.hidden_size, self.intermediate_size, cast(int, self.head_dim)
        q, kv = self.num_attention_heads * hd, self.num_key_value_heads * hd
        attn = d * q + 2 * d * kv + q * d + (q + 2 * kv + d if self.attention_bias else 0)
        mlp = 3 * d * f + (2 * f + d if self.mlp_bias else 0)
        layer = attn + mlp + 2 * d
        emb = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return self.num_hidden_layers * layer + emb + d

    # ---- Hugging Face config.json -------------------------------------------------------------
    HF_KEYS = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "rms_norm_eps",
        "max_position_embeddings",
        "tie_word_embeddings",
        "attention_bias",
        "mlp_bias",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
    )

    @classmethod
    def from_hf_dict(cls, hf: dict, where: str = "config.json", **jax_options) -> "LlamaConfig":
        model_type = hf.get("model_type")
        if model_type != "llama":
            raise ConfigError(f"{where}: model_type is {model_type!r}; only 'llama' is supported")
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"{where}: hidden_act {act!r} is not supported (only 'silu')")
        if hf.get("pretraining_tp", 1) != 1:
            raise ConfigError(f"{where}: pretraining_tp must be 1")
        kw = {k: hf[k] for k in cls.HF_KEYS if k in hf and hf[k] is not None}
        for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if k not in hf:
                continue
            v = hf[k]
            if isinstance(v, list):  # several eos ids: keep the first, it is only a default
                v = v[0] if v else None
            kw[k] = v
        _check_rope_agrees(hf, where)
        rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
        theta = rope.pop("rope_theta", None) or hf.get("rope_theta", 10000.0)
        kw["rope_theta"] = float(theta)
        rope_type = rope.pop("rope_type", rope.pop("type", "default"))
        if rope_type not in ("default", "linear", "llama3"):
            raise ConfigError(
                f"{where}: rope type {rope_type!r} is not supported (default, linear, llama3)"
            )
        if rope_type != "default":
            known = {f.name for f in dataclasses.fields(RopeScaling)}
            kw["rope_scaling"] = from_dict(
                RopeScaling,
                {"rope_type": rope_type, **{k: v for k, v in rope.items() if k in known}},
                prefix=f"{where}:rope_scaling",
            )
        kw.update(jax_options)
        try:  # the keys are config.json's top-level ones: named bare after the file
            return from_dict(cls, kw)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None

    def to_hf_dict(self) -> dict:
        out: dict[str, Any] = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_act": "silu",
        }
        out.update({k: getattr(self, k) for k in self.HF_KEYS})
        rope = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling is not None and self.rope_scaling.rope_type != "default":
            r = self.rope_scaling
            rope.update(rope_type=r.rope_type, factor=r.factor)
            if r.rope_type == "llama3":
                rope.update(
                    low_freq_factor=r.low_freq_factor,
                    high_freq_factor=r.high_freq_factor,
                    original_max_position_embeddings=r.original_max_position_embeddings,
                )
        out["rope_parameters"] = rope
        out["rope_theta"] = self.rope_theta
        return out

    @classmethod
    def from_hf_file(cls, path: str | Path, **jax_options) -> "LlamaConfig":

        p = _path(path)
        if p.is_dir():
            p = p / "config.json"
        if not p.is_file():
            raise ConfigError(f"missing model config: {p}")
        try:
            hf = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p}: not valid JSON: {e}") from None
        return cls.from_hf_dict(hf, where=str(p), **jax_options)

    def write_hf_file(self, path: str | Path) -> None:

        _path(path).write_text(json.dumps(self.to_hf_dict(), indent=2) + "\n")


def tiny_config(**kw) -> LlamaConfig:
    """A few-thousand-parameter Llama for tests and the CPU smoke configs."""
    base: dict[str, Any] = dict(
        vocab_size=211,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
    )
    base.update(kw)
    return LlamaConfig(**base)


# SpiritLM teachers and the TinyWave student shape (docs/method.md).
SPIRITLM_BASE_7B = LlamaConfig()
SPIRITLM_EXPRESSIVE_7B = LlamaConfig(vocab_size=32768)
TINYWAVE_BASE_2B = LlamaConfig(num_hidden_layers=10)
TINYWAVE_EXPRESSIVE_2B = LlamaConfig(vocab_size=32768, num_hidden_layers=10)
