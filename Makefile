# `make demo` and `make test` set up .venv on first use (only Python needed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torchvision must match torch; these are the versions this project is tested on.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test bench clean-venv browser

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[train,eval,test,app]"
	touch $@

demo: $(VENV)/.installed
	$(PY) -m timm_bcos demo

test: $(VENV)/.installed browser
	$(PY) -m pytest -n 2 tests

# Debian's chromium for the real-browser test of the explorer (tests/test_app_browser.py), when missing.
browser:
	@test -x /usr/bin/chromium || { echo "installing Debian's chromium for the browser test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

bench: $(VENV)/.installed
	$(PY) benchmarks/layers.py

clean-venv:
	rm -rf $(VENV)
