"""Training recipes: what one kind of run trains, keeps frozen, computes and exports.

`prepare(cfg)` resolves every model shape (reading only config.json of checkpoints) and checks the
combination (layer map range, widths vs projector, vocabularies, head counts), raising ConfigError
naming the key before anything is allocated. It returns the recipe of the config's kind:

    recipe          trainable (state)            frozen (step input)  step computes  final/
    DistillRecipe   "model" (+ "projector")      "teacher"            distillation   the student
    FineTuneRecipe  "model", or "lora" adapters  LoRA: "base"         CE only        model, LoRA merged

`Session` (session.py) builds shardings, optimizer and the compiled step from what the recipe
declares, and asks it for the initial params and the exported model; it never branches on kind.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Union, cast

import jax
import jax.numpy as jnp

from ..checkpoint import load_model, load_model_config
from ..config import to_dict
from ..distill.attention_kl import head_groups
from ..distill.layer_map import LayerMap, resolve_layer_map
from ..distill.losses import init_hidden_projector
from ..distill.student_init import init_student_from_teacher
from ..distill.terms import TERMS
from ..errors import ConfigError
from ..models import llama
from ..models.config import LlamaConfig
from ..parallel import tree_shardings
from .config import DistillConfig, ModelSource, TrainConfig
from .lora import LoraConfig, init_lora, lora_logical_axes, merge_lora
from .step import StepSpec

RunConfig = Union[DistillConfig, TrainConfig]
Declared = dict  # name -> (abstract params tree, logical axes tree)


def _source_config(src: ModelSource, key: str) -> LlamaConfig:
    if src.path is not None:
        try:
            return load_model_config(src.path)
        except (ConfigError, FileNotFoundError) as e:
            raise ConfigError(f"{key}.path: {e}") from None
    return cast(LlamaConfig, src.shape)  # validated: a path or a shape


def _student_numerics(config: LlamaConfig, cfg: RunConfig) -> LlamaConfig:
    t = cfg.train
    return config.replace(
        dtype=t.dtype, param_dtype=t.param_dtype, remat=t.remat, scan_layers=t.scan_layers
    )


def _cast(tree, dtype):
    return jax.tree.map(lambda x: x.astype(dtype), tree)


def load_or_init(src: ModelSource, config: LlamaConfig, shardings, verify: bool = True):
    """Params of `src` in config.param_dtype with `shardings` (loaded, or random from src.seed).
    verify: check a loaded checkpoint's files against their recorded sha256 first."""
    dtype = jnp.dtype(config.param_dtype)
    if src.path is not None:
        return load_model(src.path, dtype=dtype, shardings=shardings, verify=verify)[0]
    init_cfg = config.replace(param_dtype="float32", dtype="float32")
    # the seed is an argument, not a constant, so one compiled init serves every seed
    return jax.jit(
        lambda seed: _cast(llama.init_params(init_cfg, jax.random.key(seed)), dtype),
        out_shardings=shardings,
    )(jnp.uint32(src.seed))


def _model(config: LlamaConfig) -> tuple:
    return llama.abstract_params(config), llama.param_logical_axes(config)


@dataclasses.dataclass(frozen=True)
class FineTuneRecipe:
    """`tinywave train`: CE on one model, fully or through LoRA adapters on a frozen base."""

    cfg: TrainConfig
    spec: StepSpec
    kind = "train"

    def trainable(self) -> Declared:
        s = self.spec
        if s.lora is None:
            return {"model": _model(s.student)}
        lora = s.lora
        abstract = jax.eval_shape(
            lambda p: init_lora(p, s.student, lora, jax.random.key(0)),
            llama.abstract_params(s.student),
        )
        return {"lora": (abstract, lora_logical_axes(s.student, lora))}

    def frozen(self) -> Declared:
        return {} if self.spec.lora is None else {"base": _model(self.spec.student)}

    def create(self, mesh, frozen_sh: dict, trainable_sh: dict, trainable_too: bool) -> tuple:
        """(frozen, trainable) params with their shardings; `trainable_too=False`: a resume."""
        s, src = self.spec, self.cfg.model
        if s.lora is None:
            return {}, (
                {"model": load_or_init(src, s.student, trainable_sh["model"])}
                if trainable_too
                else {}
            )
        frozen = {"base": load_or_init(src, s.student, frozen_sh["base"])}
        trainable = {}
        lora = s.lora
        if trainable_too:
            trainable["lora"] = jax.jit(
                lambda p: init_lora(p, s.student, lora, jax.random.key(self.cfg.train.seed)),
                out_shardings=trainable_sh["lora"],
            )(frozen["base"])
        return frozen, trainable

    def final_params(self, params: dict, frozen: dict) -> dict:
        lora = self.spec.lora
        if lora is None:
            return params["model"]
        return jax.jit(lambda b, a: merge_lora(b, a, lora))(frozen["base"], params["lora"])

    def inputs(self) -> tuple:
        """The model folders the run reads (final/ must be apart from them)."""
        return tuple(p for p in (self.cfg.model.path,) if p)

    def provenance(self) -> dict:
        return {
            "model": self.cfg.model.path or "random",
            "lora": to_dict(self.cfg.lora) if self.cfg.lora.enabled else None,
        }


@dataclasses.dataclass(frozen=True)
class DistillRecipe:
    """`tinywave distill`: a frozen teacher, a student (cut from it, loaded or random) and an
    optional width projector trained on the distillation objective."""

    cfg: DistillConfig
    spec: StepSpec
    teacher_full: LlamaConfig  # the teacher as stored (spec.teacher may be cut after its last tap)
    layer_map: LayerMap
    projector: bool
    kind = "distill"

    def trainable(self) -> Declared:
        s = self.spec
        out = {"model": _model(s.student)}
        if self.projector:
            teacher = cast(LlamaConfig, s.teacher)  # a distill step always has one
            shape = (len(s.student_taps), s.student.hidden_size, teacher.hidden_size)
            out["projector"] = (
                {"kernel": jax.ShapeDtypeStruct(shape, jnp.float32)},
                {"kernel": jax.sharding.PartitionSpec(None, None, None)},
            )
        return out

    def frozen(self) -> Declared:
        teacher = cast(LlamaConfig, self.spec.teacher)
        return {"teacher": _model(teacher)} if self.spec.runs_teacher else {}

    def create(self, mesh, frozen_sh: dict, trainable_sh: dict, trainable_too: bool) -> tuple:
        """(frozen, trainable) params with their shardings; `trainable_too=False`: a resume (the
        checkpoint has the student and projector)."""
        cfg, s, full = self.cfg, self.spec, self.teacher_full
        own_student = cfg.student.path is not None or cfg.student.shape is not None
        teacher = None
        # the teacher's weights: for the step (unless a cache stands in), or to cut the student
        if "teacher" in frozen_sh or (trainable_too and not own_student):
            teacher = load_or_init(
                cfg.teacher,
                full,
                tree_shardings(mesh, llama.param_logical_axes(full), llama.abstract_params(full)),
            )
        trainable = {}
        if trainable_too and own_student:
            trainable["model"] = load_or_init(cfg.student, s.student, trainable_sh["model"])
        elif trainable_too:
            layers, dtype = self.layer_map.init_teacher_layers, jnp.dtype(s.student.param_dtype)
            trainable["model"] = jax.jit(
                lambda t: _cast(init_student_from_teacher(t, full, layers)[0], dtype),
                out_shardings=trainable_sh["model"],
            )(teacher)
        if self.projector and trainable_too:
            trainable["projector"] = jax.jit(
                lambda: init_hidden_projector(
                    jax.random.key(cfg.train.seed),
                    len(s.student_taps),
                    s.student.hidden_size,
                    cast(LlamaConfig, s.teacher).hidden_size,
                ),
                out_shardings=trainable_sh["projector"],
            )()
        if "teacher" not in frozen_sh:
            return {}, trainable
        n = cast(LlamaConfig, s.teacher).num_hidden_layers
        if n != full.num_hidden_layers:  # keep only the layers up to the last tapped one
            teacher = jax.jit(
                lambda t: {**t, "layers": jax.tree.map(lambda x: x[:n], t["layers"])},
                out_shardings=frozen_sh["teacher"],
            )(teacher)
        return {"teacher": teacher}, trainable

    def final_params(self, params: dict, frozen: dict) -> dict:
        return params["model"]  # the projector only serves the hidden loss

    def inputs(self) -> tuple:
        """The model folders the run reads (final/ must be apart from them)."""
        c = self.cfg
        return tuple(p for p in (c.teacher.path, c.student.path, c.teacher.cache) if p)

    def provenance(self) -> dict:
        return {
            "teacher": self.cfg.teacher.path or "random",
            "teacher_cache": self.cfg.teacher.cache,
            "terms": {n: self.spec.loss.weight(n) for n in self.spec.loss.active_terms()},
            "layer_map": list(self.layer_map.teacher_for_student),
        }


Recipe = Union[DistillRecipe, FineTuneRecipe]


def _check_seq_len(cfg: RunConfig, model: LlamaConfig, who: str) -> None:
    """A row longer than the model's positions would fail (or exhaust memory) only once
    allocated; name both values at start-up instead."""
    if cfg.data.seq_len > model.max_position_embeddings:
        raise ConfigError(
            f"data.seq_len: {cfg.data.seq_len} exceeds the {who}'s max_position_embeddings "
            f"({model.max_position_embeddings}); lower data.seq_len to at most "
            f"{model.max_position_embeddings}"
        )


def _prepare_fine_tune(cfg: TrainConfig) -> FineTuneRecipe:
    student = _student_numerics(_source_config(cfg.model, "model"), cfg)
    _check_seq_len(cfg, student, "model")
    lora = None
    if cfg.lora.enabled:
        lora = LoraConfig(rank=cfg.lora.rank, alpha=cfg.lora.alpha, targets=cfg.lora.targets)
    spec = StepSpec(
        student=student, loss=cfg.loss_config(), microbatches=cfg.train.microbatches, lora=lora
    )
    return FineTuneRecipe(cfg, spec)


def _prepare_distill(cfg: DistillConfig) -> DistillRecipe:
    loss = cfg.distill
    teacher = _source_config(cfg.teacher, "teacher").replace(
        dtype=cfg.teacher.dtype,
        param_dtype=cfg.teacher.dtype,
        remat="none",
        scan_layers=cfg.train.scan_layers,
    )
    depth: Optional[int]
    if cfg.student.path is not None or cfg.student.shape is not None:
        student = _source_config(cfg.student, "student")
        depth = student.num_hidden_layers
    else:  # cut from the teacher
        depth = cfg.student.num_layers
        for layers in (loss.layer_map, loss.init_layers):
            if depth is None and not isinstance(layers, str):
                depth = len(layers)
        if depth is None:
            raise ConfigError(
                "student.num_layers: give the depth of the student cut from the "
                "teacher (or an explicit distill.layer_map list)"
            )
        student = teacher.replace(num_hidden_layers=depth)
    student = _student_numerics(student, cfg)
    active, t_needs = loss.active_terms(), loss.needs("teacher")
    cached = cfg.teacher.cache is not None
    if cached:
        _check_cacheable(cfg, active)
    elif t_needs:  # the teacher runs in the step
        _check_seq_len(cfg, teacher, "teacher")
    _check_seq_len(cfg, student, "student")
    lm = resolve_layer_map(loss.layer_map, teacher.num_hidden_layers, depth, loss.init_layers)
    if "hidden" in active and student.hidden_size != teacher.hidden_size and not cfg.projector:
        raise ConfigError(
            f"projector: student hidden_size {student.hidden_size} != teacher "
            f"hidden_size {teacher.hidden_size} and distill.weights.hidden > 0; set "
            "projector: true (a learned width projector) or distill.weights.hidden: 0"
        )
    if {"output", "topk"} & t_needs and student.vocab_size != teacher.vocab_size:
        raise ConfigError(
            f"student.shape.vocab_size: {student.vocab_size} != teacher vocab_size "
            f"{teacher.vocab_size}; the logit KL needs one vocabulary"
        )
    if "topk" in t_needs and loss.top_k > teacher.vocab_size:
        raise ConfigError(
            f"distill.top_k: {loss.top_k} exceeds the teacher's vocab_size {teacher.vocab_size}"
        )
    if "attention" in active:
        try:
            head_groups(
                student.num_attention_heads, teacher.num_attention_heads, loss.attention_heads
            )
        except ValueError as e:
            raise ConfigError(f"distill.attention_heads: {e}") from None
    tapped = {"hidden", "qk"} & (t_needs | loss.needs("student"))
    teacher_taps, student_taps = lm.taps() if tapped else ((), ())
    teacher_run = teacher
    if not {"output", "topk"} & t_needs and teacher_taps:
        # no teacher logits: its layers past the last tapped one are never needed
        teacher_run = teacher.replace(num_hidden_layers=max(teacher_taps) + 1)
    spec = StepSpec(
        student=student,
        loss=loss,
        teacher=teacher_run,
        student_taps=student_taps,
        teacher_taps=teacher_taps,
        microbatches=cfg.train.microbatches,
        teacher_cached=cached,
    )
    return DistillRecipe(cfg, spec, teacher, lm, bool(cfg.projector and "hidden" in active))


def _check_cacheable(cfg: DistillConfig, active: tuple) -> None:
    """With teacher.cache only the teacher's top-k exists: terms needing more are refused."""
    beyond = [n for n in active if TERMS[n].needs_teacher - {"topk"}]
    if beyond:
        raise ConfigError(
            f"teacher.cache: the terms {beyond} need the teacher's "
            f"{sorted(set().union(*(TERMS[n].needs_teacher for n in beyond)) - {'topk'})}, which "
            "a teacher cache does not hold (only its top-k log-probs); set their weights to 0 "
            "(e.g. distill.weights.hidden=0) or drop teacher.cache"
        )
    if "topk_kl" not in active:
        raise ConfigError(
            "teacher.cache: no active term reads it; set distill.terms.topk_kl (e.g. 1.0)"
        )


def prepare(cfg: RunConfig) -> Recipe:
    """The checked recipe of a run config (see module doc)."""
    if isinstance(cfg, TrainConfig):
        return _prepare_fine_tune(cfg)
    return _prepare_distill(cfg)
