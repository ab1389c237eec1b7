"""Test setup: 8 simulated CPU devices for sharding tests, float32 matmuls at full precision, and
a persistent XLA compilation cache: the same tiny programs (model init, train steps) are compiled by
many tests and by CLI subprocesses (which inherit JAX_COMPILATION_CACHE_DIR); on 2 CPU cores each
compile costs seconds, a cache hit milliseconds. Results are identical either way."""

import os
import tempfile

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "tinywave_jax_test_xla_cache")
)

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
