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

# runtime install (stamp is rebuilt when the project's dependencies change)
$(VENV)/.installed: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP) install -q -c constraints.txt -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP) install -q -c constraints.txt -e ".[dev]"
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
