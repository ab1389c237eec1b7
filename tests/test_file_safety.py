"""Model files survive misuse (issue 14): an output folder may never be, hold or lie inside the
command's input; a checkpoint's params/ files are checked against the sha256 recorded at save
time; damaged files give one named error, not a traceback; leftovers of a killed write are
cleaned up by the next write into the same folder, and a live writer's are left alone."""

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from tinywave_jax import cli, outputs
from tinywave_jax.checkpoint import (
    HASHES_KEY,
    INFO_FILE,
    SIZES_KEY,
    CheckpointIntegrityError,
    UnverifiedCheckpointWarning,
    load_model,
    save_model,
)
from tinywave_jax.convert import export_hf, import_hf
from tinywave_jax.errors import ConfigError, ConversionError, TinywaveError
from tinywave_jax.models.config import tiny_config
from tinywave_jax.models.param_layout import param_shapes

# Orbax's pending reads of a damaged file finish after the error, in whatever test runs next.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

CONFIG = tiny_config(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda shape: rng.standard_normal(shape).astype(np.float32),
        param_shapes(CONFIG),
        is_leaf=lambda x: isinstance(x, tuple),
    )


@pytest.fixture
def ckpt(tmp_path):
    return save_model(tmp_path / "ck", _params(), CONFIG)


@pytest.fixture
def cli_main(monkeypatch):
    monkeypatch.setattr(
        cli,
        "COMMAND_MODULES",
        ["tinywave_jax.convert.commands", "tinywave_jax.distill.commands", "tinywave_jax.commands"],
    )
    return cli.main


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _data_file(ckpt: Path) -> Path:
    """The largest file under params/: it holds the weights."""
    return max((ckpt / "params").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)


def _one_error_line(capsys, *fragments) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    line = err[-1]
    assert line.startswith("tinywave ") and ": error: " in line, err
    assert "Traceback" not in "\n".join(err)
    for fragment in fragments:
        assert str(fragment) in line, (fragment, line)
    return line


# ---- 1. the output folder is never an input, holds one or lies inside one ---------------------


def test_export_and_import_refuse_to_write_over_or_into_their_input(cli_main, ckpt, capsys):
    before = _tree(ckpt)
    for out in (ckpt, ckpt.parent, ckpt / "hf", ckpt / "params"):
        assert cli_main(["export-hf", str(ckpt), str(out), "--overwrite"]) == 2, out
        _one_error_line(capsys, out, ckpt, "input")
    assert _tree(ckpt) == before

    hf = export_hf(ckpt, ckpt.parent / "hf")
    hf_before = _tree(hf)
    for out in (hf, hf.parent, hf / "ck"):
        assert cli_main(["import-hf", str(hf), str(out), "--overwrite"]) == 2, out
        _one_error_line(capsys, out, hf, "input")
    assert _tree(hf) == hf_before and _tree(ckpt) == before
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["ck", "hf"]  # nothing left behind


def test_symlinked_output_that_is_the_input_is_refused(cli_main, ckpt, tmp_path, capsys):
    link = tmp_path / "link"
    link.symlink_to(ckpt, target_is_directory=True)
    before = _tree(ckpt)
    assert cli_main(["export-hf", str(ckpt), str(link), "--overwrite"]) == 2
    line = _one_error_line(capsys, link, ckpt, f"(= {ckpt.resolve()})")
    assert "is the input" in line
    assert _tree(ckpt) == before
    # the library calls refuse too, whatever `overwrite` says
    with pytest.raises(ConfigError, match="contains the input"):
        export_hf(ckpt, tmp_path, overwrite=True)
    with pytest.raises(ConfigError, match="lies inside the input"):
        save_model(ckpt / "student", _params(), CONFIG, sources=[ckpt])
    assert _tree(ckpt) == before


def test_init_student_refuses_its_teacher_or_config_as_output(cli_main, ckpt, tmp_path, capsys):
    before = _tree(ckpt)
    args = ["--num-layers", "1", "--overwrite"]
    for out in (ckpt, tmp_path):
        assert cli_main(["init-student", str(ckpt), str(out), *args]) == 2
        _one_error_line(capsys, out, ckpt)
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    CONFIG.write_hf_file(cfg_dir / "student.json")
    assert (
        cli_main(
            [
                "init-student",
                str(cfg_dir),
                "--random",
                "--config",
                str(cfg_dir / "student.json"),
                "--overwrite",
            ]
        )
        == 2
    )
    _one_error_line(capsys, cfg_dir, "student.json", "contains the input")
    assert (cfg_dir / "student.json").is_file() and _tree(ckpt) == before
    # apart from the teacher it works
    assert cli_main(["init-student", str(ckpt), str(tmp_path / "s"), *args]) == 0


def test_demo_teacher_refuses_an_out_that_is_or_holds_its_workdir(tmp_path):
    from tinywave_jax.demo.settings import teacher_settings
    from tinywave_jax.demo.teacher import TeacherBuild

    work = tmp_path / "work"
    for out in (work, tmp_path):
        build = TeacherBuild(work, teacher_settings(quick=True), out, overwrite=True)
        with pytest.raises(ConfigError, match="workdir|input"):
            build.check(["package"])
    TeacherBuild(work, teacher_settings(quick=True), tmp_path / "pkg", True).check(["package"])


# ---- 2. checkpoint integrity ----------------------------------------------------------------


def test_save_records_a_sha256_of_every_params_file(ckpt):
    import hashlib

    info = json.loads((ckpt / INFO_FILE).read_text())
    files = {
        p.relative_to(ckpt / "params").as_posix(): p
        for p in (ckpt / "params").rglob("*")
        if p.is_file()
    }
    assert set(info[HASHES_KEY]) == set(files) and set(info[SIZES_KEY]) == set(files)
    for rel, path in files.items():
        assert info[HASHES_KEY][rel] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert info[SIZES_KEY][rel] == path.stat().st_size


@pytest.mark.parametrize("damage", ["flipped_byte", "truncated", "missing", "extra"])
def test_load_names_the_damaged_file(ckpt, damage):
    data = _data_file(ckpt)
    rel = data.relative_to(ckpt).as_posix()
    if damage == "flipped_byte":
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 1
        data.write_bytes(bytes(raw))
        want = f"{rel} differs from the sha256"
    elif damage == "truncated":
        data.write_bytes(data.read_bytes()[:100])
        want = f"{rel} is 100 bytes"
    elif damage == "missing":
        data.unlink()
        want = f"{rel} is missing"
    else:
        rel = "params/stray.bin"
        (ckpt / rel).write_bytes(b"x")
        want = f"{rel} was not part of the saved checkpoint"
    with pytest.raises(CheckpointIntegrityError) as e:
        load_model(ckpt, as_numpy=True)
    assert isinstance(e.value, ConversionError) and str(ckpt) in str(e.value)
    assert want in str(e.value)
    if damage in ("flipped_byte", "extra"):  # what verification exists for: orbax reads it
        load_model(ckpt, as_numpy=True, verify=False)


def test_old_checkpoint_without_hashes_loads_with_a_warning(ckpt):
    info = json.loads((ckpt / INFO_FILE).read_text())
    del info[HASHES_KEY], info[SIZES_KEY]
    (ckpt / INFO_FILE).write_text(json.dumps(info))
    with pytest.warns(UnverifiedCheckpointWarning, match="records no sha256"):
        params, _, _ = load_model(ckpt, as_numpy=True)
    np.testing.assert_array_equal(params["norm"]["scale"], _params()["norm"]["scale"])


def test_cli_score_and_init_student_stop_on_a_truncated_checkpoint(cli_main, ckpt, capsys):
    data = _data_file(ckpt)
    data.write_bytes(data.read_bytes()[:1000])
    rel = data.relative_to(ckpt).as_posix()
    ids = ckpt.parent / "ids.jsonl"
    ids.write_text('{"ids": [1, 2, 3, 4]}\n')
    assert cli_main(["score", str(ckpt), str(ids), str(ckpt.parent / "o.jsonl")]) == 2
    _one_error_line(capsys, ckpt, rel, "1000 bytes")
    student = ckpt.parent / "student"
    assert cli_main(["init-student", str(ckpt), str(student), "--num-layers", "1"]) == 2
    _one_error_line(capsys, ckpt, rel)
    assert not student.exists()
    # --no-verify leaves it to orbax, whose failure is named too
    assert (
        cli_main(["score", str(ckpt), str(ids), str(ckpt.parent / "o.jsonl"), "--no-verify"]) == 2
    )
    _one_error_line(capsys, ckpt, "orbax cannot read params/", "damaged or incomplete")


def test_training_teacher_checkpoint_is_verified(ckpt):
    from tinywave_jax.train.config import ModelSource
    from tinywave_jax.train.recipes import load_or_init

    data = _data_file(ckpt)
    data.write_bytes(data.read_bytes()[:-10])
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with pytest.raises(CheckpointIntegrityError, match="truncated or altered"):
        load_or_init(ModelSource(path=str(ckpt)), CONFIG, sharding)


# ---- 3. orbax's own failures are named ------------------------------------------------------


@pytest.mark.parametrize(
    "damage, named",
    [
        ("truncate _METADATA", "params/_METADATA is truncated or not JSON"),
        ("remove _METADATA", "params/_METADATA is missing"),
        ("remove manifest.ocdbt", "params/manifest.ocdbt is missing"),
        ("truncate manifest.ocdbt", "params/manifest.ocdbt"),
        ("truncate data", "orbax cannot read params/"),
    ],
)
@pytest.mark.parametrize("hashes", ["not recorded", "not checked"])
def test_unverified_damage_is_a_named_error(ckpt, damage, named, hashes, capfd):
    verb, name = damage.split()
    path = _data_file(ckpt) if name == "data" else ckpt / "params" / name
    if verb == "remove":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    if hashes == "not recorded":
        info = json.loads((ckpt / INFO_FILE).read_text())
        (ckpt / INFO_FILE).write_text(json.dumps({"format": info["format"], "format_version": 1}))
    with (
        pytest.warns(UnverifiedCheckpointWarning)
        if hashes == "not recorded"
        else contextlib.nullcontext()
    ):
        with pytest.raises(CheckpointIntegrityError) as e:
            load_model(ckpt, as_numpy=True, verify=hashes != "not checked")
    assert str(ckpt) in str(e.value) and named in str(e.value), str(e.value)
    time.sleep(0.2)  # orbax's pending reads finish
    assert "Event loop is closed" not in capfd.readouterr().err


# ---- 4. leftovers of a killed write ---------------------------------------------------------

_KILLED_WRITER = """
import os, signal, sys
from tinywave_jax.outputs import atomic_output_dir
with atomic_output_dir(sys.argv[1], overwrite=True) as tmp:
    (tmp / "half.bin").write_bytes(b"partial")
    os.kill(os.getpid(), signal.SIG{sig})
"""


def _writer(out: Path, sig: str) -> subprocess.Popen:
    """A process writing `out` that is killed (KILL) or stops, alive, mid-write (STOP)."""
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER.format(sig=sig), str(out)])
    deadline = time.time() + 60
    while not list(out.parent.glob(f".{out.name}.tmp-*")) and time.time() < deadline:
        time.sleep(0.05)
    if sig == "KILL":
        proc.wait(60)
    return proc


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def test_next_export_removes_a_killed_exports_temporary_folder(ckpt, tmp_path, capsys):
    out = tmp_path / "hf"
    _writer(out, "KILL")
    (stale,) = _leftovers(out)
    assert stale.startswith(".hf.tmp-") and not out.exists()
    capsys.readouterr()
    export_hf(ckpt, out)
    err = capsys.readouterr().err
    assert f"removed stale temporary folder {tmp_path / stale}" in err and "gone" in err
    assert _leftovers(out) == [] and (out / "model.safetensors").is_file()


def test_a_live_writers_folder_is_left_alone(ckpt, tmp_path):
    out = tmp_path / "hf"
    proc = _writer(out, "STOP")  # alive, mid-write
    try:
        (live,) = _leftovers(out)
        export_hf(ckpt, out)
        assert _leftovers(out) == [live] and (tmp_path / live / "half.bin").is_file()
    finally:
        proc.kill()
        proc.wait(60)
    save_model(out, _params(), CONFIG, overwrite=True)  # its writer is gone now
    assert _leftovers(out) == []


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(60)
    return proc.pid


def test_other_hosts_and_unrecorded_hosts_leftovers_wait_a_day(tmp_path, capsys):
    out = tmp_path / "ck"
    pid = _dead_pid()
    names = [
        f".ck.tmp-otherhost-{pid}-0123abcd",
        f".ck.tmp-{pid}-4567abcd",  # written before hosts were recorded
        f".ck.tmp-{outputs._host()}-{pid}-89abcdef",  # this host, writer gone
        ".ckx.tmp-otherhost-1-0123abcd",  # another destination's
        ".ck.tmp-notatag",
    ]
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text("x")
    removed = outputs.clean_stale_siblings(out)
    assert [p.name for p in removed] == [names[2]]
    day_ago = time.time() - outputs.STALE_AFTER_S - 60
    for name in names[:2]:
        for p in (tmp_path / name, tmp_path / name / "f"):
            os.utime(p, (day_ago, day_ago))
    removed = outputs.clean_stale_siblings(out)
    assert sorted(p.name for p in removed) == sorted(names[:2])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[3:])
    assert "otherhost" in capsys.readouterr().err


def test_interrupted_replacement_puts_the_previous_folder_back(tmp_path, capsys):
    """Killed between moving the old folder aside and moving the new one in: the next run finds
    no destination, a complete previous version (.old-) and the new one (.tmp-)."""
    out = tmp_path / "ck"
    save_model(out, _params(seed=1), CONFIG)
    tag = f"{outputs._host()}-{_dead_pid()}-0123abcd"
    out.rename(tmp_path / f".ck.old-{tag}")
    (tmp_path / f".ck.tmp-{tag}").mkdir()
    with pytest.raises(TinywaveError, match="not empty"):  # the previous version is back
        save_model(out, _params(seed=2), CONFIG)
    assert "restored" in capsys.readouterr().err
    assert _leftovers(out) == []
    params, _, _ = load_model(out, as_numpy=True)
    np.testing.assert_array_equal(params["norm"]["scale"], _params(seed=1)["norm"]["scale"])


def test_killed_import_is_cleaned_by_the_next_import(ckpt, tmp_path, capsys):
    hf = export_hf(ckpt, tmp_path / "hf")
    out = tmp_path / "ck2"
    _writer(out, "KILL")
    (stale,) = _leftovers(out)
    capsys.readouterr()
    import_hf(hf, out)
    assert stale in capsys.readouterr().err and _leftovers(out) == []
    load_model(out, as_numpy=True)


# ---- 3. every file a command writes is apart from what it reads --------------------------------


def test_score_generate_and_eval_refuse_an_output_file_inside_their_inputs(ckpt, tmp_path, capsys):
    """score OUT, generate --out and eval --out wrote into the checkpoint they read (or onto their
    own input) and exited 0; each is refused before any work, touching nothing."""
    ids = ckpt.parent / "ids.jsonl"
    ids.write_text('{"ids": [1, 2, 3, 4]}\n')
    before, ids_before = _tree(ckpt), ids.read_bytes()
    for out in (ckpt / "config.json", ckpt / "tinywave.json", ckpt / "params" / "o.jsonl", ids):
        assert cli.main(["score", str(ckpt), str(ids), str(out)]) == 2, out
        _one_error_line(capsys, out, "input")
    prompt = ["--prompt", "[Text]", "--max-new-tokens", "2", "--layout", "spiritlm_base"]
    for out in (ckpt / "config.json", ckpt / "tokenizer" / "x.json"):
        assert cli.main(["generate", str(ckpt), *prompt, "--out", str(out)]) == 2, out
        _one_error_line(capsys, out, ckpt)
    pairs = tmp_path / "bench" / "pairs.jsonl"  # eval writes a pairs.jsonl into --out
    pairs.parent.mkdir()
    pairs.write_text('{"positive": [1, 2], "negative": [1, 3], "group": "a"}\n')
    pairs_before = pairs.read_bytes()
    for out in (ckpt, ckpt / "params", pairs.parent):
        args = ["eval", str(ckpt), "--task", "pairs", "--data", str(pairs), "--out", str(out)]
        assert cli.main(args) == 2, out
        _one_error_line(capsys, "input")
    assert _tree(ckpt) == before and ids.read_bytes() == ids_before
    assert pairs.read_bytes() == pairs_before and not (pairs.parent / "results.json").exists()


def test_config_and_tokenizer_files_are_in_the_checkpoints_hashes(ckpt, tmp_path):
    """A one-bit flip of rope_theta in config.json loaded silently (scores changed); now every
    file of the checkpoint is checked against the sha256 recorded at save time."""
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer_config.json").write_text('{"model_max_length": 256}\n')
    ck = save_model(tmp_path / "with_tok", _params(), CONFIG, tokenizer_dir=tok)
    load_model(ck, as_numpy=True)  # as saved: loads
    config = ck / "config.json"
    text = config.read_text()
    assert '"rope_theta": 10000.0' in text
    config.write_text(text.replace('"rope_theta": 10000.0', '"rope_theta": 10001.0'))
    with pytest.raises(CheckpointIntegrityError, match="config.json differs from the sha256"):
        load_model(ck, as_numpy=True)
    config.write_text(text)
    (ck / "tokenizer" / "tokenizer_config.json").write_text('{"model_max_length": 257}\n')
    with pytest.raises(CheckpointIntegrityError, match="tokenizer/tokenizer_config.json differs"):
        load_model(ck, as_numpy=True)
    (ck / "tokenizer" / "tokenizer_config.json").unlink()
    with pytest.raises(CheckpointIntegrityError, match="tokenizer_config.json is missing"):
        load_model(ck, as_numpy=True)
    load_model(ck, as_numpy=True, verify=False)  # --no-verify still loads it


def test_non_finite_parameters_are_never_saved(tmp_path):
    from tinywave_jax.checkpoint import NonFiniteParamsError

    params = _params()
    params["norm"]["scale"][3] = np.nan
    with pytest.raises(NonFiniteParamsError, match="parameter norm/scale holds NaN"):
        save_model(tmp_path / "nan", params, CONFIG)
    assert not (tmp_path / "nan").exists()
    params["norm"]["scale"][3] = np.inf
    with pytest.raises(NonFiniteParamsError):
        save_model(tmp_path / "nan", jax.tree.map(jax.numpy.asarray, params), CONFIG)


# the CLI with writes past 20 kB failing with EFBIG, as on a full disk (the kernel's own refusal;
# SIGXFSZ ignored so the write returns the error); set in the child, no fork of this process
_LIMITED_CLI = (
    "import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000)); sys.argv[0] = 'tinywave'; "
    "runpy.run_module('tinywave_jax.cli', run_name='__main__')"
)


def test_a_full_disk_is_one_line_and_replaces_nothing(ckpt, tmp_path):
    """A full disk (export-hf, import-hf, a first checkpoint) was a traceback; each is now one line
    naming the file being written, exit 2, and no partial output is left."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # only the command's own writes meet the limit
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    hf = export_hf(ckpt, tmp_path / "hf")
    before = _tree(hf)
    for argv in (
        ["export-hf", str(ckpt), str(hf), "--overwrite"],  # replacing a good folder
        ["import-hf", str(hf), str(tmp_path / "again")],
    ):
        r = subprocess.run(
            [sys.executable, "-c", _LIMITED_CLI, *argv], env=env, capture_output=True, timeout=300
        )
        lines = r.stderr.decode().strip().splitlines()
        assert r.returncode == 2, r.stderr.decode()[-2000:]
        named = [l for l in lines if l.startswith(f"tinywave {argv[0]}: error: ")]
        assert named and "file too large while writing " in named[0], lines[-5:]
        assert not list(tmp_path.glob(".*.tmp-*")), argv  # the partial copy removed
    assert _tree(hf) == before and not (tmp_path / "again").exists()


def _limited_cli(argv: list[str], **env_over: str) -> list[str]:
    """Runs the CLI under _LIMITED_CLI; asserts exit 2 and one named full-disk line among the
    stderr lines, and returns them."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), **env_over)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # only the command's own writes meet the limit
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    r = subprocess.run(
        [sys.executable, "-c", _LIMITED_CLI, *argv], env=env, capture_output=True, timeout=300
    )
    lines = r.stderr.decode().strip().splitlines()
    assert r.returncode == 2, r.stderr.decode()[-2000:]
    # orbax's writer thread may print its own traceback at the same moment (the line can then
    # start mid-line of it): the named line is found where it starts
    prefix = f"tinywave {argv[0]}: error: "
    named = [l[l.index(prefix) :] for l in lines if prefix in l]
    assert len(named) == 1 and " while writing " in named[0], lines[-5:]
    assert "file too large" in named[0] or "cut short" in named[0], named
    return named


def test_a_full_disk_in_export_gguf_is_one_line_and_keeps_the_old_file(ckpt, tmp_path):
    """export-gguf replacing a good .gguf on a full disk: one line naming the file being written,
    exit 2, the old file byte for byte and no temporary sibling left."""
    out = tmp_path / "model.gguf"
    assert cli.main(["export-gguf", str(ckpt), str(out)]) == 0
    before = out.read_bytes()
    assert len(before) > 20000  # past the limit, so the write meets it
    (named,) = _limited_cli(["export-gguf", str(ckpt), str(out), "--overwrite"])
    assert f"while writing {out}:" in named, named
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "model.gguf"]


@pytest.mark.slow
def test_a_full_disk_at_distills_first_checkpoint_is_one_line(tmp_path):
    """distill's first checkpoint on a full disk: one line naming the file being written, exit
    2; no step counts as saved (a --resume finds none, nothing damaged to set aside)."""
    import yaml
    from train_fixtures import distill_dict

    run_dir = tmp_path / "run"
    d = distill_dict(run_dir=str(run_dir))
    d["train"].update(steps=2, checkpoint_every=1)
    config = tmp_path / "distill.yaml"
    config.write_text(yaml.safe_dump(d))
    (named,) = _limited_cli(["distill", str(config), "--quiet"])
    assert str(run_dir / "checkpoints") in named, named
    import orbax.checkpoint as ocp

    assert ocp.CheckpointManager(run_dir / "checkpoints").all_steps() == []
    assert not (run_dir / "final").exists() and not (run_dir / ".lock").exists()


def test_temporary_folders_of_dead_processes_are_removed(tmp_path):
    """Killed downloads, imports and exports left their temporary folders (hundreds of MB) for
    good; the next run removes those whose process on this host is gone."""
    from tinywave_jax import storage

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    host = storage.temp_tag().rsplit("-", 2)[0]
    gone = (
        tmp_path / f"tinywave-gguf-{host}-{int(dead.stdout)}-0123abcd-k2x9q"
    )  # TemporaryDirectory's tail
    alive = tmp_path / f"tinywave-gguf-{host}-{os.getppid()}-4567abcd-z8"
    other_host = tmp_path / f"tinywave-gguf-elsewhere-{int(dead.stdout)}-89abcdef-q"
    unrelated = tmp_path / "tinywave-gguf-notes"
    for d in (gone, alive, other_host, unrelated):
        d.mkdir()
        (d / "x").write_bytes(b"partial")
    assert storage.remove_dead_temps(tmp_path, "tinywave-gguf-") == [gone]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (alive, other_host, unrelated)
    )
