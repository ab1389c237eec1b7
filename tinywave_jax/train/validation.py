"""Validation during training (`train.eval_every`): the student's loss and perplexity on held-out
batches, logged beside the training metrics.

The held-out batches (`train.eval_batches` of them from `train.eval_split`, train/data.py) are
read once at start-up and put on the mesh like training batches; every evaluation scores the
same ones. The loss is the student's next-token cross-entropy (the training CE term,
`step.eval_terms`, whatever the run's loss weights), summed over all batches and divided once
by their loss-mask tokens: val_loss = sum NLL / tokens, val_ppl = exp(val_loss).
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.experimental import multihost_utils

from ..errors import ConfigError
from .data import held_out_batches
from .session import Session
from .step import CompiledEval


class Validation:
    def __init__(self, session: Session):
        cfg = session.cfg.train
        self.every, self.last = cfg.eval_every, cfg.steps
        local = held_out_batches(
            session.cfg.data,
            cfg.eval_split,
            cfg.eval_batches,
            session.spec.student.vocab_size,
            jax.process_index(),
            jax.process_count(),
        )
        n = len(local)
        if jax.process_count() > 1:  # hosts may run out at different batches: all use the fewest
            n = int(np.min(multihost_utils.process_allgather(np.array([n], np.int32))))
        if n == 0:
            raise ConfigError(f"train.eval_split: split {cfg.eval_split!r} gives no batch")
        self.batches = [session.global_batch(b) for b in local[:n]]
        self._fn = CompiledEval(
            session.spec, session.mesh, session.param_shardings, session.frozen_shardings
        )

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.last

    def __call__(self, params, frozen) -> dict:
        """{"val_loss", "val_ppl", "val_tokens"} of the student `params`."""
        terms = [self._fn(params, frozen, b) for b in self.batches]
        nll, tokens = (math.fsum(float(x) for x in col) for col in zip(*jax.device_get(terms)))
        loss = nll / max(tokens, 1.0)
        return {"val_loss": loss, "val_ppl": math.exp(loss), "val_tokens": tokens}
