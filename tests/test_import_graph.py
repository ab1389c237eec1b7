"""The package's import graph, read from the source (ast; nothing is imported): argparse only in
command modules, library modules import at the top, and the layering the architecture states."""

import ast
import os
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tinywave_jax"
COMMAND_FILES = {"commands.py", "cli.py", "flags.py"}  # the CLI layer


def _library_modules():
    """(path relative to the package, parsed tree) of every library module (demo/ aside: an
    application on the library, issue 28)."""
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if path.name not in COMMAND_FILES and not rel.startswith("demo/"):
            yield rel, ast.parse(path.read_text())


def _imports(tree):
    """(import node, inside a function) for every import statement of a module."""
    out = []

    def walk(node, in_fn):
        for ch in ast.iter_child_nodes(node):
            if isinstance(ch, (ast.Import, ast.ImportFrom)):
                out.append((ch, in_fn))
            walk(ch, in_fn or isinstance(ch, (ast.FunctionDef, ast.AsyncFunctionDef)))

    walk(tree, False)
    return out


def _targets(rel: str, node) -> list[str]:
    """Dotted names an import statement of module `rel` reaches (relative ones resolved)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not node.level:
        return [node.module]
    base = ["tinywave_jax", *rel.split("/")[:-1]]
    base = base[: len(base) - (node.level - 1)]
    mod = ".".join(base + ([node.module] if node.module else []))
    return [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]


def test_argparse_only_in_command_modules():
    users = [
        rel
        for rel, tree in _library_modules()
        for node, _ in _imports(tree)
        if any(t.split(".")[0] == "argparse" for t in _targets(rel, node))
    ]
    assert users == []


def test_library_modules_import_at_the_top():
    """Function-level imports (heavy optional extras, an import cycle, jax in tpu.py) stay
    under 10 % of the top-level ones, the issue's target."""
    top = inner = 0
    for _, tree in _library_modules():
        for _, in_fn in _imports(tree):
            inner += in_fn
            top += not in_fn
    assert inner <= 0.10 * top, (inner, top)


def test_layering():
    """No library module imports the demo (command modules included: test_demo_stays_apart);
    convert/ (formats) imports neither eval/ nor train/."""
    for rel, tree in _library_modules():
        for node, _ in _imports(tree):
            for target in _targets(rel, node):
                assert not target.startswith("tinywave_jax.demo"), (rel, target)
                if rel.startswith("convert/"):
                    assert not target.startswith(("tinywave_jax.eval", "tinywave_jax.train")), (
                        rel,
                        target,
                    )


def test_demo_stays_apart():
    """No module outside demo/ imports it, command modules included: only cli.py's lazy loader
    names it (as a string), so the library works without the demo."""
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("demo/") or rel == "cli.py":
            continue
        for node, _ in _imports(ast.parse(path.read_text())):
            for target in _targets(rel, node):
                assert not target.startswith("tinywave_jax.demo"), (rel, target)


def test_help_loads_no_jax_or_scipy():
    """`tinywave --help` builds every command's parser without jax, flax, orbax, scipy or torch
    (each parser's module imports only what it needs to describe its flags)."""
    code = (
        "import sys\n"
        "from tinywave_jax import cli\n"
        "try:\n"
        "    cli.main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('jax', 'flax', 'orbax', 'optax', 'scipy', 'torch', 'soundfile')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent), "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout[-500:]
