# Two commands do all the set-up on a fresh machine:
#   make hello-world   installs everything, then runs the demo on the embedded broker
#   make test          installs everything, then runs the whole test suite (broker tests included)
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install hello-world test eval bench

install:
	# Debian's Chromium for the browser test (Playwright drives it; it never downloads a browser).
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
	# torch first, pinned: these machines hold its CPU build; a bare `torch` pulls GBs of CUDA wheels.
	$(PIP) install --quiet --disable-pip-version-check torch==2.13.0
	$(PIP) install --quiet --disable-pip-version-check -e '.[test]'

hello-world: install
	$(PYTHON) -m streams.cli hello-world $(ARGS)

test: install
	$(PYTHON) -m pytest $(ARGS)

eval: install
	$(PYTHON) -m streams.cli eval --beir ../shared/data/scifact $(ARGS)

bench: install
	$(PYTHON) benchmarks/ingest.py
	$(PYTHON) benchmarks/query.py
	$(PYTHON) benchmarks/restore.py
