"""Checkpoint save and restore of one run, to a local folder vs a gs:// bucket on a GCS emulator.

Starts fake-gcs-server on 127.0.0.1 the way the tests do (tests/gcs_fixtures.py: in memory,
endpoints through STORAGE_EMULATOR_HOST and TENSORSTORE_GCS_HTTP_URL), builds the run's state
(`tinywave distill CONFIG [key=value ...]`: the recipe, mesh and shardings the trainer uses, then
--steps real training steps, so the optimizer moments are real numbers) and times, on the same
arrays, what the trainer does with them:

  save_state     `resume.save_checkpoint` into a fresh run_dir's CheckpointManager (orbax, the
                 trainer's async options) until the step is committed (`wait_until_finished`)
  restore_state  a new CheckpointManager + `resume.restore_intact` onto the run's abstract state
                 (what `--resume` does), until the arrays are ready
  save_model     `checkpoint.save_model(run_dir/final, overwrite=True)` (the run's final export)
  load_model     `checkpoint.load_model(run_dir/final)` (sha256-verified, as export-hf reads it)

each --repeats times per target (local and gs:// alternate, a fresh run_dir each time) after one
untimed warm-up of each. Reports medians (and minima), the gs:// / local ratios and the bytes
written, as ONE JSON line; --figure writes a bar chart (matplotlib).

    .venv/bin/python bench/gcs_checkpoint.py                        # configs/distill_tiny.yaml
    .venv/bin/python bench/gcs_checkpoint.py --repeats 5 --figure docs/gcs_checkpoint.png \\
        teacher.shape.hidden_size=512 ...                          # overrides scale the run

The emulator runs on this machine's loopback: the ratios are the protocol's cost (HTTP requests,
orbax's and tinywave's commit steps on object storage), not a real bucket's latency.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # gcs_fixtures: the tests' emulator start-up

OPS = ("save_state", "restore_state", "save_model", "load_model")


def _bytes(root) -> int:
    from tinywave_jax import storage

    return sum(storage.size(storage.path(root) / rel) for rel in storage.rel_files(root))


def _load(args):
    from tinywave_jax.config import load_config
    from tinywave_jax.train.config import DistillConfig
    from tinywave_jax.train.data import make_batches
    from tinywave_jax.train.recipes import prepare
    from tinywave_jax.train.session import Session

    cfg = load_config(DistillConfig, args.config, args.overrides)
    session = Session(prepare(cfg))
    frozen, trainable = session.frozen_and_trainable()
    state = session.init_state(trainable)
    # a few real steps, so that Adam's moments are not the zeros orbax would compress away
    batches = make_batches(cfg.data, session.spec.student.vocab_size)
    for _ in range(args.steps):
        state, _ = session.step(state, frozen, session.global_batch(next(batches)))
    params = session.export_params(state, frozen)
    config = session.spec.student.replace(remat="none")
    return cfg, session, state, params, config


def one_round(base: str, session, state, params, config, cfg) -> dict[str, float]:
    """The four operations once under `base` (a new run_dir); seconds each."""
    import jax

    from tinywave_jax.checkpoint import load_model, save_model
    from tinywave_jax.config import to_dict
    from tinywave_jax.train.resume import checkpoint_manager, restore_intact, save_checkpoint

    keep, async_save = cfg.train.checkpoint_keep, cfg.train.async_checkpoint
    meta = {"kind": "distill", "config": to_dict(cfg)}
    out = {}
    mngr = checkpoint_manager(base, keep, async_save)
    t = time.perf_counter()
    save_checkpoint(mngr, state, {"position": 0}, meta)
    mngr.wait_until_finished()
    out["save_state"] = time.perf_counter() - t
    mngr.close()

    t = time.perf_counter()
    mngr = checkpoint_manager(base, keep, async_save)
    _, restored, _, _ = restore_intact(mngr, session.abstract_state())
    jax.block_until_ready(restored)
    out["restore_state"] = time.perf_counter() - t
    mngr.close()
    same = jax.tree.map(lambda a, b: bool((a == b).all()), restored.params, state.params)
    assert all(jax.tree.leaves(same)), "restored state differs from the saved one"

    final = f"{base}/final"
    t = time.perf_counter()
    save_model(final, params, config, {"bench": "gcs_checkpoint"}, overwrite=True)
    out["save_model"] = time.perf_counter() - t
    t = time.perf_counter()
    loaded, _, _ = load_model(final)
    jax.block_until_ready(loaded)
    out["load_model"] = time.perf_counter() - t
    return out


def figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [
        "resume ckpt\nsave",
        "resume ckpt\nrestore",
        "final/ model\nsave",
        "final/ model\nload",
    ]
    local = [result[f"{op}_local_s"] for op in OPS]
    gcs = [result[f"{op}_gcs_s"] for op in OPS]
    x = np.arange(len(OPS))
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=120)
    ax.bar(x - 0.2, local, 0.4, label="local disk", color="#4c72b0")
    ax.bar(x + 0.2, gcs, 0.4, label="gs:// (fake-gcs-server, loopback)", color="#dd8452")
    for i, op in enumerate(OPS):
        ax.text(x[i] + 0.2, gcs[i], f"{result[f'{op}_ratio']:.1f}x", ha="center", va="bottom")
    ax.set_xticks(x, labels)
    ax.set_ylabel("seconds (median)")
    title = (
        f"{result['config']}{' + overrides' if result['overrides'] else ''}: student "
        f"{result['student_params'] / 1e6:.2f}M params\nresume ckpt "
        f"{result['state_bytes_local'] / 1e6:.1f} MB, final/ {result['model_bytes_local'] / 1e6:.1f} MB;"
        f" median of {result['repeats']}"
    )
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_ylim(0, max(gcs + local) * 1.2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "distill_tiny.yaml"))
    p.add_argument("overrides", nargs="*", help="key=value config overrides (scale the run)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=2, help="training steps before saving (default 2)")
    p.add_argument("--workdir", help="local folder for the local run_dirs (default: a temp dir)")
    p.add_argument("--figure", help="write a PNG bar chart here")
    p.add_argument("--plot-only", metavar="JSON", help="only draw --figure from a printed result")
    args = p.parse_args(argv)
    if args.plot_only:
        figure(json.loads(Path(args.plot_only).read_text()), Path(args.figure))
        return 0

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from gcs_fixtures import gcs_emulator, make_bucket

    work = Path(args.workdir or tempfile.mkdtemp(prefix="tw-gcs-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    cfg, session, state, params, config = _load(args)
    times: dict[str, dict[str, list[float]]] = {"local": {}, "gcs": {}}
    with gcs_emulator(work / "fake-gcs-server.log") as url:
        bucket = make_bucket()
        bases = {"local": str(work / "runs"), "gcs": f"gs://{bucket}/runs"}
        for r in range(-1, args.repeats):  # round -1: warm-up, not counted
            for target, base in bases.items():
                got = one_round(f"{base}/r{r + 1}", session, state, params, config, cfg)
                if r >= 0:
                    for op, s in got.items():
                        times[target].setdefault(op, []).append(s)
                    print(f"round {r}: {target}: " + ", ".join(f"{k} {v:.3f}s" for k, v in got.items()),
                          file=sys.stderr)  # fmt: skip
        sizes = {
            "state_bytes_local": _bytes(f"{bases['local']}/r0/checkpoints"),
            "state_bytes_gcs": _bytes(f"{bases['gcs']}/r0/checkpoints"),
            "model_bytes_local": _bytes(f"{bases['local']}/r0/final"),
            "model_bytes_gcs": _bytes(f"{bases['gcs']}/r0/final"),
        }
        del url
    import jax

    result = {
        "config": os.path.relpath(args.config, REPO),
        "overrides": args.overrides,
        "student_params": int(config.num_params()),
        "devices": jax.device_count(),
        "repeats": args.repeats,
        "steps": args.steps,
    }
    for op in OPS:
        loc, gcs = statistics.median(times["local"][op]), statistics.median(times["gcs"][op])
        result[f"{op}_local_s"] = round(loc, 4)
        result[f"{op}_gcs_s"] = round(gcs, 4)
        result[f"{op}_ratio"] = round(gcs / loc, 2)
        result[f"{op}_local_min_s"] = round(min(times["local"][op]), 4)
        result[f"{op}_gcs_min_s"] = round(min(times["gcs"][op]), 4)
    result.update(sizes)
    result["load_avg_1m"] = round(os.getloadavg()[0], 2)
    result["cpus"] = os.cpu_count()
    result["nice"] = os.nice(0)
    result["date_utc"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes")
    result["wall_s"] = round(time.time() - t0, 1)
    if args.figure:
        figure(result, Path(args.figure))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
