"""Hugging Face Llama folder -> tinywave params / model checkpoint.

Weights are read tensor by tensor from memory-mapped files (safetensors via our own reader,
`.bin` via `torch.load(weights_only=True, mmap=True)`, which cannot run code) and copied into
preallocated stacked arrays of the target dtype, so the host never holds two full copies.
"""

from __future__ import annotations

import json
import pickle
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import ml_dtypes
import numpy as np

from .. import storage
from ..checkpoint import save_model
from ..errors import ConfigError, ConversionError, MissingInputError
from ..models.config import LlamaConfig
from ..models.param_layout import flatten, get_path, param_shapes, set_path, tensor_maps
from ..outputs import check_output_dir, check_remote_complete
from .safetensors_io import SafetensorsFile

# Looked for in this order, like transformers: (listing file, kind).
WEIGHT_LAYOUTS = (
    ("model.safetensors.index.json", "safetensors"),
    ("model.safetensors", "safetensors"),
    ("pytorch_model.bin.index.json", "bin"),
    ("pytorch_model.bin", "bin"),
)
PARAM_DTYPES = ("float32", "bfloat16")
_FLOAT_SOURCES = {np.dtype(t) for t in (np.float16, np.float32, np.float64, ml_dtypes.bfloat16)}

# HF buffers that are not parameters (older checkpoints saved the RoPE table).
_NON_PARAMETERS = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")

# progress(tensors_done, tensors_total, bytes_done, bytes_total)
Progress = Callable[[int, int, int, int], None]


def is_ignored(hf_name: str, config: LlamaConfig) -> bool:
    """HF tensors that are not parameters of our model and are skipped on import."""
    if _NON_PARAMETERS.fullmatch(hf_name):
        return True
    return config.tie_word_embeddings and hf_name == "lm_head.weight"


def to_numpy(x) -> np.ndarray:
    """A numpy view of a numpy/torch/jax array (torch bfloat16 becomes ml_dtypes.bfloat16)."""
    if isinstance(x, np.ndarray):
        return x
    if type(x).__module__.startswith("torch"):
        import torch  # the torch extra

        x = x.detach()
        if x.dtype == torch.bfloat16:
            return x.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return x.numpy()
    return np.asarray(x)


def _load_bin(path: Path) -> dict:
    import torch  # the torch extra

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError) as e:
        raise ConversionError(
            f"{path}: cannot read as a torch state dict (weights only): {str(e).splitlines()[0]}"
        ) from None
    if not isinstance(state, Mapping):
        raise ConversionError(f"{path}: holds a {type(state).__name__}, not a state dict")
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ConversionError(
                f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor"
            )
    return dict(state)


class HFWeights(Mapping):
    """The tensors of a Hugging Face model folder by name, memory-mapped, in file order.

    `origin(name)` is the file holding a tensor; `listing` is the file that names the tensors
    (the index, or the single weight file)."""

    def __init__(self, hf_dir: str | Path):
        hf_dir = Path(hf_dir)
        for listing, kind in WEIGHT_LAYOUTS:  # noqa: B007 (the match is used after the loop)
            if (hf_dir / listing).is_file():
                break
        else:
            raise MissingInputError(
                f"{hf_dir}: no weights found (looked for "
                f"{', '.join(name for name, _ in WEIGHT_LAYOUTS)})"
            )
        self.listing = hf_dir / listing
        weight_map = self._read_index(self.listing) if listing.endswith(".index.json") else {}
        files = list(dict.fromkeys(weight_map.values())) if weight_map else [listing]
        self.files: list[Path] = []
        self._tensors: dict[str, tuple[Path, Mapping]] = {}
        for fname in files:
            path = hf_dir / fname
            if not path.is_file():
                example = next(n for n, f in weight_map.items() if f == fname)
                raise MissingInputError(
                    f"{self.listing}: weight file {fname} (holding tensor {example!r}) not found"
                )
            content = SafetensorsFile(path) if kind == "safetensors" else _load_bin(path)
            self.files.append(path)
            for name in content:
                if name in self._tensors:
                    raise ConversionError(
                        f"{path}: tensor {name!r} is also in {self._tensors[name][0]}"
                    )
                self._tensors[name] = (path, content)
        for name, fname in weight_map.items():
            if name not in self._tensors or self._tensors[name][0].name != fname:
                raise ConversionError(
                    f"{self.listing}: tensor {name!r} is mapped to {fname}, which does not hold it"
                )

    @staticmethod
    def _read_index(path: Path) -> dict[str, str]:
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ConversionError(
                f"{path}: not a valid weight index (needs a 'weight_map' object): {e!r}"
            ) from None
        if not isinstance(weight_map, dict) or not all(
            isinstance(v, str) and "/" not in v for v in weight_map.values()
        ):
            raise ConversionError(f"{path}: 'weight_map' must map tensor names to file names")
        return weight_map

    def origin(self, name: str) -> str:
        return str(self._tensors[name][0])

    def __getitem__(self, name: str) -> np.ndarray:
        path, content = self._tensors[name]
        return to_numpy(content[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


def hf_state_to_params(
    state: Mapping,
    config: LlamaConfig,
    dtype="float32",
    progress: Progress | None = None,
    where: str = "state dict",
) -> dict:
    """HF-named tensors (numpy/torch arrays, or an HFWeights) -> tinywave params of `dtype`.

    Checks every name and shape before allocating; each target array is preallocated once and
    filled slice by slice from the (memory-mapped) sources."""
    origin = state.origin if isinstance(state, HFWeights) else (lambda name: where)
    listing = str(state.listing) if isinstance(state, HFWeights) else where
    maps = {m.hf_name: m for m in tensor_maps(config)}
    for name in state:
        if name not in maps and not is_ignored(name, config):
            raise ConversionError(
                f"{origin(name)}: unexpected tensor {name!r} (not a parameter "
                "of the Llama model described by config.json)"
            )
    for name in maps:
        if name not in state:
            raise ConversionError(f"{listing}: missing tensor {name!r}")
    total_bytes = 0
    for name, m in maps.items():
        src = state[name]
        if tuple(src.shape) != m.hf_shape:
            raise ConversionError(
                f"{origin(name)}: tensor {name!r} has shape "
                f"{list(src.shape)}, config.json implies {list(m.hf_shape)}"
            )
        src_dtype = to_numpy(src).dtype
        if src_dtype not in _FLOAT_SOURCES:
            raise ConversionError(
                f"{origin(name)}: tensor {name!r} has dtype {src_dtype}, "
                "expected a floating-point type"
            )
        total_bytes += int(np.prod(m.hf_shape)) * src_dtype.itemsize

    dtype = np.dtype(dtype)
    params: dict = {}
    for path, shape in flatten(param_shapes(config)).items():
        set_path(params, path, np.empty(shape, dtype))  # filled exactly once below
    order = [name for name in state if name in maps]  # file order: sequential reads
    done_bytes = 0
    for i, name in enumerate(order):
        m, src = maps[name], to_numpy(state[name])
        dst = get_path(params, m.path)
        if m.layer is not None:
            dst = dst[m.layer]
        dst[...] = src.T if m.transpose else src
        done_bytes += src.nbytes
        if progress is not None:
            progress(i + 1, len(order), done_bytes, total_bytes)
    return params


def import_hf(
    hf_dir: str | Path,
    out_dir: str | Path,
    dtype: str = "float32",
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Converts a Hugging Face Llama folder into a tinywave model checkpoint at `out_dir`."""

    if dtype not in PARAM_DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not one of {list(PARAM_DTYPES)}")
    storage.check_gcs(hf_dir, what="Hugging Face model folder")
    storage.check_gcs(storage.path(out_dir).parent, write=True, what="output folder in")
    source = storage.path(hf_dir)
    if not source.is_dir():
        raise MissingInputError(f"Hugging Face model folder not found: {hf_dir}")
    check_remote_complete(source, "Hugging Face model folder")
    check_output_dir(out_dir, overwrite, sources=[hf_dir])  # fail before the long conversion
    if storage.is_remote(source):
        # safetensors are memory-mapped: a gs:// folder is read from a local copy (in TMPDIR)
        prefix = "tinywave-import-hf-"  # a killed import's copy is removed by the next one
        storage.remove_dead_temps(Path(tempfile.gettempdir()), prefix)
        with tempfile.TemporaryDirectory(prefix=f"{prefix}{storage.temp_tag()}-") as local:
            storage.copy_tree(source, local)
            with storage.reported_as(local, source):  # errors name the user's path
                return _import(
                    Path(local), str(source), out_dir, dtype, overwrite, progress, source
                )
    return _import(source, str(source.resolve()), out_dir, dtype, overwrite, progress, source)


def _import(hf_dir: Path, source_name: str, out_dir, dtype, overwrite, progress, source) -> Path:

    config = LlamaConfig.from_hf_file(hf_dir / "config.json")
    weights = HFWeights(hf_dir)
    params = hf_state_to_params(weights, config, dtype, progress=progress)
    provenance = {
        "source": "huggingface",
        "source_dir": source_name,
        "source_weights": [p.name for p in weights.files],
        "source_dtypes": sorted({str(weights[name].dtype) for name in weights}),
    }
    return save_model(
        out_dir,
        params,
        config.replace(param_dtype=dtype),
        provenance=provenance,
        overwrite=overwrite,
        tokenizer_dir=hf_dir,
        sources=[source],
    )
