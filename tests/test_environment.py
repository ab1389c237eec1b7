"""environment(): the versions a results file records are those of the imported packages."""

import platform

import jax
import numpy as np

from tinywave_jax.environment import _version, environment


def test_versions_are_the_imported_packages():
    env = environment()
    assert env["packages"]["jax"] == jax.__version__
    assert env["packages"]["numpy"] == np.__version__
    assert env["python"] == platform.python_version()
    assert env["cpu"] and env["platform"]
    assert _version("tinywave-no-such-distribution") is None  # recorded as null, not an error
