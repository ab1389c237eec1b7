"""Vocal tract length normalisation without speaker labels: each utterance's own mel-filter warp.

A longer or shorter vocal tract moves every formant by about the same factor, so one voice's
vowel looks, to fixed mel filters, like another sound of another voice. VTLN warps the filters
instead (`features.warp_frequencies`): each utterance takes the factor of WARPS whose features
lie closest to a codebook of every training voice's frames (the mean squared distance to the
nearest code vector: maximum-likelihood VTLN with k-means in place of a GMM). The codebook is
fitted with the units (`fit_codebook`: start unwarped, then alternate choosing each file's warp
and refitting), stored in the units folder, and the extractor chooses the warp of every new
utterance the same way, so an unseen voice is normalised from its own audio.

The warp is chosen on the first `SpectralConfig.vtln_seconds` only (0: the whole utterance): a
cloze pair's two files share their context, and a context at least that long gives both the same
warp, as `cmn_seconds` does for the mean.
"""

from __future__ import annotations

import numpy as np

from .features import SpectralConfig, frame_features, log_mels, stack_context
from .kmeans import fit_kmeans

WARPS = tuple(round(0.80 + 0.04 * i, 2) for i in range(11))  # 0.80 ... 1.00 ... 1.20
CODEBOOK_SIZE = 64
FIT_ROUNDS = 2  # choose warps / refit the codebook; the choices barely move after that


def candidates(wav: np.ndarray, cfg: SpectralConfig) -> np.ndarray:
    """[len(WARPS), frames, dim without context] float32: the features under every warp."""
    return np.stack([frame_features(m, cfg) for m in log_mels(wav, cfg, WARPS)])


def choose(cands: np.ndarray, codebook: np.ndarray, cfg: SpectralConfig) -> int:
    """Index into WARPS of the warp whose first `cfg.vtln_seconds` frames (all for 0) have the
    least mean squared distance to their nearest code vector."""
    n_head = int(round(cfg.vtln_seconds * cfg.frame_rate)) or None
    x = cands[:, :n_head].astype(np.float64)  # [warps, frames, dim]
    c = codebook.astype(np.float64)
    d = (x * x).sum(-1)[..., None] + (c * c).sum(-1) - 2.0 * x @ c.T
    return int(np.argmin(d.min(axis=-1).mean(axis=-1)))


def features(wav: np.ndarray, cfg: SpectralConfig, codebook: np.ndarray) -> np.ndarray:
    """`features.phonetic_features` under the utterance's own warp: [frames, cfg.dim]."""
    cands = candidates(wav, cfg)
    return stack_context(cands[choose(cands, codebook, cfg)], cfg.context_frames)


def fit_codebook(
    per_file: list[np.ndarray], cfg: SpectralConfig, seed: int = 0
) -> tuple[np.ndarray, list[int]]:
    """(codebook [CODEBOOK_SIZE or fewer, dim], each file's warp index) from every file's
    `candidates`: a codebook of the unwarped frames, then FIT_ROUNDS of choosing each file's
    warp and refitting the codebook on the chosen frames."""
    unwarped = WARPS.index(1.0)
    choice = [unwarped] * len(per_file)
    frames = sum(c.shape[1] for c in per_file)
    k = min(CODEBOOK_SIZE, frames)
    codebook = None
    for _ in range(FIT_ROUNDS):
        codebook = fit_kmeans(np.concatenate([c[i] for c, i in zip(per_file, choice)]), k, seed)
        choice = [choose(c, codebook, cfg) for c in per_file]
    return codebook, choice
