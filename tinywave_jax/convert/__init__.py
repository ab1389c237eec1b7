"""Hugging Face <-> tinywave conversion (`tinywave import-hf` / `export-hf`), and GGUF for llama.cpp
(`tinywave export-gguf`; running and scoring a GGUF file: `eval/gguf_run.py`).

The name/shape table lives in `models/param_layout.py`; `hf_import` and `hf_export` use it both
ways.
Attributes are imported lazily so `tinywave --help` does not pull in numpy-heavy modules.
"""

from __future__ import annotations

from .._lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "hf_import": ["import_hf", "hf_state_to_params", "HFWeights"],
        "hf_export": ["export_hf", "params_to_hf_state", "write_hf_dir"],
        "gguf_export": ["export_gguf", "write_gguf"],
    },
)
