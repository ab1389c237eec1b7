"""`tinywave distill` / `tinywave train` through the real CLI entry point: --help, bad configs that
name the key, a width-mismatched student with a projector (trained, not exported), LoRA
fine-tuning (only adapters trained, merged at the end), and every shipped config parses."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from train_fixtures import SHARED_OVER, TEACHER, distill_dict

from tinywave_jax import cli
from tinywave_jax.checkpoint import load_model
from tinywave_jax.config import load_config
from tinywave_jax.errors import ConfigError
from tinywave_jax.models import llama
from tinywave_jax.models.config import LlamaConfig
from tinywave_jax.train.config import DistillConfig, TrainConfig
from tinywave_jax.train.recipes import prepare
from tinywave_jax.train.resume import RESUME_MAY_CHANGE, checkpoint_manager

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_help_documents_both_commands(capsys):
    # both document the run lock, what a resume may change, and the exit codes (143: SIGTERM)
    common = ["RUN_DIR/.lock", "--allow-config-change KEY [KEY ...]", "143", *RESUME_MAY_CHANGE]
    for cmd, words in (
        ("distill", ["--resume", "KEY=VALUE", "final", *common]),
        ("train", ["lora.enabled", "--resume", "merged", *common]),
    ):
        with pytest.raises(SystemExit):
            cli.main([cmd, "--help"])
        out = capsys.readouterr().out
        assert all(w in out for w in words), (cmd, [w for w in words if w not in out])


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["train.stepz=3"], "train.stepz"),
        (["distill.layer_map=[1, 7]"], "distill.layer_map"),
        (["distill.layer_map=tinywav"], "distill.layer_map"),
        (
            [
                "student.shape={vocab_size: 256, hidden_size: 32, intermediate_size: 64, "
                "num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2}",
                "student.num_layers=null",
            ],
            "projector",
        ),
        (["train.microbatches=3"], "train.microbatches"),
        (["mesh.data=3"], "mesh"),
        (["distill.weights.ce=-1"], "distill.weights.ce"),
        (["teacher.path=/nonexistent/ckpt", "teacher.shape=null"], "teacher.path"),
    ],
)
def test_bad_distill_config_names_the_key(tmp_path, capsys, overrides, key):
    rc = cli.main(
        ["distill", str(CONFIGS / "distill_tiny.yaml"), f"run_dir={tmp_path}", *overrides]
    )
    err = capsys.readouterr().err
    assert rc == 2 and key in err, err
    assert not (tmp_path / "checkpoints").exists()


def test_bad_train_config_names_the_key(tmp_path, capsys):
    rc = cli.main(
        [
            "train",
            str(CONFIGS / "train_tiny.yaml"),
            f"run_dir={tmp_path}",
            "lora.enabled=true",
            "lora.targets=[q_proj, w_proj]",
        ]
    )
    assert rc == 2 and "lora.targets" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override, message",
    [
        ("mixture={}", "data.corpus.mixture: give at least one stream kind"),
        ("mixture={audio: 1}", "data.corpus.mixture.audio: unknown stream kind"),
        ("mixture={speech: 0}", "data.corpus.mixture.speech: weight must be a positive number"),
        (
            "interleave_patterns={bogus: 1}",
            "data.corpus.interleave_patterns.bogus: unknown pattern",
        ),
        ("interleave_patterns.text=-1", "data.corpus.interleave_patterns.text: must be a number"),
        (
            "interleave_patterns={text: 0, speech: 0}",
            "data.corpus.interleave_patterns: probabilities sum to 0",
        ),
        ("mixture={text: 1}", "data.corpus.tokenizer: the text and interleaved streams need"),
        ("max_bad_records=-1", "data.corpus.max_bad_records: must be >= 0"),
        ("read_threads=-1", "data.corpus.read_threads: must be >= 0"),
        ("num_epochs=0", "data.corpus.num_epochs: must be >= 1 or null"),
        ("layout.preset=spiritlm", "data.corpus.layout.preset: 'spiritlm' is not one of"),
        ("layout.num_units=10", "data.corpus.layout: give either `preset` or the custom fields"),
        ("layout={preset: null}", "data.corpus.layout: a custom layout (preset: null) needs"),
        ("layout.pad_to_multiple=0", "data.corpus.layout.pad_to_multiple: must be >= 1"),
        ("seq_len=8", "data.corpus.seq_len: set data.seq_len instead"),
    ],
)
def test_corpus_data_errors_name_the_key_as_written(override, message):
    """DataConfig sits under data.corpus in a run config: its errors say so (not data.mixture)."""
    with pytest.raises(ConfigError) as e:
        load_config(
            TrainConfig,
            CONFIGS / "train_tiny.yaml",
            ["data.source=corpus", f"data.corpus.{override}"],
        )
    assert str(e.value).startswith(message), str(e.value)


@pytest.mark.parametrize(
    "path, override, message",
    [
        (
            "distill_tiny.yaml",
            "teacher.shape.num_key_value_heads=3",
            "teacher.shape.num_attention_heads: 4 is not a multiple of "
            "teacher.shape.num_key_value_heads (3)",
        ),
        ("distill_tiny.yaml", "teacher.shape.head_dim=7", "teacher.shape.head_dim: must be even"),
        (
            "train_tiny.yaml",
            "model.shape.hidden_size=0",
            "model.shape.hidden_size: must be positive",
        ),
    ],
)
def test_model_shape_errors_name_the_key_as_written(path, override, message):
    cls = TrainConfig if path.startswith("train") else DistillConfig
    with pytest.raises(ConfigError) as e:
        load_config(cls, CONFIGS / path, [override])
    assert str(e.value).startswith(message), str(e.value)


def test_corpus_data_runtime_errors_name_the_key_as_written(tmp_path):
    from tinywave_jax.data import DataConfig, LayoutConfig, make_train_iterator

    cfg = DataConfig(mixture={"expressive": 1.0}, layout=LayoutConfig(preset="spiritlm_base"))
    with pytest.raises(ConfigError, match="^data.corpus.mixture.expressive: layout spiritlm_base"):
        make_train_iterator(cfg, 0, 1, source=[{}], key="data.corpus")
    with pytest.raises(ConfigError, match="^mixture.expressive: layout spiritlm_base"):
        make_train_iterator(cfg, 0, 1, source=[{}])  # built in Python: the field's own name


def test_shipped_configs_parse():
    for path in sorted(CONFIGS.glob("*.yaml")):
        cls = TrainConfig if path.name.startswith("train") else DistillConfig
        cfg = load_config(cls, path)
        if path.stem.endswith("_tiny"):
            prepare(cfg)
        else:  # TinyWave presets: 7B teacher -> 10-layer student on the `tinywave` map
            assert cfg.distill.layer_map == "tinywave" and cfg.teacher.dtype == "bfloat16"
            assert cfg.student.num_layers == 10 or cfg.student.path


def test_distill_with_projector_and_rerun_guard(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(distill_dict(run_dir=str(tmp_path), **SHARED_OVER)))
    args = ["distill", str(config), "--quiet", "train.checkpoint_every=4", "train.tensorboard=true"]
    assert cli.main(args) == 0
    params, config, info = load_model(tmp_path / "final")
    assert config.hidden_size == 16 and config.num_hidden_layers == 2 and "projector" not in params
    assert info["provenance"]["layer_map"] == [1, 3]
    assert cli.main(["export-hf", str(tmp_path / "final"), str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    mngr = checkpoint_manager(tmp_path)
    assert mngr.all_steps() == [4, 8]
    mngr.close()
    state_meta = json.loads((tmp_path / "checkpoints" / "8" / "state" / "_METADATA").read_text())
    assert "projector" in json.dumps(state_meta)  # trained with the student, kept in the state
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9)) and all(
        np.isfinite(r["loss"]) for r in rows
    )
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["projector"] is True
    # a second run into the same folder without --resume is refused
    assert cli.main(args) == 2 and "--resume" in capsys.readouterr().err


@pytest.mark.slow
def test_lora_on_the_grain_corpus_trains_only_adapters_resumes_and_merges(tmp_path):
    """`tinywave train` with LoRA on batches of a built corpus (data.source=corpus): only the
    adapters carry optimizer state, the grain iterator state is checkpointed and resumed, and the
    adapters are merged into the exported weights."""
    from data_fixtures import synthetic_utterance, write_units_manifest

    from tinywave_jax.checkpoint import save_model
    from tinywave_jax.data.corpus_build import build_corpus

    rng = np.random.default_rng(1)
    manifest = write_units_manifest(
        tmp_path / "units.jsonl", [synthetic_utterance(rng, k) for k in range(16)]
    )
    build_corpus(tmp_path / "corpus", manifest=manifest, shard_size=8, log=lambda *a: None)
    cfg = LlamaConfig(**dict(TEACHER, vocab_size=32768, num_hidden_layers=2))  # spiritlm ids
    base = jax.device_get(llama.init_params(cfg, jax.random.key(3)))
    save_model(tmp_path / "base", base, cfg)
    run_dir = tmp_path / "lora"
    args = [
        "train",
        str(CONFIGS / "train_tiny.yaml"),
        f"run_dir={run_dir}",
        "--quiet",
        f"model.path={tmp_path / 'base'}",
        "model.shape=null",
        "lora.enabled=true",
        "lora.rank=4",
        "lora.targets=[q_proj, v_proj]",
        "optimizer.warmup_steps=0",
        "data.source=corpus",
        "data.seq_len=32",
        "train.steps=3",
        "train.log_every=1",
        "train.checkpoint_every=2",
        f"data.corpus={json.dumps({'corpus_dir': str(tmp_path / 'corpus'), 'read_threads': 2})}",
    ]
    # killed after step 2 would look like this: run 3 steps, drop the last checkpoint and rows
    assert cli.main(args) == 0
    data_state = json.loads((run_dir / "checkpoints" / "2" / "data" / "metadata").read_text())
    assert data_state["process_count"] == 1 and "grain" in data_state
    first = load_model(run_dir / "final")[0]
    import shutil

    shutil.rmtree(run_dir / "checkpoints" / "3")
    shutil.rmtree(run_dir / "final")
    assert cli.main(args + ["--resume"]) == 0
    merged, _, info = load_model(run_dir / "final")
    jax.tree.map(np.testing.assert_array_equal, merged, first)  # resumed == straight
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["num_tokens"] > 0 for r in rows)
    layers, base_layers = merged["layers"], base["layers"]
    for name in ("q_proj", "v_proj"):
        assert not np.allclose(
            layers["self_attn"][name]["kernel"], base_layers["self_attn"][name]["kernel"]
        )
    for name in ("k_proj", "o_proj"):
        np.testing.assert_array_equal(
            layers["self_attn"][name]["kernel"], base_layers["self_attn"][name]["kernel"]
        )
    np.testing.assert_array_equal(
        layers["mlp"]["up_proj"]["kernel"], base_layers["mlp"]["up_proj"]["kernel"]
    )
    np.testing.assert_array_equal(
        merged["embed_tokens"]["embedding"], base["embed_tokens"]["embedding"]
    )
    assert info["provenance"]["lora"]["rank"] == 4
    state_meta = (run_dir / "checkpoints" / "3" / "state" / "_METADATA").read_text()
    assert (
        "lora_a" in state_meta and "embed_tokens" not in state_meta
    )  # no optimizer state for the base
