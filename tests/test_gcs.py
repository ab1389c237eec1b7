"""gs:// end to end against a real GCS endpoint (fake-gcs-server, tests/gcs_fixtures.py): a
distill run on a bucket that is SIGKILLed after a checkpoint and resumed to final/ (compared with
the same run on a local disk), import-hf from and export-hf to the bucket (compared with the
source model's tensors, read back with google-cloud-storage's own client), a killed replacement
of a bucket folder rolled back, and the start-up errors for a missing bucket and for missing
credentials (exit 2, one line naming the bucket and the setting to fix)."""

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from gcs_fixtures import TcpGate, gcs_emulator, make_bucket
from train_fixtures import (
    SHARED_OVER,
    distill_config,
    distill_dict,
    subprocess_env,
    wait_for,
)

from tinywave_jax import storage
from tinywave_jax.checkpoint import load_model
from tinywave_jax.cli import main as cli_main
from tinywave_jax.outputs import COMMIT_MARKER, clean_stale_siblings
from tinywave_jax.train.loop import run
from tinywave_jax.train.metrics import read_metrics

N, K = SHARED_OVER["train"]["steps"], SHARED_OVER["train"]["checkpoint_every"]
TIMING_KEYS = {"tokens_per_s", "mfu"}


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    with gcs_emulator(tmp_path_factory.mktemp("gcs") / "fake-gcs-server.log") as url:
        yield url


def _blobs(bucket: str, prefix: str, names_only: bool = False) -> dict[str, bytes | None]:
    """Every object under gs://bucket/prefix/, read with google-cloud-storage (not our code)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs_client

    client = gcs_client.Client(project="test", credentials=AnonymousCredentials())
    prefix = prefix + "/" if prefix else ""
    return {
        b.name[len(prefix) :]: None if names_only else b.download_as_bytes()
        for b in client.list_blobs(bucket, prefix=prefix)
    }


@pytest.mark.slow
def test_distill_on_a_bucket_survives_sigkill_and_resumes_to_final(gcs, tmp_path):
    bucket = make_bucket()
    run_dir = f"gs://{bucket}/run"
    local = run(distill_config(run_dir=str(tmp_path / "local"), **SHARED_OVER), echo=False)

    config = tmp_path / "gcs.yaml"
    d = distill_dict(run_dir=run_dir, **SHARED_OVER)
    d["train"]["throttle_s"] = 0.7  # slow steps, so the kill lands mid-run
    d["train"]["tensorboard"] = True  # tensorboardX's own gs:// writer (google-cloud-storage)
    config.write_text(yaml.safe_dump(d))
    cmd = [sys.executable, "-m", "tinywave_jax.cli", "distill", str(config), "--quiet"]

    def durable():  # orbax's GCS commit marker of step K (listed, not downloaded)
        return f"checkpoints/{K}/commit_success.txt" in _blobs(bucket, "run", names_only=True)

    proc = subprocess.Popen(
        cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    wait_for(durable, proc, f"checkpoint {K} on the bucket", poll=0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    objects = _blobs(bucket, "run")
    assert ".lock" in objects and "final/tinywave.json" not in objects  # killed mid-run

    done = subprocess.run(
        [*cmd, "--resume", "train.throttle_s=0"],
        env=subprocess_env(),
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert "stale lock" in done.stderr.decode()  # the killed run's lock object, replaced
    objects = _blobs(bucket, "run")
    assert ".lock" not in objects and COMMIT_MARKER not in objects
    assert f"final/{COMMIT_MARKER}" in objects and "final/tinywave.json" in objects
    assert not any(name.startswith((".final.", "./")) for name in objects)  # no temporaries
    assert not Path("gs:").exists()  # nothing written to a local ./gs:/ folder

    # the same parameters and metrics as the uninterrupted local run
    a, _, _ = load_model(local["final_dir"])
    b, _, info = load_model(f"{run_dir}/final")  # verified against its recorded sha256
    jax.tree.map(np.testing.assert_array_equal, b, a)
    assert info["provenance"]["run_dir"] == run_dir
    assert set(range(K + 1, N + 1)) <= _tensorboard_steps(objects, "loss")
    rows_a, rows_b = read_metrics(tmp_path / "local"), read_metrics(run_dir)
    assert [r["step"] for r in rows_b] == list(range(1, N + 1))
    for ra, rb in zip(rows_a, rows_b):
        assert {k: v for k, v in ra.items() if k not in TIMING_KEYS} == {
            k: v for k, v in rb.items() if k not in TIMING_KEYS
        }


def _tensorboard_steps(objects: dict[str, bytes], tag: str) -> set[int]:
    """The steps with a scalar `tag` in the TFRecord event files under tb/ (parsed here)."""
    import struct

    from tensorboardX.proto import event_pb2

    steps = set()
    for name, data in objects.items():
        if not name.startswith("tb/"):
            continue
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
            steps |= {event.step for v in event.summary.value if v.tag == tag}
            i += 12 + n + 4
    return steps


def test_import_hf_from_and_export_hf_to_a_bucket(gcs, tmp_path):
    import safetensors.numpy
    from hf_reference import make_hf_model

    bucket = make_bucket()
    model = make_hf_model(num_hidden_layers=2)
    model.save_pretrained(tmp_path / "hf")
    reference = safetensors.numpy.load_file(tmp_path / "hf" / "model.safetensors")
    storage.copy_tree(tmp_path / "hf", f"gs://{bucket}/hf")

    assert cli_main(["import-hf", f"gs://{bucket}/hf", f"gs://{bucket}/ckpt"]) == 0
    assert cli_main(["export-hf", f"gs://{bucket}/ckpt", f"gs://{bucket}/out"]) == 0
    exported = _blobs(bucket, "out")
    got = safetensors.numpy.load(exported["model.safetensors"])
    # export writes the untied head; HF's own save drops nothing here (untied model)
    assert sorted(got) == sorted(reference)
    for name, want in reference.items():
        np.testing.assert_array_equal(got[name], want, err_msg=name)
    assert json.loads(exported["config.json"])["num_hidden_layers"] == 2
    info = json.loads(_blobs(bucket, "ckpt")["tinywave.json"])
    assert info["provenance"]["source_dir"] == f"gs://{bucket}/hf"
    assert not Path("gs:").exists()

    # an output inside its own input is refused on a bucket too, before any work
    assert cli_main(["import-hf", f"gs://{bucket}/hf", f"gs://{bucket}/hf/inner"]) == 2

    # score: input and output on the bucket; log-probs against the torch model itself
    import torch

    rs = np.random.RandomState(0)
    seqs = [rs.randint(0, 211, n).tolist() for n in (9, 23)]
    storage.path(f"gs://{bucket}/in.jsonl").write_text(
        "".join(json.dumps({"ids": ids, "k": i}) + "\n" for i, ids in enumerate(seqs))
    )
    assert (
        cli_main(
            ["score", f"gs://{bucket}/ckpt", f"gs://{bucket}/in.jsonl", f"gs://{bucket}/s.jsonl"]
        )
        == 0
    )
    rows = [json.loads(line) for line in _blobs(bucket, "")["s.jsonl"].decode().splitlines()]
    assert [r["k"] for r in rows] == [0, 1]
    for ids, row in zip(seqs, rows):
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].double()
        want = torch.log_softmax(logits, -1)[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
        np.testing.assert_allclose(row["logprobs"], want.numpy(), rtol=1e-4, atol=1e-4)

    # eval: results on the bucket are the ones evaluate returned
    from tinywave_jax.eval.harness import evaluate

    doc = evaluate(
        f"gs://{bucket}/ckpt",
        "ppl",
        f"gs://{bucket}/in.jsonl",
        out=f"gs://{bucket}/eval",
        log=lambda m: None,
    )
    results = json.loads(_blobs(bucket, "eval")["results.json"])
    assert results["task"] == "ppl" and results["result"] == json.loads(json.dumps(doc["result"]))


def test_export_gguf_from_and_to_a_bucket(gcs, tmp_path):
    """export-gguf reads a checkpoint on the bucket and writes the .gguf object there: the same
    bytes as a local export of the same checkpoint; an existing object is kept unless
    --overwrite; nothing lands in a local ./gs: folder."""
    from hf_reference import make_hf_model

    bucket = make_bucket()
    make_hf_model(num_hidden_layers=2).save_pretrained(tmp_path / "hf")
    assert cli_main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "ckpt")]) == 0
    storage.copy_tree(tmp_path / "ckpt", f"gs://{bucket}/ckpt")
    local = tmp_path / "m.q8_0.gguf"
    assert cli_main(["export-gguf", str(tmp_path / "ckpt"), str(local), "--type", "q8_0"]) == 0
    out = f"gs://{bucket}/gguf/m.q8_0.gguf"
    assert cli_main(["export-gguf", f"gs://{bucket}/ckpt", out, "--type", "q8_0"]) == 0
    assert _blobs(bucket, "gguf") == {"m.q8_0.gguf": local.read_bytes()}
    # kept without --overwrite (refused before any download), replaced with it
    assert cli_main(["export-gguf", f"gs://{bucket}/ckpt", out, "--type", "f16"]) == 2
    assert _blobs(bucket, "gguf") == {"m.q8_0.gguf": local.read_bytes()}
    assert (
        cli_main(["export-gguf", f"gs://{bucket}/ckpt", out, "--type", "f16", "--overwrite"]) == 0
    )
    assert len(_blobs(bucket, "gguf")["m.q8_0.gguf"]) > len(local.read_bytes())  # f16 > q8_0
    assert not Path("gs:").exists()


def test_killed_replacement_on_a_bucket_is_rolled_back(gcs, tmp_path, capsys):
    """A replacement killed after the old folder was copied aside and the new one half copied
    in: the next write puts the complete old copy back (the writer's pid is gone)."""
    bucket = make_bucket()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    pid = int(dead.stdout)
    from tinywave_jax.outputs import _host

    base = f"gs://{bucket}/models"
    old = f"{base}/.final.old-{_host()}-{pid}-0123abcd"
    for rel, data in {"a.txt": b"old a", "b.txt": b"old b", COMMIT_MARKER: b""}.items():
        storage.path(f"{old}/{rel}").write_bytes(data)
    storage.path(f"{base}/final/a.txt").write_bytes(b"new a")  # partial: no marker yet
    storage.path(f"{base}/.final.tmp-{_host()}-{pid}-4567abcd/a.txt").write_bytes(b"new a")

    done = clean_stale_siblings(f"{base}/final")
    assert len(done) == 2
    objects = _blobs(bucket, "models")
    assert objects == {
        "final/a.txt": b"old a",
        "final/b.txt": b"old b",
        f"final/{COMMIT_MARKER}": b"",
    }
    assert "restored" in capsys.readouterr().err

    # a first write killed while its finished folder was being copied into place: completed
    new = f"{base}/.fresh.tmp-{_host()}-{pid}-89abcdef"
    for rel, data in {"a.txt": b"new a", "sub/c.txt": b"new c", COMMIT_MARKER: b""}.items():
        storage.path(f"{new}/{rel}").write_bytes(data)
    storage.path(f"{base}/fresh/a.txt").write_bytes(b"new a")
    assert len(clean_stale_siblings(f"{base}/fresh")) == 1
    assert {
        k: v for k, v in _blobs(bucket, "models").items() if k.startswith(("fresh", ".fresh"))
    } == {
        "fresh/a.txt": b"new a",
        "fresh/sub/c.txt": b"new c",
        f"fresh/{COMMIT_MARKER}": b"",
    }
    assert "completed" in capsys.readouterr().err


def test_missing_bucket_and_missing_credentials_fail_at_start_up(
    gcs, tmp_path, capsys, monkeypatch
):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(distill_dict(run_dir="gs://no-such-bucket-tw/run")))
    assert cli_main(["distill", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'no-such-bucket-tw' does not exist" in err, err

    # no emulator and no credentials: the check needs no network to fail
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    monkeypatch.delenv("TENSORSTORE_GCS_HTTP_URL")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-key.json"))
    config.write_text(yaml.safe_dump(distill_dict(run_dir="gs://some-bucket-tw/run")))
    assert cli_main(["distill", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "'some-bucket-tw'" in err and "GOOGLE_APPLICATION_CREDENTIALS" in err, err
    assert cli_main(["score", "gs://some-bucket-tw/ckpt", "in.jsonl", "out.jsonl"]) == 2
    assert "GOOGLE_APPLICATION_CREDENTIALS" in capsys.readouterr().err
    # export-hf and init-student to gs:// skipped the check (a traceback after the conversion)
    tmp_path.joinpath("ck").mkdir()
    for argv in (
        ["export-hf", str(tmp_path / "ck"), "gs://some-bucket-tw/hf"],
        ["init-student", str(tmp_path / "ck"), "gs://some-bucket-tw/st", "--num-layers", "1"],
    ):
        assert cli_main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "GOOGLE_APPLICATION_CREDENTIALS" in err, err
    # a bucket root is not a folder to replace (it was taken for a local path)
    assert cli_main(["export-hf", str(tmp_path / "ck"), "gs://some-bucket-tw", "--overwrite"]) == 2
    assert "a bucket root cannot be replaced" in capsys.readouterr().err
    assert not Path("gs:").exists()


def test_lock_object_refuses_a_second_run_from_another_process(gcs):
    """The run lock on a bucket: a live holder refuses another process's run (whose lock object
    creation carries the precondition ifGenerationMatch=0), and release removes it."""
    from tinywave_jax.train.run_lock import RunLock

    run_dir = f"gs://{make_bucket()}/run"
    lock = RunLock(run_dir)
    lock.acquire()
    try:
        other = subprocess.run(
            [
                sys.executable,
                "-c",
                f"from tinywave_jax.train.run_lock import RunLock; RunLock({run_dir!r}).acquire()",
            ],
            env=subprocess_env(),
            capture_output=True,
        )
        assert other.returncode == 1 and "RunInUseError" in other.stderr.decode()
        assert f"in use by pid {os.getpid()} on this host" in other.stderr.decode()
    finally:
        lock.release()
    assert not storage.path(f"{run_dir}/.lock").exists()


def test_corpus_on_a_bucket_reads_the_same_records(gcs, tmp_path, monkeypatch):
    """A corpus on gs:// (uploaded with google-cloud-storage's client) is read through a local
    mirror: every record equals the local corpus's, and the mirror is reused until the bucket's
    copy changes."""
    from data_fixtures import synthetic_utterance, write_units_manifest
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs_client

    from tinywave_jax.data.corpus_build import build_corpus
    from tinywave_jax.data.corpus_read import CorpusSource

    rng = np.random.default_rng(3)
    recs = [dict(synthetic_utterance(rng, k), split="train") for k in range(6)]
    build_corpus(
        tmp_path / "corpus",
        manifest=write_units_manifest(tmp_path / "u.jsonl", recs),
        log=lambda m: None,
    )
    bucket = make_bucket()
    client_bucket = gcs_client.Client(project="test", credentials=AnonymousCredentials()).bucket(
        bucket
    )
    for f in sorted(p for p in (tmp_path / "corpus").rglob("*") if p.is_file()):
        client_bucket.blob(
            f"corpus/{f.relative_to(tmp_path / 'corpus').as_posix()}"
        ).upload_from_filename(f)
    monkeypatch.setenv("TINYWAVE_CACHE_DIR", str(tmp_path / "cache"))

    local, remote = CorpusSource(tmp_path / "corpus"), CorpusSource(f"gs://{bucket}/corpus")
    assert len(remote) == len(local) == 6 and remote.dir.startswith(str(tmp_path / "cache"))

    def same(a, b):
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, (list, tuple)):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return np.array_equal(np.asarray(a), np.asarray(b))

    for i in range(6):
        a, b = local[i], remote[i]
        assert a.pop("where").startswith(str(tmp_path / "corpus"))  # names the file it read
        assert b.pop("where").startswith(remote.dir)
        assert same(a, b), i
    mirrored = Path(remote.dir) / "dataset_info.json"
    stamp = mirrored.stat().st_mtime_ns
    assert CorpusSource(f"gs://{bucket}/corpus").dir == remote.dir  # reused, not downloaded again
    assert mirrored.stat().st_mtime_ns == stamp


def _upload(bucket: str, objects: dict[str, bytes]) -> None:
    """Writes objects with google-cloud-storage's own client (names taken literally)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs_client

    b = gcs_client.Client(project="test", credentials=AnonymousCredentials()).bucket(bucket)
    for name, data in objects.items():
        b.blob(name).upload_from_string(data)


def test_object_names_from_a_bucket_never_lead_outside_the_local_copy(
    gcs, tmp_path, capsys, monkeypatch
):
    """An object `ck/../../../x` made `import-hf gs://...` and `export-gguf gs://...` write `x`
    anywhere on the local disk (storage's tree copy and mirror); now no name with an empty, '.'
    or '..' part becomes a local path (exit 2 naming the object)."""
    bucket = make_bucket()
    escape = f"escaped-{uuid.uuid4().hex[:8]}"
    _upload(bucket, {"ck/config.json": b"{}", f"ck/../../../{escape}": b"planted"})
    monkeypatch.setenv("TINYWAVE_CACHE_DIR", str(tmp_path / "cache"))
    dest = tmp_path / "a" / "b" / "c"
    with pytest.raises(storage.UnsafeNameError, match=r"'\.\./\.\./\.\./escaped-"):
        storage.copy_tree(f"gs://{bucket}/ck", dest)
    with pytest.raises(storage.UnsafeNameError):
        storage.local_mirror(f"gs://{bucket}/ck")
    assert cli_main(["import-hf", f"gs://{bucket}/ck", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "would lead outside its folder" in err[0], err
    assert cli_main(["export-gguf", f"gs://{bucket}/ck", str(tmp_path / "m.gguf")]) == 2
    assert "would lead outside its folder" in capsys.readouterr().err
    assert not list(tmp_path.rglob(escape)) and not (tmp_path.parent / escape).exists()
    assert not Path(tmp_path.anchor, escape).exists()


def test_a_mirror_is_refreshed_when_an_object_is_rewritten_at_the_same_size(
    gcs, tmp_path, monkeypatch
):
    """The mirror was reused while names and sizes matched, so a corpus rebuilt in place (its
    ArrayRecord files padded to equal sizes) was read stale with exit 0; now the objects' content
    identity (generation, crc32c, md5) must match."""
    bucket = make_bucket()
    monkeypatch.setenv("TINYWAVE_CACHE_DIR", str(tmp_path / "cache"))
    _upload(bucket, {"m/a.bin": b"A" * 100, "m/sub/b.bin": b"b"})
    # what a killed download left (its process gone) is removed; a live one's is left alone
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    cache = tmp_path / "cache" / "tinywave-cache" / "gs" / bucket
    host = storage.temp_tag().rsplit("-", 2)[0]
    leftover = cache / f".m.tmp-{host}-{int(dead.stdout)}-0123abcd"
    live = cache / f".m.tmp-{host}-{os.getppid()}-4567abcd"
    for d in (leftover, live):
        (d / "a.bin").parent.mkdir(parents=True)
        (d / "a.bin").write_bytes(b"partial")
    first = storage.local_mirror(f"gs://{bucket}/m")
    assert not leftover.exists() and live.is_dir()
    assert (first / "a.bin").read_bytes() == b"A" * 100
    stamp = (first / "a.bin").stat().st_mtime_ns
    assert storage.local_mirror(f"gs://{bucket}/m") == first  # unchanged: reused
    assert (first / "a.bin").stat().st_mtime_ns == stamp
    _upload(bucket, {"m/a.bin": b"B" * 100})  # same name, same size, new content
    again = storage.local_mirror(f"gs://{bucket}/m")
    assert (again / "a.bin").read_bytes() == b"B" * 100
    assert (again / "sub" / "b.bin").read_bytes() == b"b"


def test_start_up_check_covers_both_clients_endpoints(gcs, tmp_path, monkeypatch):
    """STORAGE_EMULATOR_HOST without TENSORSTORE_GCS_HTTP_URL passed the check, then orbax
    (tensorstore) waited on the real GCS with no message."""
    bucket = make_bucket()
    monkeypatch.delenv("TENSORSTORE_GCS_HTTP_URL")
    with pytest.raises(storage.StorageAccessError, match="TENSORSTORE_GCS_HTTP_URL is not"):
        storage.check_gcs(f"gs://{bucket}/run-{uuid.uuid4().hex}", write=True)


def test_a_plain_write_first_rolls_back_a_killed_replacement(gcs, tmp_path, capsys):
    """A bucket folder left partial by a killed replacement was judged as it was by the next
    plain write (refused as 'not empty', the partial copy left in place); the leftovers are now
    resolved before the output folder is judged."""
    bucket = make_bucket()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    from tinywave_jax.outputs import _host

    base = f"gs://{bucket}/models"
    old = f"{base}/.hf.old-{_host()}-{int(dead.stdout)}-0123abcd"
    for rel, data in {"a.txt": b"old a", "b.txt": b"old b", COMMIT_MARKER: b""}.items():
        storage.path(f"{old}/{rel}").write_bytes(data)
    storage.path(f"{base}/hf/a.txt").write_bytes(b"new a")  # partial: no marker yet
    ckpt = tmp_path / "ck"
    ckpt.mkdir()
    assert cli_main(["export-hf", str(ckpt), f"{base}/hf"]) == 2  # no --overwrite
    err = capsys.readouterr().err
    assert "restored" in err and "is not empty (pass --overwrite" in err, err
    assert _blobs(bucket, "models") == {
        "hf/a.txt": b"old a",
        "hf/b.txt": b"old b",
        f"hf/{COMMIT_MARKER}": b"",
    }


def test_a_partial_or_damaged_bucket_folder_is_named_by_its_bucket_path(gcs, tmp_path, capsys):
    """A bucket folder left partial by a killed commit was reported naming a local temporary
    copy (export-gguf: the mirror, "no tinywave.json"; import-hf: its TMPDIR download, "no
    weights found"); readers now refuse it naming the bucket folder, and other errors found in
    a local copy (a damaged params file) name the bucket path too."""
    from tinywave_jax.checkpoint import save_model
    from tinywave_jax.convert import export_hf
    from tinywave_jax.models.config import tiny_config
    from tinywave_jax.models.llama import init_params
    from tinywave_jax.outputs import _host

    config = tiny_config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1)
    ck = save_model(tmp_path / "ck", init_params(config, jax.random.key(0)), config)
    hf = export_hf(ck, tmp_path / "hf")
    base = f"gs://{make_bucket()}/m"
    writer = f"{_host()}-{os.getpid()}-0123abcd"  # a live writer: the folder is left alone
    for name, src in (("final", ck), ("hf", hf)):
        rels = storage.rel_files(src)
        storage.copy_tree(src, f"{base}/.{name}.tmp-{writer}")
        storage.path(f"{base}/.{name}.tmp-{writer}/{COMMIT_MARKER}").write_bytes(b"")
        for rel in [r for r in rels if r.endswith(".json")][:1]:  # the copy cut short
            storage.path(f"{base}/{name}/{rel}").write_bytes((src / rel).read_bytes())
    commands = {
        "export-gguf": ["export-gguf", f"{base}/final", str(tmp_path / "o.gguf")],
        "import-hf": ["import-hf", f"{base}/hf", str(tmp_path / "imp")],
        "score": ["score", f"{base}/final", str(tmp_path / "x.jsonl"), str(tmp_path / "y.jsonl")],
    }
    (tmp_path / "x.jsonl").write_text('{"ids": [1, 2]}\n')
    for command, argv in commands.items():
        assert cli_main(argv) == 2, command
        err = capsys.readouterr().err.strip().splitlines()[-1]
        folder = argv[1]
        assert err.startswith(f"tinywave {command}: error: "), err
        assert f" {folder}: partial, a write into it was interrupted" in err, err
        # no local copy named (the mirror cache, import-hf's TMPDIR download)
        assert "tinywave-cache" not in err and "tinywave-import-hf-" not in err, err
    assert not (tmp_path / "o.gguf").exists() and not (tmp_path / "imp").exists()

    # a complete folder with a damaged params file: named by its bucket path, not the mirror's
    storage.copy_tree(ck, f"{base}/ck2")
    data = sorted(r for r in storage.rel_files(ck) if r.startswith("params/d/"))[0]
    blob = bytearray((ck / data).read_bytes())
    blob[len(blob) // 2] ^= 1
    storage.path(f"{base}/ck2/{data}").write_bytes(bytes(blob))
    assert cli_main(["export-gguf", f"{base}/ck2", str(tmp_path / "o.gguf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{base}/ck2" in err and "tinywave-cache" not in err, err


@pytest.mark.slow
def test_a_bucket_lost_in_the_middle_of_a_command_is_one_named_line(tmp_path, capsys, monkeypatch):
    """The bucket becoming unreachable after the start-up check gave library tracebacks; it now
    ends the command with one line naming the failed request (after gcsfs's ~30 s of retries)."""
    from tinywave_jax.checkpoint import save_model
    from tinywave_jax.models.config import tiny_config
    from tinywave_jax.models.llama import init_params

    config = tiny_config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1)
    ckpt = str(save_model(tmp_path / "ck", init_params(config, jax.random.key(0)), config))
    with gcs_emulator(tmp_path / "own.log") as url:  # an emulator of its own, to stop
        bucket = make_bucket()
        src = f"gs://{bucket}/in.jsonl"
        storage.path(src).write_text('{"ids": [1, 2, 3]}\n')
        assert cli_main(["score", ckpt, src, str(tmp_path / "a.jsonl")]) == 0  # checked, cached
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)  # still pointing at the stopped one
    monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", url)
    capsys.readouterr()
    assert cli_main(["score", ckpt, src, str(tmp_path / "b.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "an object-storage request failed" in err[0], err
    assert "Cannot connect" in err[0] and not (tmp_path / "b.jsonl").exists()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["refused", "silent"])
def test_a_run_whose_checkpoint_writes_lose_the_bucket_ends_at_the_deadline(gcs, tmp_path, how):
    """Orbax's checkpoint writes (tensorstore) to a bucket lost mid-run retried on their own
    schedule and the run never ended. Tensorstore's endpoint is cut after checkpoint K (the
    port closed, or silent): the run now ends within TINYWAVE_STORAGE_DEADLINE_S with one line
    naming the checkpoint folder and the operation, exit 2, and the resume (bucket back)
    restores checkpoint K intact and finishes."""
    import time

    bucket = make_bucket()
    run_dir = f"gs://{bucket}/run"
    config = tmp_path / "gcs.yaml"
    d = distill_dict(run_dir=run_dir, **SHARED_OVER)
    d["train"]["throttle_s"] = 0.7
    config.write_text(yaml.safe_dump(d))
    cmd = [sys.executable, "-m", "tinywave_jax.cli", "distill", str(config), "--quiet"]
    gate = TcpGate(gcs)  # tensorstore (orbax) goes through it; gcsfs and this test do not
    env = {**subprocess_env(), "TENSORSTORE_GCS_HTTP_URL": gate.url}
    env[storage.DEADLINE_ENV] = "4"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(
            lambda: f"checkpoints/{K}/commit_success.txt" in _blobs(bucket, "run", names_only=True),
            proc,
            f"checkpoint {K} on the bucket",
            poll=0.2,
        )
        gate.cut(how)
        t0 = time.time()
        _, err = proc.communicate(timeout=180)
        took = time.time() - t0
    finally:
        gate.close()
        if proc.poll() is None:
            proc.kill()
    err = err.decode()
    named = [line for line in err.splitlines() if line.startswith("tinywave distill: error")]
    assert proc.returncode == 2, err[-3000:]
    assert len(named) == 1 and f"{run_dir}/checkpoints: " in named[0], err[-3000:]
    assert "checkpoint" in named[0] and "Traceback" not in err, err[-3000:]
    assert took < 60, took  # the deadline (4 s) per operation, not tensorstore's ~15 min
    print(f"{how}: ended {took:.1f} s after the cut: {named[0]}")

    objects = _blobs(bucket, "run", names_only=True)
    assert "final/tinywave.json" not in objects
    done = subprocess.run(
        [*cmd, "--resume", "train.throttle_s=0"],
        env=subprocess_env(),  # the bucket reachable again
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    log = done.stderr.decode()
    assert "does not restore" not in log, log  # nothing damaged, nothing set aside
    objects = _blobs(bucket, "run", names_only=True)
    assert not any(name.startswith("corrupt_checkpoints/") for name in objects)
    assert "final/tinywave.json" in objects
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, N + 1))


def test_storage_operations_have_a_deadline(monkeypatch):
    """within_deadline: a remote operation past TINYWAVE_STORAGE_DEADLINE_S is a named error at
    the deadline (the call itself left behind), a failed request names the path and the
    operation, a local one runs as is; a bad setting is refused naming it."""
    import threading
    import time

    from tinywave_jax.errors import ConfigError

    monkeypatch.setattr(storage, "_ABANDONED", [])
    monkeypatch.setattr(storage, "_LOST", [])
    monkeypatch.setenv(storage.DEADLINE_ENV, "0.3")
    release = threading.Event()
    t0 = time.time()
    with pytest.raises(storage.StorageDeadlineError, match=r"gs://b-tw/run: saving x did not fin"):
        storage.within_deadline(release.wait, "saving x", "gs://b-tw/run")
    assert 0.3 <= time.time() - t0 < 2 and storage.abandoned() and storage.lost()
    release.set()

    def refused():
        raise ValueError("ABORTED: All 4 retry attempts failed: CURL error Could not connect")

    with pytest.raises(storage.StorageRequestError, match=r"gs://b-tw/ck: reading y failed: an o"):
        storage.within_deadline(refused, "reading y", "gs://b-tw/ck")
    with pytest.raises(KeyError):  # anything else passes through unchanged
        storage.within_deadline(lambda: {}["k"], "z", "gs://b-tw/ck")
    assert storage.within_deadline(lambda: 7, "z", "/local/dir") == 7
    for bad in ("soon", "0", "-1", "inf"):
        monkeypatch.setenv(storage.DEADLINE_ENV, bad)
        with pytest.raises(ConfigError, match=storage.DEADLINE_ENV):
            storage.deadline_s()


def test_an_unreachable_endpoint_fails_the_start_up_check_at_once(gcs, tmp_path, monkeypatch):
    """An endpoint that refuses connections was retried by gcsfs for ~30 s (~70 s reported)
    before a named error; the start-up check now opens a connection to each endpoint first."""
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there once closed
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", closed)
    monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", closed)
    t0 = time.time()
    with pytest.raises(storage.StorageAccessError, match=f"cannot reach {closed}"):
        storage.check_gcs(f"gs://some-bucket-tw/run-{uuid.uuid4().hex}", write=True)
    assert time.time() - t0 < 5
