"""Llama-family decoders (teacher and student share one implementation)."""
from .config import LlamaConfig, RopeScaling, tiny_config  # noqa: F401
