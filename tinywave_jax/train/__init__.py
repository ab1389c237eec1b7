"""Training: `tinywave distill` (teacher -> student) and `tinywave train` (CE fine-tuning, full or LoRA).

config.py   typed run configs (DistillConfig, TrainConfig)
session.py  models, layer map, shardings, optimizer and compiled step of a run
state.py    TrainState, AdamW + warmup/cosine, state shardings
step.py     the jitted, sharded, donated train step with gradient accumulation
loop.py     data -> steps -> metrics, orbax checkpoints, resume, final export
metrics.py  model FLOPs / MFU, JSONL + TensorBoard writer, progress line
data.py     batch sources (synthetic documents or the grain corpus pipeline)
lora.py     LoRA adapters on the stacked Llama params
"""
