"""Benchmark folders -> (positive, negative) file pairs, exactly as the reference loaders pair them.

The rules follow slp-rl's `slamkit` evaluation loaders (`ModellingMetricDataset`, `SalmonDataset`):

* SALMon (`salmon`): DATA holds one folder per subset (bg_alignment, ..., speaker_consistency).
  Inside a subset, files `sample_{index}_{j}.wav` are grouped by `index` (the second `_` field)
  and sorted by name, so j=0 is the positive and j=1 the negative. A group must hold exactly the
  files j=0 and j=1. Any other sub-folder (say a misspelled subset) is skipped with a warning
  on stderr that names it and the eight subsets.
* StoryCloze (`ssc`, `tsc`) and sWUGGY (`swuggy`): `*.wav` sorted by the integer before the first
  `_`; files 2i and 2i+1 of that order are (positive, negative).
* sBLIMP (`sblimp`): the same rule with `+` as the separator (the integer before the first `+`).
* For these sorted-prefix benchmarks DATA is either the folder of wavs, or (when it holds no
  wav itself) a folder of sub-folders, each paired on its own and reported as a group, as the
  reference's `subfolder=True` mode does.

Where the reference would silently mis-pair (odd file count, a name without an integer prefix,
two files with the same prefix, whose order then depends on the directory listing) we fail
with a message listing the offending files instead.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path

from ..data.layout import SPEECH, TEXT
from ..errors import InputError, log_stderr

SALMON_SUBSETS = (
    "bg_alignment",
    "bg_all_consistency",
    "bg_domain_consistency",
    "gender_consistency",
    "rir_consistency",
    "sentiment_alignment",
    "sentiment_consistency",
    "speaker_consistency",
)
SEPARATOR = {"ssc": "_", "tsc": "_", "swuggy": "_", "sblimp": "+"}
AUDIO_TASKS = ("salmon", *SEPARATOR)
# cross-modal cloze (crossmodal.py): the modality of the context and of the endings
CROSS_MODAL_TASKS = {
    "cloze_ss": (SPEECH, SPEECH),
    "cloze_st": (SPEECH, TEXT),
    "cloze_ts": (TEXT, SPEECH),
    "cloze_tt": (TEXT, TEXT),
}
# every task `tinywave eval` runs (harness.py), named here so the command line needs no jax
TASKS = (*AUDIO_TASKS, *CROSS_MODAL_TASKS, "pairs", "ppl")
_SALMON_NAME = re.compile(r"sample_(\d+)_(\d+)")
_MAX_LISTED = 20


class BenchmarkError(InputError):
    """A benchmark folder that is missing or cannot be paired; the message names the files."""


@dataclasses.dataclass(frozen=True)
class FilePair:
    positive: Path
    negative: Path
    group: str  # SALMon subset or sub-folder name; "" for a flat folder


def _listing(paths) -> str:
    names = [str(p) for p in paths]
    more = f" ... and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
    return ", ".join(names[:_MAX_LISTED]) + more


def _wavs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.wav") if p.is_file())


def sorted_prefix_pairs(folder: Path, sep: str, group: str = "") -> list[FilePair]:
    """One folder: sort by int(name.split(sep)[0]); files 2i, 2i+1 -> (positive, negative)."""
    files = _wavs(folder)
    keyed, bad = [], []
    for p in files:
        head = p.name.split(sep)[0]
        if head.isdigit():
            keyed.append((int(head), p))
        else:
            bad.append(p.name)
    if bad:
        raise BenchmarkError(
            f"{folder}: {len(bad)} file(s) have no integer prefix before {sep!r}: {_listing(bad)}"
        )
    by_key: dict[int, list[str]] = {}
    for k, p in keyed:
        by_key.setdefault(k, []).append(p.name)
    dups = [n for names in by_key.values() if len(names) > 1 for n in names]
    if dups:
        raise BenchmarkError(
            f"{folder}: files share an integer prefix, so their order is "
            f"ambiguous: {_listing(sorted(dups))}"
        )
    ordered = [p for _, p in sorted(keyed, key=lambda kp: kp[0])]
    if len(ordered) % 2:
        raise BenchmarkError(
            f"{folder}: odd number of wav files ({len(ordered)}); pairs are "
            f"(2i, 2i+1) in prefix order, so the last one, {ordered[-1].name}, "
            "has no partner"
        )
    return [FilePair(ordered[i], ordered[i + 1], group) for i in range(0, len(ordered), 2)]


def prefix_benchmark_pairs(root: str | Path, task: str) -> list[FilePair]:
    """StoryCloze / sWUGGY / sBLIMP: a flat folder of wavs, or a folder of sub-folders."""
    root = Path(root)
    if not root.is_dir():
        raise BenchmarkError(f"{task}: benchmark folder not found: {root}")
    sep = SEPARATOR[task]
    if _wavs(root):
        pairs = sorted_prefix_pairs(root, sep)
    else:
        pairs = []
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            if _wavs(sub):
                pairs += sorted_prefix_pairs(sub, sep, group=sub.name)
    if not pairs:
        raise BenchmarkError(f"{task}: no .wav files in {root} or its sub-folders")
    return pairs


def salmon_subset_pairs(folder: Path) -> list[FilePair]:
    """One SALMon subset folder: group `sample_{index}_{j}.wav` by index; sorted, j=0 first."""
    groups: dict[int, list[Path]] = {}
    bad = []
    for p in _wavs(folder):
        m = _SALMON_NAME.fullmatch(p.stem)
        if m is None:
            bad.append(p.name)
        else:
            groups.setdefault(int(m.group(1)), []).append(p)
    if bad:
        raise BenchmarkError(
            f"{folder}: {len(bad)} file(s) are not named sample_<index>_<j>.wav: {_listing(bad)}"
        )
    unpaired = []
    for _, files in sorted(groups.items()):
        js = sorted(int(_SALMON_NAME.fullmatch(p.stem).group(2)) for p in files)
        if js != [0, 1]:
            unpaired += [p.name for p in sorted(files)]
    if unpaired:
        raise BenchmarkError(
            f"{folder}: every sample index needs exactly sample_<index>_0.wav "
            f"(positive) and sample_<index>_1.wav (negative); unpaired: "
            f"{_listing(unpaired)}"
        )
    pairs = []
    for _, files in sorted(groups.items()):
        pos, neg = sorted(files, key=lambda p: p.name)
        pairs.append(FilePair(pos, neg, folder.name))
    return pairs


def unknown_salmon_folders(root: Path) -> list[Path]:
    """Sub-folders of a SALMon root that are not one of the eight subsets (hidden ones aside)."""
    return sorted(
        p
        for p in root.iterdir()
        if p.is_dir() and p.name not in SALMON_SUBSETS and not p.name.startswith(".")
    )


def salmon_pairs(root: str | Path, subsets=None, warn=log_stderr) -> list[FilePair]:
    """All SALMon subsets under `root` (default: those of the eight present; none present is an
    error); `root` may also be a single subset folder. Any other sub-folder (a misspelled subset)
    is skipped with a warning through `warn` (default: stderr) naming it and the known subsets."""
    root = Path(root)
    if not root.is_dir():
        raise BenchmarkError(f"salmon: benchmark folder not found: {root}")
    if _wavs(root):
        return salmon_subset_pairs(root)
    if not subsets:
        for folder in unknown_salmon_folders(root):
            close = difflib.get_close_matches(folder.name.lower(), SALMON_SUBSETS, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            warn(
                f"salmon: warning: skipping {folder}: not a SALMon subset folder ({hint}known "
                f"subsets: {', '.join(SALMON_SUBSETS)})"
            )
    names = subsets or [s for s in SALMON_SUBSETS if (root / s).is_dir()]
    if not names:
        raise BenchmarkError(
            f"salmon: {root} holds none of the subset folders {', '.join(SALMON_SUBSETS)}"
        )
    pairs = []
    for name in names:
        if not (root / name).is_dir():
            raise BenchmarkError(f"salmon: subset folder missing: {root / name}")
        subset = salmon_subset_pairs(root / name)
        if not subset:
            raise BenchmarkError(f"salmon: no .wav files in {root / name}")
        pairs += subset
    return pairs


def benchmark_pairs(task: str, root: str | Path, warn=log_stderr) -> list[FilePair]:
    if task == "salmon":
        return salmon_pairs(root, warn=warn)
    if task in SEPARATOR:
        return prefix_benchmark_pairs(root, task)
    raise BenchmarkError(f"unknown audio benchmark {task!r}; expected one of {AUDIO_TASKS}")
