"""A linear discriminant projection of spectral frames, fitted on word-timed training audio.

Spectral features vary with the voice as much as with the sound: k-means on them alone gives the
same word different units in different voices (docs/demo_teacher.md, the unit probe). Labelling
each frame with its word and its position within the word (`bins` equal parts), LDA keeps the
directions along which those labels differ and shrinks the within-label spread, which is mostly
the voice's. The projection is affine, stored as one array [dim + 1, out]: rows [:dim] the
matrix, the last row the bias, so `x @ P[:-1] + P[-1]`.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .features import timestamps

SILENCE = "<sil>"  # label of frames outside every word
RIDGE = 1e-4  # added to the within-class scatter's diagonal (relative to its mean variance)


def frame_labels(n: int, frame_rate: float, words, bins: int) -> np.ndarray:
    """[n] labels "word|position" (position 0..bins-1 within the word by time) or SILENCE, for
    frames starting at i * hop; `words`: [(word, start_s, end_s), ...]."""
    starts = timestamps(n, frame_rate)
    labels = np.full(n, SILENCE, dtype=object)
    for word, start, end in words:
        inside = (starts >= start) & (starts < end)
        pos = ((starts[inside] - start) / max(end - start, 1e-9) * bins).astype(int)
        labels[inside] = [f"{word}|{p}" for p in np.minimum(pos, bins - 1)]
    return labels


def fit_lda(x: np.ndarray, labels: np.ndarray, dims: int) -> np.ndarray:
    """[dim + 1, dims] float32 affine projection onto the `dims` leading discriminant directions
    of frames `x` [frames, dim] under `labels` [frames], scaled so the within-class covariance
    is the identity (k-means distances are then in within-class standard deviations)."""
    x = np.asarray(x, np.float64)
    classes, index = np.unique(labels, return_inverse=True)
    if not 0 < dims <= min(x.shape[1], len(classes) - 1):
        raise InputError(
            f"lda_dims: need 0 < dims <= min(feature dim {x.shape[1]}, classes - 1 = "
            f"{len(classes) - 1}), got {dims}",
            param="lda_dims",
        )
    mean = x.mean(axis=0)
    centred = x - mean
    counts = np.bincount(index).astype(np.float64)
    class_means = np.zeros((len(classes), x.shape[1]))
    np.add.at(class_means, index, centred)
    class_means /= counts[:, None]
    within = centred - class_means[index]
    s_within = within.T @ within / len(x)
    s_within += RIDGE * np.trace(s_within) / len(s_within) * np.eye(len(s_within))
    s_between = (class_means * counts[:, None]).T @ class_means / len(x)
    # whiten the within-class scatter, then the between-class scatter's leading eigenvectors
    w_vals, w_vecs = np.linalg.eigh(s_within)
    whiten = w_vecs / np.sqrt(w_vals)
    b_vals, b_vecs = np.linalg.eigh(whiten.T @ s_between @ whiten)
    matrix = whiten @ b_vecs[:, np.argsort(b_vals)[::-1][:dims]]
    return np.vstack([matrix, -mean @ matrix]).astype(np.float32)


def fit_word_lda(
    x: np.ndarray, frame_counts, word_times, frame_rate: float, dims: int, bins: int
) -> np.ndarray:
    """`fit_lda` on frames `x` [frames, dim] of files with `frame_counts` frames each, labelled
    by `frame_labels` from each file's `word_times` ([(word, start_s, end_s), ...])."""
    labels = [frame_labels(n, frame_rate, w, bins) for n, w in zip(frame_counts, word_times)]
    return fit_lda(x, np.concatenate(labels), dims)


def project(x: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """[frames, dim] -> [frames, out] with an affine projection from `fit_lda`."""
    return (x @ projection[:-1] + projection[-1]).astype(np.float32)
