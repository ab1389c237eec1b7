"""Can the demo teacher's shape learn a story kind's sSC at all? The same Llama over word ids
of the world's text (no speech, exact copying), scored on validation stories.

    .venv/bin/python bench/world_text_probe.py [--kind scene|binding|stranger] [--train 2400]
        [--steps 1000] [--every 250] [--layers 6 --hidden 128 --heads 2]

Trains on each training story (context + right ending) with AdamW (lr 3e-3, 50 warm-up steps,
cosine to 3e-4, batch 64, no weight decay) and prints, every `--every` steps, one JSON line:
step, training loss, validation sSC (mean per-word log-likelihood of the right ending after
the story against the wrong one's) and the same pairs scored on the endings alone. A kind
whose sSC this stays at chance on is not worth hours of speech pretraining
(docs/demo_teacher.md). Deterministic for a seed on one machine.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tinywave_jax.demo import world as W
from tinywave_jax.models.config import LlamaConfig
from tinywave_jax.models.llama import forward, init_params

PAD, BOS = 0, 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", default="scene", choices=sorted(W.KINDS))
    ap.add_argument("--train", type=int, default=2400, help="training stories")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    world = W.make_world(W.WorldSplits(kind=args.kind, train=args.train))
    vocab = {w: i + 2 for i, w in enumerate(W.vocabulary())}

    def ids(text: str) -> list[int]:
        return [BOS] + [vocab[w] for w in W.words_of(text)]

    train = [" ".join(s.sentences) for s in world["train"]]
    valid = world["validation"]
    length = 2 + max(
        len(W.words_of(" ".join((*s.context, e))))
        for s in world["train"] + valid
        for e in (s.ending, s.wrong)
    )

    def batch(texts) -> np.ndarray:
        rows = [ids(t) for t in texts]
        return np.array([r + [PAD] * (length - len(r)) for r in rows], np.int32)

    cfg = LlamaConfig(
        vocab_size=len(vocab) + 2,
        hidden_size=args.hidden,
        intermediate_size=3 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=max(64, length),
    )
    params = init_params(cfg, jax.random.PRNGKey(args.seed))
    schedule = optax.warmup_cosine_decay_schedule(0, 3e-3, 50, args.steps, 3e-4)
    opt = optax.adamw(schedule, weight_decay=0.0)
    opt_state = opt.init(params)

    def token_logprobs(p, x):
        logp = jax.nn.log_softmax(forward(p, cfg, x[:, :-1]).logits, -1)
        target = x[:, 1:]
        mask = target != PAD
        return jnp.take_along_axis(logp, target[..., None], -1)[..., 0] * mask, mask

    def loss_fn(p, x):
        ll, mask = token_logprobs(p, x)
        return -ll.sum() / mask.sum()

    @jax.jit
    def step(p, s, x):
        loss, grads = jax.value_and_grad(loss_fn)(p, x)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    @jax.jit
    def mean_logprob(p, x):
        ll, mask = token_logprobs(p, x)
        return ll.sum(1) / mask.sum(1)

    def accuracy(right_texts, wrong_texts) -> float:
        a = np.array(mean_logprob(params, batch(right_texts)))
        b = np.array(mean_logprob(params, batch(wrong_texts)))
        return float(np.mean((a > b) + 0.5 * (a == b)))

    x_train = batch(train)
    rng = np.random.default_rng(args.seed)
    start = time.time()
    for i in range(1, args.steps + 1):
        params, opt_state, loss = step(params, opt_state, x_train[rng.integers(0, len(train), 64)])
        if i % args.every == 0 or i == args.steps:
            ctx = [" ".join(s.context) + " " for s in valid]
            row = {
                "kind": args.kind,
                "step": i,
                "loss": round(float(loss), 4),
                "ssc": accuracy(
                    [c + s.ending for c, s in zip(ctx, valid)],
                    [c + s.wrong for c, s in zip(ctx, valid)],
                ),
                "ssc_ending_alone": accuracy([s.ending for s in valid], [s.wrong for s in valid]),
                "pairs": len(valid),
                "seconds": round(time.time() - start),
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
