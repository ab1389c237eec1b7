"""`tinywave eval` and `tinywave score` split their sequences over every device (and process) and
give the numbers of a one-device run.

In this pytest process (8 simulated CPU devices): the jitted scoring function gets its rows
sharded over all 8 devices (and its parameters sharded by the training rules with --fsdp), and
the per-sequence log-probabilities, pair scores and decisions, and perplexity equal a one-device
run's to float32 round-off, for counts of sequences that 8 does not divide. Two processes on
loopback (4 devices each, `jax.distributed` through TINYWAVE_COORDINATOR as `tinywave distill`)
write byte for byte the files one process on the same 8 devices writes, and only once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from train_fixtures import free_port, process_env

from tinywave_jax import cli, scoring
from tinywave_jax.checkpoint import save_model
from tinywave_jax.eval.harness import evaluate
from tinywave_jax.models import llama
from tinywave_jax.models.config import tiny_config

ROOT = Path(__file__).resolve().parent.parent
CONFIG = tiny_config(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)
N_PAIRS = 13  # 26 sequences: 8 devices divide neither the pairs nor the sequences


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A checkpoint, a pairs file (one exact tie), a ppl file and a score input."""
    root = tmp_path_factory.mktemp("eval_sharded")
    save_model(root / "ckpt", jax.device_get(llama.init_params(CONFIG, jax.random.key(3))), CONFIG)
    rs = np.random.RandomState(5)
    pairs = []
    for k in range(N_PAIRS):  # lengths spread over the 16, 32 and 64 buckets
        a, b = rs.randint(3, 64, 2)
        pairs.append(
            {
                "positive": rs.randint(0, 128, a).tolist(),
                "negative": rs.randint(0, 128, b).tolist(),
                "group": "ab"[k % 2],
            }
        )
    pairs[4]["negative"] = pairs[4]["positive"]  # an exact tie: 0.5 however it is sharded
    (root / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    seqs = [rs.randint(0, 128, n).tolist() for n in rs.randint(2, 64, 11)]
    (root / "ppl.jsonl").write_text(
        "".join(json.dumps({"ids": s, "seconds": 0.5 + i}) + "\n" for i, s in enumerate(seqs))
    )
    (root / "in.jsonl").write_text(
        "".join(json.dumps({"ids": s, "k": i}) + "\n" for i, s in enumerate(seqs[:9]))
    )
    return root


def _one_device():
    return scoring.scoring_mesh(devices=jax.devices()[:1])


@pytest.fixture
def shardings_seen(monkeypatch):
    """The shardings of the scoring function's outputs as they come back to the host."""
    seen = []
    to_host = scoring._to_host

    def spy(x):
        seen.append(x.sharding)
        return to_host(x)

    monkeypatch.setattr(scoring, "_to_host", spy)
    return seen


def _rows_over_all_devices(seen, rows: int) -> None:
    assert seen and jax.device_count() == 8
    for sh in seen:
        assert len(sh.device_set) == 8
        assert sh.spec[0] == ("data", "fsdp")  # rows split over the data-parallel axes
        assert sh.shard_shape((rows, 16))[0] == rows // 8


def test_score_sequences_on_8_devices_match_one(shardings_seen):
    params = llama.init_params(CONFIG, jax.random.key(3))
    rs = np.random.RandomState(0)
    seqs = [rs.randint(0, 128, n).tolist() for n in rs.randint(2, 33, 21)]  # buckets 16, 32
    want = scoring.score_sequences(params, CONFIG, seqs, batch_size=5)  # one device, as before
    # a mesh of one device is the one-device run, bit for bit
    same = scoring.score_sequences(params, CONFIG, seqs, batch_size=5, mesh=_one_device())
    assert all(np.array_equal(a, b) for a, b in zip(want, same))
    shardings_seen.clear()
    for fsdp in (1, 2):  # replicated parameters; parameters sharded over fsdp=2 groups
        mesh = scoring.scoring_mesh(fsdp)
        got = scoring.score_sequences(params, CONFIG, seqs, batch_size=5, mesh=mesh)
        # batch 5 is global: rounded up to 8 rows, one per device
        _rows_over_all_devices(shardings_seen, 8)
        shardings_seen.clear()
        assert [len(g) for g in got] == [len(s) - 1 for s in seqs]
        for a, b in zip(want, got):
            assert a.dtype == b.dtype == np.float32
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=2e-6)
    emb = scoring.param_shardings(mesh, CONFIG)["embed_tokens"]["embedding"]
    assert emb.spec[1] == "fsdp"  # the training rules: embed over fsdp


def test_eval_and_score_commands_shard_and_match_one_device(data, shardings_seen, tmp_path):
    root = data
    # pairs: 26 sequences, --batch-size 12 -> 16 rows per step (2 per device)
    assert (
        cli.main(
            [
                "eval",
                str(root / "ckpt"),
                "--task",
                "pairs",
                "--data",
                str(root / "pairs.jsonl"),
                "--batch-size",
                "12",
                "--out",
                str(tmp_path / "pairs8"),
            ]
        )
        == 0
    )
    _rows_over_all_devices(shardings_seen, 16)
    quiet = {"log": lambda m: None}
    one = evaluate(
        root / "ckpt", "pairs", root / "pairs.jsonl", batch_size=12, mesh=_one_device(), **quiet
    )["result"]
    got = json.loads((tmp_path / "pairs8" / "results.json").read_text())["result"]
    rows = [
        json.loads(line) for line in (tmp_path / "pairs8" / "pairs.jsonl").read_text().splitlines()
    ]
    assert len(rows) == N_PAIRS and rows[4]["outcome"] == 0.5
    assert [r["outcome"] for r in rows] == [p["outcome"] for p in one["pairs"]]
    assert [r["group"] for r in rows] == [p["group"] for p in one["pairs"]]
    for r, p in zip(rows, one["pairs"]):
        assert r["positive"] == pytest.approx(p["positive"], rel=1e-6, abs=1e-6)
        assert r["negative"] == pytest.approx(p["negative"], rel=1e-6, abs=1e-6)
    assert got["accuracy"] == one["accuracy"]
    assert got["groups"] == one["groups"]

    # ppl: 11 sequences, default batch 8
    shardings_seen.clear()
    ppl8 = evaluate(root / "ckpt", "ppl", root / "ppl.jsonl", **quiet)["result"]
    _rows_over_all_devices(shardings_seen, 8)
    ppl1 = evaluate(root / "ckpt", "ppl", root / "ppl.jsonl", mesh=_one_device(), **quiet)
    ppl1 = ppl1["result"]
    assert ppl8["scored_tokens"] == ppl1["scored_tokens"]
    np.testing.assert_allclose(ppl8["sequence_nll"], ppl1["sequence_nll"], rtol=1e-6)
    for k in ("ppl", "nll_per_token", "nll_per_second"):
        assert ppl8[k] == pytest.approx(ppl1[k], rel=1e-6)

    # score: 9 sequences, --batch-size 3 -> 8 rows; --fsdp 4 shards the parameters too
    shardings_seen.clear()
    out8, out1 = tmp_path / "s8.jsonl", tmp_path / "s1.jsonl"
    args = ["score", str(root / "ckpt"), str(root / "in.jsonl"), str(out8), "--batch-size", "3"]
    assert cli.main(args + ["--fsdp", "4"]) == 0
    _rows_over_all_devices(shardings_seen, 8)
    scoring.score_file(
        root / "ckpt", root / "in.jsonl", out1, 3, progress=False, mesh=_one_device()
    )
    got = [json.loads(line) for line in out8.read_text().splitlines()]
    want = [json.loads(line) for line in out1.read_text().splitlines()]
    assert [g["k"] for g in got] == list(range(9))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g["logprobs"], w["logprobs"], rtol=1e-5, atol=2e-6)
        assert g["sum_logprob"] == pytest.approx(w["sum_logprob"], rel=1e-6, abs=1e-5)


def test_bad_mesh_flags_fail_before_scoring(data, capsys):
    root = data
    base = ["eval", str(root / "ckpt"), "--task", "ppl", "--data", str(root / "ppl.jsonl")]
    assert cli.main(base + ["--fsdp", "3"]) == 2
    assert "--fsdp 3" in capsys.readouterr().err
    assert cli.main(base + ["--batch-size", "0"]) == 2
    assert "--batch-size" in capsys.readouterr().err


# every process runs these `tinywave` commands in turn, as each host of a pod would; process 1
# fails if it tries to write an output (only process 0 writes)
_LAUNCH = """
import json, os, sys
from tinywave_jax import scoring
from tinywave_jax.cli import main
from tinywave_jax.eval import harness

if os.environ["TINYWAVE_PROCESS_ID"] != "0":
    def refuse(*args, **kwargs):
        raise AssertionError("process " + os.environ["TINYWAVE_PROCESS_ID"] + " wrote an output")
    scoring.write_jsonl_atomic = harness._write = refuse
for argv in json.loads(sys.argv[1]):
    if main(argv):
        sys.exit(1)
"""


def _run_two_processes(commands: list[list[str]], tmp: Path) -> str:
    port = free_port()
    procs = []
    for pid in range(2):
        env = process_env(pid, port)
        log = open(tmp / f"proc-{pid}.log", "w")
        procs.append(
            (
                subprocess.Popen(
                    [sys.executable, "-c", _LAUNCH, json.dumps(commands)],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                log,
            )
        )
    codes = []
    for p, log in procs:
        try:
            codes.append(p.wait(timeout=240))
        finally:
            if p.poll() is None:
                p.kill()
            log.close()
    logs = "\n".join((tmp / f"proc-{i}.log").read_text()[-3000:] for i in range(2))
    assert codes == [0, 0], f"exit codes {codes}\n{logs}"
    return logs


def test_two_processes_write_what_one_process_writes(data, tmp_path):
    """eval (pairs, --compare) and score (--fsdp 8: parameters sharded across both processes) in
    two processes of 4 devices each: the same files, byte for byte, as one process on 8."""
    root = data

    def commands(out: Path) -> list[list[str]]:
        return [
            [
                "eval",
                str(root / "ckpt"),
                "--task",
                "pairs",
                "--data",
                str(root / "pairs.jsonl"),
                "--compare",
                str(root / "ckpt"),
                "--out",
                str(out / "eval"),
            ],
            [
                "score",
                str(root / "ckpt"),
                str(root / "in.jsonl"),
                str(out / "score.jsonl"),
                "--fsdp",
                "8",
            ],
        ]

    t0 = time.time()
    logs = _run_two_processes(commands(tmp_path / "multi"), tmp_path)
    print(f"two processes, eval + score: {time.time() - t0:.1f} s")
    assert logs.count("eval: wrote") == 1  # only process 0 writes (and reports) the folder
    assert jax.process_count() == 1 and jax.device_count() == 8
    t0 = time.time()
    for argv in commands(tmp_path / "single"):
        assert cli.main(argv) == 0
    print(f"one process, eval + score: {time.time() - t0:.1f} s")
    multi, single = tmp_path / "multi", tmp_path / "single"
    files = ["eval/results.json", "eval/pairs.jsonl", "eval/report.json", "score.jsonl"]
    for name in files:
        a = (multi / name).read_text().replace(str(multi), "OUT")
        b = (single / name).read_text().replace(str(single), "OUT")
        assert a == b, name
    assert sorted(p.name for p in (multi / "eval").iterdir()) == sorted(
        p.name for p in (single / "eval").iterdir()
    )
    assert not [p.name for p in multi.iterdir() if p.name.startswith(".")]  # no temporaries
