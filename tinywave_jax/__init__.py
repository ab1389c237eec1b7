"""tinywave_jax: layer-aligned distillation of speech language models (SpiritLM -> TinyWave) in JAX."""

__version__ = "0.1.0"
