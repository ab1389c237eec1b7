"""A recipe on a mesh: shardings, optimizer, compiled step and train state.

`Session(recipe, mesh)` shards what the recipe declares trainable and frozen (recipes.py), builds
the optimizer and the compiled step, and creates (or describes, for a restore) the train state.
"""

from __future__ import annotations

import dataclasses

import jax

from ..errors import ConfigError
from ..models import attention
from ..parallel import batch_sharding, make_mesh, tree_shardings
from .recipes import Recipe
from .state import TrainState, abstract_state, init_state, make_optimizer, state_shardings
from .step import CompiledStep, StepSpec


def with_attention(spec: StepSpec, cfg, platform: str) -> StepSpec:
    """`spec` with `train.attention` resolved for `platform` in the student's and teacher's
    configs (models/attention.py); ConfigError where the choice cannot run this shape."""

    t, dtype = cfg.data.seq_len, spec.student.dtype
    impl = attention.resolve(cfg.train.attention, platform, t)
    if impl == "splash" and t % attention.SPLASH_MIN_BLOCK:
        raise ConfigError(
            f"train.attention: splash needs data.seq_len a multiple of "
            f"{attention.SPLASH_MIN_BLOCK}, got {t} (use auto or dense)"
        )
    if impl == "splash" and platform == "tpu" and attention.precision_refuses_splash():
        raise ConfigError(f"train.attention: {attention.precision_refuses_splash()}")
    teacher_dtype = None if spec.teacher is None else spec.teacher.dtype
    if impl == "cudnn" and {dtype, teacher_dtype or dtype} - {"bfloat16", "float16"}:
        raise ConfigError(
            "train.attention: cudnn needs bfloat16 or float16 compute, got "
            f"train.dtype={dtype}" + ("" if spec.teacher is None else f", teacher {teacher_dtype}")
        )
    teacher = None if spec.teacher is None else spec.teacher.replace(attention=impl)
    return dataclasses.replace(spec, student=spec.student.replace(attention=impl), teacher=teacher)


class Session:
    """Shardings, optimizer, compiled step and train state for a recipe on a mesh."""

    def __init__(self, recipe: Recipe, mesh=None):
        self.recipe, self.cfg = recipe, recipe.cfg
        self.mesh = make_mesh(self.cfg.mesh) if mesh is None else mesh
        self.spec = with_attention(recipe.spec, self.cfg, self.mesh.devices.flat[0].platform)
        rows = self.cfg.data.batch_size // self.spec.microbatches
        div = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        if rows % div:
            raise ConfigError(
                f"data.batch_size: {self.cfg.data.batch_size} rows in "
                f"{self.spec.microbatches} microbatch(es) give {rows} rows each, not a "
                f"multiple of the mesh's data x fsdp = {div} devices"
            )
        self.tx, self.schedule = make_optimizer(self.cfg.optimizer, self.cfg.train.steps)
        trainable, frozen = recipe.trainable(), recipe.frozen()
        self.abstract_trainable = {k: abstract for k, (abstract, _) in trainable.items()}
        self.frozen_abstract = {k: abstract for k, (abstract, _) in frozen.items()}
        self.param_shardings = tree_shardings(
            self.mesh,
            {k: logical for k, (_, logical) in trainable.items()},
            self.abstract_trainable,
        )
        self.frozen_shardings = tree_shardings(
            self.mesh, {k: logical for k, (_, logical) in frozen.items()}, self.frozen_abstract
        )
        self.state_shardings = state_shardings(
            self.mesh, self.tx, self.abstract_trainable, self.param_shardings
        )
        self.step = CompiledStep(
            self.spec,
            self.tx,
            self.schedule,
            self.mesh,
            self.state_shardings,
            self.frozen_shardings,
        )

    def global_batch(self, batch: dict) -> dict:
        """This host's rows of a contract batch as global arrays, rows over (data, fsdp)."""

        sh = batch_sharding(self.mesh)
        return {k: jax.make_array_from_process_local_data(sh, batch[k]) for k in batch}

    def frozen_and_trainable(self, trainable_too: bool = True) -> tuple[dict, dict]:
        """(frozen params, initial trainable params), created directly with their shardings.
        `trainable_too=False` (a resume: the checkpoint has them) skips the trainable ones where
        they are not needed anyway."""
        return self.recipe.create(
            self.mesh, self.frozen_shardings, self.param_shardings, trainable_too
        )

    def init_state(self, trainable: dict) -> TrainState:
        return jax.jit(
            lambda p: init_state(p, self.tx, self.cfg.train.seed),
            out_shardings=self.state_shardings,
        )(trainable)

    def abstract_state(self) -> TrainState:
        return abstract_state(
            self.tx, self.abstract_trainable, self.state_shardings, self.cfg.train.seed
        )

    def export_params(self, state: TrainState, frozen: dict) -> dict:
        """The trained model as a plain model params tree (the recipe's final/)."""
        return self.recipe.final_params(state.params, frozen)
