"""Every size and step count of the demo (`DemoSettings`) and of its teacher's pretraining
(`TeacherSettings`), with their full and `--quick` presets.

Overrides come as `key=value` strings (`tinywave demo --set distill_steps=300`), checked like every
other config (an unknown key or a wrong type is a ConfigError naming it).
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Union

from ..config import apply_overrides, from_dict, merged, to_dict
from ..errors import ConfigError
from .world import WorldSplits


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """The teacher's shape; the student keeps its width (TinyWave) at a third of its depth."""

    num_hidden_layers: int = 6
    hidden_size: int = 128
    intermediate_size: int = 384
    num_attention_heads: int = 2
    num_key_value_heads: int = 2


@dataclasses.dataclass(frozen=True)
class TeacherSettings:
    """`tinywave demo-teacher`: the world, its pretraining audio and the teacher's training.

    `variant`: "base" (SpiritLM-Base-like: deduplicated units, speech only) or "expressive"
    (SpiritLM-Expressive-like: units + pitch + style tokens merged by time, pretrained on a mixture
    of expressive speech, text and speech-text interleaving)."""

    variant: Literal["base", "expressive"] = "base"
    world: WorldSplits = dataclasses.field(default_factory=WorldSplits)
    # "natural": every sentence one espeak-ng call (coarticulated, word times from its word
    # events) in the many-voice cast (speech.Cast); "word_bank": utterances concatenated from
    # single-word syntheses in one target voice (the first shipped teachers)
    synthesis: Literal["natural", "word_bank"] = "natural"
    # natural speech's voices (synth.ROSTERS): "accents", twelve voices over eight English
    # accents; "us", twelve speakers of US English (the accents change the words' sounds)
    voices: Literal["accents", "us"] = "accents"
    units: int = 128  # MFCC k-means units
    # units per second before deduplication, and their analysis window: at 50 Hz (HuBERT's
    # rate) two spoken repeats of a word share far more unit bigrams than at 25 Hz (the
    # word-bank teachers', 40 ms frames), which a teacher must see to use the story
    unit_frame_rate: float = 50.0
    unit_window_seconds: float = 0.025
    cmn_seconds: float = 3.0  # units' mean removal over the first seconds (0: none)
    # True: each frame's mean is that of all frames so far (the first cmn_seconds for the head),
    # more speaker-robust than the head's mean alone (docs/demo_teacher.md, unit probe)
    cmn_running: bool = False
    # > 0: k-means on an LDA projection of the features (each with unit_context_frames frames
    # either side) fitted on which word and which of unit_lda_bins parts of it each pretraining
    # frame is: the same word's units far more alike across voices (docs/demo_teacher.md)
    unit_lda_dims: int = 0
    unit_lda_bins: int = 8
    unit_context_frames: int = 0
    # True: vocal tract length normalisation of the units (audio/vtln.py): each utterance's mel
    # filters warped by the factor its own first 3 s choose, no speaker labels
    unit_vtln: bool = False
    pitch_bins: int = 0  # pitch tokens (0: none; SpiritLM has 64)
    style_classes: int = 0  # style tokens (0: none; SpiritLM has 100)
    mixture: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"speech": 1.0}
    )  # pretraining stream kind -> weight (data.mixture)
    units_fit_hours: float = 1.0  # pretraining audio the k-means is fitted on (at most)
    shape: ModelShape = dataclasses.field(default_factory=ModelShape)
    seq_len: int = 320  # >= a whole story (at most ~285 units at 50 Hz)
    batch_size: int = 16
    steps: int = 1000  # ~22 min on 2 cores
    # > 0: first this many steps on the stories' text alone, then `steps` on `mixture` from that
    # model (SpiritLM continues a text LLM); the same learning-rate schedule for each run
    text_steps: int = 0
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    seed: int = 0

    def validate(self):
        for f in ("units", "seq_len", "batch_size", "steps"):
            if getattr(self, f) < 1:
                raise ConfigError(f"{f}: must be >= 1")
        if self.text_steps < 0:
            raise ConfigError("text_steps: must be >= 0 (0: no text-only run first)")
        if self.synthesis not in ("natural", "word_bank"):
            raise ConfigError(f"synthesis: {self.synthesis!r} is not 'natural' or 'word_bank'")
        if self.voices not in ("accents", "us"):
            raise ConfigError(f"voices: {self.voices!r} is not 'accents' or 'us'", param="voices")
        if self.cmn_seconds < 0:
            raise ConfigError("cmn_seconds: must be >= 0 (0: no mean removal)")
        if self.cmn_running and self.cmn_seconds <= 0:
            raise ConfigError("cmn_running: needs cmn_seconds > 0 (the head's length)")
        if self.unit_lda_dims < 0 or self.unit_lda_bins < 1 or self.unit_context_frames < 0:
            raise ConfigError(
                "unit_lda_dims, unit_context_frames: must be >= 0; unit_lda_bins: >= 1"
            )
        from ..audio.features import SpectralConfig

        SpectralConfig(
            frame_rate=self.unit_frame_rate, window_seconds=self.unit_window_seconds
        ).validate()  # names frame_rate / window_seconds
        if self.units_fit_hours <= 0 or self.learning_rate <= 0:
            raise ConfigError("units_fit_hours and learning_rate: must be > 0")
        expressive = self.variant == "expressive"
        if expressive != (self.pitch_bins > 0 and self.style_classes > 0):
            raise ConfigError(
                f"pitch_bins, style_classes: the {self.variant} variant needs them "
                + ("both > 0" if expressive else "both 0")
            )
        if self.pitch_bins == 1 or self.pitch_bins < 0 or self.style_classes < 0:
            raise ConfigError("pitch_bins: 0 or >= 2; style_classes: >= 0")
        from ..data.pipeline import DataConfig

        DataConfig(mixture=dict(self.mixture), tokenizer="words").validate()  # names the key
        if "expressive" in self.mixture and not expressive:
            raise ConfigError("mixture.expressive: only for variant=expressive")


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """`tinywave demo`: the distillation data, the runs and their learning-rate sweep.

    `variant` (`--variant`): base (speech units), expressive (units + pitch + style, the expressive
    teacher) or interleaved (speech-text interleaving; the student and baseline start from the
    expressive variant's, as TinyWave's interleaved student starts from its expressive one)."""

    variant: Literal["base", "expressive", "interleaved"] = "base"
    teacher_dir: str = ""  # "" = the variant's shipped teacher (tinywave_jax/demo/teacher*)
    expressive_workdir: str = ""  # interleaved only: the expressive demo run to start from
    #                                 ("" = WORKDIR/expressive, run there first when not done)
    distill_stories: int = 480  # training stories in the distillation corpus (target
    #                                       voice); the teacher saw 5x as many, in seven voices
    test_stories: int = 128  # each gives one sSC and one tSC pair
    valid_stories: int = 64  # validation perplexity picks each learning rate
    student_layers: int = 2
    layer_map: Union[str, tuple[int, ...]] = (0, 5)  # teacher layer per student layer (chosen
    #                                   on validation perplexity: (0, 5) beat uniform's (2, 5))
    seq_len: int = 0  # 0 = the teacher's pretraining length (a whole story: 256 for the word-bank
    #                    teacher's 25 Hz units, 320 at 50 Hz, 384 with pitch and style tokens)
    batch_size: int = 8
    lora_steps: int = 40
    lora_rank: int = 8
    lora_lr: float = 1e-3
    distill_steps: int = 300  # every student row's steps (same batches for all)
    lr_sweep: tuple[float, ...] = (2e-3, 4e-3, 8e-3)  # tried by every row, chosen on validation
    temperature: float = 2.0
    bootstrap: int = 2000  # paired-bootstrap resamples for the 95 % intervals
    seed: int = 0
    prompt_tokens: int = 40  # export check
    generate_tokens: int = 24

    def validate(self):
        if self.test_stories < 2 or self.valid_stories < 1 or self.distill_stories < 1:
            raise ConfigError(
                "test_stories must be >= 2 (topic cloze pairs stories), "
                "valid_stories and distill_stories >= 1"
            )
        if self.student_layers < 1:
            raise ConfigError("student_layers: must be >= 1")
        if self.expressive_workdir and self.variant != "interleaved":
            raise ConfigError("expressive_workdir: only for --variant interleaved")
        from ..distill.layer_map import check_layer_map_spec

        check_layer_map_spec(self.layer_map, "demo.layer_map")
        if not self.lr_sweep or any(not lr > 0 for lr in self.lr_sweep):
            raise ConfigError("lr_sweep: give at least one learning rate, each > 0")
        if len(set(self.lr_sweep)) != len(self.lr_sweep):
            raise ConfigError("lr_sweep: learning rates repeat")
        for f in (
            "lora_steps",
            "distill_steps",
            "prompt_tokens",
            "generate_tokens",
            "batch_size",
            "bootstrap",
        ):
            if getattr(self, f) < 1:
                raise ConfigError(f"{f}: must be >= 1")
        if self.seq_len < 0:
            raise ConfigError("seq_len: must be >= 1, or 0 for the teacher's pretraining length")


# --quick: the same pipelines at toy sizes, for tests (< 3 min each on 2 CPU cores).
QUICK_DEMO = {
    "distill_stories": 16,
    "test_stories": 6,
    "valid_stories": 4,
    "lora_steps": 4,
    "distill_steps": 8,
    "lr_sweep": [2e-3],
    "bootstrap": 200,
    "prompt_tokens": 16,
    "generate_tokens": 8,
}
QUICK_TEACHER = {
    "world": {"test": 6, "validation": 4, "train": 24},
    "units": 16,
    "units_fit_hours": 0.05,
    "shape": {
        "num_hidden_layers": 3,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
    },
    "seq_len": 128,
    "batch_size": 4,
    "steps": 10,
    "warmup_steps": 2,
}


# What each variant changes in the defaults (before --quick and --set).
DEMO_VARIANTS: dict[str, dict] = {"base": {}, "expressive": {}, "interleaved": {}}
TEACHER_VARIANTS = {
    "base": {},
    "expressive": {
        "pitch_bins": 16,
        "style_classes": 8,
        # 1,600 stories: pitch and style extraction runs at ~50x real time per core
        "world": {"train": 1600},
        "seq_len": 384,
        "mixture": {"expressive": 0.5, "interleaved": 0.35, "text": 0.15},
    },
}
QUICK_TEACHER_VARIANTS = {"base": {}, "expressive": {"pitch_bins": 4, "style_classes": 3}}


def _variant(variant: str, table: dict, flag: str) -> dict:
    if variant not in table:
        raise ConfigError(f"{flag}: {variant!r} is not one of {list(table)}")
    return {"variant": variant, **table[variant]}


def demo_settings(
    quick: bool = False, overrides: list[str] = (), variant: str = "base"
) -> DemoSettings:
    base = merged(_variant(variant, DEMO_VARIANTS, "--variant"), QUICK_DEMO if quick else {})
    data = apply_overrides(base, list(overrides))
    return from_dict(DemoSettings, data, prefix="demo")


def teacher_settings(
    quick: bool = False, overrides: list[str] = (), variant: str = "base"
) -> TeacherSettings:
    base = merged(
        _variant(variant, TEACHER_VARIANTS, "--variant"),
        QUICK_TEACHER if quick else {},
        QUICK_TEACHER_VARIANTS[variant] if quick else {},
    )
    data = apply_overrides(base, list(overrides))
    return from_dict(TeacherSettings, data, prefix="demo-teacher")


def settings_dict(s) -> dict:
    return to_dict(s)
