"""Python entry points for training runs: `distill(config)` and `train(config)`, the same code
path as `tinywave distill` / `tinywave train` (config loaded and checked, model checks before
any device work, then `loop.run`).

    from tinywave_jax.train import distill
    out = distill("configs/distill_tiny.yaml", ["train.steps=200", "run_dir=runs/tiny"])
    out = distill({"teacher": {...}, "student": {...}, "run_dir": "runs/x"})  # a dict, as YAML
    out["final_dir"], out["state"]  # the student checkpoint folder, the final TrainState
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence, Union

from ..config import apply_overrides, from_dict, load_config, to_dict
from .config import DistillConfig, TrainConfig
from .loop import run
from .recipes import prepare

Source = Union[str, Path, dict, DistillConfig, TrainConfig]


def load_run_config(cls: type, config: Source, overrides: Sequence[str] = ()):
    """A checked `cls` from a YAML path, a dict (the YAML's content) or an instance, with
    dotted `key=value` overrides applied; bad keys fail naming them, as on the command line."""

    if isinstance(config, (str, Path)):
        return load_config(cls, config, list(overrides))
    if isinstance(config, cls):
        config = to_dict(config)
    if not isinstance(config, dict):
        raise TypeError(f"config: a YAML path, a dict or a {cls.__name__}, not {type(config)}")
    return from_dict(cls, apply_overrides(dict(config), list(overrides)))


def run_config(
    cfg,
    resume: bool = False,
    echo: bool = True,
    allow_config_change: Sequence[str] = (),
    return_state: bool = False,
) -> dict[str, Any]:
    """Runs a checked DistillConfig / TrainConfig; what `tinywave distill|train` runs."""

    prepare(cfg)  # all model-dependent checks before any jax device work
    return run(
        cfg,
        resume=resume,
        echo=echo,
        allow_config_change=tuple(allow_config_change),
        return_state=return_state,
    )


def distill(
    config: Source,
    overrides: Sequence[str] = (),
    *,
    resume: bool = False,
    echo: bool = True,
    allow_config_change: Sequence[str] = (),
) -> dict[str, Any]:
    """Distils per `config` (a YAML path, a dict as the YAML, or a DistillConfig) with dotted
    `overrides` ("train.steps=100", ...). Returns {"step", "final_dir" (the student checkpoint
    folder, None when a signal stopped the run), "stopped", "signal", "state" (the final
    TrainState: params["model"] is the student)}. `resume`, `allow_config_change`: as --resume
    and --allow-config-change. Errors are the CLI's (ConfigError etc., naming the key)."""
    cfg = load_run_config(DistillConfig, config, overrides)
    return run_config(cfg, resume, echo, allow_config_change, return_state=True)


def train(
    config: Source,
    overrides: Sequence[str] = (),
    *,
    resume: bool = False,
    echo: bool = True,
    allow_config_change: Sequence[str] = (),
) -> dict[str, Any]:
    """`distill` for `tinywave train` (TrainConfig: CE fine-tuning, full or LoRA)."""
    cfg = load_run_config(TrainConfig, config, overrides)
    return run_config(cfg, resume, echo, allow_config_change, return_state=True)
