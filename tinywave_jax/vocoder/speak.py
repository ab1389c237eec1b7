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

from ..errors import ConfigError, InputError, OutputExistsError


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


def _continue_units(model, prompt_ids, layout_spec, new_tokens, greedy, temperature, top_p, seed):
    """(layout, generated ids) from a tinywave checkpoint folder or a .gguf file."""
    from ..eval.sequences import resolve_layout
    from ..generation import allowed_ids, generate_tokens

    model = Path(model)
    if model.suffix == ".gguf":
        from ..convert.gguf_run import llama_cpp_generate, load_llama_cpp

        if not model.is_file():
            raise InputError(f"{model}: GGUF file not found")
        llm = load_llama_cpp(model, logits_all=False)
        layout = resolve_layout(layout_spec, llm.n_vocab())
        eos = llm.token_eos()
        stops = () if eos is None or eos < 0 else (int(eos),)
        banned = ~allowed_ids(layout, llm.n_vocab(), "speech", stops)
        ids = llama_cpp_generate(
            llm,
            prompt_ids(layout),
            new_tokens,
            banned=banned,
            stop_ids=stops,
            greedy=greedy,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
        )
        return layout, ids
    from ..checkpoint import load_model

    params, config, _ = load_model(model)
    layout = resolve_layout(layout_spec, config.vocab_size)
    out = generate_tokens(
        (params, config),
        [prompt_ids(layout).tolist()],
        layout=layout,
        modality="speech",
        max_new_tokens=new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        greedy=greedy,
        batch_size=1,
    )[0]
    return layout, out["ids"]


def _write_wav(path: Path, wav: np.ndarray, rate: int) -> None:
    """PCM-16 wav, written to a temporary sibling and renamed into place."""
    import soundfile as sf

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
    seconds: float = 5.0,
    greedy: bool = False,
    temperature: float = 0.9,
    top_p: float = 0.95,
    seed: int = 0,
    layout: str | None = None,
    speaker: int | None = None,
    style: int | None = None,
    overwrite: bool = False,
) -> SpeakResult:
    from ..audio import load_extractor, read_audio
    from ..data.layout import SPEECH, dedup, join_spans
    from .checkpoint import load_vocoder
    from .synthesis import Vocoder

    prompt_wav, out_wav = Path(prompt_wav), Path(out_wav)
    if not seconds > 0:
        raise ConfigError(f"--seconds: {seconds} must be > 0")
    if out_wav.exists() and not overwrite:
        raise OutputExistsError(f"{out_wav} exists (pass --overwrite to replace it)")
    if out_wav.exists() and os.path.samefile(out_wav, prompt_wav):
        raise ConfigError(f"{out_wav} is the prompt: choose another output file")
    config, params, _ = load_vocoder(vocoder_dir)
    voc = Vocoder(config, params)
    times = {}

    t = time.perf_counter()
    extractor = load_extractor(units_dir)
    rate = extractor.frame_rates["hubert"]
    voc_rate = config.sampling_rate / config.hop_length
    if abs(rate - voc_rate) > 1e-6:
        raise ConfigError(
            f"{units_dir} gives {rate:g} units per second but {vocoder_dir} expects {voc_rate:g} "
            f"({config.sampling_rate} Hz / {config.hop_length} samples per unit)"
        )
    wav = read_audio(prompt_wav)
    try:
        frames = extractor.extract(wav)["hubert"][0]
    except InputError as e:  # too short for one frame, silent, ...
        raise InputError(f"{prompt_wav}: {e}") from None
    if frames.size == 0:
        raise InputError(f"{prompt_wav}: shorter than one unit frame ({1 / rate:.3f} s)")
    units, _ = dedup(frames)
    times["units"] = time.perf_counter() - t

    t = time.perf_counter()
    new_tokens = max(1, round(seconds * units.size / (frames.size / rate)))
    layout, ids = _continue_units(
        model,
        lambda lay: join_spans(lay, [(SPEECH, lay.unit_ids("hubert", units, str(prompt_wav)))]),
        layout,
        new_tokens,
        greedy,
        temperature,
        top_p,
        seed,
    )
    lo = layout.offset("hubert")
    ids = np.asarray(ids, np.int64)
    new = ids[(ids >= lo) & (ids < lo + layout.num_units)] - lo  # eos already cut off
    times["lm"] = time.perf_counter() - t

    t = time.perf_counter()
    where = f"{prompt_wav} + continuation"
    kw = dict(speaker=speaker, style=style)  # None: id 0 where the vocoder has the embedding
    if config.dur_predictor_params is not None:
        whole = voc.synthesize(
            voc.prepare(np.concatenate([units, new]), dedup=True, where=where, **kw)
        )
        # the prompt's share: its units' predicted frames
        prompt_part = voc.prepare(units, dedup=True, where=str(prompt_wav), **kw).frames
    else:
        whole = voc.synthesize(voc.prepare(np.concatenate([frames, new]), where=where, **kw))
        prompt_part = frames.size
    times["vocoder"] = time.perf_counter() - t
    _write_wav(out_wav, whole, config.sampling_rate)
    prompt_s = prompt_part * config.hop_length / config.sampling_rate
    return SpeakResult(
        out_wav,
        int(frames.size),
        int(new.size),
        prompt_s,
        whole.size / config.sampling_rate - prompt_s,
        times,
    )
