"""Which teacher layer each student layer is aligned to, and which layers must be tapped or copied.

A layer map is a tuple `m` with one entry per student layer: student layer `l` (0-based) is aligned to
teacher layer `m[l]`. It is given in the config (`distill.layer_map`) as
  - `"uniform"` (default): `m[l] = (l + 1) * L_t // L_s - 1`, evenly spaced and ending at the
    teacher's last layer (32 -> 10 gives 2, 5, 8, 11, 15, 18, 21, 24, 27, 31);
  - `"tinywave"`: TinyWave's map `m[l] = 3 l + 4` (32 -> 10 gives 4, 7, ..., 31);
  - an explicit list of teacher layers, one per student layer.
Every list of teacher layers, here and in `tinywave init-student --layers`, follows one rule
(`check_layer_list`): one entry per student layer, each in `[0, L_t)`, strictly increasing.
The teacher layers a student is initialised from default to the mapped ones (`"mapped"`), or an
explicit list of the same length (`distill.init_layers`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence, Union

import numpy as np

from ..errors import ConfigError

LayerMapSpec = Union[str, Sequence[int]]
PRESETS = ("uniform", "tinywave")


@dataclasses.dataclass(frozen=True)
class LayerMap:
    """A resolved, validated map. `teacher_for_student[l]` is the teacher layer aligned to student l."""

    teacher_layers_total: int
    student_layers_total: int
    teacher_for_student: tuple[int, ...]
    init_teacher_layers: tuple[int, ...]

    @property
    def pairs(self) -> tuple[tuple[int, int], ...]:
        """(student layer, teacher layer) for each aligned pair, in student order."""
        return tuple(enumerate(self.teacher_for_student))

    def taps(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(teacher layers, student layers) whose features the models must return, ascending.

        The i-th tapped student layer is aligned to the i-th tapped teacher layer (both ascending
        because the map is strictly increasing)."""
        return self.teacher_for_student, tuple(range(self.student_layers_total))


def _preset(name: str, teacher_layers: int, student_layers: int, key: str) -> list[int]:
    if name == "uniform":
        return [(l + 1) * teacher_layers // student_layers - 1 for l in range(student_layers)]
    if name == "tinywave":
        return [3 * l + 4 for l in range(student_layers)]
    raise ConfigError(
        f"{key}: unknown preset {name!r}; choose one of {list(PRESETS)} "
        "or give a list of teacher layers, one per student layer"
    )


def check_layer_list(
    layers: Sequence[int],
    teacher_layers: int | None,
    student_layers: int | None = None,
    key: str = "layers",
    what: str = "layers",
) -> tuple[int, ...]:
    """THE rule for every list of teacher layers (`init-student --layers`, `distill.layer_map`,
    `distill.init_layers`): at least one integer, each in [0, teacher_layers), strictly
    increasing (a student keeps its teacher's layer order and uses a layer at most once), and one
    per student layer when the student's depth is known. `teacher_layers=None`: depth unknown yet
    (config validation). Returns the layers as a tuple of ints; ConfigError naming `key`."""
    layers = tuple(layers)
    if not layers:
        raise ConfigError(f"{key}: no teacher layers given; the student needs at least one")
    if any(isinstance(x, bool) or not isinstance(x, (int, np.integer)) for x in layers):
        raise ConfigError(f"{key}: {what} {list(layers)} must be integers (teacher layer indices)")
    layers = tuple(int(x) for x in layers)
    if student_layers is not None and len(layers) != student_layers:
        raise ConfigError(
            f"{key}: {what} {list(layers)} has {len(layers)} entries; the student "
            f"has {student_layers} layers and needs one teacher layer for each"
        )
    bad = [x for x in layers if x < 0 or (teacher_layers is not None and x >= teacher_layers)]
    if bad:
        where = f"[0, {teacher_layers})" if teacher_layers is not None else ">= 0"
        raise ConfigError(
            f"{key}: teacher layer(s) {bad} outside {where} in {what} {list(layers)}"
            + (f" (the teacher has {teacher_layers} layers)" if teacher_layers is not None else "")
        )
    if any(b <= a for a, b in zip(layers, layers[1:])):
        raise ConfigError(
            f"{key}: {what} {list(layers)} must be strictly increasing (a student "
            "keeps its teacher's layer order and uses each layer at most once)"
        )
    return layers


def resolve_layer_map(
    spec: LayerMapSpec,
    teacher_layers: int,
    student_layers: int,
    init_layers: LayerMapSpec = "mapped",
    *,
    key: str = "distill.layer_map",
    init_key: str = "distill.init_layers",
) -> LayerMap:
    """Resolves a preset name or explicit list for the given depths; raises ConfigError naming `key`."""
    if teacher_layers < 1 or student_layers < 1:
        raise ConfigError(
            f"{key}: depths must be positive (teacher {teacher_layers}, student {student_layers})"
        )
    if student_layers > teacher_layers:
        raise ConfigError(
            f"{key}: the student ({student_layers} layers) is deeper than the teacher "
            f"({teacher_layers}); a strictly increasing map cannot exist"
        )
    if isinstance(spec, str):
        layers = _preset(spec, teacher_layers, student_layers, key)
        what = f"preset {spec!r} gives"
    else:
        layers, what = list(spec), "map"
    mapped = check_layer_list(layers, teacher_layers, student_layers, key, what)
    if isinstance(init_layers, str):
        if init_layers != "mapped":
            raise ConfigError(f"{init_key}: {init_layers!r} is not 'mapped' or a list of layers")
        init = mapped
    else:
        init = check_layer_list(
            init_layers, teacher_layers, student_layers, init_key, "init layers"
        )
    return LayerMap(teacher_layers, student_layers, mapped, init)


def check_layer_map_spec(spec: LayerMapSpec, key: str = "distill.layer_map") -> None:
    """Depth-independent checks, for config validation before the model depths are known."""
    if isinstance(spec, str):
        if spec not in PRESETS:
            _preset(spec, 1, 1, key)  # raises with the list of presets
        return
    check_layer_list(spec, None, None, key, "map")
