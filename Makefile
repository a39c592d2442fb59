# RepScope: `make app` runs the dashboard, `make test` runs every test.
# Both set up what they need (a project venv, Debian's chromium) and are idempotent.

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.repscope-installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PORT ?= 8501

.PHONY: setup system-deps app test test-fast bench clean-cache

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: pip takes the CPU wheel that lies on this machine's disk.
	$(BIN)/python -m pip install -q "torch==2.13.0"
	# The scale-out extras (Ray, nnsight) join the test env so CI runs their tests; torch stays
	# 2.13.0 because the project pins it exactly.
	$(BIN)/python -m pip install -q -e ".[test,scale,remote]"
	@touch $(STAMP)

# Debian's chromium drives figure export (kaleido) and the browser tests (playwright).
system-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium fonts-dejavu-core fonts-liberation; }

setup: $(STAMP) system-deps

app: setup
	$(BIN)/repscope app --port $(PORT)

# Random test order (pytest-randomly): the seed is printed first; rerun an order with
# `make test SEED=<seed>`. Import-layer contracts (import-linter) run before the tests.
ifndef SEED
SEED := $(shell od -An -N4 -tu4 /dev/urandom | tr -d ' ')
endif
test: setup
	@echo "test order seed: $(SEED) (make test SEED=$(SEED) repeats this order)"
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -p randomly --randomly-seed=$(SEED) --durations=15

# Unit tests only (tiny models): seconds, not minutes.
test-fast: setup
	$(BIN)/python -m pytest -q -p randomly -m "not real_model and not browser"

bench: setup
	$(BIN)/python -m bench

clean-cache:
	rm -rf $${REPSCOPE_ACTIVATION_CACHE:-$${REPSCOPE_CACHE:-$$HOME/.cache/repscope}/activations}
