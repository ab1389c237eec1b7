"""`DemoSettings`: every size and step count of the demo, with the full and `--quick` presets.

Overrides come as `key=value` strings (`tinywave demo --set distill_steps=300`), checked like every
other config (an unknown key or a wrong type is a ConfigError naming it).
"""
from __future__ import annotations

import dataclasses

from ..config import ConfigError, apply_overrides, from_dict, to_dict


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """The teacher's shape; the student keeps its width (TinyWave) at `student_layers` depth."""
    num_hidden_layers: int = 6
    hidden_size: int = 128
    intermediate_size: int = 384
    num_attention_heads: int = 4
    num_key_value_heads: int = 4


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    # corpus: stories are split by story (test, validation, the rest for training)
    max_stories: int = 0                  # hand-written stories used (0: all 30)
    generated_stories: int = 240          # template stories added (see demo/stories.py)
    test_stories: int = 48                # each gives one sSC and one tSC pair
    valid_stories: int = 8
    train_voices: int = 6                 # pretraining voices; the target voice is held out
    voices_per_story: int = 1             # pretraining voices speaking each story (0: all)
    # tokens
    units: int = 64                       # MFCC k-means units
    units_fit_hours: float = 0.5          # training audio the unit k-means is fitted on (at most)
    pitch_bins: int = 16
    style_classes: int = 8
    expressive: bool = False              # train and score style/pitch/unit merged streams
    interleaved_weight: float = 0.2       # share of interleaved (speech/text) sequences
    # models and training
    teacher: ModelShape = dataclasses.field(default_factory=ModelShape)
    student_layers: int = 2
    seq_len: int = 512                    # >= a whole story (~300-400 units): no unseen positions
    batch_size: int = 4
    pretrain_steps: int = 200
    pretrain_lr: float = 3e-3
    lora_steps: int = 40
    lora_rank: int = 8
    lora_lr: float = 2e-3
    distill_steps: int = 200              # also the baseline's steps (same batches)
    distill_lr: float = 2e-3
    temperature: float = 2.0
    seed: int = 0
    # export check
    prompt_tokens: int = 40
    generate_tokens: int = 24

    def validate(self):
        if self.test_stories < 2 or self.valid_stories < 1:
            raise ConfigError("test_stories must be >= 2 (topic cloze pairs stories) and "
                              "valid_stories >= 1")
        if self.generated_stories < 0 or self.voices_per_story < 0:
            raise ConfigError("generated_stories and voices_per_story: must be >= 0")
        if self.units_fit_hours <= 0:
            raise ConfigError("units_fit_hours: must be > 0")
        if self.train_voices < 1:
            raise ConfigError("train_voices: must be >= 1")
        if not 1 <= self.student_layers < self.teacher.num_hidden_layers:
            raise ConfigError(f"student_layers: must be in [1, {self.teacher.num_hidden_layers})")
        if not 0 <= self.interleaved_weight < 1:
            raise ConfigError("interleaved_weight: must be in [0, 1)")
        for f in ("pretrain_steps", "lora_steps", "distill_steps", "prompt_tokens",
                  "generate_tokens", "seq_len", "batch_size", "units"):
            if getattr(self, f) < 1:
                raise ConfigError(f"{f}: must be >= 1")


# --quick: the same pipeline at toy sizes, for tests (< 3 min on 2 CPU cores).
QUICK = {"max_stories": 8, "generated_stories": 8, "test_stories": 4, "valid_stories": 2,
         "train_voices": 2, "units": 32, "pitch_bins": 8, "style_classes": 4,
         "teacher": {"num_hidden_layers": 3, "hidden_size": 64, "intermediate_size": 128,
                     "num_attention_heads": 4, "num_key_value_heads": 4},
         "student_layers": 1, "seq_len": 128, "batch_size": 4, "pretrain_steps": 30,
         "lora_steps": 6, "distill_steps": 20, "prompt_tokens": 16, "generate_tokens": 8}


def demo_settings(quick: bool = False, overrides: list[str] = ()) -> DemoSettings:
    data = dict(QUICK) if quick else {}
    data = apply_overrides(data, list(overrides))
    return from_dict(DemoSettings, data, prefix="demo")


def settings_dict(s: DemoSettings) -> dict:
    return to_dict(s)
