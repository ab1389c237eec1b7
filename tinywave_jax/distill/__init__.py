"""Layer-aligned distillation losses (pure JAX functions on model features) and the layer map.

- `losses`: chunked cross-entropy, temperature logit KL and top-k logit KL (`teacher_topk`,
  `chunked_topk_losses`) from hidden states + LM-head kernel,
  hidden-state alignment (1 - cosine or MSE, optional learned width projector).
- `attention_kl`: KL(teacher attention || student attention), blockwise, O(T x block) memory.
- `terms`: every loss term declared once (`Term`: weight, metrics and their normalisers, the
  student/teacher features it needs, its pure (sum, count) function); `register_term` adds a
  user's own, selected with `distill.terms.<name>: weight`.
- `objective`: `DistillLossConfig` (the `distill:` section), the active terms and what they need,
  `loss_terms` as (sum, count) and `distill_loss`, the weighted sum.
- `layer_map`: which teacher layer each student layer is aligned to / initialised from.
"""

from .._lazy import lazy_exports

# lazily, so that `tinywave --help` (distill/commands.py lives in this package) loads no jax;
# the function attention_kl is not re-exported: its module's name would shadow it once imported
__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "attention_kl": ["head_groups"],
        "layer_map": ["LayerMap", "check_layer_map_spec", "resolve_layer_map"],
        "losses": [
            "chunked_cross_entropy",
            "chunked_logit_losses",
            "hidden_alignment",
            "init_hidden_projector",
        ],
        "objective": ["DistillLossConfig", "LossWeights", "distill_loss"],
        "terms": ["Features", "Metric", "Term", "TermInputs", "TermSum", "register_term"],
    },
)
