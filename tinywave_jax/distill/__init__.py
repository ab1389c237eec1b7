"""Layer-aligned distillation losses (pure JAX functions on model features) and the layer map.

- `losses`: chunked cross-entropy and temperature logit KL from hidden states + LM-head kernel,
  hidden-state alignment (1 - cosine or MSE, optional learned width projector).
- `attention_kl`: KL(teacher attention || student attention), blockwise, O(T x block) memory.
- `objective`: `DistillLossConfig` (the `distill:` section), `METRICS` (every term's normaliser and
  weight, declared once), `loss_terms` as (sum, count) and `distill_loss`, the weighted sum.
- `layer_map`: which teacher layer each student layer is aligned to / initialised from.
"""

from .attention_kl import attention_kl, head_groups
from .layer_map import LayerMap, check_layer_map_spec, resolve_layer_map
from .losses import (
    chunked_cross_entropy,
    chunked_logit_losses,
    hidden_alignment,
    init_hidden_projector,
)
from .objective import DistillLossConfig, LossWeights, distill_loss

__all__ = [
    "DistillLossConfig",
    "LayerMap",
    "LossWeights",
    "attention_kl",
    "check_layer_map_spec",
    "chunked_cross_entropy",
    "chunked_logit_losses",
    "distill_loss",
    "head_groups",
    "hidden_alignment",
    "init_hidden_projector",
    "resolve_layer_map",
]
