"""How copyable are spoken repeats under each spectral unit setting? (how the demo teacher's
units were chosen: docs/demo_teacher.md).

    .venv/bin/python bench/unit_repeats.py SPEECH_DIR [--hours 0.3] [--utterances 300]
        [--setting K:FEATURES:HZ ...]      # default: the sweep in docs/demo_teacher.md

SPEECH_DIR is a `tinywave demo-teacher` workdir's speech/ folder (pretrain.jsonl with word times,
bench_valid/). For each setting (K units, mfcc|logmel, frames per second; 25 ms window, or one
hop where the hop is longer; mean removal over the first 3 s as the demo does) the script fits
k-means on a seeded `--hours` of pretraining audio and prints one JSON line:
  repeat_auc   over the last `--utterances` pretraining utterances, for every two words of one
               utterance (4+ letters), the share of deduplicated unit bigrams they share
               (Jaccard); the AUC of "same word" pairs against "different word" pairs. 1.0: a
               word's repeats always share more units than two different words do.
  copy_ssc, copy_tsc   the parameter-free copy rule (`tinywave eval --reference copy`) on
               bench_valid/ (validation pairs only).
  units_per_pair       mean length of a tSC pair's sequence.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from tinywave_jax.audio import load_extractor
from tinywave_jax.audio.extractor import PhoneticConfig, UnitsConfig, write_units_config
from tinywave_jax.audio.features import SpectralConfig, phonetic_features
from tinywave_jax.audio.io import read_audio
from tinywave_jax.audio.kmeans import fit_kmeans
from tinywave_jax.data.layout import dedup
from tinywave_jax.eval.harness import prepare_inputs
from tinywave_jax.eval.references import copy_rule_accuracy
from tinywave_jax.jsonl import iter_jsonl

SWEEP = (
    "64:mfcc:25",
    "32:mfcc:25",
    "128:mfcc:25",
    "64:logmel:25",
    "64:mfcc:50",
    "128:mfcc:50",
    "256:mfcc:50",
    "128:logmel:50",
    "128:mfcc:100",
)
TEXT_VOCAB = 201  # any size >= the text ids; copy rule and tokenising need only the units


def fit(rows, speech: Path, spec: SpectralConfig, k: int, hours: float, out: Path):
    order = list(rows)
    np.random.default_rng(0).shuffle(order)
    feats, seconds = [], 0.0
    for r in order:
        if seconds > hours * 3600:
            break
        feats.append(phonetic_features(read_audio(speech / r["path"]), spec))
        seconds += r["seconds"]
    np.save(out / "phonetic_centroids.npy", fit_kmeans(np.concatenate(feats), k, seed=0))
    write_units_config(UnitsConfig(phonetic=PhoneticConfig(spectral=spec)), out)


def bigram_jaccard(a: tuple, b: tuple) -> float:
    ga, gb = {a[i : i + 2] for i in range(len(a) - 1)}, {b[i : i + 2] for i in range(len(b) - 1)}
    return len(ga & gb) / max(1, len(ga | gb))


def repeat_auc(rows, speech: Path, units: Path) -> float:
    extractor = load_extractor(units)
    same, other = [], []
    for r in rows:
        ids, times = extractor.extract(read_audio(speech / r["path"]))["hubert"]
        words = [
            (w, tuple(dedup(ids[(times >= a) & (times < b)])[0].tolist()))
            for w, a, b in r["words"]
            if len(w) > 3
        ]
        for i, (wi, ui) in enumerate(words):
            for wj, uj in words[i + 1 :]:
                (same if wi == wj else other).append(bigram_jaccard(ui, uj))
    s, o = np.array(same), np.sort(np.array(other))
    below = np.searchsorted(o, s, side="left")
    ties = np.searchsorted(o, s, side="right") - below
    return float(np.mean((below + 0.5 * ties) / len(o)))


def copy_rule(speech: Path, units: Path, k: int) -> dict:
    layout = units / "layout.json"
    layout.write_text(json.dumps({"preset": None, "text_vocab_size": TEXT_VOCAB, "num_units": k}))
    out = {}
    for task in ("ssc", "tsc"):
        inputs = prepare_inputs(
            task,
            speech / "bench_valid" / task,
            TEXT_VOCAB + k + 3,  # a vocabulary the layout fits in (no model is run)
            extractor=units,
            layout=str(layout),
            log=lambda m: None,
        )
        out[f"copy_{task}"] = round(100 * copy_rule_accuracy(inputs.pairs)["accuracy"], 1)
        if task == "tsc":
            out["units_per_pair"] = round(
                float(np.mean([len(p.positive.ids) for p in inputs.pairs]))
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("speech", type=Path, help="a demo-teacher workdir's speech/ folder")
    ap.add_argument("--hours", type=float, default=0.3, help="k-means training audio")
    ap.add_argument("--utterances", type=int, default=300, help="for repeat_auc")
    ap.add_argument("--setting", nargs="+", default=list(SWEEP), metavar="K:FEATURES:HZ")
    args = ap.parse_args()
    rows = [r for _, r in iter_jsonl(args.speech / "pretrain.jsonl", "speech manifest")]
    for setting in args.setting:
        k, features, hz = setting.split(":")
        spec = SpectralConfig(
            features=features,
            frame_rate=float(hz),
            window_seconds=max(0.025, 1 / float(hz)),
            cmn_seconds=3.0,
        )
        spec.validate()
        with tempfile.TemporaryDirectory() as tmp:
            units = Path(tmp)
            fit(rows, args.speech, spec, int(k), args.hours, units)
            result = {"setting": setting, "window_seconds": spec.window_seconds}
            result["repeat_auc"] = round(
                repeat_auc(rows[-args.utterances :], args.speech, units), 3
            )
            result.update(copy_rule(args.speech, units, int(k)))
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
