"""`tinywave vocoder eval`: how well a vocoder resynthesises held-out speech from its units.

Each utterance's units are extracted from the original audio (the units folder's extractor,
one unit per frame, not deduplicated) and synthesised by the vocoder. Per utterance:

  WER       pocketsphinx (the English model its wheel ships, default settings) on the
            resynthesis, and on the original audio with the same recogniser: the original's
            WER is the floor the recogniser itself sets; the gap is the vocoder's cost
  STOI      pystoi's short-time objective intelligibility of the resynthesis against the
            original (cut to the resynthesis's frames * hop samples)
  agreement the resynthesis re-tokenised by the same extractor, frame by frame against the
            input units (frames the re-extraction lacks count as disagreements)

Transcripts and hypotheses are compared as lowercase words ([a-z']+, pocketsphinx's
alternate-pronunciation marks "(2)" dropped). WER and agreement pool over utterances (errors /
reference words, equal frames / frames); STOI is the mean. 95 % bootstrap intervals resample
utterances (`eval.bootstrap`), the WER gap paired on the same resamples.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..audio import load_extractor, read_audio
from ..errors import ConfigError, InputError
from ..eval.bootstrap import interval, resamples
from .checkpoint import load_vocoder
from .synthesis import Vocoder

TARGET_WER_GAP = 15.0  # points: resynthesis WER at most this far above the original's
TARGET_AGREEMENT = 80.0  # % of frames


@dataclass
class Score:
    path: str
    words: int  # reference words
    errors_original: int  # substitutions + deletions + insertions
    errors_resynth: int
    stoi: float
    frames: int
    agree: int  # frames whose re-extracted unit equals the input unit
    hyp_original: str
    hyp_resynth: str


def words_of(text: str) -> list[str]:
    return re.findall(r"[a-z']+", re.sub(r"\(\d+\)", "", text.lower()))


def word_errors(reference: str, hypothesis: str) -> int:
    """Substitutions + deletions + insertions (jiwer's alignment) of `hypothesis` against a
    non-empty `reference`, as lowercase words."""
    import jiwer  # the vocoder extra (pocketsphinx, jiwer, pystoi)

    ref, hyp = " ".join(words_of(reference)), " ".join(words_of(hypothesis))
    if not hyp:
        return len(ref.split())
    out = jiwer.process_words(ref, hyp)
    return out.substitutions + out.deletions + out.insertions


class Recognizer:
    """pocketsphinx's US English decoder (the model its wheel ships), 16 kHz, whole utterances."""

    def __init__(self):
        try:
            import jiwer  # noqa: F401  (scored later: missing, fail here, before any synthesis)
            import pystoi  # noqa: F401
            from pocketsphinx import Decoder  # the vocoder extra
        except ImportError:
            raise ConfigError(
                "vocoder eval needs pocketsphinx, jiwer and pystoi: pip install -e '.[vocoder]'"
            ) from None
        self.decoder = Decoder(samprate=16000, loglevel="FATAL")

    def __call__(self, wav: np.ndarray) -> str:
        pcm = (np.clip(wav, -1, 1) * 32767).astype("<i2").tobytes()
        self.decoder.start_utt()
        self.decoder.process_raw(pcm, full_utt=True)
        self.decoder.end_utt()
        hyp = self.decoder.hyp()
        return hyp.hypstr if hyp is not None else ""


def score_pair(
    path: str,
    original: np.ndarray,
    resynth: np.ndarray,
    units: np.ndarray,
    transcript: str,
    extractor,
    recognize,
) -> Score:
    """One utterance's Score: `original` audio, its `resynth`esis (from `units`, one per frame),
    the reference `transcript`; `extractor` re-tokenises, `recognize` is the ASR."""
    from pystoi import stoi  # the vocoder extra

    if not words_of(transcript):
        raise InputError(f"{path}: the transcript has no words to score WER against")
    n = resynth.size
    clean = np.pad(original[:n], (0, max(0, n - original.size)))
    try:
        again = extractor.extract(resynth)["hubert"][0]
    except InputError:  # silent or too short: nothing re-extracted, nothing agrees
        again = np.zeros(0, np.int64)
    m = min(again.size, units.size)
    hyp_o, hyp_r = recognize(original), recognize(resynth)
    return Score(
        path=path,
        words=len(words_of(transcript)),
        errors_original=word_errors(transcript, hyp_o),
        errors_resynth=word_errors(transcript, hyp_r),
        stoi=float(stoi(clean, resynth, 16000, extended=False)),
        frames=int(units.size),
        agree=int(np.sum(again[:m] == units[:m])),
        hyp_original=hyp_o,
        hyp_resynth=hyp_r,
    )


def summarize(scores: list[Score], draws: int = 2000, seed: int = 0) -> dict:
    """Pooled WERs (%), their gap, mean STOI and unit agreement (%), each with `<key>_ci`."""

    words = np.array([s.words for s in scores], float)
    err_o = np.array([s.errors_original for s in scores], float)
    err_r = np.array([s.errors_resynth for s in scores], float)
    stoi = np.array([s.stoi for s in scores])
    frames = np.array([s.frames for s in scores], float)
    agree = np.array([s.agree for s in scores], float)
    every = np.arange(len(scores))[None]  # the statistic on all utterances: one "resample"
    idx = resamples(len(scores), draws, seed)
    stats = {
        "wer_original": lambda i: 100 * err_o[i].sum(1) / words[i].sum(1),
        "wer_resynth": lambda i: 100 * err_r[i].sum(1) / words[i].sum(1),
        "wer_gap": lambda i: 100 * (err_r[i].sum(1) - err_o[i].sum(1)) / words[i].sum(1),
        "stoi": lambda i: stoi[i].mean(1),
        "unit_agreement": lambda i: 100 * agree[i].sum(1) / frames[i].sum(1),
    }
    out: dict = {"utterances": len(scores), "words": int(words.sum()), "frames": int(frames.sum())}
    for key, fn in stats.items():
        digits = 4 if key == "stoi" else 2
        out[key] = round(float(fn(every)[0]), digits)
        out[f"{key}_ci"] = interval(fn(idx), digits)
    out["targets"] = {
        f"wer_gap_at_most_{TARGET_WER_GAP:g}": out["wer_gap"] <= TARGET_WER_GAP,
        f"unit_agreement_at_least_{TARGET_AGREEMENT:g}": out["unit_agreement"] >= TARGET_AGREEMENT,
    }
    return out


def speaker_ids(items, config, info: dict, speaker: int | None) -> list[int | None]:
    """Each item's speaker id: `speaker` when given; else, for a multi-speaker vocoder, the
    item's speaker name in the vocoder's training speakers (provenance "speakers")."""
    if speaker is not None or not config.has_speaker:
        return [speaker] * len(items)
    names = info.get("provenance", {}).get("speakers")
    if not names:
        raise ConfigError(
            "the vocoder has a speaker embedding but records no training speakers "
            "(an imported vocoder): choose one with speaker=ID",
            param=(None, "speaker"),
        )
    out = []
    for item in items:
        if item.speaker not in names:
            raise InputError(
                f"{item.path}: speaker {item.speaker!r} is not one the vocoder was trained on "
                f"({', '.join(names)}); choose one with speaker=ID",
                param=(None, "speaker"),
            )
        out.append(names.index(item.speaker))
    return out


def evaluate_vocoder(
    vocoder_dir,
    items,
    units_dir,
    speaker: int | None = None,
    limit: int | None = None,
    draws: int = 2000,
    seed: int = 0,
    log=print,
) -> dict:
    """{"summary": summarize(...), "utterances": [Score as dict, ...]} for `items`
    (`corpus.Item`s with transcripts; the first `limit`)."""

    config, params, info = load_vocoder(vocoder_dir)
    extractor = load_extractor(units_dir)
    rate = extractor.frame_rates["hubert"]
    if abs(rate * config.hop_length - config.sampling_rate) > 1e-6:
        raise ConfigError(
            f"{units_dir} gives {rate:g} units per second; {vocoder_dir} makes "
            f"{config.sampling_rate / config.hop_length:g}"
        )
    if config.num_f0_tokens or config.num_style_tokens:
        raise ConfigError(
            "num_f0_tokens / num_style_tokens: vocoder eval resynthesises from units only"
        )
    items = list(items)[:limit]
    if not items:
        raise InputError("no utterances to evaluate")
    missing = [str(i.path) for i in items if not i.transcript]
    if missing:
        raise InputError(
            f'{missing[0]}: no transcript (a manifest\'s "transcript" or a sibling .txt)'
            + (f"; {len(missing)} utterances lack one" if len(missing) > 1 else "")
        )
    speakers = speaker_ids(items, config, info, speaker)
    voc, recognize, scores = Vocoder(config, params), Recognizer(), []
    for k, (item, spk) in enumerate(zip(items, speakers)):
        where = str(item.path)
        wav = read_audio(item.path)
        try:
            units = extractor.extract(wav)["hubert"][0]
        except InputError as e:
            raise InputError(f"{where}: {e}") from None
        resynth = voc.synthesize(voc.prepare(units, speaker=spk, where=where))
        scores.append(score_pair(where, wav, resynth, units, item.transcript, extractor, recognize))
        s = scores[-1]
        log(
            f"vocoder eval: {k + 1}/{len(items)} {Path(where).name}: WER original "
            f"{100 * s.errors_original / s.words:.0f} %, resynthesis "
            f"{100 * s.errors_resynth / s.words:.0f} %, STOI {s.stoi:.3f}, agreement "
            f"{100 * s.agree / s.frames:.0f} %"
        )
    return {
        "summary": summarize(scores, draws, seed),
        "utterances": [asdict(s) for s in scores],
    }


def report(summary: dict) -> str:
    """The summary as printed lines."""

    def fmt(key, unit=" %", digits=1):
        lo, hi = summary[f"{key}_ci"]
        return f"{summary[key]:.{digits}f}{unit} [{lo:.{digits}f}, {hi:.{digits}f}]"

    met = summary["targets"]
    return "\n".join(
        [
            f"vocoder eval on {summary['utterances']} held-out utterances "
            f"({summary['words']} words, {summary['frames']} frames; 95 % bootstrap intervals):",
            f"  pocketsphinx WER, original audio   {fmt('wer_original')}",
            f"  pocketsphinx WER, resynthesis      {fmt('wer_resynth')}",
            f"  WER gap (resynthesis - original)   {fmt('wer_gap', ' points')}",
            f"  STOI against the original          {fmt('stoi', '', 3)}",
            f"  unit agreement                     {fmt('unit_agreement')}",
            "  targets: "
            + ", ".join(
                f"{k.replace('_', ' ')}: {'met' if v else 'NOT met'}" for k, v in met.items()
            ),
        ]
    )
