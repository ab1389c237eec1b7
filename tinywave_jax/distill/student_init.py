"""Building a student: a subset of the teacher's layers (TinyWave's init) or a random model.

The student keeps the teacher's width, embeddings, final norm and LM head; its decoder layers are
the chosen teacher layers (strictly increasing: `layer_map.check_layer_list`). Params are stacked
over layers, so the student is the teacher's non-layer leaves (shared, not copied) plus each
stacked layer leaf indexed by the chosen rows: only the student's layers are copied (1/3 of a 7B
teacher for TinyWave), never a second full teacher.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Sequence, Union

import jax
import numpy as np

from ..config import from_dict
from ..errors import ConfigError, MissingInputError
from ..models import llama
from ..models.config import LlamaConfig
from ..storage import path as _path
from .layer_map import check_layer_list

ShapeSpec = Union[LlamaConfig, dict, str, Path]


def init_student_from_teacher(
    teacher_params: dict, teacher_config: LlamaConfig, layers: Sequence[int], key: str = "layers"
) -> tuple[dict, LlamaConfig]:
    """(student params, student config): the teacher with only `layers` kept, in that order.

    Works on numpy or jax arrays (also sharded ones); non-layer leaves are the teacher's own
    objects. `key` names the option in error messages (e.g. "--layers")."""
    layers = check_layer_list(layers, teacher_config.num_hidden_layers, None, key)
    if "layers" not in teacher_params:
        raise ConfigError("teacher params have no 'layers' subtree (not the tinywave layout)")
    rows = np.asarray(layers, dtype=np.int32)

    def take(path, leaf):
        if np.shape(leaf)[:1] != (teacher_config.num_hidden_layers,):
            raise ConfigError(
                f"teacher parameter layers/{path} has shape {list(np.shape(leaf))}; "
                f"expected a leading axis of {teacher_config.num_hidden_layers} layers"
            )
        return leaf[rows]

    def walk(tree, prefix=""):
        return {
            k: walk(v, f"{prefix}{k}/") if isinstance(v, dict) else take(prefix + k, v)
            for k, v in tree.items()
        }

    student = dict(teacher_params)
    student["layers"] = walk(teacher_params["layers"])
    return student, teacher_config.replace(num_hidden_layers=len(layers))


def student_config_from(spec: ShapeSpec) -> LlamaConfig:
    """A LlamaConfig from a config, an HF config.json path / dict (has `model_type`), or a dict
    of LlamaConfig fields (errors name `model.<key>`)."""
    if isinstance(spec, LlamaConfig):
        return spec
    if isinstance(spec, (str, Path)):
        path = _path(spec)
        if not path.is_file() and not (path / "config.json").is_file():
            raise MissingInputError(f"student config not found: {path}")
        file = path / "config.json" if path.is_dir() else path
        try:
            data = json.loads(file.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{file}: not valid JSON: {e}") from None
        if "model_type" in data:
            return LlamaConfig.from_hf_file(path)
        return from_dict(LlamaConfig, data, prefix="model")
    if isinstance(spec, dict):
        if "model_type" in spec:
            return LlamaConfig.from_hf_dict(spec, where="student config")
        return from_dict(LlamaConfig, spec, prefix="model")
    raise TypeError(f"expected a LlamaConfig, dict or path, got {type(spec).__name__}")


def random_student(config_or_shape: ShapeSpec, rng: Any) -> tuple[dict, LlamaConfig]:
    """(params, config) of a randomly initialised model (HF's init) of the given shape: the
    "trained without distillation" baseline. `rng` is a jax key or an int seed."""

    config = student_config_from(config_or_shape)
    if isinstance(rng, int):
        rng = jax.random.key(rng)
    return _jitted_init()(config, rng), config


@functools.cache
def _jitted_init():
    """One jitted init for the process: the eager init runs the layer scan op by op (measured
    16 s vs 3 s for a tiny model), and one wrapper keeps the compile cache across calls."""

    return jax.jit(llama.init_params, static_argnums=0)
