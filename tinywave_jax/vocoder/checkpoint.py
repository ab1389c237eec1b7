"""Vocoder folders, and importing a PyTorch CodeHiFiGAN (SpiritLM / speech-resynthesis / fairseq).

    VOC/config.json       the generator config in speech-resynthesis's keys (config.py)
    VOC/tinywave.json     format, creation time, package version, parameter count, provenance,
                          and the sha256 and size of every params/ file (as model checkpoints)
    VOC/params/params.safetensors   float32 tensors named by Flax path ('ups_0.kernel', ...)

Written atomically (outputs.atomic_output_dir); loads check the recorded hashes first.

Import: the checkpoint is read with torch.load(weights_only=True) (no code runs from it); the
state dict is `checkpoint["generator"]` (speech-resynthesis / SpiritLM's generator.pt) or the
checkpoint itself. Weight-normed convolutions (weight_g / weight_v, or the newer
parametrizations.weight.original0 / original1) are folded into plain kernels; every tensor the
config implies must be present with its shape and every tensor present must be used, else the
import fails naming them (and the config field that sizes them) before anything is written.
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

import numpy as np

from .. import __version__
from ..checkpoint import HASHES_KEY, SIZES_KEY, hash_params, verify_params
from ..convert.safetensors_io import load_file, save_file
from ..errors import ConversionError, InputError, MissingInputError
from ..outputs import atomic_output_dir
from ..storage import sha256_file
from .config import TRAINING_KEYS, VocoderConfig
from .model import param_shapes

FORMAT = "tinywave-vocoder"
FORMAT_VERSION = 1
INFO_FILE = "tinywave.json"
PARAMS_FILE = "params/params.safetensors"

# The config fields that size each top-level module's tensors (named when a shape differs).
FIELDS = {
    "dict": "num_embeddings, embedding_dim",
    "f0_dict": "num_f0_tokens, embedding_dim",
    "style_dict": "num_style_tokens, embedding_dim",
    "spkr": "multispkr, num_speakers, embedding_dim",
    "style": "multistyle, num_styles, embedding_dim",
    "dur_predictor": "dur_predictor_params",
    "conv_pre": "model_in_dim, upsample_initial_channel",
    "ups": "upsample_rates, upsample_kernel_sizes, upsample_initial_channel",
    "resblocks": "upsample_rates, resblock_kernel_sizes, resblock_dilation_sizes",
    "conv_post": "upsample_rates, upsample_initial_channel",
}
_WEIGHT_NORM = (
    ("weight_g", "weight_v"),
    ("parametrizations.weight.original0", "parametrizations.weight.original1"),
)


def _flat(tree: dict, prefix: tuple = ()) -> dict[tuple, object]:
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, prefix + (k,)) if isinstance(v, dict) else {prefix + (k,): v})
    return out


def _unflat(flat: dict[tuple, object]) -> dict:
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return tree


def torch_module_name(path: tuple[str, ...]) -> str:
    """The PyTorch module of a Flax param path: ('resblocks_4', 'convs1_0', 'kernel') ->
    'resblocks.4.convs1.0'; the duration predictor's convs sit in nn.Sequential (index 0)."""
    parts: list[str] = []
    for p in path[:-1]:
        m = re.fullmatch(r"(.+)_(\d+)", p)
        parts += [m[1], m[2]] if m else [p]
    if parts[0] == "dur_predictor" and parts[-1] in ("conv1", "conv2"):
        parts.append("0")
    return ".".join(parts)


def fold_weight_norm(g: np.ndarray, v: np.ndarray) -> np.ndarray:
    """torch weight_norm's weight: g * v / ||v||, the norm over every axis where g has size 1."""
    g64, v64 = g.astype(np.float64), v.astype(np.float64)
    axes = tuple(i for i in range(v.ndim) if g64.ndim == 0 or g64.shape[i] == 1)
    return (g64 * v64 / np.sqrt(np.sum(v64 * v64, axis=axes, keepdims=True))).astype(np.float32)


def _torch_weight(sd: dict, module: str, used: set) -> np.ndarray | None:
    """A module's weight, weight norm folded; None when absent."""
    if f"{module}.weight" in sd:
        used.add(f"{module}.weight")
        return sd[f"{module}.weight"]
    for g, v in _WEIGHT_NORM:
        if f"{module}.{g}" in sd and f"{module}.{v}" in sd:
            used.update((f"{module}.{g}", f"{module}.{v}"))
            return fold_weight_norm(sd[f"{module}.{g}"], sd[f"{module}.{v}"])
    return None


def _to_flax(path: tuple[str, ...], w: np.ndarray) -> np.ndarray:
    if path[-1] != "kernel":
        return w
    if w.ndim == 2:  # nn.Linear (out, in)
        return w.T
    if path[0].startswith("ups_"):  # ConvTranspose1d (in, out, k)
        return w.transpose(2, 0, 1)
    return w.transpose(2, 1, 0)  # Conv1d (out, in, k)


def map_state_dict(sd: dict[str, np.ndarray], config: VocoderConfig, where: str) -> dict:
    """The Flax params tree from a PyTorch CodeHiFiGAN state dict (numpy values). Raises
    ConversionError naming every missing, extra or misshapen tensor first."""

    expected = _flat(param_shapes(config))
    params, used, problems = {}, set(), []
    for path, shape in expected.items():
        module = torch_module_name(path)
        field = FIELDS[re.sub(r"_\d+$", "", path[0])]
        if path[-1] == "bias":
            name = f"{module}.bias"
            w = sd.get(name)
            used.add(name)
        else:
            name = f"{module}.weight"
            w = _torch_weight(sd, module, used)
        if w is None:
            problems.append(f"missing tensor {name} (config fields: {field})")
            continue
        w = _to_flax(path, np.asarray(w, np.float32))
        if w.shape != tuple(shape.shape):
            problems.append(
                f"tensor {name} has shape {list(_to_torch_shape(path, w.shape))}, the config "
                f"implies {list(_to_torch_shape(path, shape.shape))} (config fields: {field})"
            )
            continue
        params[path] = w
    extra = sorted(set(sd) - used)
    if extra:
        problems.append(
            f"{len(extra)} tensor(s) the config does not use: {', '.join(extra[:8])}"
            + (" ..." if len(extra) > 8 else "")
            + " (a feature the config leaves off: multispkr, multistyle, num_f0_tokens, "
            "num_style_tokens, dur_predictor_params?)"
        )
    if problems:
        raise ConversionError(f"{where}: " + "; ".join(problems))
    return _unflat(params)


def _to_torch_shape(path, shape):
    """A Flax kernel shape in the PyTorch layout (for messages)."""
    return _to_flax(path, np.empty(shape, np.uint8)).shape if path[-1] == "kernel" else shape


def read_torch_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The generator state dict of a .pt file as float32 numpy arrays (weights_only load)."""
    import torch  # the torch extra

    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: generator checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused, truncated zip, not a torch file ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: not a readable PyTorch checkpoint ({first})") from None
    sd = ckpt.get("generator", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not sd:
        raise InputError(f"{path}: expected a state dict, or a dict with a 'generator' state dict")
    out = {}
    for name, t in sd.items():
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise InputError(f"{path}: entry {name!r} is not a floating-point tensor")
        out[name] = t.detach().to(torch.float32).numpy()
    return out


def num_params(params: dict) -> int:
    return int(sum(np.asarray(v).size for v in _flat(params).values()))


def save_vocoder(
    out_dir: str | Path,
    config: VocoderConfig,
    params: dict,
    provenance: dict | None = None,
    overwrite: bool = False,
    sources=(),
) -> Path:
    """Writes a vocoder folder atomically; `sources`: inputs the folder must be apart from."""

    flat = {".".join(p): np.asarray(v, np.float32) for p, v in _flat(params).items()}
    with atomic_output_dir(out_dir, overwrite, sources) as tmp:
        (tmp / "params").mkdir()
        save_file(flat, tmp / PARAMS_FILE)
        (tmp / "config.json").write_text(json.dumps(config.to_json_dict(), indent=2) + "\n")
        info = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "package_version": __version__,
            "dtype": "float32",
            "num_params": num_params(params),
            "provenance": provenance or {},
        }
        info[HASHES_KEY], info[SIZES_KEY] = hash_params(tmp / "params")
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return Path(out_dir)


def load_vocoder(voc_dir: str | Path, verify: bool = True) -> tuple[VocoderConfig, dict, dict]:
    """(config, params, info) of a vocoder folder; params/ checked against its hashes first."""

    voc_dir = Path(voc_dir)
    info_path = voc_dir / INFO_FILE
    if not info_path.is_file():
        raise MissingInputError(
            f"{voc_dir}: not a tinywave vocoder folder (no {INFO_FILE}; "
            "`tinywave import-vocoder` makes one from a generator.pt)"
        )
    try:
        info = json.loads(info_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{info_path}: not readable JSON ({e})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise InputError(f"{info_path}: not a tinywave vocoder (format {FORMAT!r} expected)")
    if verify:
        verify_params(voc_dir, info)
    config, _ = VocoderConfig.from_file(voc_dir / "config.json")
    stored = {tuple(k.split(".")): np.array(v) for k, v in load_file(voc_dir / PARAMS_FILE).items()}
    expected = {p: tuple(s.shape) for p, s in _flat(param_shapes(config)).items()}
    wrong = sorted(
        ".".join(p)
        for p in set(expected) | set(stored)
        if expected.get(p) != getattr(stored.get(p), "shape", None)
    )
    if wrong:
        raise ConversionError(
            f"{voc_dir / PARAMS_FILE}: tensor(s) {', '.join(wrong[:8])} missing, extra or of "
            "another shape than config.json implies"
        )
    return config, _unflat(stored), info


def import_vocoder(
    generator: str | Path,
    config_path: str | Path,
    out_dir: str | Path,
    overwrite: bool = False,
    allow_unknown_keys: bool = False,
) -> tuple[Path, VocoderConfig, dict]:
    """Converts a PyTorch CodeHiFiGAN (generator.pt + config.json) into a vocoder folder; every
    check (config fields, tensor names and shapes) passes before anything is written."""
    generator, config_path = Path(generator), Path(config_path)
    config, unknown = VocoderConfig.from_file(config_path, allow_unknown=allow_unknown_keys)
    sd = read_torch_state_dict(generator)
    params = map_state_dict(sd, config, where=str(generator))
    raw = json.loads(config_path.read_text())
    provenance = {
        "source": "pytorch CodeHiFiGAN (speech-resynthesis / SpiritLM generator.pt)",
        "generator": str(generator.resolve()),
        "generator_sha256": sha256_file(generator),
        "config": str(config_path.resolve()),
        "config_sha256": sha256_file(config_path),
        "weight_norm_folded": sum(
            name.endswith("weight_g") or name.endswith("original0") for name in sd
        ),
        "ignored_training_keys": sorted(set(raw) & TRAINING_KEYS),
        "ignored_unknown_keys": unknown,
    }
    out = save_vocoder(
        out_dir, config, params, provenance, overwrite, sources=[generator, config_path]
    )
    return out, config, params
