# `make demo` and `make test` set up .venv on first use (only Python needed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torchvision must match torch; these are the versions this project is tested on.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# timm's source distribution (for its tests/test_models.py), fetched once at set-up
TIMM_TESTS := .timm_tests

.PHONY: demo test bench clean-venv browser docs docs-serve

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[train,eval,metrics,test,app,export,docs]"
	touch $@

demo: $(VENV)/.installed
	$(PY) -m timm_bcos demo

# our tests, and timm's own model tests (tests/test_models.py of the installed timm's sdist) on every bcos_*
# model, in one session; the selection, routing and exclusions (each with its reason) of timm's tests are in
# tests/timm_suite_plugin.py.
test: $(VENV)/.installed browser $(TIMM_TESTS)/.fetched
	PYTHONPATH=tests $(PY) -m pytest -n 2 --durations=25 -p timm_bcos -p timm_suite_plugin \
	  tests $(TIMM_TESTS)/tests/test_models.py

$(TIMM_TESTS)/.fetched: $(VENV)/.installed
	rm -rf $(TIMM_TESTS) && mkdir -p $(TIMM_TESTS)
	$(PY) -m pip download --quiet --no-deps --no-binary :all: -d $(TIMM_TESTS) \
	  "timm==$$($(PY) -c 'import timm; print(timm.__version__)')"
	tar -xzf $(TIMM_TESTS)/timm-*.tar.gz -C $(TIMM_TESTS) --strip-components=1 --wildcards '*/tests/*' '*/pyproject.toml'
	touch $@

# Debian's chromium for the real-browser test of the explorer (tests/test_app_browser.py), when missing.
browser:
	@test -x /usr/bin/chromium || { echo "installing Debian's chromium for the browser test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# the documentation site: the generated reference pages first, then mkdocs into site/ (offline; strict: a broken
# link or a missing page fails the build); docs-serve serves it on 127.0.0.1:8000 and rebuilds on change
export NO_MKDOCS_2_WARNING := 1
docs: $(VENV)/.installed
	$(PY) docs/generate.py
	$(VENV)/bin/mkdocs build --strict

docs-serve: $(VENV)/.installed
	$(PY) docs/generate.py
	$(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:8000

bench: $(VENV)/.installed
	$(PY) benchmarks/layers.py

clean-venv:
	rm -rf $(VENV)
