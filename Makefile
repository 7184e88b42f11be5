# radimagenet: `make demo` runs the whole chain on this machine; `make test` runs every test.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
export RADIMAGENET_HOME ?= $(CURDIR)/.radimagenet

.PHONY: install demo test test-fast lint bench clean stack-up stack-down

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all]'
	touch $(STAMP)

install: $(STAMP)

# `make demo OBJECTIVE=dino` (or mae) also pretrains self-supervised on an unlabelled archive and compares it
demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" OBJECTIVE="$(OBJECTIVE)" bash pipelines/demo.sh

test: $(STAMP)
	$(PY) -m ruff check platform tests benchmarks pipelines
	$(PY) -m pytest

# the inner loop: every test that needs no server (under 2 minutes on 2 cores)
test-fast: $(STAMP)
	$(PY) -m ruff check platform tests benchmarks pipelines
	$(PY) -m pytest -m "not integration and not e2e" -q

lint: $(STAMP)
	$(PY) -m ruff check platform tests benchmarks pipelines

bench: $(STAMP)
	$(PY) benchmarks/ingest.py
	$(PY) benchmarks/loader.py
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/train_loop.py
	$(PY) benchmarks/bootstrap.py

stack-up: $(STAMP)
	$(VENV)/bin/radimagenet stack up

stack-down: $(STAMP)
	$(VENV)/bin/radimagenet stack down

clean:
	-$(VENV)/bin/radimagenet stack down
	rm -rf .radimagenet .pytest_cache .ruff_cache
