"""Token sequences to score, and how benchmark audio becomes one.

A `Seq` is a token id sequence plus `score_from`: the index of the first token whose
log-likelihood counts (tokens before it are context only). Token t >= 1 is predicted from
tokens [0, t), so `score_from` is at least 1.

Audio is tokenised the way SpiritLM is prompted with speech: bos, `[Speech]`, then the speech
tokens of the layout (base: deduplicated HuBERT units; expressive: style/pitch/HuBERT merged by
time, HuBERT and pitch deduplicated). Only the speech tokens are scored (`score_from` = 2): bos
and the marker are identical in the positive and the negative, and the marker's likelihood
says nothing about the audio.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..audio import SAMPLE_RATE, load_extractor, read_audio
from ..data.layout import SPEECH, join_spans, merge_streams
from ..errors import ConfigError, InputError, TinywaveError

AUDIO_SCORE_FROM = 2  # bos, [Speech]


@dataclasses.dataclass
class Seq:
    ids: np.ndarray
    score_from: int = 1
    name: str = ""
    seconds: float | None = None

    @property
    def num_scored(self) -> int:
        return len(self.ids) - self.score_from


def checked_seq(ids, where: str, score_from=1, seconds=None) -> Seq:
    """A Seq from untrusted values (a jsonl record); errors name `where`."""
    if not isinstance(ids, (list, tuple, np.ndarray)) or not all(
        isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids
    ):
        raise InputError(f"{where}: ids must be a list of integers")
    if not isinstance(score_from, int) or isinstance(score_from, bool) or score_from < 1:
        raise InputError(f"{where}: score_from must be an integer >= 1, got {score_from!r}")
    if len(ids) <= score_from:
        raise InputError(
            f"{where}: {len(ids)} tokens leave nothing to score from token {score_from} on"
        )
    if seconds is not None and (not isinstance(seconds, (int, float)) or not seconds > 0):
        raise InputError(f"{where}: seconds must be a positive number, got {seconds!r}")
    return Seq(
        np.asarray(ids, np.int64), score_from, where, None if seconds is None else float(seconds)
    )


class AudioTokenizer:
    """Benchmark audio -> Seq through a units extractor folder (`tinywave units fit` / HuBERT
    spec). `expressive` (default: the layout's) merges pitch and style tokens in."""

    def __init__(self, extractor_dir: str | Path, layout, expressive: bool | None = None):

        self.layout = layout
        self.expressive = layout.is_expressive if expressive is None else expressive
        if self.expressive and not layout.is_expressive:
            raise ConfigError(
                f"expressive: layout {layout.name} has no pitch/style tokens to tokenise audio "
                "expressively",
                param="expressive",
            )
        self.extractor = load_extractor(extractor_dir)
        self.streams = ("hubert", "pitch", "style") if self.expressive else ("hubert",)
        for s in self.streams:
            have = self.extractor.vocab_sizes.get(s)
            if have is None:
                raise InputError(
                    f"extractor {extractor_dir} gives no {s} tokens, which layout "
                    f"{layout.name} needs (expressive={self.expressive})"
                )
            if have > layout.stream_size(s):
                raise InputError(
                    f"extractor {extractor_dir} has {have} {s} units but layout "
                    f"{layout.name} has only {layout.stream_size(s)}"
                )
        self._cache: dict[str, tuple] = {}

    def units(self, path: str | Path) -> np.ndarray:
        """The file's speech token ids (merged streams, no bos or marker)."""
        return self._tokens(path)[0]

    def _tokens(self, path: str | Path) -> tuple[np.ndarray, float]:

        key = str(path)
        if key not in self._cache:
            wav = read_audio(path)
            try:
                streams = self.extractor.extract(wav)
            except TinywaveError as e:  # too short, silent...: name the file
                raise type(e)(f"{path}: {e}") from None
            ids, _ = merge_streams(self.layout, {s: streams[s] for s in self.streams}, where=key)
            self._cache[key] = (ids, len(wav) / SAMPLE_RATE)
        return self._cache[key]

    def __call__(self, path: str | Path) -> Seq:
        """The file as a scored sequence: bos, [Speech], its units (scored)."""

        ids, seconds = self._tokens(path)
        seq = join_spans(self.layout, [(SPEECH, ids)])
        return Seq(seq.astype(np.int64), AUDIO_SCORE_FROM, str(path), seconds)
