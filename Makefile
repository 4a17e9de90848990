# camfleet — see README.md. The first two targets do all the set-up on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test lint bench setup system venv hil clean

demo: setup ## broker, fleet server, two agents and a MicroPython node; Ctrl-C stops all
	$(PY) -m hil_tests.demo

test: setup ## the whole suite (starts its own Mosquitto, server, agents, MicroPython)
	$(PY) -m pytest -q

lint: setup ## ruff, mypy (strict) and pyright (firmware against MicroPython stubs)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pyright -p firmware/pyrightconfig.json

bench: setup ## figures written to bench/results.json and the README table
	$(PY) -m bench.run

setup: system venv

system:
	@scripts/setup-system.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

clean:
	rm -rf $(VENV) demo-state bench/work .pytest_cache .mypy_cache .ruff_cache
