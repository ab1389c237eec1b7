"""Units -> waveform with a CodeHiFiGAN: input checks, duration expansion, batches, streaming.

A `Vocoder` holds a config and params and jit-compiles the generator once per padded shape.
Frame counts are padded up to a multiple of BUCKET_FRAMES with the padding masked out (model.py),
which gives exactly the unpadded result and few compilations.

Streaming (`Vocoder.stream`) cuts the frames into chunks and synthesises each inside a window that
adds the generator's receptive field (`VocoderConfig.frame_context`) on both sides, keeping the
chunk's own samples: every sample then sees exactly the frames it sees in whole-utterance
synthesis, so the chunks concatenate to the whole-utterance waveform (no crossfade needed, no
seam). All windows have one shape (frames beyond the utterance are masked), so one compilation
serves every chunk.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import jax
import numpy as np

from ..errors import ConfigError, InputError
from .config import VocoderConfig
from .model import CodeHiFiGAN

BUCKET_FRAMES = 32


def check_ids(ids: np.ndarray, size: int, what: str, where: str) -> None:
    """InputError naming the first id outside [0, size) and its position."""
    bad = np.flatnonzero((ids < 0) | (ids >= size))
    if bad.size:
        i = int(bad[0])
        raise InputError(
            f"{where}: {what} id {int(ids[i])} at position {i} is outside the vocoder's "
            f"dictionary of {size} ids (0..{size - 1})"
            + (f"; {bad.size} ids are out of range" if bad.size > 1 else "")
        )


def _ids(values, what: str, where: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"{where}: {what} must be a 1-D sequence of integer ids")
    return arr.astype(np.int64)


def upsample_codes(codes: np.ndarray, ratio: int, frames: int, what: str, where: str):
    """Codes at 1/ratio of the unit rate repeated to `frames` frames, the last one repeated to
    fill (CodeHiFiGANVocoderModel.upsample; it accepts a count off by at most one code)."""
    if abs(codes.size * ratio - frames) / ratio > 1:
        raise InputError(
            f"{where}: {codes.size} {what} at 1 per {ratio} units do not cover {frames} units "
            f"(expected about {frames / ratio:.1f})"
        )
    up = np.repeat(codes, ratio)[:frames]
    if up.size < frames:
        up = np.concatenate([up, np.full(frames - up.size, up[-1], up.dtype)])
    return up


@dataclass(frozen=True)
class FrameInputs:
    """One utterance's generator inputs at the unit frame rate."""

    codes: np.ndarray
    f0_codes: np.ndarray | None = None
    style_codes: np.ndarray | None = None
    speaker: int | None = None
    style: int | None = None

    @property
    def frames(self) -> int:
        return int(self.codes.size)

    def window(self, start: int, size: int) -> tuple[dict, np.ndarray]:
        """Arrays for frames [start, start + size) (may reach past either end: id 0, masked)."""
        lo, hi = max(start, 0), min(start + size, self.frames)
        mask = np.zeros(size, np.float32)
        mask[lo - start : hi - start] = 1

        def cut(a):
            out = np.zeros(size, np.int32)
            out[lo - start : hi - start] = a[lo:hi]
            return out

        arrays = {"codes": cut(self.codes)}
        for key in ("f0_codes", "style_codes"):
            if getattr(self, key) is not None:
                arrays[key] = cut(getattr(self, key))
        for key in ("speaker", "style"):
            if getattr(self, key) is not None:
                arrays[key] = np.int32(getattr(self, key))
        return arrays, mask


class Vocoder:
    """A CodeHiFiGAN with its params, ready to synthesise (float32, the default jax device)."""

    def __init__(self, config: VocoderConfig, params: dict):

        self.config, self.params = config, params
        model = CodeHiFiGAN(config)
        self._generate = jax.jit(lambda p, kw, mask: model.apply({"params": p}, mask=mask, **kw))
        self._durations = jax.jit(
            lambda p, codes, mask: model.apply(
                {"params": p}, codes, mask, method=CodeHiFiGAN.durations
            )
        )

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def sample_rate(self) -> int:
        return self.config.sampling_rate

    def prepare(
        self,
        units: Sequence[int] | np.ndarray,
        f0_codes=None,
        style_codes=None,
        speaker: int | None = None,
        style: int | None = None,
        dedup: bool = False,
        where: str = "units",
    ) -> FrameInputs:
        """Checks one utterance's ids and brings them to the frame rate. `dedup`: collapse runs of
        equal units and let the duration predictor choose each unit's frame count (SpiritLM's
        default for its Base vocoder); pitch / style codes then give one code per kept unit."""
        c = self.config
        units = _ids(units, "units", where)
        if units.size == 0:
            raise InputError(f"{where}: no units to synthesise")
        check_ids(units, c.num_embeddings, "unit", where)
        conds = {}
        for key, given, size in (
            ("f0_codes", f0_codes, c.num_f0_tokens),
            ("style_codes", style_codes, c.num_style_tokens),
        ):
            if not size:
                if given is not None:
                    raise InputError(f"{where}: this vocoder takes no {key}")
                continue
            if given is None:
                raise InputError(f"{where}: this vocoder needs {key} ({size} ids)")
            conds[key] = _ids(given, key, where)
            check_ids(conds[key], size, key.replace("_codes", " code"), where)
        for key, given, on, size, field in (
            ("speaker", speaker, c.has_speaker, c.num_speakers, "multispkr"),
            ("style", style, c.has_style, c.num_styles, "multistyle"),
        ):
            if on:
                given = 0 if given is None else int(given)
                check_ids(np.array([given]), size, key, where)
                conds[key] = given
            elif given is not None:
                raise InputError(f"{where}: this vocoder has no {key} embedding ({field} is off)")
        if dedup:
            if c.dur_predictor_params is None:
                raise ConfigError("dedup: this vocoder has no duration predictor")
            keep = np.concatenate([[True], units[1:] != units[:-1]])
            units = units[keep]
            durations = self.durations(units)
            for key in ("f0_codes", "style_codes"):
                if key in conds:
                    if conds[key].size != units.size:
                        raise InputError(
                            f"{where}: {conds[key].size} {key} for {units.size} deduplicated units"
                        )
                    conds[key] = np.repeat(conds[key], durations)
            units = np.repeat(units, durations)
        else:
            for key, ratio in (("f0_codes", c.f0_ratio), ("style_codes", c.style_ratio)):
                if key in conds:
                    conds[key] = upsample_codes(conds[key], ratio, units.size, key, where)
        return FrameInputs(units.astype(np.int32), **conds)

    def durations(self, units: np.ndarray) -> np.ndarray:
        """Frames per unit from the duration predictor (units already deduplicated)."""
        n = units.size
        size = -(-n // BUCKET_FRAMES) * BUCKET_FRAMES
        codes = np.zeros((1, size), np.int32)
        codes[0, :n] = units
        mask = (np.arange(size) < n)[None].astype(np.float32)
        return np.asarray(self._durations(self.params, codes, mask))[0, :n]

    def synthesize_batch(self, batch: Sequence[FrameInputs]) -> list[np.ndarray]:
        """Waveforms (float32, frames * hop samples each) of several utterances in one call."""
        longest = max(x.frames for x in batch)
        size = -(-longest // BUCKET_FRAMES) * BUCKET_FRAMES
        windows = [x.window(0, size) for x in batch]
        kw = {k: np.stack([w[0][k] for w in windows]) for k in windows[0][0]}
        mask = np.stack([w[1] for w in windows])
        wav = np.asarray(self._generate(self.params, kw, mask))
        return [wav[i, : x.frames * self.hop_length] for i, x in enumerate(batch)]

    def synthesize(self, inputs: FrameInputs) -> np.ndarray:
        return self.synthesize_batch([inputs])[0]

    def stream(
        self,
        inputs: FrameInputs,
        chunk_frames: int = 25,
        context: tuple[int, int] | None = None,
    ) -> Iterator[np.ndarray]:
        """Yields the waveform chunk by chunk (chunk_frames * hop samples, the last one shorter);
        concatenated they equal `synthesize(inputs)`. `context`: frames of (left, right) context
        per chunk, default the receptive field (less is allowed, and then no longer exact)."""
        if chunk_frames < 1:
            raise ConfigError(f"chunk_frames: {chunk_frames} must be >= 1")
        left, right = self.config.frame_context() if context is None else context
        size = left + chunk_frames + right
        hop = self.hop_length
        for start in range(0, inputs.frames, chunk_frames):
            kw, mask = inputs.window(start - left, size)
            kw = {k: np.asarray(v)[None] for k, v in kw.items()}
            wav = np.asarray(self._generate(self.params, kw, mask[None]))[0]
            n = min(chunk_frames, inputs.frames - start)
            yield wav[left * hop : (left + n) * hop]
