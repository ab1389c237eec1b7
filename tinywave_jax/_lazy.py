"""Lazy re-exports for package `__init__`s, so `tinywave --help` never pays for jax, grain or TFDS."""

from __future__ import annotations

import importlib


def lazy_exports(package: str, modules: dict[str, list[str]]):
    """(`__getattr__`, `__all__`) exporting each name from `package.<module>` on first use."""
    where = {name: mod for mod, names in modules.items() for name in names}

    def __getattr__(name: str):
        if name in where:
            return getattr(importlib.import_module(f".{where[name]}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, sorted(where)
