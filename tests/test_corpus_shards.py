"""Host-sharded `corpus build --num-hosts N --host-index I` + `corpus finalize`: two concurrent
processes build halves into one folder and the finalized corpus equals a one-process build
record for record; a missing share, a share built with other settings, and an impossible host
index are refused, each named."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from data_fixtures import synthetic_utterance, write_units_manifest
from train_fixtures import subprocess_env

from tinywave_jax import cli
from tinywave_jax.data.commands import host_share
from tinywave_jax.data.corpus_build import build_corpus, finalize_corpus
from tinywave_jax.data.corpus_format import SPLITS, CorpusError
from tinywave_jax.data.corpus_read import CorpusSource, version_dir
from tinywave_jax.errors import ConfigError, MissingInputError

N = 40
# utterances without a `split` are assigned by a hash of their id (20 % validation, 20 % test)
SETTINGS = ["--shard-size", "4", "--valid-fraction", "0.2", "--test-fraction", "0.2"]


@pytest.fixture(autouse=True)
def _only_corpus_commands(monkeypatch):
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["tinywave_jax.data.commands"])


def _records():
    rng = np.random.default_rng(3)
    recs = [synthetic_utterance(rng, k) for k in range(N)]
    recs[2]["split"] = "test"  # a manifest split wins over the hash
    recs[9]["units"]["hubert"][0] = 900  # skipped: beyond the layout
    return recs


def _host_cmd(manifest, out, i, n=2, extra=()):
    return [
        sys.executable,
        "-m",
        "tinywave_jax.cli",
        "corpus",
        "build",
        "--manifest",
        str(manifest),
        "--out",
        str(out),
        *SETTINGS,
        "--num-hosts",
        str(n),
        "--host-index",
        str(i),
        *extra,
    ]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A one-process build, and the same inputs staged by two concurrent host processes."""
    root = tmp_path_factory.mktemp("shards")
    manifest = write_units_manifest(root / "units.jsonl", _records())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "COMMAND_MODULES", ["tinywave_jax.data.commands"])
        one = ["corpus", "build", "--manifest", str(manifest), "--out", str(root / "one")]
        assert cli.main(one + SETTINGS) == 0
    procs = [
        subprocess.Popen(
            _host_cmd(manifest, root / "hosts", i),
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in (0, 1)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, e) in zip(procs, outs):
        assert p.returncode == 0, e.decode()[-3000:]
    return root, manifest, [(o.decode(), e.decode()) for o, e in outs]


def _assert_same_corpus(a, b, splits=SPLITS):
    for split in splits:
        ra, rb = CorpusSource(a, split), CorpusSource(b, split)
        assert len(ra) == len(rb) > 0
        for k in range(len(ra)):
            x, y = ra[k], rb[k]
            assert x.pop("where").split("/")[-1] == y.pop("where").split("/")[-1]
            sx, sy = x.pop("streams"), y.pop("streams")
            assert x == y and sx.keys() == sy.keys()
            for s in sx:
                np.testing.assert_array_equal(sx[s][0], sy[s][0])
                np.testing.assert_array_equal(sx[s][1], sy[s][1])


def test_two_hosts_then_finalize_equal_a_one_process_build(shards, tmp_path, capsys):
    root, manifest, logs = shards
    hosts = tmp_path / "hosts"
    shutil.copytree(root / "hosts", hosts)
    staging = hosts / "_staging"
    for i, (out, err) in enumerate(logs):
        share = json.loads((staging / f"share-0000{i}-of-00002.json").read_text())
        assert share["shards"] == list(range(i, 10, 2)) and share["num_shards"] == 10
        assert f"host {i} of 2: 5 of them" in err and f"share {i} of 2:" in out
        assert f"tinywave corpus finalize {root / 'hosts'}" in out
    assert sorted(p.name for p in staging.glob("shard-*.npz")) == [
        f"shard-{k:05d}.npz" for k in range(10)
    ]
    assert not (hosts / "tinywave_corpus").exists() and not (hosts / "summary.json").exists()

    assert cli.main(["corpus", "finalize", str(hosts)]) == 0
    assert "skipped: 1" in capsys.readouterr().out
    one = root / "one"
    assert json.loads((hosts / "summary.json").read_text()) == json.loads(
        (one / "summary.json").read_text()
    )
    # the same ArrayRecord files, byte for byte, hence the same records in the same order
    da, db = version_dir(one), version_dir(hosts)
    files = sorted(p.name for p in da.glob("*.array_record-*"))
    assert files == sorted(p.name for p in db.glob("*.array_record-*")) and files
    for name in files:
        assert (da / name).read_bytes() == (db / name).read_bytes(), name
    _assert_same_corpus(one, hosts)
    assert CorpusSource(hosts, "test")[0]["id"] in {f"utt{k:04d}" for k in range(N)}


def test_a_shares_split_does_not_depend_on_the_host_count(shards, tmp_path):
    """Three hosts (one of them rerun after its share was done) stage the same shards, byte for
    byte, as two: the shard plan and the splits come from the inputs alone."""
    root, manifest, _ = shards
    out = tmp_path / "three"
    for i in (2, 0, 1, 2):
        build_corpus(
            out,
            manifest=manifest,
            shard_size=4,
            valid_fraction=0.2,
            test_fraction=0.2,
            num_hosts=3,
            host_index=i,
            log=lambda m: None,
        )
    for k in range(10):
        name = f"_staging/shard-{k:05d}.npz"
        assert (out / name).read_bytes() == (root / "hosts" / name).read_bytes(), name
    assert finalize_corpus(out, log=lambda m: None) == json.loads(
        (root / "one" / "summary.json").read_text()
    )


def test_finalize_names_a_missing_share_or_shard(shards, tmp_path, capsys):
    root, _, _ = shards
    out = tmp_path / "hosts"
    shutil.copytree(root / "hosts", out)
    (out / "_staging" / "share-00001-of-00002.json").unlink()
    assert cli.main(["corpus", "finalize", str(out)]) == 2
    err = capsys.readouterr().err
    assert "1 of 2 host shares missing: share 1 (" in err
    assert "share-00001-of-00002.json" in err and "--host-index I" in err
    assert not (out / "tinywave_corpus").exists()

    shutil.copy(root / "hosts" / "_staging" / "share-00001-of-00002.json", out / "_staging")
    (out / "_staging" / "shard-00007.npz").unlink()  # as if host 1's disk lost a shard
    with pytest.raises(
        CorpusError, match=r"share 1 of 2 .* incomplete: shard\(s\) shard-00007"
    ) as e:
        finalize_corpus(out, log=lambda m: None)
    assert str(e.value).endswith(
        "build it again (build_corpus(..., num_hosts=2, host_index=1), or `tinywave corpus "
        "build ... --num-hosts 2 --host-index 1`)"
    )

    with pytest.raises(MissingInputError, match=r"no host share in .*_staging"):
        finalize_corpus(root / "one", log=lambda m: None)  # a one-process build has none


def test_finalize_refuses_a_share_built_with_other_settings(shards, tmp_path, capsys):
    root, manifest, _ = shards
    # host 1 built with another --vocab (into its own folder, then its files joined the others:
    # the way two hosts that started at the same moment with different settings end up)
    other = tmp_path / "other"
    proc = subprocess.run(
        _host_cmd(manifest, other, 1, extra=["--vocab", "hubert=1000"]),
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "hosts"
    shutil.copytree(root / "hosts", out)
    for p in (other / "_staging").glob("s*-*"):
        shutil.copy(p, out / "_staging" / p.name)
    assert cli.main(["corpus", "finalize", str(out)]) == 2
    err = capsys.readouterr().err
    share = out / "_staging" / "share-00001-of-00002.json"
    assert f"share 1 of 2 ({share}) was built with different settings from the others" in err
    assert "vocab_sizes=" in err and "'hubert': 1000" in err and "'hubert': 501" in err
    assert not (out / "tinywave_corpus").exists()

    # a host started later with other settings is refused at once
    proc = subprocess.run(
        _host_cmd(manifest, root / "hosts", 1, extra=["--shard-size", "5"]),
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "was staged from different inputs or settings (by another host" in proc.stderr


def test_finalize_refuses_shares_of_different_host_counts(shards, tmp_path):
    root, manifest, _ = shards
    out = tmp_path / "hosts"
    shutil.copytree(root / "hosts", out)
    build_corpus(
        out,
        manifest=manifest,
        shard_size=4,
        valid_fraction=0.2,
        test_fraction=0.2,
        num_hosts=3,
        host_index=0,
        log=lambda m: None,
    )
    with pytest.raises(CorpusError, match=r"share-00000-of-00003.json do not belong to the 2"):
        finalize_corpus(out, log=lambda m: None)


def test_host_index_outside_the_host_count_is_refused_at_start_up(tmp_path, capsys):
    out = tmp_path / "out"
    missing = str(tmp_path / "no-such-manifest.jsonl")  # never read: refused before
    for flags, msg in [
        (["--num-hosts", "2", "--host-index", "2"], "--host-index 2 is outside 0..1"),
        (["--num-hosts", "2", "--host-index", "-1"], "--host-index -1 is outside 0..1"),
        (["--num-hosts", "0", "--host-index", "0"], "--num-hosts 0 must be at least 1"),
        (["--num-hosts", "2"], "give both --num-hosts and --host-index"),
    ]:
        argv = ["corpus", "build", "--manifest", missing, "--out", str(out), *flags]
        assert cli.main(argv) == 2
        assert msg in capsys.readouterr().err
        assert not out.exists()
    with pytest.raises(ConfigError, match=r"^host_index 3 is outside 0..2 \(num_hosts 3\)"):
        build_corpus(out, manifest=missing, num_hosts=3, host_index=3)


def test_host_share_defaults_from_the_launch_without_starting_jax():
    import jax

    assert host_share(None, None, {}) == (1, 0)
    env = {
        "TINYWAVE_COORDINATOR": "10.0.0.1:1234",
        "TINYWAVE_NUM_PROCESSES": "4",
        "TINYWAVE_PROCESS_ID": "3",
    }
    assert host_share(None, None, env) == (4, 3)
    slurm = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2", "SLURM_PROCID": "1"}
    assert host_share(None, None, {**slurm, "SLURM_STEP_NODELIST": "n[1-2]"}) == (2, 1)
    assert host_share(None, None, {**env, "TINYWAVE_DISTRIBUTED": "off"}) == (1, 0)
    assert host_share(2, 1, env) == (2, 1)  # given flags win
    assert not jax.distributed.is_initialized()


def test_audio_hosts_share_the_per_speaker_pitch_means(tmp_path):
    """From audio with per-speaker F0 normalisation each host needs every speaker's mean over
    all hosts' utterances: hosts compute their shards' pitch statistics, wait for the others',
    and combine them as one process would; the corpus equals a one-process build's."""
    import threading

    from speech_fixtures import two_speakers_with_units

    audio = two_speakers_with_units(tmp_path)
    kw = dict(audio_dir=audio, extractor=tmp_path / "units", shard_size=1, log=lambda m: None)
    kw.update(valid_fraction=0.0, test_fraction=0.5)
    one = build_corpus(tmp_path / "one", **kw)
    errors = []

    def host(i):
        try:
            build_corpus(tmp_path / "hosts", num_hosts=2, host_index=i, **kw)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=host, args=(i,)) for i in (1, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and not any(t.is_alive() for t in threads)
    staging = tmp_path / "hosts" / "_staging"
    assert sorted(p.name for p in staging.glob("f0-*.json")) == [
        f"f0-0000{k}.json" for k in range(4)
    ]
    assert (staging / "speaker_f0.json").read_text() == (
        tmp_path / "one" / "_staging" / "speaker_f0.json"
    ).read_text()
    assert finalize_corpus(tmp_path / "hosts", log=lambda m: None) == one
    _assert_same_corpus(tmp_path / "one", tmp_path / "hosts", ("train", "test"))


def test_two_hosts_build_one_corpus_on_a_bucket(shards, tmp_path, monkeypatch, capsys):
    """The same two-host build with --out gs://... (a fake-gcs-server): hosts stage their shares
    on the bucket, finalize writes the corpus there, and it reads back equal to the local
    one-process build."""
    from gcs_fixtures import gcs_emulator, make_bucket

    root, manifest, _ = shards
    monkeypatch.setenv("TINYWAVE_CACHE_DIR", str(tmp_path / "cache"))
    with gcs_emulator(tmp_path / "fake-gcs-server.log"):
        out = f"gs://{make_bucket()}/corpus"
        procs = [
            subprocess.Popen(
                _host_cmd(manifest, out, i),
                env=subprocess_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for i in (0, 1)
        ]
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err.decode()[-3000:]
        assert cli.main(["corpus", "finalize", out]) == 0
        assert "skipped: 1" in capsys.readouterr().out
        from tinywave_jax import storage

        remote = storage.path(out)
        assert json.loads((remote / "summary.json").read_text()) == json.loads(
            (root / "one" / "summary.json").read_text()
        )
        _assert_same_corpus(root / "one", out)
        # a one-process build straight to the bucket is the same corpus too
        one = out + "-one"
        assert (
            cli.main(["corpus", "build", "--manifest", str(manifest), "--out", one, *SETTINGS]) == 0
        )
        _assert_same_corpus(root / "one", one)
        assert cli.main(["corpus", "info", one]) == 0
        assert "skipped: 1" in capsys.readouterr().out
        assert not (tmp_path / "gs:").exists() and not list(tmp_path.glob("**/gs:"))


class _Planted:
    """A pickle that, when loaded, creates the file `marker` (any code could run instead)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_finalize_never_unpickles_a_staged_shard(shards, tmp_path, capsys):
    """`corpus finalize` unpickled OUT/_staging/shard-* from the shared output folder: a planted
    file ran code, a truncated one was an UnpicklingError traceback. Staged shards are now .npz
    read without pickles; damage is a CorpusError naming the file."""
    import pickle

    root, _, _ = shards
    out = tmp_path / "hosts"
    shutil.copytree(root / "hosts", out)
    marker = tmp_path / "code-ran"
    shard = next((out / "_staging").glob("shard-00003.*"))  # whatever the staging calls it
    shard.write_bytes(pickle.dumps({"records": _Planted(marker), "skipped": []}))
    assert cli.main(["corpus", "finalize", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress line
    assert err.startswith("tinywave corpus: error: ") and shard.name in err
    assert "not a readable staged shard" in err
    assert not marker.exists() and not (out / "tinywave_corpus").exists()

    shutil.copy(root / "hosts" / "_staging" / shard.name, shard)
    shard.write_bytes(shard.read_bytes()[:-200])  # cut short
    with pytest.raises(CorpusError, match=f"{shard.name}: not a readable staged shard"):
        finalize_corpus(out, log=lambda m: None)
    shutil.copy(root / "hosts" / "_staging" / shard.name, shard)
    finalize_corpus(out, log=lambda m: None)  # intact again: finalizes
    _assert_same_corpus(root / "one", out, ["train"])


def test_a_killed_re_finalize_keeps_the_corpus_that_was_there(shards, tmp_path):
    """A re-finalize removed the finished version folder before writing the new one: killed in
    between, the corpus was gone. It is now replaced only once the new one is complete."""
    import signal
    import time

    root, _, _ = shards
    out = tmp_path / "hosts"
    shutil.copytree(root / "hosts", out)
    finalize_corpus(out, log=lambda m: None)
    before = {p.name: p.read_bytes() for p in version_dir(out).iterdir() if p.is_file()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinywave_jax.cli", "corpus", "finalize", str(out)],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    t0 = time.time()
    # TFDS writes a version folder as NAME.incomplete* and renames it: kill while that is there
    while not any(p.is_dir() for p in out.rglob("*incomplete*")):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() - t0 < 120, "finalize never started writing"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    after = {p.name: p.read_bytes() for p in version_dir(out).iterdir() if p.is_file()}
    assert after == before
    _assert_same_corpus(root / "one", out, ["train"])
