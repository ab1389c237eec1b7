"""LoRA on the stacked Llama params: W_eff = W + (alpha / rank) * A @ B, for every layer at once.

Used for TinyWave's teacher correction (a short LoRA fine-tune of the teacher on target-domain
data before distillation). LoRA params mirror the base layout under "layers":

    lora["layers"]["self_attn"]["q_proj"] = {"lora_a": [L, in, r], "lora_b": [L, r, out]}

A starts random (std 1/sqrt(in), kaiming-like) and B at zero, so the initial model is the base
model exactly. `apply_lora` is pure and jit-friendly: the caller differentiates the loss of
`forward(apply_lora(params, lora, cfg), ...)` w.r.t. `lora` only; the base params are also wrapped
in stop_gradient so a joint derivative gives them exact zeros.

Memory: the effective kernels of the targeted projections are materialised (in the base dtype)
for all layers before the layer scan, and so are their cotangents in the backward pass; i.e.
about two extra copies of the targeted kernels (attention-only on a 7B in bf16: ~4.3 GB each).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from ..errors import ConfigError
from ..models.config import LlamaConfig
from ..models.llama import param_logical_axes

# Projection name -> the module holding it under params["layers"].
TARGET_MODULES = {
    "q_proj": "self_attn",
    "k_proj": "self_attn",
    "v_proj": "self_attn",
    "o_proj": "self_attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
}
LoraTarget = Literal["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """The `lora:` section: adapter rank, scale numerator and which projections get adapters."""

    rank: int = 8
    alpha: float = 16.0  # update scale is alpha / rank
    targets: tuple[LoraTarget, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def __post_init__(self):
        if isinstance(self.targets, (list, str)):
            object.__setattr__(
                self,
                "targets",
                (self.targets,) if isinstance(self.targets, str) else tuple(self.targets),
            )
        self.validate()

    def validate(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"lora.rank must be a positive integer, got {self.rank!r}")
        if (
            isinstance(self.alpha, bool)
            or not isinstance(self.alpha, (int, float))
            or not self.alpha > 0
        ):
            raise ConfigError(f"lora.alpha must be a positive number, got {self.alpha!r}")
        if not self.targets:
            raise ConfigError(f"lora.targets is empty; choose from {list(TARGET_MODULES)}")
        unknown = [t for t in self.targets if t not in TARGET_MODULES]
        if unknown:
            raise ConfigError(f"lora.targets: {unknown} not among {list(TARGET_MODULES)}")
        if len(set(self.targets)) != len(self.targets):
            raise ConfigError(f"lora.targets has duplicates: {list(self.targets)}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def _kernel(params: dict, target: str, where: str = "params"):
    module = TARGET_MODULES[target]
    try:
        kernel = params["layers"][module][target]["kernel"]
    except (KeyError, TypeError):
        raise ValueError(
            f"{where}: no layers/{module}/{target}/kernel for LoRA target {target!r}"
        ) from None
    if len(kernel.shape) != 3:
        raise ValueError(
            f"{where}: layers/{module}/{target}/kernel has shape {list(kernel.shape)}; "
            "expected stacked [layers, in, out]"
        )
    return kernel


def init_lora(
    params: dict, config: LlamaConfig, lora_cfg: LoraConfig, rng: jax.Array, dtype=jnp.float32
) -> dict:
    """Adapters for `lora_cfg.targets`: A ~ N(0, 1/in), B = 0, in `dtype` (float32 by default,
    whatever the base dtype). `params` may be abstract (ShapeDtypeStruct leaves)."""
    lora: dict = {"layers": {}}
    r = lora_cfg.rank
    for target in lora_cfg.targets:
        n_layers, n_in, n_out = _kernel(params, target).shape
        if n_layers != config.num_hidden_layers:
            raise ValueError(
                f"params: layers/{TARGET_MODULES[target]}/{target}/kernel has "
                f"{n_layers} layers, config has {config.num_hidden_layers}"
            )
        # Keyed by the target's fixed index, so adding a target leaves the others' init unchanged.
        key = jax.random.fold_in(rng, list(TARGET_MODULES).index(target))
        a = jax.random.normal(key, (n_layers, n_in, r), jnp.float32) / math.sqrt(n_in)
        lora["layers"].setdefault(TARGET_MODULES[target], {})[target] = {
            "lora_a": a.astype(dtype),
            "lora_b": jnp.zeros((n_layers, r, n_out), dtype),
        }
    return lora


def lora_delta(lora_ab: dict, scale: float) -> jax.Array:
    """scale * A @ B per layer: [L, in, out] in float32."""
    return scale * jnp.einsum(
        "lir,lro->lio", lora_ab["lora_a"].astype(jnp.float32), lora_ab["lora_b"].astype(jnp.float32)
    )


def apply_lora(
    params: dict, lora_params: dict, lora_cfg: LoraConfig, freeze_base: bool = True
) -> dict:
    """Params with W + (alpha/r) A B for each target kernel (in the kernel's dtype; the sum is
    formed in float32). Pure; use inside jit. `freeze_base` stops gradients into `params`."""
    base = jax.lax.stop_gradient(params) if freeze_base else params
    out = dict(base)
    out["layers"] = {k: dict(v) if isinstance(v, dict) else v for k, v in base["layers"].items()}
    for target in lora_cfg.targets:
        module = TARGET_MODULES[target]
        kernel = _kernel(base, target)
        try:
            ab = lora_params["layers"][module][target]
        except (KeyError, TypeError):
            raise ValueError(f"lora params: no adapter layers/{module}/{target}") from None
        proj = dict(out["layers"][module][target])
        proj["kernel"] = (kernel.astype(jnp.float32) + lora_delta(ab, lora_cfg.scale)).astype(
            kernel.dtype
        )
        out["layers"][module][target] = proj
    return out


def merge_lora(params: dict, lora_params: dict, lora_cfg: LoraConfig) -> dict:
    """A plain params tree with the adapters folded into the kernels (e.g. to save the corrected
    teacher as an ordinary model checkpoint)."""
    return apply_lora(params, lora_params, lora_cfg, freeze_base=False)


def lora_logical_axes(config: LlamaConfig, lora_cfg: LoraConfig) -> dict:
    """Logical-axis PartitionSpecs of the LoRA params, following the base kernels' axes:
    A ('layers', <kernel in-axis>, None), B ('layers', None, <kernel out-axis>); rank unsharded."""

    base = param_logical_axes(config)
    axes: dict = {"layers": {}}
    for target in lora_cfg.targets:
        module = TARGET_MODULES[target]
        layer_ax, in_ax, out_ax = tuple(base["layers"][module][target]["kernel"])
        axes["layers"].setdefault(module, {})[target] = {
            "lora_a": PartitionSpec(layer_ax, in_ax, None),
            "lora_b": PartitionSpec(layer_ax, None, out_ax),
        }
    return axes
