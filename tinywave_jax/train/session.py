"""From a validated run config to the pieces a step needs: models, layer map, shardings, state.

`prepare(cfg)` resolves every model shape (reading only config.json of checkpoints) and checks the
combination (layer map range, widths vs projector, vocabularies, head counts), raising ConfigError
naming the key before anything is allocated. `Session(job, mesh)` then builds the shardings, the
optimizer and the compiled step, and creates (or describes, for a restore) the train state.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Union

import jax
import jax.numpy as jnp

from ..config import ConfigError
from ..distill.attention_kl import head_groups
from ..distill.layer_map import LayerMap, resolve_layer_map
from ..distill.losses import init_hidden_projector
from ..models import llama
from ..models.config import LlamaConfig
from ..parallel import make_mesh, tree_shardings
from .config import DistillConfig, ModelSource, TrainConfig
from .lora import LoraConfig, init_lora, lora_logical_axes, merge_lora
from .state import TrainState, abstract_state, init_state, make_optimizer, state_shardings
from .step import CompiledStep, StepSpec

RunConfig = Union[DistillConfig, TrainConfig]


@dataclasses.dataclass(frozen=True)
class Job:
    """A run config with every model shape resolved and checked."""
    cfg: RunConfig
    kind: str                               # "distill" | "train"
    spec: StepSpec
    teacher_full: Optional[LlamaConfig]     # the teacher as stored (before truncation)
    layer_map: Optional[LayerMap]
    projector: bool


def _source_config(src: ModelSource, key: str) -> LlamaConfig:
    if src.path is not None:
        from ..checkpoint import load_model_config
        try:
            return load_model_config(src.path)
        except (ConfigError, FileNotFoundError) as e:
            raise ConfigError(f"{key}.path: {e}") from None
    return src.shape


def _student_numerics(config: LlamaConfig, cfg: RunConfig) -> LlamaConfig:
    t = cfg.train
    return config.replace(dtype=t.dtype, param_dtype=t.param_dtype, remat=t.remat,
                          scan_layers=t.scan_layers)


def prepare(cfg: RunConfig) -> Job:
    """Resolves and checks the models of a run (see module doc)."""
    if isinstance(cfg, TrainConfig):
        student = _student_numerics(_source_config(cfg.model, "model"), cfg)
        lora = None
        if cfg.lora.enabled:
            lora = LoraConfig(rank=cfg.lora.rank, alpha=cfg.lora.alpha, targets=cfg.lora.targets)
        spec = StepSpec(student=student, loss=cfg.loss_config(), microbatches=cfg.train.microbatches,
                        lora=lora)
        return Job(cfg, "train", spec, None, None, False)

    loss, w = cfg.distill, cfg.distill.weights
    teacher = _source_config(cfg.teacher, "teacher").replace(
        dtype=cfg.teacher.dtype, param_dtype=cfg.teacher.dtype, remat="none",
        scan_layers=cfg.train.scan_layers)
    if cfg.student.path is not None or cfg.student.shape is not None:
        student = _source_config(cfg.student, "student")
        depth = student.num_hidden_layers
    else:  # cut from the teacher
        depth = cfg.student.num_layers
        for spec_ in (loss.layer_map, loss.init_layers):
            if depth is None and not isinstance(spec_, str):
                depth = len(spec_)
        if depth is None:
            raise ConfigError("student.num_layers: give the depth of the student cut from the "
                              "teacher (or an explicit distill.layer_map list)")
        student = teacher.replace(num_hidden_layers=depth)
    student = _student_numerics(student, cfg)
    lm = resolve_layer_map(loss.layer_map, teacher.num_hidden_layers, depth, loss.init_layers)
    if w.hidden > 0 and student.hidden_size != teacher.hidden_size and not cfg.projector:
        raise ConfigError(f"projector: student hidden_size {student.hidden_size} != teacher "
                          f"hidden_size {teacher.hidden_size} and distill.weights.hidden > 0; set "
                          "projector: true (a learned width projector) or distill.weights.hidden: 0")
    if w.logit_kl > 0 and student.vocab_size != teacher.vocab_size:
        raise ConfigError(f"student.shape.vocab_size: {student.vocab_size} != teacher vocab_size "
                          f"{teacher.vocab_size}; the logit KL needs one vocabulary")
    if w.attention > 0:
        try:
            head_groups(student.num_attention_heads, teacher.num_attention_heads,
                        loss.attention_heads)
        except ValueError as e:
            raise ConfigError(f"distill.attention_heads: {e}") from None
    teacher_taps, student_taps = lm.taps() if (w.hidden > 0 or w.attention > 0) else ((), ())
    teacher_run = teacher
    if w.logit_kl == 0 and teacher_taps:  # no teacher logits: its layers past the last tapped one are never needed
        teacher_run = teacher.replace(num_hidden_layers=max(teacher_taps) + 1)
    spec = StepSpec(student=student, loss=loss, teacher=teacher_run, student_taps=student_taps,
                    teacher_taps=teacher_taps, microbatches=cfg.train.microbatches)
    return Job(cfg, "distill", spec, teacher, lm, bool(cfg.projector and w.hidden > 0))


def _cast(tree, dtype):
    return jax.tree.map(lambda x: x.astype(dtype), tree)


class Session:
    """Shardings, optimizer, compiled step and train state for a Job on a mesh."""

    def __init__(self, job: Job, mesh=None):
        self.job, self.cfg, self.spec = job, job.cfg, job.spec
        self.mesh = make_mesh(self.cfg.mesh) if mesh is None else mesh
        rows = self.cfg.data.batch_size // self.spec.microbatches
        div = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        if rows % div:
            raise ConfigError(f"data.batch_size: {self.cfg.data.batch_size} rows in "
                              f"{self.spec.microbatches} microbatch(es) give {rows} rows each, not a "
                              f"multiple of the mesh's data x fsdp = {div} devices")
        self.tx, self.schedule = make_optimizer(self.cfg.optimizer, self.cfg.train.steps)
        s = self.spec
        self.abstract_trainable, logical = {}, {}
        frozen_abs, frozen_logical = {}, {}
        student_abs = llama.abstract_params(s.student)
        if s.lora is not None:
            frozen_abs["base"], frozen_logical["base"] = student_abs, llama.param_logical_axes(s.student)
            self.abstract_trainable["lora"] = jax.eval_shape(
                lambda p: init_lora(p, s.student, s.lora, jax.random.key(0)), student_abs)
            logical["lora"] = lora_logical_axes(s.student, s.lora)
        else:
            self.abstract_trainable["model"] = student_abs
            logical["model"] = llama.param_logical_axes(s.student)
        if job.projector:
            pairs = len(s.student_taps)
            self.abstract_trainable["projector"] = {"kernel": jax.ShapeDtypeStruct(
                (pairs, s.student.hidden_size, s.teacher.hidden_size), jnp.float32)}
            logical["projector"] = {"kernel": jax.sharding.PartitionSpec(None, None, None)}
        if s.teacher is not None and s.needs_teacher:
            frozen_abs["teacher"] = llama.abstract_params(s.teacher)
            frozen_logical["teacher"] = llama.param_logical_axes(s.teacher)
        self.param_shardings = tree_shardings(self.mesh, logical, self.abstract_trainable)
        self.frozen_shardings = tree_shardings(self.mesh, frozen_logical, frozen_abs)
        self.frozen_abstract = frozen_abs
        self.state_shardings = state_shardings(self.mesh, self.tx, self.abstract_trainable,
                                               self.param_shardings)
        self.step = CompiledStep(s, self.tx, self.schedule, self.mesh, self.state_shardings,
                                 self.frozen_shardings)

    # ---- models -------------------------------------------------------------------------------
    def _model(self, src: ModelSource, config: LlamaConfig, shardings):
        """Params of `src` in config.param_dtype with `shardings` (loaded, or random from src.seed)."""
        dtype = jnp.dtype(config.param_dtype)
        if src.path is not None:
            from ..checkpoint import load_model
            return load_model(src.path, dtype=dtype, shardings=shardings)[0]
        init_cfg = config.replace(param_dtype="float32", dtype="float32")
        # the seed is an argument, not a constant, so one compiled init serves every seed
        return jax.jit(lambda seed: _cast(llama.init_params(init_cfg, jax.random.key(seed)), dtype),
                       out_shardings=shardings)(jnp.uint32(src.seed))

    def frozen_and_trainable(self, trainable_too: bool = True) -> tuple[dict, dict]:
        """(frozen params, initial trainable params), created directly with their shardings.
        `trainable_too=False` (a resume: the checkpoint has them) skips the student and adapters
        where they are not cut from the teacher anyway."""
        cfg, s, job = self.cfg, self.spec, self.job
        frozen, trainable = {}, {}
        if job.kind == "train":
            if s.lora is not None:
                frozen["base"] = self._model(cfg.model, s.student, self.frozen_shardings["base"])
                if trainable_too:
                    trainable["lora"] = jax.jit(
                        lambda p: init_lora(p, s.student, s.lora, jax.random.key(cfg.train.seed)),
                        out_shardings=self.param_shardings["lora"])(frozen["base"])
            elif trainable_too:
                trainable["model"] = self._model(cfg.model, s.student, self.param_shardings["model"])
            return frozen, trainable
        full = job.teacher_full
        teacher_sh = tree_shardings(self.mesh, llama.param_logical_axes(full),
                                    llama.abstract_params(full))
        teacher = self._model(cfg.teacher, full, teacher_sh)
        if cfg.student.path is not None or cfg.student.shape is not None:
            if trainable_too:
                trainable["model"] = self._model(cfg.student, s.student, self.param_shardings["model"])
        elif trainable_too:
            from ..distill.student_init import init_student_from_teacher
            layers = job.layer_map.init_teacher_layers
            dtype = jnp.dtype(s.student.param_dtype)
            trainable["model"] = jax.jit(
                lambda t: _cast(init_student_from_teacher(t, full, layers)[0], dtype),
                out_shardings=self.param_shardings["model"])(teacher)
        if job.projector and trainable_too:
            trainable["projector"] = jax.jit(
                lambda: init_hidden_projector(jax.random.key(cfg.train.seed), len(s.student_taps),
                                              s.student.hidden_size, s.teacher.hidden_size),
                out_shardings=self.param_shardings["projector"])()
        if "teacher" in self.frozen_shardings:
            n = s.teacher.num_hidden_layers
            if n != full.num_hidden_layers:  # keep only the layers up to the last tapped one
                teacher = jax.jit(lambda t: {**t, "layers": jax.tree.map(lambda x: x[:n], t["layers"])},
                                  out_shardings=self.frozen_shardings["teacher"])(teacher)
            frozen["teacher"] = teacher
        return frozen, trainable

    # ---- state ---------------------------------------------------------------------------------
    def init_state(self, trainable: dict) -> TrainState:
        return jax.jit(lambda p: init_state(p, self.tx, self.cfg.train.seed),
                       out_shardings=self.state_shardings)(trainable)

    def abstract_state(self) -> TrainState:
        return abstract_state(self.tx, self.abstract_trainable, self.state_shardings,
                              self.cfg.train.seed)

    def export_params(self, state: TrainState, frozen: dict) -> dict:
        """The student as a plain model params tree (LoRA merged; projector left out)."""
        if self.spec.lora is not None:
            return jax.jit(lambda b, l: merge_lora(b, l, self.spec.lora))(frozen["base"],
                                                                         state.params["lora"])
        return state.params["model"]
