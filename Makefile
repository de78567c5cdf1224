# One entry point: `make demo` runs the main job end to end, `make test` runs the tests.
# Both create the virtual environment and install everything on first use, at the versions
# pinned in requirements.lock (`make lock` regenerates it).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
LOCK   := requirements.lock
OUT    ?= runs/demo
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.torch_extensions
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: setup system-deps venv lock check-lock test lint format demo check-formats check-formats-all bench clean openpi-client

setup: system-deps venv

system-deps:
	@bash scripts/install_system_deps.sh

venv: $(VENV)/.installed

# The lock constrains every package, the build's setuptools included (--build-constraint needs
# the locked pip, hence two steps); a changed lock reinstalls.
$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c $(LOCK) --upgrade pip
	$(BIN)/pip install -q -c $(LOCK) --build-constraint $(LOCK) -e '.[sim,dev]'
	touch $@

# Re-resolve requirements.lock (after a change to pyproject.toml's dependencies); pass
# LOCK_ARGS=--upgrade to move every pin to its newest release.
lock:
	bash scripts/lock.sh $(LOCK_ARGS)

# Fails when the lock no longer covers pyproject.toml or the virtualenv differs from it.
check-lock: venv
	$(BIN)/python scripts/check_lock.py --lock $(LOCK)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: setup lint check-lock openpi-client
	$(BIN)/pytest

# openpi's own client (PyPI) in its own venv: the robot side of tests/policy/test_serve.py
# (a few small wheels; instant once made). The test makes it too when it is missing.
openpi-client: venv
	PYTHON=$(BIN)/python bash scripts/make_openpi_client_venv.sh

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
