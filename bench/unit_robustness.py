"""How speaker-invariant are spectral units? Cross-voice spoken-word identification, no model.

    .venv/bin/python bench/unit_robustness.py MANIFEST [--per-voice 40] [--fit-per-voice 15]
        [--seed 0] [--min-letters 4] [--config NAME ...] [--units-dir DIR ...] [--hold-out VOICE]

MANIFEST is a speech manifest (jsonl: `path` relative to its folder, `speaker`, `words` as
[[word, start_s, end_s], ...]), e.g. a `demo-teacher` workdir's speech/pretrain.jsonl. A seeded
`--per-voice` utterances of every voice are the probe; each word (`--min-letters`+ letters) is
cut from the utterance's units by frame start time and deduplicated, as the teacher sees it.
Each config fits k-means with the library's code (`phonetic_features`, `fit_kmeans`) on another
seeded `--fit-per-voice` utterances of every voice, disjoint from the probe; `--units-dir`
probes an already-fitted units folder as it is. `--config` names are CONFIGS below (the
library's features remove the mean only: no variance normalisation is offered; `*_lda*` configs
fit the library's LDA projection on the fit utterances' word times first; `spk_*` and `vtln_*`
normalise each voice with its own statistics and vocal-tract-length warp, given the speaker
labels (probe-only); `uvtln*` are the library's VTLN, `units fit --vtln`: each utterance warped
by the factor its own first seconds choose, no labels). One JSON line
per config, then a table:
  cross_acc    for each word token, its nearest token of the OTHER voices by normalised edit
               distance (Levenshtein / longer length) is the same word (ties: the share of the
               tied nearest that are); chance_cross: a random other-voice token is.
  pair_acc     the same with one other voice at a time as the candidates, averaged over the
               ordered voice pairs: a pool the size of within_acc's.
  within_acc   the same among the other tokens of its own voice (chance_within likewise).
  d_same, d_diff   mean normalised distance of cross-voice pairs of the same / different words.
  per_voice    cross_acc of each voice's tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
from rapidfuzz.distance import Levenshtein
from rapidfuzz.process import cdist

from tinywave_jax.audio import load_extractor, vtln
from tinywave_jax.audio.features import (
    SpectralConfig,
    frame_features,
    log_mel,
    phonetic_features,
    stack_context,
    timestamps,
)
from tinywave_jax.audio.io import read_audio
from tinywave_jax.audio.kmeans import fit_kmeans, nearest_centroid
from tinywave_jax.audio.lda import fit_word_lda, project
from tinywave_jax.data.layout import dedup
from tinywave_jax.errors import InputError
from tinywave_jax.jsonl import iter_jsonl

# name -> (k-means units, SpectralConfig changes); "current" is demo-teacher's (settings.py)
CURRENT = dict(frame_rate=50.0, window_seconds=0.025, cmn_seconds=3.0)
CONFIGS = {
    "current": (128, CURRENT),
    "utt_cmn": (128, {**CURRENT, "cmn_seconds": 0.0}),  # the whole utterance's mean
    "no_cmn": (128, {**CURRENT, "cmn": False}),
    # the sounding frames' mean as `current`, over the whole utterance (any under 60 s)
    "cmn_60s": (128, {**CURRENT, "cmn_seconds": 60.0}),
    # per frame the mean of all frames so far (the first 3 s for the head): causal, so usable
    # on cloze benchmarks, unlike utt_cmn
    "running": (128, {**CURRENT, "cmn_running": True}),
    "running_1s": (128, {**CURRENT, "cmn_seconds": 1.0, "cmn_running": True}),
    "mfcc8": (128, {**CURRENT, "n_mfcc": 8}),
    "k64": (64, CURRENT),
    "k256": (256, CURRENT),
    "25hz": (128, {**CURRENT, "frame_rate": 25.0, "window_seconds": 0.04}),
    # k-means on an LDA projection fitted on the fit utterances' word times (audio/lda.py)
    "running_lda": (128, {**CURRENT, "cmn_running": True, "lda_dims": 20, "lda_bins": 8}),
    "running_lda_ctx4": (
        128,
        {**CURRENT, "cmn_running": True, "context_frames": 4, "lda_dims": 40, "lda_bins": 8},
    ),
    "25hz_lda_ctx2": (
        128,
        {
            **CURRENT,
            "frame_rate": 25.0,
            "window_seconds": 0.04,
            "cmn_running": True,
            "context_frames": 2,
            "lda_dims": 40,
            "lda_bins": 8,
        },
    ),
}
# speaker-level normalisation, given speaker labels (probe-only): each voice's statistics from
# its fit utterances (a held-out voice's from its probe utterances, as unsupervised adaptation
# would): "var" divides each feature by the voice's standard deviation, "meanvar" also removes
# the voice's mean; "speaker_vtln" warps each voice's mel filters by the factor (vtln.WARPS)
# that best fits a codebook shared by all voices
CTX4_LDA = {**CURRENT, "cmn_running": True, "context_frames": 4, "lda_dims": 40, "lda_bins": 8}
CONFIGS.update(
    {
        "spk_meanvar": (128, {**CURRENT, "cmn": False, "speaker_norm": "meanvar"}),
        "running_spk_var": (128, {**CURRENT, "cmn_running": True, "speaker_norm": "var"}),
        "spk_meanvar_lda_ctx4": (
            128,
            {**CTX4_LDA, "cmn": False, "cmn_running": False, "speaker_norm": "meanvar"},
        ),
        "running_spk_var_lda_ctx4": (128, {**CTX4_LDA, "speaker_norm": "var"}),
        "vtln_spk_meanvar": (
            128,
            {**CURRENT, "cmn": False, "speaker_norm": "meanvar", "speaker_vtln": True},
        ),
        "vtln_spk_meanvar_lda_ctx4": (
            128,
            {
                **CTX4_LDA,
                "cmn": False,
                "cmn_running": False,
                "speaker_norm": "meanvar",
                "speaker_vtln": True,
            },
        ),
        "vtln_running_lda_ctx4": (128, {**CTX4_LDA, "speaker_norm": "var", "speaker_vtln": True}),
        # the library's VTLN (audio/vtln.py, no speaker labels): each utterance's own warp,
        # chosen on its first `vtln_seconds` (0: all of it)
        "uvtln_running": (128, {**CURRENT, "cmn_running": True, "vtln": True, "vtln_seconds": 0.0}),
        "uvtln3s_running": (128, {**CURRENT, "cmn_running": True, "vtln": True}),
        "uvtln_running_lda_ctx4": (128, {**CTX4_LDA, "vtln": True, "vtln_seconds": 0.0}),
        "uvtln3s_running_lda_ctx4": (128, {**CTX4_LDA, "vtln": True}),
    }
)
LDA_KEYS = ("lda_dims", "lda_bins")  # fit settings, not SpectralConfig's
PROBE_KEYS = (*LDA_KEYS, "speaker_norm", "speaker_vtln")


def base_features(wav, spec: SpectralConfig, warp: float = 1.0) -> np.ndarray:
    """`phonetic_features` without context frames, the mel filters warped by `warp`."""
    return frame_features(log_mel(wav, spec, warp), spec)


def speaker_stats(feats: list) -> tuple:
    x = np.concatenate(feats).astype(np.float64)
    return x.mean(axis=0), x.std(axis=0) + 1e-6


def normalise(f, stats, how):
    mean, std = stats
    return ((f - mean) / std if how == "meanvar" else f / std).astype(np.float32)


def choose_warps(wavs_by_voice: dict, spec, how, seed: int) -> dict:
    """voice -> the vtln.WARPS factor chosen for all of the voice's speaker-normalised frames at
    once: `vtln.fit_codebook` with one voice in place of one file."""
    per_voice = []
    for wavs in wavs_by_voice.values():
        cands = [vtln.candidates(w, spec) for w in wavs]  # each [warps, frames, dim]
        per_warp = [[c[i] for c in cands] for i in range(len(vtln.WARPS))]
        per_voice.append(
            np.stack(
                [
                    np.concatenate([normalise(f, speaker_stats(fs), how) for f in fs])
                    for fs in per_warp
                ]
            )
        )
    _, choice = vtln.fit_codebook(per_voice, dataclasses.replace(spec, vtln_seconds=0.0), seed)
    return {v: vtln.WARPS[i] for v, i in zip(wavs_by_voice, choice)}


def normalised_distances(a: list, b: list) -> np.ndarray:
    """[len(a), len(b)] Levenshtein distance / the longer length, between unit sequences."""
    return cdist(a, b, scorer=Levenshtein.normalized_distance, dtype=np.float32)


def _nn_accuracy(d: np.ndarray, same_word: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Per query: the share of its nearest allowed candidates (all ties) that are the same word;
    NaN where no candidate is allowed."""
    d = np.where(allowed, d, np.inf)
    best = d.min(axis=1, keepdims=True)
    nearest = (d == best) & allowed
    hits = (nearest & same_word).sum(axis=1) / np.maximum(nearest.sum(axis=1), 1)
    return np.where(allowed.any(axis=1), hits, np.nan)


def word_identification(seqs: list, words: list, voices: list) -> dict:
    """Cross-voice and within-voice nearest-neighbour word identification of unit sequences."""
    words, voices = np.asarray(words), np.asarray(voices)
    d = normalised_distances(seqs, seqs)
    same_word = words[:, None] == words[None, :]
    other_voice = voices[:, None] != voices[None, :]
    own_voice = ~other_voice & ~np.eye(len(seqs), dtype=bool)
    cross = _nn_accuracy(d, same_word, other_voice)
    within = _nn_accuracy(d, same_word, own_voice)
    # one other voice at a time: a candidate pool the size of the own voice's, for the contrast
    pair = []  # per (voice v, other voice u): the mean over v's tokens
    for u in np.unique(voices):
        cols = voices == u
        acc = _nn_accuracy(d[:, cols], same_word[:, cols], other_voice[:, cols])
        pair += [np.nanmean(acc[voices == v]) for v in np.unique(voices) if v != u]

    def chance(allowed):
        return np.nanmean(
            (same_word & allowed).sum(1) / np.where(allowed.any(1), allowed.sum(1), np.nan)
        )

    return {
        "cross_acc": float(np.nanmean(cross)),
        "pair_acc": float(np.nanmean(pair)) if pair else float("nan"),
        "within_acc": float(np.nanmean(within)),
        "chance_cross": float(chance(other_voice)),
        "chance_within": float(chance(own_voice)),
        "d_same": float(d[same_word & other_voice].mean()),
        "d_diff": float(d[~same_word & other_voice].mean()),
        "per_voice": {str(v): float(np.nanmean(cross[voices == v])) for v in np.unique(voices)},
    }


def sample(rows: list, per_voice: int, rng: np.random.Generator, skip: set) -> list:
    """`per_voice` rows of every voice drawn without replacement, none of `skip` (row ids)."""
    by_voice: dict[str, list] = {}
    for i, r in enumerate(rows):
        if i not in skip:
            by_voice.setdefault(r["speaker"], []).append(i)
    out = []
    for voice in sorted(by_voice):
        ids = by_voice[voice]
        if len(ids) < per_voice:
            raise InputError(f"voice {voice!r}: {len(ids)} utterances, fewer than {per_voice}")
        out += sorted(rng.choice(ids, per_voice, replace=False).tolist())
    return out


def word_tokens(rows, units, rate: float, min_letters: int):
    """(unit sequence, word, voice) of every word of `min_letters`+ letters; `units`: each row's
    frame units (not deduplicated) at `rate` Hz."""
    seqs, words, voices = [], [], []
    for r, ids in zip(rows, units):
        times = timestamps(len(ids), rate)
        for w, start, end in r["words"]:
            unit_seq = dedup(ids[(times >= start) & (times < end)])[0]
            if len(w) >= min_letters and len(unit_seq):
                seqs.append(unit_seq.tolist())
                words.append(w)
                voices.append(r["speaker"])
    return seqs, words, voices


def _utterance_warp_features(spec, fit_wavs, seed):
    """(row, wav) -> features under the library's VTLN (audio/vtln.py) with a codebook fitted
    on the fit utterances, as `units fit --vtln` does."""
    codebook, choice = vtln.fit_codebook([vtln.candidates(w, spec) for w in fit_wavs], spec, seed)
    counts = np.bincount(choice, minlength=len(vtln.WARPS)).tolist()
    print(json.dumps({"vtln_fit_warps": dict(zip(map(str, vtln.WARPS), counts))}), flush=True)
    return lambda r, w: vtln.features(w, spec, codebook)


def _voice_features(spec, how, speaker_vtln, fit_rows, fit_wavs, probe_rows, probe_wavs, seed):
    """(row, wav) -> [frames, dim] features under `spec`, speaker-normalised (`how`) with each
    voice's statistics and (speaker_vtln) warp from its fit utterances, else from its probe ones."""
    if spec.vtln:
        return _utterance_warp_features(spec, fit_wavs, seed)
    if how is None:
        return lambda r, w: phonetic_features(w, spec)
    by_voice: dict = {}
    for r, w in zip(fit_rows, fit_wavs):
        by_voice.setdefault(r["speaker"], []).append(w)
    fitted = set(by_voice)
    for r, w in zip(probe_rows, probe_wavs):
        if r["speaker"] not in fitted:
            by_voice.setdefault(r["speaker"], []).append(w)
    warps = choose_warps(by_voice, spec, how, seed) if speaker_vtln else {}
    if speaker_vtln:
        print(json.dumps({"vtln_warps": warps}), flush=True)
    stats = {
        v: speaker_stats([base_features(w, spec, warps.get(v, 1.0)) for w in ws])
        for v, ws in by_voice.items()
    }

    def features(r, w):
        v = r["speaker"]
        f = normalise(base_features(w, spec, warps.get(v, 1.0)), stats[v], how)
        return stack_context(f, spec.context_frames).astype(np.float32)

    return features


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("manifest", type=Path, help="speech manifest (jsonl with word times)")
    ap.add_argument("--per-voice", type=int, default=40, help="probe utterances per voice")
    ap.add_argument("--fit-per-voice", type=int, default=15, help="k-means utterances per voice")
    ap.add_argument("--seed", type=int, default=0, help="the samples' and k-means' seed")
    ap.add_argument("--min-letters", type=int, default=4, help="shorter words are left out")
    ap.add_argument("--config", nargs="*", default=["current"], choices=list(CONFIGS))
    ap.add_argument("--units-dir", nargs="*", default=[], help="fitted units folders to probe")
    ap.add_argument(
        "--hold-out",
        metavar="VOICE",
        help="fit the configs without this voice's utterances (its per_voice figure is then "
        "that of a voice the units never saw)",
    )
    args = ap.parse_args()
    rows = [r for _, r in iter_jsonl(args.manifest, "speech manifest")]
    rng = np.random.default_rng(args.seed)
    probe = sample(rows, args.per_voice, rng, set())
    fit_ids = sample(rows, args.fit_per_voice, rng, set(probe)) if args.config else []
    fit_ids = [i for i in fit_ids if rows[i]["speaker"] != args.hold_out]
    root = args.manifest.parent
    probe_rows = [rows[i] for i in probe]
    fit_rows = [rows[i] for i in fit_ids]
    probe_wavs = [read_audio(root / r["path"]) for r in probe_rows]
    fit_wavs = [read_audio(root / rows[i]["path"]) for i in fit_ids]
    results = []

    def report(name, units, rate, extra):
        seqs, words, voices = word_tokens(probe_rows, units, rate, args.min_letters)
        res = {"config": name, **extra, "tokens": len(seqs), "words": len(set(words))}
        if args.hold_out:
            res["held_out"] = args.hold_out
        res.update(word_identification(seqs, words, voices))
        print(json.dumps(res), flush=True)
        results.append(res)

    for folder in args.units_dir:
        extractor = load_extractor(folder)
        report(
            folder,
            [extractor.extract(w)["hubert"][0] for w in probe_wavs],
            extractor.frame_rates["hubert"],
            {"units": extractor.vocab_sizes["hubert"]},
        )
    for name in args.config:
        k, changes = CONFIGS[name]
        extra = {key: changes[key] for key in PROBE_KEYS if key in changes}
        spec = dataclasses.replace(
            SpectralConfig(), **{key: v for key, v in changes.items() if key not in PROBE_KEYS}
        )
        spec.validate()
        how = extra.get("speaker_norm")
        features = _voice_features(
            spec,
            how,
            extra.get("speaker_vtln"),
            fit_rows,
            fit_wavs,
            probe_rows,
            probe_wavs,
            args.seed,
        )
        per_file = [features(r, w) for r, w in zip(fit_rows, fit_wavs)]
        feats = np.concatenate(per_file)
        projection = None
        if "lda_dims" in extra:
            counts = [len(f) for f in per_file]
            projection = fit_word_lda(
                feats,
                counts,
                [r["words"] for r in fit_rows],
                spec.frame_rate,
                extra["lda_dims"],
                extra["lda_bins"],
            )
            feats = project(feats, projection)

        def final(r, w, features=features, projection=projection):
            f = features(r, w)
            return f if projection is None else project(f, projection)

        centroids = fit_kmeans(feats, k, seed=args.seed)
        report(
            name,
            [nearest_centroid(final(r, w), centroids) for r, w in zip(probe_rows, probe_wavs)],
            spec.frame_rate,
            {"units": k, "fit_frames": len(feats), **changes},
        )
    print(f"\nprobe: {len(probe)} utterances ({args.per_voice} per voice, seed {args.seed})")
    if args.hold_out:
        print(f"configs fitted without voice {args.hold_out!r}; its cross-voice acc:")
        for r in results:
            print(f"  {r['config']}: {100 * r['per_voice'][args.hold_out]:.1f}")
    print(
        "| config | cross-voice acc | one other voice | within-voice acc | chance (cross / "
        "within) | d same / diff |"
    )
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['config']} | {100 * r['cross_acc']:.1f} | {100 * r['pair_acc']:.1f} | "
            f"{100 * r['within_acc']:.1f} | "
            f"{100 * r['chance_cross']:.1f} / {100 * r['chance_within']:.1f} | "
            f"{r['d_same']:.3f} / {r['d_diff']:.3f} |"
        )


if __name__ == "__main__":
    main()
