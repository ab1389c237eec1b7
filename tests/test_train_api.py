"""The Python entry point `tinywave_jax.train.distill`: a dict or config object runs the CLI's
code path (the same final student as `tinywave distill` on the same config), bad keys named."""

import jax
import numpy as np
import pytest
import yaml
from train_fixtures import distill_config, distill_dict

from tinywave_jax.checkpoint import load_model
from tinywave_jax.cli import main
from tinywave_jax.errors import ConfigError
from tinywave_jax.train import distill


def test_distill_from_a_dict_equals_the_cli_run(tmp_path):
    d = distill_dict(run_dir=str(tmp_path / "api"), train={"steps": 2})
    out = distill(d, ["distill.weights.attention=0"], echo=False)
    assert out["step"] == 2 and not out["stopped"] and int(out["state"].step) == 2
    api_params = load_model(out["final_dir"])[0]
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(a, b),
        api_params,
        jax.device_get(out["state"].params["model"]),
    )
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml.safe_dump({**d, "run_dir": str(tmp_path / "cli")}))
    assert main(["distill", str(cfg_file), "distill.weights.attention=0", "--quiet"]) == 0
    cli_params = load_model(tmp_path / "cli" / "final")[0]
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), api_params, cli_params)


def test_a_config_object_with_overrides_and_bad_keys(tmp_path):
    cfg = distill_config(run_dir=str(tmp_path / "obj"))
    with pytest.raises(ConfigError, match=r"distill\.weights\.hiden"):
        distill(cfg, ["distill.weights.hiden=0"])
    with pytest.raises(ConfigError, match=r"train\.stepz"):
        distill({**distill_dict(), "train": {"stepz": 1}})
    with pytest.raises(TypeError, match="a YAML path, a dict or a DistillConfig"):
        distill(42)
