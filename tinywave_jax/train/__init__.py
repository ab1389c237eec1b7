"""Training: the distillation train step and loop, optimiser, LoRA."""
