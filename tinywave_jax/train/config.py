"""Typed run configs for `tinywave distill` (DistillConfig) and `tinywave train` (TrainConfig).

Both are read with `config.load_config(Cls, yaml, ["key=value", ...])`; an unknown key, a wrongly
typed value, a layer map out of range or mismatched widths without a projector fail at start-up
with a ConfigError naming the key. Model-dependent checks that need a checkpoint's config.json
(depths, widths) run in `train/commands.py` before anything is allocated.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional

from ..config import from_dict
from ..data.corpus_format import SPLITS
from ..data.pipeline import DataConfig
from ..data.synthetic import SyntheticDataConfig
from ..distill.objective import DistillLossConfig, LossWeights
from ..errors import ConfigError
from ..models.config import DType, LlamaConfig, RematPolicy
from ..parallel.mesh import MeshConfig
from .lora import LoraConfig


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """A model: a tinywave model checkpoint folder (`path`) or a random one of shape `shape`.

    `shape` takes LlamaConfig fields (vocab_size, hidden_size, ...); its dtype fields are
    overridden by the run's dtypes."""

    path: Optional[str] = None
    shape: Optional[LlamaConfig] = None
    seed: int = 0  # random init seed (shape only)

    def check(self, key: str, need: bool = True):
        if need and (self.path is None) == (self.shape is None):
            raise ConfigError(
                f"{key}: give exactly one of {key}.path (a tinywave model checkpoint) "
                f"or {key}.shape (a random model)"
            )


@dataclasses.dataclass(frozen=True)
class TeacherConfig(ModelSource):
    dtype: DType = "bfloat16"  # teacher parameter AND compute dtype (frozen, no optimizer)
    # a teacher cache folder (`tinywave teacher-cache build`): its top-k log-probs stand in for
    # the teacher, which then never runs; `path`/`shape` still name the teacher it must match
    cache: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class StudentConfig(ModelSource):
    """The student: from a checkpoint (`path`), random (`shape`), or, with neither, cut from the
    teacher (its layers `distill.init_layers`, TinyWave's init; embeddings/norm/head copied)."""

    num_layers: Optional[int] = None  # depth when cut from the teacher with a preset layer map


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warmup then cosine decay to `min_lr_ratio * learning_rate`."""

    learning_rate: float = 3e-4
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1  # not applied to norm scales and biases
    clip_norm: Optional[float] = 1.0  # global-norm gradient clipping; null: none

    def validate(self):
        if not self.learning_rate > 0:
            raise ConfigError(f"optimizer.learning_rate: must be > 0, got {self.learning_rate}")
        if self.warmup_steps < 0:
            raise ConfigError(f"optimizer.warmup_steps: must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"optimizer.min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if self.weight_decay < 0:
            raise ConfigError(f"optimizer.weight_decay: must be >= 0, got {self.weight_decay}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ConfigError(f"optimizer.clip_norm: must be > 0 or null, got {self.clip_norm}")


HELD_OUT_SPLITS = tuple(s for s in SPLITS if s != "train")  # what train.eval_split may name


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """The `train:` section: length, accumulation, numerics and logging/checkpoint cadence."""

    steps: int = 1000
    microbatches: int = 1  # gradient accumulation: data.batch_size rows split in this many
    seed: int = 0  # RNG of the train state (and random inits without their own seed)
    param_dtype: DType = "float32"  # student master weights
    dtype: DType = "float32"  # student compute dtype (bfloat16 on accelerators)
    remat: RematPolicy = "none"  # student backward-pass rematerialisation (models/llama.py)
    scan_layers: bool = True
    # attention of the step's forwards (models/attention.py): auto = Pallas splash on a TPU mesh
    # (data.seq_len a multiple of 128), dense XLA elsewhere; dense, splash or cudnn to force one
    attention: Literal["auto", "dense", "splash", "cudnn"] = "auto"
    log_every: int = 10
    checkpoint_every: int = 1000
    checkpoint_keep: int = 3
    async_checkpoint: bool = True
    tensorboard: bool = True
    peak_flops_per_device: Optional[float] = None  # for MFU; null: MFU not reported
    throttle_s: float = 0.0  # sleep after each step (only for tests/demos of preemption)
    # validation loss / perplexity of the student on a held-out split (train/validation.py)
    eval_every: int = 0  # steps between evaluations (and at the last step); 0: none
    eval_batches: int = 10  # batches of data.batch_size rows (fewer if the split runs out)
    eval_split: str = "validation"  # a held-out split: validation or test

    def validate(self):
        for f in ("steps", "microbatches", "log_every", "checkpoint_every", "checkpoint_keep"):
            if getattr(self, f) < 1:
                raise ConfigError(f"train.{f}: must be >= 1, got {getattr(self, f)}")
        if self.eval_every < 0:
            raise ConfigError(f"train.eval_every: must be >= 0 (0: none), got {self.eval_every}")
        if self.eval_batches < 1:
            raise ConfigError(f"train.eval_batches: must be >= 1, got {self.eval_batches}")
        if self.eval_split not in HELD_OUT_SPLITS:
            raise ConfigError(
                f"train.eval_split: {self.eval_split!r} is not a held-out split; "
                f"expected one of {list(HELD_OUT_SPLITS)}"
            )
        if self.peak_flops_per_device is not None and not self.peak_flops_per_device > 0:
            raise ConfigError("train.peak_flops_per_device: must be > 0 or null")
        if self.throttle_s < 0:
            raise ConfigError("train.throttle_s: must be >= 0")


CORPUS_KEY = "data.corpus"  # where a run config nests the data.DataConfig keys


@dataclasses.dataclass(frozen=True)
class DataSection:
    """`data:` section. `source: corpus` reads the tokenized corpus with the grain pipeline;
    `corpus:` holds the other `data.DataConfig` keys (corpus_dir, mixture, layout, ...)."""

    source: Literal["synthetic", "corpus"] = "synthetic"
    seq_len: int = 128
    batch_size: int = 8  # global rows per optimizer step (all hosts, all microbatches)
    seed: int = 0
    synthetic: SyntheticDataConfig = dataclasses.field(default_factory=SyntheticDataConfig)
    corpus: dict = dataclasses.field(default_factory=dict)

    def validate(self):
        if self.seq_len < 2:
            raise ConfigError(f"data.seq_len: must be >= 2, got {self.seq_len}")
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size: must be >= 1, got {self.batch_size}")
        for k in ("seq_len", "batch_size", "seed"):
            if k in self.corpus:
                raise ConfigError(f"data.corpus.{k}: set data.{k} instead")
        if self.source == "corpus":
            self.corpus_config()  # validates data.corpus.* now

    def corpus_config(self):

        return from_dict(
            DataConfig,
            {
                **self.corpus,
                "seq_len": self.seq_len,
                "batch_size": self.batch_size,
                "seed": self.seed,
            },
            prefix=CORPUS_KEY,
        )


def _check_common(cfg) -> None:
    if cfg.data.batch_size % cfg.train.microbatches:
        raise ConfigError(
            f"train.microbatches: {cfg.train.microbatches} does not divide "
            f"data.batch_size {cfg.data.batch_size}"
        )
    trained_on = cfg.data.corpus.get("split", "train") if cfg.data.source == "corpus" else "train"
    if cfg.train.eval_every and cfg.train.eval_split == trained_on:
        raise ConfigError(
            f"train.eval_split: {trained_on!r} is the split the run trains on "
            f"({CORPUS_KEY}.split); evaluate on another one"
        )


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """`tinywave distill`: a frozen teacher, a trained student, the `distill:` loss section."""

    run_dir: str = "runs/distill"
    teacher: TeacherConfig = dataclasses.field(default_factory=TeacherConfig)
    student: StudentConfig = dataclasses.field(default_factory=StudentConfig)
    distill: DistillLossConfig = dataclasses.field(default_factory=DistillLossConfig)
    projector: bool = False  # learned width projector per mapped pair (widths differ)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    train: LoopConfig = dataclasses.field(default_factory=LoopConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    data: DataSection = dataclasses.field(default_factory=DataSection)

    def validate(self):
        self.teacher.check("teacher")
        if self.student.path is not None and self.student.shape is not None:
            raise ConfigError("student: give student.path or student.shape, not both")
        if self.student.num_layers is not None and (self.student.path or self.student.shape):
            raise ConfigError(
                "student.num_layers: only for a student cut from the teacher; "
                "student.path / student.shape fix the depth already"
            )
        _check_common(self)


@dataclasses.dataclass(frozen=True)
class LoraSection(LoraConfig):
    enabled: bool = False


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """`tinywave train`: cross-entropy fine-tuning (full, or LoRA with `lora.enabled: true`)."""

    run_dir: str = "runs/train"
    model: ModelSource = dataclasses.field(default_factory=ModelSource)
    lora: LoraSection = dataclasses.field(default_factory=LoraSection)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    train: LoopConfig = dataclasses.field(default_factory=LoopConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    data: DataSection = dataclasses.field(default_factory=DataSection)
    logit_chunk_size: Optional[int] = 256  # CE over sequence chunks, no full [B, T, V] logits

    def validate(self):
        self.model.check("model")
        _check_common(self)

    def loss_config(self) -> DistillLossConfig:
        return DistillLossConfig(
            weights=LossWeights(ce=1.0, logit_kl=0.0, hidden=0.0, attention=0.0),
            logit_chunk_size=self.logit_chunk_size,
        )


__all__ = [
    "DataSection",
    "DistillConfig",
    "LoopConfig",
    "LoraSection",
    "ModelSource",
    "OptimizerConfig",
    "StudentConfig",
    "TeacherConfig",
    "TrainConfig",
]
