"""Training: `tinywave distill` (teacher -> student) and `tinywave train` (CE fine-tuning, full or LoRA).

config.py   typed run configs (DistillConfig, TrainConfig)
recipes.py  what each kind of run trains, freezes, computes and exports; prepare(cfg)
session.py  a recipe on a mesh: shardings, optimizer, compiled step, train state
state.py    TrainState, AdamW + warmup/cosine, state shardings
step.py     the jitted, sharded, donated train step with gradient accumulation
loop.py     data -> steps -> metrics, checkpoints, final export
resume.py   the resume checkpoint: state + data iterator state + meta (orbax)
metrics.py  model FLOPs / MFU, JSONL + TensorBoard writer, progress line
data.py     batch sources (synthetic documents or the grain corpus pipeline)
lora.py     LoRA adapters on the stacked Llama params
api.py      Python entry points: distill(config), train(config) (the CLI's code path)
"""

from .._lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {"api": ["distill", "train", "load_run_config"]})
