"""`tinywave speak`: speech in, speech out. An audio prompt -> units (a units folder's extractor)
-> a continuation by a speech LM (a tinywave checkpoint in JAX, or a GGUF file in llama.cpp) ->
the vocoder -> one wav: the prompt resynthesised, then the continuation.

HuBERT units only (the speech modality): the LM sees bos [Speech] and the prompt's deduplicated
units, and continues with HuBERT units until its eos or the token budget. The budget is --seconds
of speech at the prompt's own rate of distinct units per second. A vocoder with a duration
predictor gives each unit its predicted frame count (SpiritLM Base's way); one without gives
the prompt its extracted frames and each generated unit one frame.

Per-stage wall times (units, LM, vocoder; the first call of each includes its jit compilation)
and the real-time factor (all stages / seconds of speech written) are returned and printed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ..audio import load_extractor, read_audio
from ..checkpoint import load_model
from ..data.layout import SPEECH, dedup, join_spans, resolve_layout
from ..errors import ConfigError, InputError, OutputExistsError
from ..eval.gguf_run import llama_cpp_generate, load_llama_cpp
from ..generation import allowed_ids, generate_tokens
from .checkpoint import load_vocoder
from .synthesis import Vocoder


@dataclass
class SpeakResult:
    out: Path
    prompt_units: int  # extracted frames
    new_units: int  # generated (deduplicated) units
    prompt_seconds: float  # resynthesised prompt in the output
    new_seconds: float  # continuation in the output
    times: dict[str, float]  # stage -> wall seconds

    @property
    def total_s(self) -> float:
        return sum(self.times.values())

    @property
    def rtf(self) -> float:
        return self.total_s / (self.prompt_seconds + self.new_seconds)


class Speaker:
    """The three stages loaded once (extractor, LM, vocoder), so that a loop of prompts pays the
    loading and compilation only on its first call. `model`: a tinywave checkpoint folder (JAX)
    or a .gguf file (llama.cpp, on `threads` threads: 1 by default, as a small speech LM decodes
    fastest on one thread and several spin against each other on a busy machine; measured 1 ms
    per token on 1 thread, 60-100 ms on 2 under load, for the demo teacher at q8_0)."""

    def __init__(self, model, units_dir, vocoder_dir, layout: str | None = None, threads: int = 1):

        config, params, _ = load_vocoder(vocoder_dir)
        self.vocoder = Vocoder(config, params)
        self.extractor = load_extractor(units_dir)
        self.rate = self.extractor.frame_rates["hubert"]
        voc_rate = config.sampling_rate / config.hop_length
        if abs(self.rate - voc_rate) > 1e-6:
            raise ConfigError(
                f"{units_dir} gives {self.rate:g} units per second but {vocoder_dir} expects "
                f"{voc_rate:g} ({config.sampling_rate} Hz / {config.hop_length} samples per unit)"
            )
        model = Path(model)
        if model.suffix == ".gguf":
            if not model.is_file():
                raise InputError(f"{model}: GGUF file not found")
            self.llm = load_llama_cpp(model, logits_all=False, n_threads=threads)
            self.lm, vocab = None, self.llm.n_vocab()
        else:
            params, lm_config, _ = load_model(model)
            self.llm, self.lm, vocab = None, (params, lm_config), lm_config.vocab_size
        self.layout = resolve_layout(layout, vocab)

    def _continue(self, prompt_ids, new_tokens, greedy, temperature, top_p, seed) -> list[int]:

        if self.llm is not None:
            eos = self.llm.token_eos()
            stops = () if eos is None or eos < 0 else (int(eos),)
            return llama_cpp_generate(
                self.llm,
                prompt_ids,
                new_tokens,
                banned=~allowed_ids(self.layout, self.llm.n_vocab(), "speech", stops),
                stop_ids=stops,
                greedy=greedy,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
            )
        return generate_tokens(
            self.lm,
            [prompt_ids.tolist()],
            layout=self.layout,
            modality="speech",
            max_new_tokens=new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            greedy=greedy,
            batch_size=1,
        )[0]["ids"]

    def __call__(
        self,
        prompt_wav: str | Path,
        out_wav: str | Path,
        *,
        seconds: float = 5.0,
        greedy: bool = False,
        temperature: float = 0.9,
        top_p: float = 0.95,
        seed: int = 0,
        speaker: int | None = None,
        style: int | None = None,
        overwrite: bool = False,
    ) -> SpeakResult:

        prompt_wav, out_wav = Path(prompt_wav), Path(out_wav)
        if not seconds > 0:
            raise ConfigError(f"seconds: {seconds} must be > 0", param="seconds")
        if out_wav.exists() and not overwrite:
            raise OutputExistsError(
                f"{out_wav} exists (pass overwrite=True to replace it)", param=(None, "overwrite")
            )
        if out_wav.exists() and prompt_wav.exists() and os.path.samefile(out_wav, prompt_wav):
            raise ConfigError(f"{out_wav} is the prompt: choose another output file")
        voc, layout, times = self.vocoder, self.layout, {}

        t = time.perf_counter()
        wav = read_audio(prompt_wav)
        try:
            frames = self.extractor.extract(wav)["hubert"][0]
        except InputError as e:  # too short for one frame, silent, ...
            raise InputError(f"{prompt_wav}: {e}") from None
        if frames.size == 0:
            raise InputError(f"{prompt_wav}: shorter than one unit frame ({1 / self.rate:.3f} s)")
        units, _ = dedup(frames)
        times["units"] = time.perf_counter() - t

        t = time.perf_counter()
        new_tokens = max(1, round(seconds * units.size / (frames.size / self.rate)))
        prompt_ids = join_spans(
            layout, [(SPEECH, layout.unit_ids("hubert", units, str(prompt_wav)))]
        )
        ids = np.asarray(self._continue(prompt_ids, new_tokens, greedy, temperature, top_p, seed))
        lo = layout.offset("hubert")
        new = ids[(ids >= lo) & (ids < lo + layout.num_units)] - lo  # eos already cut off
        times["lm"] = time.perf_counter() - t

        t = time.perf_counter()
        where = f"{prompt_wav} + continuation"
        kw = dict(speaker=speaker, style=style)  # None: id 0 where the vocoder has the embedding
        if voc.config.dur_predictor_params is not None:
            # the frames prepare(dedup=True) would give, with the prompt's share of them
            codes, _ = dedup(np.concatenate([units, new]))
            voc.prepare(codes, where=where, **kw)  # id checks before the duration predictor
            durations = voc.durations(codes)
            both = voc.prepare(np.repeat(codes, durations), where=where, **kw)
            prompt_frames = int(durations[: units.size].sum())
        else:
            both = voc.prepare(np.concatenate([frames, new]), where=where, **kw)
            prompt_frames = frames.size
        out = voc.synthesize(both)
        times["vocoder"] = time.perf_counter() - t
        rate = voc.sample_rate
        _write_wav(out_wav, out, rate)
        prompt_s = prompt_frames * voc.hop_length / rate
        return SpeakResult(
            out_wav, int(frames.size), int(new.size), prompt_s, out.size / rate - prompt_s, times
        )


def _write_wav(path: Path, wav: np.ndarray, rate: int) -> None:
    """PCM-16 wav, written to a temporary sibling and renamed into place."""

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        sf.write(str(tmp), np.clip(wav, -1, 1), rate, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def speak(
    prompt_wav: str | Path,
    out_wav: str | Path,
    *,
    model: str | Path,
    units_dir: str | Path,
    vocoder_dir: str | Path,
    layout: str | None = None,
    threads: int = 1,
    **options,
) -> SpeakResult:
    """One prompt through `Speaker` (options: seconds, greedy, temperature, top_p, seed,
    speaker, style, overwrite)."""
    if Path(out_wav).exists() and not options.get("overwrite"):  # before loading anything
        raise OutputExistsError(
            f"{out_wav} exists (pass overwrite=True to replace it)", param=(None, "overwrite")
        )
    return Speaker(model, units_dir, vocoder_dir, layout, threads)(prompt_wav, out_wav, **options)
