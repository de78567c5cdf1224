# One entry point: `make demo` runs the main job end to end, `make test` runs the tests.
# Both create the virtual environment and install everything on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= runs/demo
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.torch_extensions
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: setup system-deps venv test lint format demo check-formats check-formats-all bench clean

setup: system-deps venv

system-deps:
	@bash scripts/install_system_deps.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[sim,dev]'
	touch $@

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: setup lint
	$(BIN)/pytest

demo: setup
	$(BIN)/gwp demo --out $(OUT)

# Third-party validators, each in its own environment (never in the project's).
check-formats: setup
	bash scripts/check_formats.sh

check-formats-all: setup
	bash scripts/check_formats.sh --tfds

bench: setup
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) .venvs .pytest_cache .ruff_cache runs
