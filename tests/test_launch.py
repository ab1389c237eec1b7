"""Launchers (launch/tpu.sh, launch/gpu.sh), hardware overlays and multi-process start-up.

The scripts run against fake `gcloud` / `srun` executables put first on PATH that record their
arguments (JSON, one call per line). The fake gcloud also *executes* `tpu-vm ssh --command` scripts
with /bin/sh once per simulated worker (own `hostname` each, a shared fake home), so the remote
scripts themselves are tested: nohup start, per-worker logs and pid files, pid-file based stop.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tinywave_jax import hw as hw_overlays
from tinywave_jax.config import apply_overrides, from_dict, read_yaml
from tinywave_jax.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
TPU = REPO / "launch" / "tpu.sh"
GPU = REPO / "launch" / "gpu.sh"
HW = sorted((REPO / "configs" / "hw").glob("*.yaml"))

FAKE_GCLOUD = r"""#!PYTHON
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(["gcloud"] + args) + "\n")
home, workers = os.environ["FAKE_HOME"], int(os.environ["FAKE_WORKERS"])
which = next((a for a in args if a.startswith("--worker=")), "=all").split("=", 1)[1]
chosen = range(workers) if which == "all" else [int(which)]
if args[:4] == ["compute", "tpus", "tpu-vm", "scp"]:
    for w in chosen:
        shutil.copy(args[4], os.path.join(home, f"w{w}", args[5].split(":", 1)[1]))
elif args[:4] == ["compute", "tpus", "tpu-vm", "ssh"] and os.environ.get("FAKE_EXEC"):
    script = args[args.index("--command") + 1]
    rc = 0
    for w in chosen:     # each worker: its own home and `hostname`
        env = dict(os.environ, PATH=os.path.join(os.environ["FAKE_BIN"], f"w{w}") + ":" + os.environ["PATH"])
        rc |= subprocess.run(["/bin/sh", "-c", script], cwd=os.path.join(home, f"w{w}"), env=env).returncode
    sys.exit(rc)
"""

FAKE_SRUN = r"""#!PYTHON
import json, os, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(["srun"] + args) + "\n")
nodes = int(next(a for a in args if a.startswith("--nodes=")).split("=")[1])
cmd = args[next(i for i, a in enumerate(args) if not a.startswith("--")):]
for rank in range(nodes):
    env = dict(os.environ, SLURM_PROCID=str(rank), SLURM_NTASKS=str(nodes), SLURM_LOCALID="0",
               SLURM_STEP_NUM_NODES=str(nodes), SLURM_STEP_NODELIST="gpu[003-004]", SLURM_NODEID=str(rank))
    subprocess.run(cmd, env=env, check=True)
"""

# Records its argv and environment (GPU trainer stand-in).
FAKE_RECORDER = r"""#!PYTHON
import json, os, sys
with open(os.environ["FAKE_TRAINER_LOG"], "a") as f:
    f.write(json.dumps({"argv": sys.argv[1:], "env": dict(os.environ)}) + "\n")
"""

# The TPU trainer stand-in: records its arguments, runs until SIGTERM.
FAKE_TRAINER = """#!/bin/sh
printf '%s\\n' "$@" > "$HOME_DIR/args-$(hostname).txt"
trap 'echo "got TERM"; exit 0' TERM
echo "trainer up"
while :; do sleep 0.05; done
"""


def _script(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.replace("#!PYTHON", "#!" + sys.executable))
    path.chmod(0o755)
    return path


@pytest.fixture
def fake(tmp_path):
    """PATH with fake gcloud/srun, two fake TPU workers (own home and `hostname` each)."""
    bin_dir, home = tmp_path / "bin", tmp_path / "home"
    for w in range(2):
        (home / f"w{w}").mkdir(parents=True)
    _script(bin_dir / "gcloud", FAKE_GCLOUD)
    _script(bin_dir / "srun", FAKE_SRUN)
    for w in range(2):
        _script(bin_dir / f"w{w}" / "hostname", f"#!/bin/sh\necho tpu-w-{w}\n")
    env = dict(
        os.environ,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        FAKE_LOG=str(tmp_path / "calls.jsonl"),
        FAKE_HOME=str(home),
        FAKE_BIN=str(bin_dir),
        FAKE_WORKERS="2",
        HOME_DIR=str(home),
        FAKE_TRAINER_LOG=str(tmp_path / "trainer.jsonl"),
        TMPDIR=str(tmp_path),
    )
    for k in [k for k in env if k.startswith(("TPU_", "TINYWAVE_", "SLURM_"))]:
        del env[k]

    class Fake:
        pass

    f = Fake()
    f.tmp, f.home, f.env = tmp_path, home, env

    def run(script, *args, ok=True, **extra):
        p = subprocess.run(
            ["bash", str(script), *map(str, args)],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
        )
        if ok:
            assert p.returncode == 0, p.stderr
        return p

    f.run = run
    f.calls = lambda: (
        [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
        if (tmp_path / "calls.jsonl").exists()
        else []
    )
    f.trainer = lambda: [
        json.loads(line) for line in (tmp_path / "trainer.jsonl").read_text().splitlines()
    ]
    return f


WHERE = ["--name", "tpu1", "--zone", "us-east5-a", "--project", "my-proj"]
SSH = [
    "gcloud",
    "compute",
    "tpus",
    "tpu-vm",
    "ssh",
    "tpu1",
    "--zone=us-east5-a",
    "--project=my-proj",
]


def _remote(call):
    assert call[:8] == SSH and call[-2] == "--command", call
    return call[-1]


# --------------------------------------------------------------------------- static checks


def test_scripts_pass_shellcheck():
    """shellcheck when installed (`make test` installs it); bash's own syntax check always."""
    for script in (TPU, GPU):
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    if shutil.which("shellcheck"):
        p = subprocess.run(
            ["shellcheck", "--severity=style", str(TPU), str(GPU)], capture_output=True, text=True
        )
        assert p.returncode == 0, p.stdout + p.stderr


def test_scripts_never_kill_by_name():
    for script in (TPU, GPU):
        text = script.read_text()
        assert "pkill" not in text and "killall" not in text


# --------------------------------------------------------------------------- tpu.sh


def test_tpu_dry_run_prints_and_calls_nothing(fake):
    p = fake.run(
        TPU,
        "--dry-run",
        *WHERE,
        "run",
        "configs/x.yaml",
        "data.corpus.corpus_dir=gs://b/c d",
        "--resume",
    )
    assert fake.calls() == []
    line = p.stdout.strip()
    assert line.startswith("+ ")
    argv = shlex.split(line[2:])  # the printed command is valid shell
    assert argv[:9] == SSH + ["--worker=all"] and argv[9] == "--command"
    assert (
        "tinywave distill configs/x.yaml 'data.corpus.corpus_dir=gs://b/c d' --resume" in argv[10]
    )
    p = fake.run(TPU, "--dry-run", *WHERE, "--accelerator", "v5p-64", "--queued", "create")
    assert p.stdout.strip() == (
        "+ gcloud compute tpus queued-resources create tpu1 --node-id=tpu1 "
        "--zone=us-east5-a --project=my-proj --accelerator-type=v5p-64 "
        "--runtime-version=v2-alpha-tpuv5"
    )
    assert fake.calls() == []


def test_tpu_create_delete_status_logs(fake):
    fake.run(TPU, *WHERE, "--accelerator", "v6e-64", "--spot", "create")
    fake.run(TPU, *WHERE, "--accelerator", "v5litepod-16", "--queued", "create")
    fake.run(TPU, *WHERE, "--queued", "delete")
    fake.run(TPU, *WHERE, "delete")
    fake.run(TPU, *WHERE, "--worker", "1", "--lines", "20", "logs")
    fake.run(TPU, *WHERE, "status")
    c = fake.calls()
    assert c[0] == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "create",
        "tpu1",
        "--zone=us-east5-a",
        "--project=my-proj",
        "--accelerator-type=v6e-64",
        "--version=v2-alpha-tpuv6e",
        "--spot",
    ]
    assert c[1] == [
        "gcloud",
        "compute",
        "tpus",
        "queued-resources",
        "create",
        "tpu1",
        "--node-id=tpu1",
        "--zone=us-east5-a",
        "--project=my-proj",
        "--accelerator-type=v5litepod-16",
        "--runtime-version=v2-alpha-tpuv5-lite",
    ]
    assert c[2] == [
        "gcloud",
        "compute",
        "tpus",
        "queued-resources",
        "delete",
        "tpu1",
        "--zone=us-east5-a",
        "--project=my-proj",
        "--force",
        "--quiet",
    ]
    assert c[3] == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "delete",
        "tpu1",
        "--zone=us-east5-a",
        "--project=my-proj",
        "--quiet",
    ]
    assert c[4][8] == "--worker=1" and "tail -n 20" in _remote(c[4])
    assert c[5][:6] == ["gcloud", "compute", "tpus", "tpu-vm", "describe", "tpu1"]
    assert c[6][8] == "--worker=all" and "pidfile" in _remote(c[6])


def test_tpu_settings_from_environment_and_bad_input(fake):
    fake.run(TPU, "stop", TPU_NAME="tpu1", TPU_ZONE="us-east5-a", TPU_PROJECT="my-proj")
    assert fake.calls()[0][:9] == SSH + ["--worker=all"]
    p = fake.run(TPU, "--name", "tpu1", "--project", "p", "stop", ok=False)
    assert p.returncode == 2 and "--zone" in p.stderr
    p = fake.run(TPU, *WHERE, "reboot", ok=False)
    assert p.returncode == 2 and "unknown action" in p.stderr
    p = fake.run(TPU, *WHERE, "create", ok=False)
    assert p.returncode == 2 and "--accelerator" in p.stderr
    p = fake.run(TPU, *WHERE, "stop", "x.yaml", ok=False)
    assert p.returncode == 2
    assert len(fake.calls()) == 1


def test_tpu_deploy_copies_archive_to_all_workers(fake):
    sha = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    fake.run(TPU, *WHERE, "--install", "touch installed", "deploy", FAKE_EXEC="1")
    scp, ssh = fake.calls()
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    assert scp[6:] == [
        "tpu1:tinywave-src.tar.gz",
        "--zone=us-east5-a",
        "--project=my-proj",
        "--worker=all",
    ]
    with tarfile.open(scp[5]) as tar:
        assert "tinywave/setup.cfg" in tar.getnames()
    assert ssh[8] == "--worker=all"
    for w in range(2):
        code = fake.home / f"w{w}" / "tinywave"
        assert (code / "setup.cfg").is_file()
        assert (code / "tinywave_jax" / "cli.py").is_file() and (code / "installed").is_file()
        assert (code / ".deployed-ref").read_text().strip() == sha
        assert not (fake.home / f"w{w}" / "tinywave-src.tar.gz").exists()
    # deploy by git checkout on the workers instead
    fake.run(
        TPU, *WHERE, "--git-url", "https://example.org/tinywave.git", "--ref", "v1.0", "deploy"
    )
    script = _remote(fake.calls()[-1])
    assert "git clone -q https://example.org/tinywave.git tinywave" in script
    assert "git fetch -q origin v1.0; git checkout -q --detach FETCH_HEAD" in script
    assert "pip install -q -e . 'jax[tpu]'" in script


def _wait_for(path: Path, timeout=10.0):
    end = time.time() + timeout
    while not path.exists() and time.time() < end:
        time.sleep(0.05)
    assert path.exists(), f"{path} did not appear"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_tpu_run_and_stop_on_every_worker(fake):
    run_dirs = {}
    for w in range(2):
        _script(fake.home / f"w{w}" / "tinywave" / ".venv" / "bin" / "tinywave", FAKE_TRAINER)
        run_dirs[w] = fake.home / f"w{w}" / "tinywave" / "runs" / "main"
    hw = REPO / "configs" / "hw" / "tpu-v5p-64.yaml"
    started = []
    stranger = subprocess.Popen(["sleep", "60"])  # a PID that is not a trainer
    try:
        fake.run(
            TPU,
            *WHERE,
            "--hw",
            hw,
            "--env",
            "LIBTPU_INIT_ARGS=--a=1 --b",
            "run",
            "cfg.yaml",
            "x.y=two words",
            "--resume",
            FAKE_EXEC="1",
        )
        first = {}
        for w in range(2):
            _wait_for(fake.home / f"args-tpu-w-{w}.txt")
            first[w] = int((run_dirs[w] / f"trainer-tpu-w-{w}.pid").read_text())
            started.append(first[w])
            args = (fake.home / f"args-tpu-w-{w}.txt").read_text().splitlines()
            assert args == [
                "distill",
                "cfg.yaml",
                *hw_overlays.overrides(hw),
                "x.y=two words",
                "--resume",
            ]
            assert _alive(first[w])
        script = _remote(fake.calls()[0])
        assert (
            fake.calls()[0][8] == "--worker=all" and "export 'LIBTPU_INIT_ARGS=--a=1 --b'" in script
        )

        # A second run stops the recorded trainers first (SIGTERM by PID), then starts new ones.
        for w in range(2):
            (fake.home / f"args-tpu-w-{w}.txt").unlink()
        p = fake.run(TPU, *WHERE, "run", "cfg.yaml", FAKE_EXEC="1")
        assert f"tpu-w-0: stopping trainer pid {first[0]} (SIGTERM)" in p.stdout
        for w in range(2):
            _wait_for(fake.home / f"args-tpu-w-{w}.txt")
            new = int((run_dirs[w] / f"trainer-tpu-w-{w}.pid").read_text())
            started.append(new)
            assert new != first[w] and _alive(new) and not _alive(first[w])
            log = (run_dirs[w] / f"worker-tpu-w-{w}.log").read_text()
            assert log.count("trainer up") == 2 and "got TERM" in log  # appended, one per start

        # stop: pid-file based; a pid file naming a non-trainer process leaves that process alone.
        (run_dirs[1] / "trainer-tpu-w-1.pid").write_text(f"{stranger.pid}\n")
        p = fake.run(TPU, *WHERE, "--stop-timeout", "5", "stop", FAKE_EXEC="1")
        assert f"recorded pid {stranger.pid} is not a running trainer" in p.stdout
        assert stranger.poll() is None
        assert not _alive(started[2]) and not any(any(d.glob("*.pid")) for d in run_dirs.values())
        p = fake.run(TPU, *WHERE, "stop", FAKE_EXEC="1")
        assert "no pid file" in p.stdout
        for call in fake.calls():
            assert "pkill" not in " ".join(call) and "killall" not in " ".join(call)
    finally:
        for pid in started + [stranger.pid]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        stranger.wait()


# A stand-in for the workers' tinywave (corpus-build / exec): records its arguments, prints them,
# fails with 3 when asked to.
FAKE_TINYWAVE = """#!/bin/sh
printf '%s\\n' "$@" > "$HOME_DIR/tw-$(hostname)-$1.txt"
echo "tinywave $* on $(hostname)"
case "$*" in *please-fail*) echo "tinywave: error: asked to" >&2; exit 3 ;; esac
"""

# The TPU metadata server as curl sees it on worker W of 2 (old name:id:ip endpoint format).
FAKE_CURL = """#!/bin/sh
case "$*" in *Metadata-Flavor:Google*) ;; *) exit 22 ;; esac
case "$*" in
  *metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number*) printf W ;;
  *metadata.google.internal/computeMetadata/v1/instance/attributes/worker-network-endpoints*)
    printf 'tw-w-0:0:10.0.0.2,tw-w-1:1:10.0.0.3' ;;
  *) exit 22 ;;
esac
"""


def test_tpu_corpus_build_and_exec_dry_run_print_the_exact_commands(fake):
    ssh = "+ gcloud compute tpus tpu-vm ssh tpu1 --zone=us-east5-a --project=my-proj"
    p = fake.run(
        TPU, "--dry-run", *WHERE, "--worker", "0", "exec", "corpus", "finalize", "gs://b/c"
    )
    assert p.stdout == (
        f"{ssh} --worker=0 --command "
        "'set -eu; cd tinywave; .venv/bin/tinywave corpus finalize gs://b/c'\n"
    )
    p = fake.run(
        TPU,
        "--dry-run",
        *WHERE,
        "--env",
        "A=b c",
        "exec",
        "--",
        "export-hf",
        "gs://b/r/final",
        "x y",
    )
    argv = shlex.split(p.stdout[2:])
    assert argv == SSH + [
        "--worker=all",
        "--command",
        "set -eu; cd tinywave; export 'A=b c'; .venv/bin/tinywave export-hf gs://b/r/final 'x y'",
    ]

    build = ["--manifest", "gs://b/audio.jsonl", "--extractor", "u d", "--out", "gs://b/corpus"]
    p = fake.run(TPU, "--dry-run", *WHERE, "corpus-build", *build)
    (line,) = p.stdout.splitlines()
    argv = shlex.split(line[2:])
    assert argv[:9] == SSH + ["--worker=all"] and argv[9] == "--command" and len(argv) == 11
    script = argv[10]
    assert script.startswith("set -eu; cd tinywave; host=$(hostname); run=runs/corpus; ")
    # each worker's share: the count and index jax reads on a TPU VM, from the metadata server
    assert "/computeMetadata/v1/instance/attributes/$1" in script
    assert "md agent-worker-number" in script and "md worker-network-endpoints" in script
    assert 'share="--num-hosts $nhosts --host-index $idx"' in script
    assert (
        "nohup .venv/bin/tinywave corpus build --manifest gs://b/audio.jsonl --extractor 'u d' "
        '--out gs://b/corpus $share >> "$log" 2>&1 < /dev/null &'
    ) in script
    # one worker's share again (a preempted host): the flags as given, no metadata
    p = fake.run(
        TPU, "--dry-run", *WHERE, "--worker", "3", "--run-dir", "runs/c2", "corpus-build",
        *build, "--num-hosts", "4", "--host-index", "3",
    )  # fmt: skip
    argv = shlex.split(p.stdout.strip()[2:])
    assert argv[8] == "--worker=3" and "log=\"$run/worker-$host.log\"; share=''; " in argv[10]
    assert "run=runs/c2; " in argv[10]
    assert "metadata" not in argv[10]
    assert "--out gs://b/corpus --num-hosts 4 --host-index 3 $share >>" in argv[10]
    assert fake.calls() == []


def test_tpu_corpus_build_and_exec_refuse_bad_input(fake):
    build = ["--manifest", "a.jsonl", "--out", "gs://b/corpus"]
    for args, msg in [
        (["exec"], "exec needs a tinywave command"),
        (["exec", "--"], "exec needs a tinywave command"),
        (["corpus-build", "--manifest", "a.jsonl"], "corpus-build needs --out"),
        (["corpus-build", *build, "--num-hosts", "2"], "give both --num-hosts and --host-index"),
        (["corpus-build", *build, "--host-index=1"], "give both --num-hosts and --host-index"),
        (
            ["corpus-build", *build, "--num-hosts", "2", "--host-index", "1"],
            "would build the same share on every worker",
        ),
        (["--hw", "configs/hw/tpu-v5p-64.yaml", "corpus-build", *build], "--hw is for run"),
        (["--hw", "configs/hw/tpu-v5p-64.yaml", "exec", "corpus", "info"], "--hw is for run"),
        (["--resume", "exec", "corpus", "info"], "exec takes no CONFIG"),
    ]:
        p = fake.run(TPU, *WHERE, *args, ok=False)
        assert p.returncode == 2 and msg in p.stderr, (args, p.stderr)
        assert p.stdout == ""
    assert fake.calls() == []


def test_tpu_corpus_build_on_every_worker_then_exec_on_one(fake):
    for w in range(2):
        _script(fake.home / f"w{w}" / "tinywave" / ".venv" / "bin" / "tinywave", FAKE_TINYWAVE)
        _script(fake.tmp / "bin" / f"w{w}" / "curl", FAKE_CURL.replace("printf W", f"printf {w}"))
    build = ["--manifest", "gs://b/audio.jsonl", "--out", "gs://b/corpus", "--workers", "8"]
    p = fake.run(TPU, *WHERE, "corpus-build", *build, FAKE_EXEC="1")
    (call,) = fake.calls()
    assert call[8] == "--worker=all"
    for w in range(2):
        args = fake.home / f"tw-tpu-w-{w}-corpus.txt"
        _wait_for(args)
        assert args.read_text().splitlines() == [
            "corpus", "build", *build, "--num-hosts", "2", "--host-index", str(w)
        ]  # fmt: skip
        assert f"tpu-w-{w}: started corpus build --num-hosts 2 --host-index {w}, pid" in p.stdout
        run = fake.home / f"w{w}" / "tinywave" / "runs" / "corpus"
        assert (run / f"trainer-tpu-w-{w}.pid").read_text().strip().isdigit()
        _wait_for(run / f"worker-tpu-w-{w}.log")
        assert not (fake.home / f"w{w}" / "tinywave" / "runs" / "main").exists()

    # finalize on worker 0 only, in the foreground: its output and exit status come back
    p = fake.run(TPU, *WHERE, "--worker", "0", "exec", "corpus", "finalize", "gs://b/corpus",
                 FAKE_EXEC="1")  # fmt: skip
    assert p.stdout == "tinywave corpus finalize gs://b/corpus on tpu-w-0\n"
    p = fake.run(TPU, *WHERE, "exec", "corpus", "info", "please-fail", ok=False, FAKE_EXEC="1")
    assert p.returncode == 3 and p.stderr.count("tinywave: error: asked to") == 2

    # a worker that cannot read its number starts nothing, names what to do, and the exit is not 0
    _script(fake.tmp / "bin" / "w1" / "curl", "#!/bin/sh\nexit 7\n")
    for w in range(2):
        (fake.home / f"tw-tpu-w-{w}-corpus.txt").unlink()
    p = fake.run(TPU, *WHERE, "corpus-build", *build, ok=False, FAKE_EXEC="1")
    assert p.returncode != 0
    assert "tpu-w-1: cannot read agent-worker-number" in p.stderr and "--host-index I" in p.stderr
    _wait_for(fake.home / "tw-tpu-w-0-corpus.txt")
    time.sleep(0.3)
    assert not (fake.home / "tw-tpu-w-1-corpus.txt").exists()


# --------------------------------------------------------------------------- gpu.sh


def test_gpu_one_node_runs_one_process_with_overlay(fake):
    from tinywave_jax.parallel.distributed import detect

    rec = _script(fake.tmp / "tinywave", FAKE_RECORDER)
    hw = REPO / "configs" / "hw" / "h100x8.yaml"
    batch_env = {
        "SLURM_JOB_ID": "5",
        "SLURM_NTASKS": "4",
        "SLURM_PROCID": "0",
        "SLURM_STEP_NODELIST": "n1",
    }
    fake.run(GPU, "cfg.yaml", "train.steps=5", "--resume", TINYWAVE_BIN=str(rec), **batch_env)
    (call,) = fake.trainer()
    assert call["argv"] == [
        "distill",
        "cfg.yaml",
        *hw_overlays.overrides(hw),
        "train.steps=5",
        "--resume",
    ]
    assert fake.calls() == []
    # even inside a SLURM batch script of 4 tasks, one gpu.sh process starts no distributed runtime
    assert detect(call["env"], tpu_vm=False) is None and detect(batch_env, tpu_vm=False) is not None
    fake.run(GPU, "--hw", "none", "--command", "train", "cfg.yaml", TINYWAVE_BIN=str(rec))
    assert fake.trainer()[1]["argv"] == ["train", "cfg.yaml"]


def test_gpu_slurm_one_task_per_node(fake):
    from tinywave_jax.parallel.distributed import detect

    rec = _script(fake.tmp / "tinywave", FAKE_RECORDER)
    fake.run(
        GPU,
        "--slurm",
        "--log-dir",
        fake.tmp / "logs",
        "cfg.yaml",
        "a=1",
        TINYWAVE_BIN=str(rec),
        SLURM_JOB_ID="4242",
        SLURM_JOB_NUM_NODES="2",
    )
    (srun,) = fake.calls()
    n = srun.index(str(rec))
    assert srun[:n] == [
        "srun",
        "--nodes=2",
        "--ntasks=2",
        "--ntasks-per-node=1",
        "--kill-on-bad-exit=1",
        f"--output={fake.tmp / 'logs'}/task-%t.log",
    ]
    assert srun[n + 1 : n + 3] == ["distill", "cfg.yaml"] and srun[-1] == "a=1"
    specs = [detect(call["env"], tpu_vm=False) for call in fake.trainer()]
    port = 61440 + 4242 % 4096
    assert [
        (s.source, s.coordinator_address, s.num_processes, s.process_id, s.local_device_ids)
        for s in specs
    ] == [("slurm", f"gpu003:{port}", 2, r, None) for r in (0, 1)]
    p = fake.run(GPU, "--slurm", "cfg.yaml", ok=False, TINYWAVE_BIN=str(rec))
    assert p.returncode == 2 and "allocation" in p.stderr


def test_gpu_explicit_coordinator_and_dry_run(fake):
    rec = _script(fake.tmp / "tinywave", FAKE_RECORDER)
    fake.run(
        GPU,
        "--hw",
        "none",
        "--coordinator",
        "10.0.0.1:1234",
        "--num-processes",
        "4",
        "--process-id",
        "3",
        "cfg.yaml",
        TINYWAVE_BIN=str(rec),
    )
    env = fake.trainer()[0]["env"]
    assert (
        env["TINYWAVE_COORDINATOR"],
        env["TINYWAVE_NUM_PROCESSES"],
        env["TINYWAVE_PROCESS_ID"],
    ) == ("10.0.0.1:1234", "4", "3")
    p = fake.run(
        GPU,
        "--dry-run",
        "--hw",
        "none",
        "--slurm",
        "--nodes",
        "3",
        "cfg.yaml",
        TINYWAVE_BIN="tinywave",
        SLURM_JOB_ID="7",
    )
    assert p.stdout.strip() == (
        "+ srun --nodes=3 --ntasks=3 --ntasks-per-node=1 --kill-on-bad-exit=1 "
        "tinywave distill cfg.yaml"
    )
    assert fake.calls() == [] and len(fake.trainer()) == 1
    p = fake.run(GPU, "--coordinator", "h:1", "cfg.yaml", ok=False)
    assert p.returncode == 2 and "go together" in p.stderr


# --------------------------------------------------------------------------- hardware overlays


def _distill_config(overrides):
    from tinywave_jax.train.config import DistillConfig

    base = {"teacher": {"shape": {"num_hidden_layers": 4}}}
    return from_dict(DistillConfig, apply_overrides(base, overrides))


@pytest.mark.parametrize("path", HW, ids=[p.stem for p in HW])
def test_hw_overlay_is_a_valid_config_that_fits_its_hardware(path):
    raw = read_yaml(path)
    over = hw_overlays.overrides(path)
    rebuilt = apply_overrides({}, over)
    assert rebuilt == {k: v for k, v in raw.items() if k != "hw"}  # exact round trip
    cfg = _distill_config(over)
    hw = raw["hw"]
    peak = hw.get("peak_bf16_flops_per_chip", hw.get("peak_flops_per_chip"))
    assert cfg.train.peak_flops_per_device == peak
    chips = hw.get("chips") or hw.get("gpus_per_node") or 8
    for devices in {chips, 2 * chips} if "gpus_per_node" in hw else {chips}:
        shape = cfg.mesh.shape(devices)
        rows = cfg.data.batch_size // cfg.train.microbatches
        assert rows % (shape["data"] * shape["fsdp"]) == 0


def test_overlay_floats_round_trip_through_overrides():
    for value in (1e20, 4.59e14, 0.1, 3, "bfloat16", "wait...", "a: b", None, True, [1, 2]):
        text = hw_overlays._scalar(value)
        assert apply_overrides({}, [f"k={text}"])["k"] == value, text
    with pytest.raises(ConfigError, match="not found"):
        hw_overlays.overrides("/nonexistent/hw.yaml")


# --------------------------------------------------------------------------- distributed start-up


def test_detect_explicit_environment():
    from tinywave_jax.parallel.distributed import detect

    env = {
        "TINYWAVE_COORDINATOR": "10.0.0.1:1234",
        "TINYWAVE_NUM_PROCESSES": "4",
        "TINYWAVE_PROCESS_ID": "2",
    }
    s = detect(env, tpu_vm=False)
    assert s.initialize_kwargs() == {
        "coordinator_address": "10.0.0.1:1234",
        "num_processes": 4,
        "process_id": 2,
        "local_device_ids": None,
        "cluster_detection_method": "deactivate",
    }
    assert detect({**env, "TINYWAVE_LOCAL_DEVICE_IDS": "0,1"}, tpu_vm=False).local_device_ids == (
        0,
        1,
    )
    assert (
        detect({**env, "TINYWAVE_NUM_PROCESSES": "1", "TINYWAVE_PROCESS_ID": "0"}, tpu_vm=True)
        is None
    )
    assert detect({**env, "TINYWAVE_DISTRIBUTED": "off"}, tpu_vm=True) is None
    with pytest.raises(ConfigError, match="TINYWAVE_COORDINATOR missing"):
        detect({"TINYWAVE_NUM_PROCESSES": "2", "TINYWAVE_PROCESS_ID": "0"})
    with pytest.raises(ConfigError, match="TINYWAVE_PROCESS_ID missing"):
        detect({"TINYWAVE_COORDINATOR": "h:1"}, tpu_vm=False)
    with pytest.raises(ConfigError, match="outside 0..3"):
        detect({**env, "TINYWAVE_PROCESS_ID": "4"})
    with pytest.raises(ConfigError, match="not an integer"):
        detect({**env, "TINYWAVE_NUM_PROCESSES": "four"})


def test_detect_slurm_and_tpu():
    from tinywave_jax.parallel.distributed import detect, first_slurm_host

    assert [
        first_slurm_host(x) for x in ("node7", "gpu[003-004,9],cpu1", "a-b[12,14]", "h1,h2")
    ] == ["node7", "gpu003", "a-b12", "h1"]
    slurm = {
        "SLURM_JOB_ID": "100",
        "SLURM_NTASKS": "16",
        "SLURM_PROCID": "9",
        "SLURM_LOCALID": "1",
        "SLURM_STEP_NODELIST": "gpu[010-011]",
        "SLURM_STEP_NUM_NODES": "2",
    }
    s = detect(slurm, tpu_vm=False)  # 8 tasks per node: one GPU each
    assert (s.coordinator_address, s.num_processes, s.process_id, s.local_device_ids) == (
        "gpu010:61540",
        16,
        9,
        (1,),
    )
    one_per_node = {
        **slurm,
        "SLURM_NTASKS": "2",
        "SLURM_PROCID": "1",
        "SLURM_LOCALID": "0",
        "TINYWAVE_COORDINATOR": "head:999",
    }
    s = detect(one_per_node, tpu_vm=False)
    assert (s.coordinator_address, s.process_id, s.local_device_ids) == ("head:999", 1, None)
    assert detect({**slurm, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, tpu_vm=False) is None
    assert detect({}, tpu_vm=False) is None
    tpu = detect({}, tpu_vm=True)
    assert tpu.source == "tpu" and tpu.initialize_kwargs() == {}


def test_maybe_initialize_calls_initialize_only_when_needed():
    from tinywave_jax.parallel.distributed import maybe_initialize

    calls = []
    assert maybe_initialize({}, tpu_vm=False, initialize=lambda **kw: calls.append(kw)) is None
    assert calls == []
    env = {"TINYWAVE_COORDINATOR": "h:1", "TINYWAVE_NUM_PROCESSES": "2", "TINYWAVE_PROCESS_ID": "1"}
    spec = maybe_initialize(env, initialize=lambda **kw: calls.append(kw))
    assert spec.source == "env" and calls == [spec.initialize_kwargs()]
    maybe_initialize({}, tpu_vm=True, initialize=lambda **kw: calls.append(kw))
    assert calls[-1] == {}


def test_two_real_processes_initialize_from_environment(tmp_path):
    """Two CPU processes started from TINYWAVE_* variables form one jax runtime."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = (
        "from tinywave_jax.parallel.distributed import maybe_initialize\n"
        "spec = maybe_initialize()\nimport jax\n"
        "print(spec.source, jax.process_count(), jax.process_index(), flush=True)\n"
        "jax.distributed.shutdown()\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
            env={
                **os.environ,
                "JAX_PLATFORMS": "cpu",
                "XLA_FLAGS": "",
                "TINYWAVE_COORDINATOR": f"127.0.0.1:{port}",
                "TINYWAVE_NUM_PROCESSES": "2",
                "TINYWAVE_PROCESS_ID": str(i),
            },
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs == [["env", "2", "0"], ["env", "2", "1"]]
