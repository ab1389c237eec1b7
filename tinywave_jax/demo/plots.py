"""Demo figures (matplotlib, PNG): training curves, and teacher vs student attention maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _last_run(rows: list[dict]) -> list[dict]:
    """The rows of the last uninterrupted run: a resume truncates the file, but a run killed and
    restarted from scratch in the same folder leaves its rows before the new ones."""
    start = 0
    for i in range(1, len(rows)):
        if rows[i]["step"] <= rows[i - 1]["step"]:
            start = i
    return rows[start:]


def plot_losses(runs: dict[str, Path], out: Path) -> Path:
    """One panel per run: every logged loss term against the step (metrics.jsonl)."""
    from ..train.metrics import read_metrics

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.4), squeeze=False)
    for ax, (name, run_dir) in zip(axes[0], runs.items()):
        rows = _last_run(read_metrics(run_dir))
        steps = [r["step"] for r in rows]
        for key in ("loss", "ce", "logit_kl", "hidden", "attention_kl"):
            if key in rows[0]:
                ax.plot(steps, [r[key] for r in rows], label=key)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def attention_maps(params, config, ids: np.ndarray, layers: tuple[int, ...]) -> np.ndarray:
    """Head-averaged causal attention probabilities [len(layers), T, T] of one sequence, from
    the model's own attention (`models.llama.attention_maps`)."""
    import jax.numpy as jnp

    from ..models.llama import attention_maps as model_maps

    maps = model_maps(params, config, jnp.asarray(ids[None]), layers)  # [L, 1, H, T, T]
    return np.asarray(maps[:, 0], np.float64).mean(axis=1)


def plot_attention(
    teacher, student, ids: np.ndarray, pairs: list[tuple[int, int]], out: Path, title: str = ""
) -> Path:
    """Rows: mapped (student layer, teacher layer) pairs; columns: teacher, student.
    `teacher` / `student` are (params, config)."""
    plt = _pyplot()
    t_maps = attention_maps(*teacher, ids, tuple(t for _, t in pairs))
    s_maps = attention_maps(*student, ids, tuple(s for s, _ in pairs))
    fig, axes = plt.subplots(len(pairs), 2, figsize=(7, 3.3 * len(pairs)), squeeze=False)
    for row, (s, t) in enumerate(pairs):
        for col, (m, label) in enumerate(
            ((t_maps[row], f"teacher layer {t}"), (s_maps[row], f"student layer {s}"))
        ):
            ax = axes[row, col]
            ax.imshow(np.sqrt(m), cmap="magma", interpolation="nearest")  # sqrt: show weak links
            ax.set_title(label, fontsize=9)
            ax.set_xlabel("key token")
            ax.set_ylabel("query token")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
