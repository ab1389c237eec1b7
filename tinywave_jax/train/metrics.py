"""Step metrics: model FLOPs / MFU, the JSONL + TensorBoard writer, and the progress line.

Model FLOPs per trained token (PaLM appendix B convention; matmuls only, 2 FLOPs per MAC):
    student (forward + backward):  6 * N_s + 12 * L_s * H_s * hd_s * T
    teacher (forward only):        2 * N_t +  4 * L_t * H_t * hd_t * T
where N is the parameter count WITHOUT the input embedding table (a lookup, no matmul; the LM head
counts), L the layers run, H * hd the attention width and T the sequence length (the attention
term counts the full T x T score and value products, as PaLM does, not the causal half). The
loss heads (chunked logits of the distillation loss, blockwise attention KL) are not model FLOPs
and are not counted. MFU = FLOPs per step * steps per second / (peak_flops_per_device * devices).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Optional, cast

from tensorboardX import SummaryWriter

from .. import storage
from ..distill.terms import weighted_metric_names
from ..errors import InputError
from ..models.config import LlamaConfig

log = logging.getLogger(__name__)


class MetricsFileError(InputError):
    """A line of metrics.jsonl other than the last is not a metrics row; names file and line."""


def _parse_rows(path: Path) -> tuple[list[dict], bool]:
    """(rows of metrics.jsonl, whether its last line was torn and dropped).

    A last line that does not parse is what a run killed mid-write leaves: dropped. Any other
    line that is not a JSON object with an integer "step" is damage: MetricsFileError."""
    lines = path.read_text().splitlines()
    rows, torn = [], False
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("not an object with an integer step")
        except ValueError as e:
            if i == len(lines) - 1:
                torn = True
                break
            raise MetricsFileError(
                f"{path}:{i + 1}: not a metrics row ({e}); fix or delete that line"
            ) from None
        rows.append(row)
    return rows, torn


def matmul_params(config: LlamaConfig, layers: Optional[int] = None, with_head: bool = True) -> int:
    """Parameters that take part in matmuls: decoder layers (`layers` of them) and the LM head."""
    layers = config.num_hidden_layers if layers is None else layers
    per_layer = (
        config.num_params()
        - config.vocab_size * config.hidden_size * (1 if config.tie_word_embeddings else 2)
        - config.hidden_size
    ) // config.num_hidden_layers
    head = config.vocab_size * config.hidden_size if with_head else 0
    return layers * per_layer + head


def flops_per_token(
    student: LlamaConfig,
    seq_len: int,
    teacher: Optional[LlamaConfig] = None,
    teacher_head: bool = True,
) -> float:
    """Model FLOPs per token of one training step (formula in the module doc)."""
    s = student
    flops = (
        6 * matmul_params(s)
        + 12 * s.num_hidden_layers * s.num_attention_heads * cast(int, s.head_dim) * seq_len
    )
    if teacher is not None:
        t = teacher
        flops += (
            2 * matmul_params(t, with_head=teacher_head)
            + 4 * t.num_hidden_layers * t.num_attention_heads * cast(int, t.head_dim) * seq_len
        )
    return float(flops)


def step_flops(spec, seq_len: int, batch_size: int) -> float:
    """Model FLOPs of one train step of `spec` (a StepSpec) on a [batch_size, seq_len] batch:
    the teacher counts only when it runs in the step (an active term needs it and no cache
    serves it), its LM head only when a term needs its logits or top-k."""
    per_token = flops_per_token(
        spec.student,
        seq_len,
        spec.teacher if spec.runs_teacher else None,
        teacher_head=spec.teacher_head,
    )
    return per_token * batch_size * seq_len


class MetricsWriter:
    """Appends one JSON object per logged step to `metrics.jsonl` and mirrors scalars to
    TensorBoard event files (tensorboardX, no TensorFlow) under `tb/`.

    On object storage (run_dir=gs://...), which cannot append, the rows are kept in memory and
    metrics.jsonl is rewritten whole at each logged step (one object write: a reader sees the
    previous version or the new one, never a torn line); tensorboardX writes gs:// event files
    itself (google-cloud-storage), re-uploading each file whole at each flush."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, enabled: bool = True):
        self.remote = storage.is_remote(run_dir)
        self.path = storage.path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        self._rows: list[str] | None = None  # remote: the file's lines, rewritten whole
        if enabled and not self.remote:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if enabled and tensorboard:
            self._tb = SummaryWriter(str(storage.path(run_dir) / "tb"))

    def truncate_after(self, step: int) -> None:
        """Drops rows past `step` (written by a run that was killed after its last checkpoint),
        and a torn last line (killed mid-write), with a warning. Rewrites the file atomically."""
        if not self.enabled or not self.path.is_file():
            return
        rows, torn = _parse_rows(self.path)
        if torn:
            log.warning("%s: dropped its torn last line (a run killed mid-write)", self.path)
        text = "".join(json.dumps(r) + "\n" for r in rows if r["step"] <= step)
        if self.remote:  # one object write replaces it whole
            self.path.write_text(text)
            self._rows = text.splitlines(keepends=True)
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path)

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        if self.remote:
            if self._rows is None:
                self._rows = (
                    self.path.read_text().splitlines(keepends=True) if self.path.is_file() else []
                )
            self._rows.append(json.dumps(row) + "\n")
            self.path.write_text("".join(self._rows))
        else:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of run_dir/metrics.jsonl; a torn last line (being written, or killed mid-write)
    is left out."""
    return _parse_rows(storage.path(run_dir) / "metrics.jsonl")[0]


class Progress:
    """`step 120/1000 loss 3.412 ce 3.01 tok/s 52.1k eta 0:14:02` lines on stderr (with
    `val_loss` / `val_ppl` at an evaluated step)."""

    def __init__(self, total_steps: int, stream=sys.stderr):
        self.total, self.stream = total_steps, stream
        self.last: Optional[tuple[float, int]] = (
            None  # (time, step) of the previous line; the first interval includes compiling
        )

    def line(self, step: int, metrics: dict) -> str:
        now = time.time()
        eta = float("inf")
        if self.last is not None and step > self.last[1]:
            eta = (self.total - step) * (now - self.last[0]) / (step - self.last[1])
        self.last = (now, step)
        parts = [f"step {step}/{self.total}"]
        for k in ("loss", *weighted_metric_names(), "val_loss", "val_ppl"):
            if k in metrics:
                parts.append(f"{k} {metrics[k]:.4f}")
        if "tokens_per_s" in metrics:
            parts.append(f"tok/s {metrics['tokens_per_s'] / 1e3:.1f}k")
        if "mfu" in metrics:
            parts.append(f"mfu {100 * metrics['mfu']:.1f}%")
        parts.append(
            "eta " + (time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?")
        )
        return " ".join(parts)

    def print(self, step: int, metrics: dict) -> None:
        print(self.line(step, metrics), file=self.stream, flush=True)
