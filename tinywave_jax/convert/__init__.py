"""Hugging Face <-> tinywave conversion (`tinywave import-hf` / `export-hf`).

The name/shape mapping lives in `hf_names`; `hf_import` and `hf_export` use it both ways.
Attributes are imported lazily so `tinywave --help` does not pull in numpy-heavy modules.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "import_hf": "hf_import", "hf_state_to_params": "hf_import", "HFWeights": "hf_import",
    "export_hf": "hf_export", "params_to_hf_state": "hf_export", "write_hf_dir": "hf_export",
    "ConversionError": "hf_names", "tensor_maps": "hf_names", "param_shapes": "hf_names",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
