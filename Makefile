# One venv for everything; `make test` and `make demo` bootstrap it on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

# llama-cpp-python (test extra, runs `export-gguf` files) compiles llama.cpp from source with the
# machine's gcc/g++ and cmake (PyPI's cmake when there is none), once. ggml's runtime CPU dispatch
# (GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS): one ggml-cpu library per x86 instruction-set level
# (x64, sse42, ..., haswell = AVX2, skylakex/icelake/zen4 = AVX-512 with VNNI/BF16, alderlake =
# AVX-VNNI) in llama_cpp/lib; eval/gguf_run.py loads the best this CPU's cpuid allows, so each
# machine runs its best kernels and none an instruction it lacks. ggml scores a variant on cpuid
# alone, not on whether the OS enabled AMX tiles, which crash (SIGILL) where the CPU advertises
# them and the kernel or sandbox does not enable them, as on this project's machines: the AMX
# variant (sapphirerapids) is deleted after the install. GGML_BACKEND_DIR puts the libraries in the
# package (:STRING, relative to the install prefix: as a PATH cmake makes it absolute under the
# temporary build folder). No llava (multimodal) library.
# pip caches a built wheel under the package's name and version whatever CMAKE_ARGS were, so the
# package is installed on its own, uncached, whenever .venv/.llama-cpp-build records other flags.
LLAMA_CPP_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON \
	-DGGML_BACKEND_DIR:STRING=llama_cpp/lib -DLLAVA_BUILD=OFF
LLAMA_CPP := $(shell sed -n 's/^ *\(llama-cpp-python==[^ ]*\) *$$/\1/p' setup.cfg | head -1)
LLAMA_CPP_BUILD := $(LLAMA_CPP) $(LLAMA_CPP_CMAKE_ARGS)
STAMP := $(VENV)/.installed-$(shell echo '$(LLAMA_CPP_BUILD)' | cat setup.cfg pyproject.toml - | \
	cksum | cut -d' ' -f1)

.PHONY: venv test lint format demo demo-expressive demo-interleaved demo-teacher demo-teacher-expressive clean espeak shellcheck

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	test "$$(cat $(VENV)/.llama-cpp-build 2>/dev/null)" = '$(LLAMA_CPP_BUILD)' || { \
	  CMAKE_ARGS='$(LLAMA_CPP_CMAKE_ARGS)' $(BIN)/python -m pip install -q --no-cache-dir \
	    --force-reinstall --no-deps '$(LLAMA_CPP)' && \
	  rm -f $(VENV)/lib/python*/site-packages/llama_cpp/lib/libggml-cpu-sapphirerapids.so && \
	  echo '$(LLAMA_CPP_BUILD)' > $(VENV)/.llama-cpp-build; }
	$(BIN)/python -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*; touch $@

# Tests see 8 simulated CPU devices (set in tests/conftest.py before jax is imported).
# espeak-ng synthesises the real speech that audio tests and the demo use.
espeak:
	@command -v espeak-ng >/dev/null || { command -v apt-get >/dev/null && \
	  (apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null) ; } || \
	  { echo "espeak-ng is missing and apt-get is unavailable: install espeak-ng by hand" >&2; exit 1; }

# shellcheck lints the launch scripts (tests/test_launch.py runs it when it is installed).
shellcheck:
	@command -v shellcheck >/dev/null || { command -v apt-get >/dev/null && \
	  (apt-get update -qq && apt-get install -y -qq shellcheck >/dev/null) ; } || \
	  { echo "shellcheck is missing and apt-get is unavailable: install shellcheck by hand" >&2; exit 1; }

# ruff (pinned in setup.cfg's test extra; rules in pyproject.toml): `make format` applies the fixes.
# mypy (pinned there too) type-checks models/, distill/, train/ and parallel/ (pyproject.toml).
lint: venv
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: venv espeak shellcheck
	$(BIN)/python -m pytest -n 2 --dist loadfile -q $(PYTEST_ARGS)

# The whole recipe on CPU, no downloads, distilling the shipped teacher (tinywave_jax/demo/teacher);
# reruns resume from runs/demo. The README gives the measured time; `tinywave demo --quick` is the
# toy-size version the tests run, `--ablation` adds the ablation rows.
demo: venv espeak
	$(BIN)/tinywave demo --workdir runs/demo

# TinyWave's other two students: expressive (units + pitch + style), then interleaved (speech +
# text, starting from the expressive run's student and baseline).
demo-expressive: venv espeak
	$(BIN)/tinywave demo --variant expressive --workdir runs/demo-expressive

demo-interleaved: demo-expressive
	$(BIN)/tinywave demo --variant interleaved --workdir runs/demo-interleaved \
	  --set expressive_workdir=runs/demo-expressive

# Rebuilds the shipped teacher packages (provenance and times: docs/demo_teacher.md).
demo-teacher: venv espeak
	$(BIN)/tinywave demo-teacher --out tinywave_jax/demo/teacher --workdir runs/demo_teacher --overwrite

demo-teacher-expressive: venv espeak
	$(BIN)/tinywave demo-teacher --variant expressive --out tinywave_jax/demo/teacher_expressive \
	  --workdir runs/demo_teacher_expressive --overwrite

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache
