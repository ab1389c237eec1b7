"""Load a script of bench/ as a module (bench/ is not a package), for tests of its pure parts."""

import importlib.util
from pathlib import Path


def load_bench(name: str):
    path = Path(__file__).resolve().parent.parent / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
