"""Layer map presets, explicit maps, init layers, taps, and the errors for invalid maps."""

import pytest

from tinywave_jax.config import load_config
from tinywave_jax.distill import DistillLossConfig, check_layer_map_spec, resolve_layer_map
from tinywave_jax.errors import ConfigError


def test_tinywave_preset_is_3l_plus_4():
    m = resolve_layer_map("tinywave", 32, 10)
    assert m.teacher_for_student == (4, 7, 10, 13, 16, 19, 22, 25, 28, 31)
    assert m.pairs[0] == (0, 4) and m.pairs[-1] == (9, 31)
    assert m.init_teacher_layers == m.teacher_for_student
    assert m.taps() == ((4, 7, 10, 13, 16, 19, 22, 25, 28, 31), tuple(range(10)))


@pytest.mark.parametrize("teacher,student", [(32, 10), (32, 8), (24, 24), (7, 3), (5, 1), (33, 4)])
def test_uniform_default_is_evenly_spread_and_ends_at_the_last_layer(teacher, student):
    layers = resolve_layer_map("uniform", teacher, student).teacher_for_student
    assert len(layers) == student and layers[-1] == teacher - 1
    assert all(b > a for a, b in zip(layers, layers[1:])) and layers[0] >= 0
    gaps = [b - a for a, b in zip((-1,) + layers, layers)]
    assert max(gaps) - min(gaps) <= 1  # as even as integer spacing allows
    if teacher % student == 0:  # exact multiples: every k-th layer
        k = teacher // student
        assert layers == tuple(range(k - 1, teacher, k))


def test_uniform_32_to_10():
    assert resolve_layer_map("uniform", 32, 10).teacher_for_student == (
        2,
        5,
        8,
        11,
        15,
        18,
        21,
        24,
        27,
        31,
    )


def test_explicit_map_and_init_layers():
    m = resolve_layer_map([0, 5, 9], 10, 3, init_layers=[1, 2, 3])
    assert m.teacher_for_student == (0, 5, 9) and m.init_teacher_layers == (1, 2, 3)
    assert m.taps() == ((0, 5, 9), (0, 1, 2))


@pytest.mark.parametrize(
    "spec,teacher,student,message",
    [
        ([4, 7, 10], 32, 4, "has 3 entries; the student has 4"),
        ([4, 7, 32], 32, 3, r"outside \[0, 32\)"),
        ([-1, 7, 9], 32, 3, "outside"),
        ([4, 4, 9], 32, 3, "strictly increasing"),
        ([7, 4], 32, 2, "strictly increasing"),
        ([9, 7, 10], 32, 3, "strictly increasing"),
        ([1.5, 2, 3], 32, 3, "integers"),
        ("tinywave", 24, 10, r"outside \[0, 24\)"),  # 3l + 4 runs past a 24-layer teacher
        ("tinywave", 32, 11, "outside"),
        ("every_other", 32, 10, "unknown preset 'every_other'"),
        ("uniform", 4, 6, "deeper than the teacher"),
    ],
)
def test_invalid_maps_raise_config_error_naming_the_key(spec, teacher, student, message):
    with pytest.raises(ConfigError, match=r"distill\.layer_map: .*" + message):
        resolve_layer_map(spec, teacher, student)


def test_invalid_init_layers_name_their_key():
    with pytest.raises(ConfigError, match=r"distill\.init_layers: .*has 2 entries"):
        resolve_layer_map("tinywave", 32, 10, init_layers=[1, 2])
    with pytest.raises(ConfigError, match=r"distill\.init_layers"):
        resolve_layer_map("tinywave", 32, 10, init_layers="first")


def test_config_section_checks_the_map_before_depths_are_known(tmp_path):
    path = tmp_path / "distill.yaml"
    path.write_text("layer_map: tinywave\ninit_layers: [0, 3, 6]\n")
    cfg = load_config(DistillLossConfig, path)
    assert cfg.layer_map == "tinywave" and cfg.init_layers == (0, 3, 6)
    cfg = load_config(DistillLossConfig, path, ["layer_map=[1, 4, 9]"])
    assert cfg.layer_map == (1, 4, 9)
    assert resolve_layer_map(cfg.layer_map, 10, 3, cfg.init_layers).pairs == (
        (0, 1),
        (1, 4),
        (2, 9),
    )
    with pytest.raises(ConfigError, match=r"distill\.layer_map: .*strictly increasing"):
        load_config(DistillLossConfig, path, ["layer_map=[1, 9, 4]"])
    with pytest.raises(ConfigError, match=r"distill\.layer_map: no teacher layers given"):
        check_layer_map_spec(())
