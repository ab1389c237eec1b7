"""Generation throughput on CPU: our KV-cached `models.decode.generate` (jitted) vs
`transformers` `generate` on the same random Llama, greedy, at batch 1 and batch 8.

    .venv/bin/python bench/generate.py [--layers 8 --hidden 512 --prompt 64 --new 128]

Tokens/s counts new tokens of all rows (batch x new / seconds), after one warm-up call (our
compile, torch's first-call overheads); each takes the best of --repeats runs, interleaved
with the other's so both see the same background load. The last
line printed is ONE JSON object with jax_tokens_per_s_b1, hf_tokens_per_s_b1,
jax_tokens_per_s_b8, hf_tokens_per_s_b8 and whether both produced the same greedy tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from tinywave_jax.convert import hf_state_to_params  # noqa: E402
from tinywave_jax.models import decode  # noqa: E402
from tinywave_jax.models.config import LlamaConfig  # noqa: E402


def build(args):
    torch.manual_seed(0)
    hf_cfg = transformers.LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.ffn,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(hf_cfg).eval()
    model.generation_config.eos_token_id = None
    config = LlamaConfig.from_hf_dict(hf_cfg.to_dict(), where="bench")
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    params = jax.device_put(hf_state_to_params(state, config))
    return model, config, params


def best_times(fns, repeats):
    """Best-of-`repeats` seconds of each function, runs interleaved so that both see the same
    background load; returns ([seconds], [last output])."""
    outs = [fn() for fn in fns]  # warm-up (compilation, first-call overheads)
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            t = time.perf_counter()
            outs[k] = fn()
            best[k] = min(best[k], time.perf_counter() - t)
    return best, outs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--ffn", type=int, default=1376)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32512)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    model, config, params = build(args)
    rs = np.random.RandomState(0)
    result = {
        "layers": args.layers,
        "hidden": args.hidden,
        "vocab": args.vocab,
        "prompt_tokens": args.prompt,
        "new_tokens": args.new,
        "torch_threads": torch.get_num_threads(),
        "device": str(jax.devices()[0]),
    }
    for batch in (1, 8):
        prompts = rs.randint(3, args.vocab, (batch, args.prompt))
        ids, mask = jnp.asarray(prompts, jnp.int32), jnp.ones(prompts.shape, bool)

        def ours(ids=ids, mask=mask):  # bound now: timed inside this iteration
            return np.asarray(
                decode.generate(
                    params,
                    config,
                    ids,
                    mask,
                    jax.random.key(0),
                    max_new_tokens=args.new,
                    greedy=True,
                )
            )

        def hf(prompts=prompts):
            with torch.no_grad():
                out = model.generate(
                    torch.tensor(prompts),
                    attention_mask=torch.ones_like(torch.tensor(prompts)),
                    max_new_tokens=args.new,
                    min_new_tokens=args.new,
                    do_sample=False,
                    pad_token_id=0,
                )
            return out[:, args.prompt :].numpy()

        (t_jax, t_hf), (out_jax, out_hf) = best_times([ours, hf], args.repeats)
        n = batch * args.new
        result[f"jax_tokens_per_s_b{batch}"] = round(n / t_jax, 1)
        result[f"hf_tokens_per_s_b{batch}"] = round(n / t_hf, 1)
        result[f"speedup_b{batch}"] = round(t_hf / t_jax, 2)
        result[f"greedy_tokens_equal_b{batch}"] = bool(np.array_equal(out_jax, out_hf))
        print(
            f"batch {batch}: jax {n / t_jax:.1f} tok/s ({t_jax:.2f} s), "
            f"transformers {n / t_hf:.1f} tok/s ({t_hf:.2f} s)",
            flush=True,
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
