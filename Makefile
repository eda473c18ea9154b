# `make app`: set up (first time) and serve the suite app on 127.0.0.1:7860.
# `make test`: set up (first time) and run the fast test suite.
SHELL := /bin/bash
VENV := .venv
STAMP := $(VENV)/.ditlab-setup
SETUP_INPUTS := Makefile scripts/setup.sh constraints.txt pyproject.toml $(wildcard packages/*/pyproject.toml)
# Debian packages the project needs (installed when missing): libusb-1.0-0 for open3d, espeak-ng for the
# ditlab.audio text front end and corpus.
export DITLAB_SYSTEM_PACKAGES := libusb-1.0-0 espeak-ng

.PHONY: app test test-slow setup lint bench

setup: $(STAMP)

$(STAMP): $(SETUP_INPUTS)
	bash scripts/setup.sh
	@touch $@

app: $(STAMP)
	$(VENV)/bin/python apps/suite.py

test: $(STAMP)
	$(VENV)/bin/python -m pytest

test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check packages apps tests

bench: $(STAMP)
	$(VENV)/bin/ditlab core benchmark --json BENCHMARKS.core.json
