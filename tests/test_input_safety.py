"""Issue 14, inputs: a user's mistake in a config file, an override or a run's shape is a named
ConfigError (one line, exit 2) before any work starts, never a traceback, a RecursionError or an
out-of-memory crash."""

from pathlib import Path

import pytest
from train_fixtures import TEACHER, distill_config, train_config

from tinywave_jax import cli
from tinywave_jax.config import load_config, merged, read_yaml
from tinywave_jax.errors import ConfigError
from tinywave_jax.train.config import TrainConfig
from tinywave_jax.train.recipes import prepare

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PLAN_HW = ["--peak-tflops", "1", "--hbm-gib", "1"]


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"tinywave {command}: error: "), err
    return err


def test_malformed_yaml_file_names_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (CONFIGS / "train_tiny.yaml").read_text()
        + "extra:\n  steps: [1, 2\n  lr: 3\n"  # the flow list is never closed
    )
    n = len((CONFIGS / "train_tiny.yaml").read_text().splitlines())
    assert cli.main(["train", str(bad), f"run_dir={tmp_path / 'run'}"]) == 2
    err = _one_line_error(capsys, "train")
    assert f"{bad}: not valid YAML: line {n + 3}, column 5" in err, err
    assert f"from line {n + 2}" in err, err  # where the unclosed list starts
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.steps=[1, 2", "override 'train.steps=[1, 2': the value is not valid YAML: line 1"),
        ("data={seq_len: 8", "override 'data={seq_len: 8': the value is not valid YAML: line 1"),
        ("=3", "override '=3': empty key"),
    ],
)
def test_malformed_override_is_named(tmp_path, capsys, override, needle):
    rc = cli.main(["train", str(CONFIGS / "train_tiny.yaml"), f"run_dir={tmp_path}", override])
    assert rc == 2
    assert needle in _one_line_error(capsys, "train")


def test_base_cycle_lists_the_files(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text("base: b.yaml\ntrain: {steps: 1}\n")
    (tmp_path / "b.yaml").write_text("base: sub/c.yaml\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.yaml").write_text("base: ../a.yaml\n")
    (tmp_path / "self.yaml").write_text("base: self.yaml\n")
    with pytest.raises(ConfigError, match="cycle") as e:
        read_yaml(tmp_path / "a.yaml")
    a, b, c = (str((tmp_path / f).resolve()) for f in ("a.yaml", "b.yaml", "sub/c.yaml"))
    assert f"{a} -> {b} -> {c} -> {a}" in str(e.value)
    with pytest.raises(ConfigError, match="self.yaml -> .*self.yaml"):
        load_config(TrainConfig, tmp_path / "self.yaml")
    assert cli.main(["plan", str(tmp_path / "a.yaml"), "--topology", "1,1,1", *PLAN_HW]) == 2
    assert "cycle" in _one_line_error(capsys, "plan")
    # a diamond (two files sharing one base) is not a cycle
    (tmp_path / "d.yaml").write_text("base: e.yaml\n")
    (tmp_path / "e.yaml").write_text("base: f.yaml\n")
    (tmp_path / "f.yaml").write_text("train: {steps: 2}\n")
    assert read_yaml(tmp_path / "d.yaml") == {"train": {"steps": 2}}


def test_bad_base_entry_names_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"a.yaml: base: config file not found: .*missing"):
        read_yaml(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("base: [x.yaml]\n")
    with pytest.raises(ConfigError, match="b.yaml: base: expected a file name"):
        read_yaml(tmp_path / "b.yaml")


@pytest.mark.parametrize(
    "make, who",
    [
        (lambda: train_config(data={"seq_len": 257}), "model"),
        (lambda: distill_config(data={"seq_len": 257}), "teacher"),
        (
            lambda: distill_config(
                data={"seq_len": 200},
                student={"num_layers": None, "shape": {**TEACHER, "max_position_embeddings": 128}},
            ),
            "student",
        ),
    ],
)
def test_seq_len_longer_than_the_model_positions_is_a_config_error(make, who):
    """Used to start, then crash out of memory (~107 GB allocated) on a real model."""
    with pytest.raises(ConfigError) as e:
        prepare(make())
    limit = 128 if who == "student" else 256
    assert str(e.value).startswith(f"data.seq_len: {200 if who == 'student' else 257} exceeds ")
    assert f"the {who}'s max_position_embeddings ({limit})" in str(e.value)
    prepare(train_config(data={"seq_len": 256}))  # exactly the limit is fine
    # CE-only distillation never runs the teacher: its positions do not bound the rows
    prepare(
        distill_config(
            data={"seq_len": 200},
            student={"num_layers": None, "shape": dict(TEACHER)},
            teacher={"shape": {**TEACHER, "max_position_embeddings": 128}},
            distill={"weights": {"logit_kl": 0.0, "hidden": 0.0, "attention": 0.0}},
        )
    )


def test_seq_len_check_in_the_cli_and_plan(tmp_path, capsys):
    args = [str(CONFIGS / "train_tiny.yaml"), f"run_dir={tmp_path}", "data.seq_len=1024"]
    assert cli.main(["train", *args, "train.steps=1"]) == 2
    err = _one_line_error(capsys, "train")
    assert "data.seq_len: 1024 exceeds the model's max_position_embeddings (512)" in err
    assert not (tmp_path / "checkpoints").exists()
    assert cli.main(["plan", *args, "--topology", "1,1,1", *PLAN_HW]) == 2
    assert "data.seq_len: 1024" in _one_line_error(capsys, "plan")


def test_score_and_eval_name_a_sequence_longer_than_the_model_positions(
    tmp_path, capsys, monkeypatch
):
    """Scoring never runs a row past the positions, and `score` says so before loading params
    (a 7B load would come first otherwise)."""
    import json

    from hf_reference import make_hf_model

    from tinywave_jax import checkpoint
    from tinywave_jax.convert import import_hf

    hf = make_hf_model(seed=3, vocab_size=64, num_key_value_heads=2)
    hf.config.max_position_embeddings = 32
    hf.save_pretrained(tmp_path / "hf")
    ckpt = str(import_hf(tmp_path / "hf", tmp_path / "ckpt"))
    capsys.readouterr()  # the save's progress bars
    (tmp_path / "in.jsonl").write_text(
        json.dumps({"ids": [1] * 8}) + "\n" + json.dumps({"ids": [1] * 33}) + "\n"
    )

    def no_load(*args, **kw):
        raise AssertionError("params loaded before the inputs were checked")

    with monkeypatch.context() as m:
        m.setattr(checkpoint, "load_model", no_load)
        assert cli.main(["score", ckpt, str(tmp_path / "in.jsonl"), str(tmp_path / "o.jsonl")]) == 2
    err = _one_line_error(capsys, "score")
    assert (
        "in.jsonl: record 1: 33 tokens, longer than the model's max_position_embeddings (32)" in err
    )
    assert not (tmp_path / "o.jsonl").exists()
    assert cli.main(["eval", ckpt, "--task", "ppl", "--data", str(tmp_path / "in.jsonl")]) == 2
    err = _one_line_error(capsys, "eval")
    assert "in.jsonl:2: 33 tokens, longer than the model's max_position_embeddings (32)" in err


@pytest.mark.parametrize(
    ("override", "key", "value"),
    [
        ("optimizer.learning_rate=3e-4", "learning_rate", 3e-4),
        ("optimizer.learning_rate=1.5E-3", "learning_rate", 1.5e-3),
        ("train.steps=1e4", "steps", 10000),
    ],
)
def test_numbers_in_overrides_and_yaml_parse_as_written(tmp_path, override, key, value):
    """YAML 1.1 (PyYAML) reads `3e-4` and `1e4` as strings, which were refused as 'not a number'."""
    cfg = load_config(TrainConfig, CONFIGS / "train_tiny.yaml", [override])
    section = cfg.optimizer if key == "learning_rate" else cfg.train
    assert getattr(section, key) == value and type(getattr(section, key)) is type(value)
    f = tmp_path / "c.yaml"
    section_name, rest = override.split(".", 1)
    k, v = rest.split("=")
    f.write_text(f"base: {CONFIGS / 'train_tiny.yaml'}\n{section_name}:\n  {k}: {v}\n")
    cfg = load_config(TrainConfig, f)
    assert getattr(cfg.optimizer if key == "learning_rate" else cfg.train, key) == value
    with pytest.raises(ConfigError, match="train.steps: expected an integer"):
        load_config(TrainConfig, CONFIGS / "train_tiny.yaml", ["train.steps=2.5e0"])


def test_score_input_with_true_blank_lines_or_other_encodings_is_named(tmp_path, capsys):
    """`true` was read as id 1 and a file of blank lines as nothing to do (exit 0); a non-UTF-8
    line was a UnicodeDecodeError traceback."""
    import jax

    from tinywave_jax.checkpoint import save_model
    from tinywave_jax.models.config import tiny_config
    from tinywave_jax.models.llama import init_params

    config = tiny_config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1)
    ckpt = str(save_model(tmp_path / "ck", init_params(config, jax.random.key(0)), config))
    cases = {
        b'{"ids": [1, true, 3]}\n': "record 0: ids must be integers",
        b"\n  \n\n": "holds no records",
        b'{"ids": [1, 2]}\n{"ids": [1], "t": "\xff"}\n': "in.jsonl:2: not UTF-8",
    }
    for content, needle in cases.items():
        (tmp_path / "in.jsonl").write_bytes(content)
        out = tmp_path / "o.jsonl"
        assert cli.main(["score", ckpt, str(tmp_path / "in.jsonl"), str(out)]) == 2, content
        assert needle in _one_line_error(capsys, "score")
        assert not out.exists()


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_theta": 10000.0, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}},
        {
            "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
            "rope_scaling": {"type": "linear", "factor": 4.0},
        },
    ],
)
def test_conflicting_rope_fields_in_config_json_are_refused(rope):
    """transformers 4.x and 5.x state RoPE in different fields; one of two disagreeing ones was
    ignored without a word."""
    from tinywave_jax.models.config import tiny_config

    hf = {**tiny_config().to_hf_dict(), **rope}
    with pytest.raises(ConfigError, match="disagree"):
        type(tiny_config()).from_hf_dict(hf)
    agreeing = {**tiny_config().to_hf_dict(), "rope_scaling": {"type": "linear", "factor": 2.0}}
    agreeing["rope_parameters"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}
    assert type(tiny_config()).from_hf_dict(agreeing).rope_scaling.factor == 2.0


@pytest.mark.parametrize("url", ["s3://bucket/ck", "file:///tmp/ck", "memory://ck"])
def test_unsupported_url_schemes_are_one_line(tmp_path, capsys, url):
    (tmp_path / "in.jsonl").write_text('{"ids": [1, 2]}\n')
    assert cli.main(["score", url, str(tmp_path / "in.jsonl"), str(tmp_path / "o.jsonl")]) == 2
    err = _one_line_error(capsys, "score")
    assert f"{url.split(':')[0]}:// paths are not supported" in err
    assert cli.main(["export-hf", str(tmp_path), url]) == 2
    _one_line_error(capsys, "export-hf")


def test_a_base_chain_and_the_demos_presets_merge_key_by_key(tmp_path):
    """config.merged, the one merge rule: a later mapping merges into an earlier one's at the same
    key, anything else replaces it (a YAML's base: chain, the demo's presets)."""
    (tmp_path / "b.yaml").write_text("train: {steps: 5, log_every: 2}\ndata: {seq_len: 8}\n")
    (tmp_path / "a.yaml").write_text("base: b.yaml\ntrain: {steps: 1}\ndata: 3\n")
    assert read_yaml(tmp_path / "a.yaml") == {"train": {"steps": 1, "log_every": 2}, "data": 3}
    layers = ({"a": {"x": 1, "y": 2}, "b": 1}, {"a": {"y": 3}}, {"b": {"c": 1}})
    assert merged(*layers) == {"a": {"x": 1, "y": 3}, "b": {"c": 1}}
    assert layers[0] == {"a": {"x": 1, "y": 2}, "b": 1}  # the layers are left as they were
