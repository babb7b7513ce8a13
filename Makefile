# `make repro` and `make test` first build .venv from uv.lock (exact versions and hashes of
# every package) when it is missing or older than pyproject.toml or uv.lock.
#   make lock           re-resolve uv.lock after editing pyproject.toml (other pins kept)
#   make lock-upgrade   re-resolve every package to the newest release pyproject.toml allows
#   make repro EXTRAS="--extra dev --extra gpu"   the same, with the CUDA build of TensorFlow
PYTHON ?= python3
UV_VERSION := 0.13.9
EXTRAS ?= --extra dev
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: repro test lint lock lock-upgrade bench clean-venv

$(STAMP): pyproject.toml uv.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	# --frozen: install exactly what uv.lock says, never re-resolve.
	$(BIN)/uv sync --frozen --quiet $(EXTRAS)
	touch $(STAMP)

repro: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# Two pytest workers, each test file on one of them (a file's module fixtures run once): much of
# an end-to-end test is single-threaded start-up and store work, so two overlap well here.
TEST_WORKERS ?= 2
test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

lock: $(STAMP)
	$(BIN)/uv lock

lock-upgrade: $(STAMP)
	$(BIN)/uv lock --upgrade

clean-venv:
	rm -rf $(VENV)
