"""Seeded k-means in numpy (k-means++ init; Lloyd, or mini-batch for large inputs), nearest-centroid
assignment, and centroid files (.npy, or torch files holding `cluster_centers_`)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..errors import InputError, MissingInputError

FULL_BATCH_MAX_POINTS = 100_000  # above this, fit with mini-batches (Sculley 2010)
MINIBATCH_SIZE = 10_000
MINIBATCH_MAX_STEPS = 2_000  # 20M point visits: ample for 500 centres, bounded for big corpora


def nearest_centroid(x: np.ndarray, centroids: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """int32 index of the closest centroid (squared Euclidean) for each row of `x`."""
    c = np.asarray(centroids, dtype=np.float64)
    c_sq = (c * c).sum(axis=1)
    out = np.empty(len(x), dtype=np.int32)
    for start in range(0, len(x), chunk):
        xb = np.asarray(x[start : start + chunk], dtype=np.float64)
        # ||x||^2 is constant per row and does not change the argmin
        out[start : start + chunk] = np.argmin(c_sq[None, :] - 2.0 * xb @ c.T, axis=1)
    return out


def _cluster_sums(x: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """[k, dim] sum of the rows of x assigned to each cluster (bincount per column: fast)."""
    return np.stack([np.bincount(ids, weights=col, minlength=k) for col in x.T], axis=1)


def _sq_dist_to(x: np.ndarray, centre: np.ndarray) -> np.ndarray:
    d = x - centre[None, :]
    return np.einsum("ij,ij->i", d, d)


def kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each new centre drawn with prob ~ D(x)^2."""
    centres = [x[rng.integers(len(x))]]
    dist = _sq_dist_to(x, centres[0])
    for _ in range(1, k):
        total = dist.sum()
        idx = rng.choice(len(x), p=dist / total) if total > 0 else rng.integers(len(x))
        centres.append(x[idx])
        dist = np.minimum(dist, _sq_dist_to(x, x[idx]))
    return np.stack(centres)


MIN_POINTS_PER_CLUSTER = 2


def clamp_clusters(x: np.ndarray, k: int, what: str) -> int:
    """k limited to n / MIN_POINTS_PER_CLUSTER and to the number of distinct points (>= 1);
    warns when it has to shrink, since the streams' vocabulary then shrinks too."""
    limit = max(1, min(len(np.unique(x, axis=0)), len(x) // MIN_POINTS_PER_CLUSTER))
    if k > limit:
        warnings.warn(
            f"{what}: {len(x)} training vectors are too few for {k} clusters; "
            f"fitting {limit} instead (give more audio for the full count)",
            stacklevel=2,
        )
        return limit
    return k


def fit_kmeans(
    x: np.ndarray,
    k: int,
    seed: int = 0,
    iters: int = 100,
    tol: float = 1e-6,
    batch_size: int | None = None,
) -> np.ndarray:
    """[k, dim] float32 centroids of `x` [n, dim]; deterministic for a seed.

    Lloyd iterations (at most `iters`, stopping when centres stop moving) when batch_size is None
    and n <= FULL_BATCH_MAX_POINTS; otherwise mini-batch k-means (`iters` passes of random batches,
    at most MINIBATCH_MAX_STEPS batches; per-centre learning rate 1/count). An empty cluster keeps
    its previous centre.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"k-means needs a non-empty [n, dim] array, got shape {x.shape}")
    if not 1 <= k <= len(x):
        raise ValueError(f"k-means: k={k} must be in [1, {len(x)}] (number of points)")
    rng = np.random.default_rng(seed)
    if batch_size is None and len(x) > FULL_BATCH_MAX_POINTS:
        batch_size = MINIBATCH_SIZE
    init_pool = x
    if len(x) > FULL_BATCH_MAX_POINTS:  # k-means++ on a random subset of large inputs
        init_pool = x[rng.choice(len(x), FULL_BATCH_MAX_POINTS, replace=False)]
    centres = kmeans_plus_plus(init_pool, k, rng)
    if batch_size is None:
        for _ in range(iters):
            ids = nearest_centroid(x, centres)
            counts = np.bincount(ids, minlength=k)
            sums = _cluster_sums(x, ids, k)
            new = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centres)
            shift = np.max(np.abs(new - centres))
            centres = new
            if shift <= tol * (np.abs(x).max() + 1e-12):
                break
    else:
        counts = np.zeros(k)
        steps = min(iters * max(1, len(x) // batch_size), MINIBATCH_MAX_STEPS)  # `iters` passes
        for _ in range(steps):
            batch = x[rng.integers(len(x), size=batch_size)]
            ids = nearest_centroid(batch, centres)
            n_c = np.bincount(ids, minlength=k)
            sums = _cluster_sums(batch, ids, k)
            counts += n_c
            hit = n_c > 0  # centre moves to the running mean of all points it was given
            centres[hit] += (sums[hit] - n_c[hit, None] * centres[hit]) / counts[hit, None]
    return centres.astype(np.float32)


def load_centroids(path: str | Path, dim: int | None = None) -> np.ndarray:
    """[K, dim] float32 centroids from `.npy`, or a torch file (`.pt`/`.pth`/`.bin`, loaded with
    weights_only) holding a tensor/array or a dict with `cluster_centers_` (or `centroids`).

    Raises MissingInputError naming the file when it is missing, InputError when it is unreadable,
    not 2-D, or its dimension differs from `dim` (both dimensions named)."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: centroid file not found")
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            import torch  # the torch extra

            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                key = next((k for k in ("cluster_centers_", "centroids") if k in obj), None)
                if key is None:
                    raise ValueError(f"no 'cluster_centers_' entry (keys: {sorted(obj)[:10]})")
                obj = obj[key]
            arr = obj.numpy() if hasattr(obj, "numpy") else np.asarray(obj)
    except Exception as e:
        raise InputError(
            f"{path}: cannot read centroids ({e}); sklearn/joblib pickles are not "
            "loaded: save `kmeans.cluster_centers_` with numpy.save instead"
        ) from None
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise InputError(f"{path}: centroids must be a non-empty [K, dim] array, got {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise InputError(
            f"{path}: centroid dimension {arr.shape[1]} does not match the feature dimension {dim}"
        )
    return arr
