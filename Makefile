# One venv for everything; `make test` and `make demo` bootstrap it on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: venv test clean espeak

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*; touch $@

# Tests see 8 simulated CPU devices (set in tests/conftest.py before jax is imported).
# espeak-ng synthesises the real speech that audio tests and the demo use.
espeak:
	@command -v espeak-ng >/dev/null || { command -v apt-get >/dev/null && \
	  (apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null) ; } || \
	  { echo "espeak-ng is missing and apt-get is unavailable: install espeak-ng by hand" >&2; exit 1; }

test: venv espeak
	$(BIN)/python -m pytest -n 2 --dist loadfile -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
