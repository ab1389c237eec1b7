"""`python -m tinywave_jax.hw FILE`: the overlay as `key=value` overrides (for the launchers)."""

import sys

from . import main

sys.exit(main(sys.argv[1:]))
