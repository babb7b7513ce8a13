# `make repro`, `make test` and `make docs` first build .venv from uv.lock (exact versions and
# hashes of every package) when it is missing or older than pyproject.toml or uv.lock.
#   make lock           re-resolve uv.lock after editing pyproject.toml (other pins kept)
#   make lock-upgrade   re-resolve every package to the newest release pyproject.toml allows
#   make docs           the documentation site (mkdocs.yml, docs/) into site/, strict
#   make repro EXTRAS="--extra dev --extra docs --extra gpu"   with the CUDA build of TensorFlow
PYTHON ?= python3
UV_VERSION := 0.13.9
EXTRAS ?= --extra dev --extra docs
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: repro test lint docs lock lock-upgrade bench clean-venv

$(STAMP): pyproject.toml uv.lock Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	# --frozen: install exactly what uv.lock says, never re-resolve. --compile-bytecode: uv writes
	# no .pyc by default, and where PYTHONDONTWRITEBYTECODE is set (these machines) every process
	# then compiles TensorFlow's sources again: `import tensorflow, mlflow` 28 s instead of 10 s.
	$(BIN)/uv sync --frozen --quiet --compile-bytecode $(EXTRAS)
	touch $(STAMP)

repro: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# Two pytest workers, each test file on one of them (a file's module fixtures run once): much of
# an end-to-end test is single-threaded start-up and store work, so two overlap well here.
TEST_WORKERS ?= 2
test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench docs
	$(BIN)/ruff format --check src tests bench docs

# --strict: a broken link or anchor, a page missing from the nav, or a failure of the params
# reference (docs/gen_params.py, run by docs/hooks.py) fails the build. NO_MKDOCS_2_WARNING
# silences Material's end-of-life banner.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

lock: $(STAMP)
	$(BIN)/uv lock

lock-upgrade: $(STAMP)
	$(BIN)/uv lock --upgrade

clean-venv:
	rm -rf $(VENV)
