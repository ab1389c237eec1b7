"""Llama-family decoders (teacher and student share one implementation)."""

from .config import LlamaConfig, RopeScaling, tiny_config

__all__ = ["LlamaConfig", "RopeScaling", "tiny_config"]
