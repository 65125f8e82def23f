# The two commands: `make test` and `make demo`. Each installs what it needs on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: help install test unit ui lock clean

help:
	@echo "make test    - install (uv, locked) and run the whole test suite"
	@echo "make install - only create .venv from uv.lock"
	@echo "make ui      - start a local Prefect server and its UI on http://127.0.0.1:4200"
	@echo "make lock    - re-resolve uv.lock after editing pyproject.toml"

# uv itself, pinned, in a folder of its own so it never touches the project environment.
$(UV):
	python3 -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --locked
	@touch $@

install: $(VENV)/.synced

test: install
	$(VENV)/bin/pytest

unit: install
	$(VENV)/bin/pytest -m "not flow"

ui: install
	$(VENV)/bin/prefect server start --host 127.0.0.1

lock: $(UV)
	$(UV) lock

clean:
	rm -rf $(VENV) $(TOOLS) reports .pytest_cache
