# The two commands: `make test` and `make demo`. Each installs what it needs on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: help install test unit demo down ui deploy screenshots demo-env bench lock clean

help:
	@echo "make demo    - the main job against the local sandbox (Novi sandbox + real Mailman core)"
	@echo "make down    - stop everything the demo started"
	@echo "make test    - install (uv, locked) and run the whole test suite"
	@echo "make install - only create .venv from uv.lock"
	@echo "make bench   - measure calls, time and memory against the lower bound and the old bridge (README: Performance)"
	@echo "make ui      - start (or find) the demo's Prefect server and its UI on http://127.0.0.1:4200"
	@echo "make deploy  - the demo's deployments and a worker on that server: run, approve and read them in the UI"
	@echo "make screenshots - the demo, deployed, driven in headless Chromium: docs/screenshots/*.png"
	@echo "make lock    - re-resolve uv.lock after editing pyproject.toml"

# uv itself, pinned, in a folder of its own so it never touches the project environment.
$(UV):
	python3 -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --locked --compile-bytecode
	@touch $@

install: $(VENV)/.synced

# The wheel test builds and installs the package with the same pinned uv. Three workers on
# two cores (pytest-xdist): most integration tests wait on a peer, a worker or a timer, so a
# third keeps the cores busy; a file's tests stay on one worker (their module fixtures).
PYTEST_WORKERS ?= 3
test: install
	NOVI_MAILMAN_UV=$(abspath $(UV)) $(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadfile

unit: install
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadfile -m "not flow"

demo: install
	$(VENV)/bin/python -m sandbox.demo demo

down: install
	$(VENV)/bin/python -m sandbox.demo down

ui: install
	$(VENV)/bin/python -m sandbox.demo ui

deploy: install
	$(VENV)/bin/python -m sandbox.demo deploy

# The README's screens, in Debian's headless Chromium (apt-installed when missing); not part of make test.
screenshots: install
	$(VENV)/bin/python -m sandbox.screenshots

# The pre-fill of 100,000 members takes 9 (idle) to 60 (loaded) minutes, once: later runs reuse its snapshot.
# 113 minutes on 2026-12-02 loaded (the old bridge's 100,000-member days most of it); 40 minutes on 2026-12-06
# (36 minutes at 10:51) with --bridge-up-to 10000 --throughput 0 --planner-sizes and the snapshots made.
# Arguments: make bench BENCH_ARGS="--sizes 1000 10000 --repeat 3"
bench: install
	$(VENV)/bin/python -m bench.run $(BENCH_ARGS)

demo-env: install
	@$(VENV)/bin/python -m sandbox.demo env

lock: $(UV)
	$(UV) lock

clean:
	rm -rf $(VENV) $(TOOLS) reports .pytest_cache .demo .mailman .bench
