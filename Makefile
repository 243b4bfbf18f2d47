# `make demo` and `make test` set up .venv on first use (only Python needed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torchvision must match torch; these are the versions this project is tested on.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test bench clean-venv

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[train,eval,test]"
	touch $@

demo: $(VENV)/.installed
	$(PY) -m timm_bcos demo

test: $(VENV)/.installed
	$(PY) -m pytest -n 2 tests

bench: $(VENV)/.installed
	$(PY) benchmarks/layers.py

clean-venv:
	rm -rf $(VENV)
