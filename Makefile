# The kit's three entry points. Each creates .venv on first use and installs into it.
#   make demo   MAP vs dense VI vs SSVI vs static mask (+ tempered dense VI) on the embedded MNIST subset
#               (~2.5 min on 2 cores)
#   make test   every test and every notebook (nbval)
#   make lab    JupyterLab on the notebooks
# TORCH is the torch requirement installed first, so that pip never swaps in another build
# (e.g. TORCH='torch>=2.4,<2.14' or a CUDA build of your choice); the default is the CPU-friendly pin.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test lab lint clean figures exercises

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.core: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.core
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

$(VENV)/.lab: $(VENV)/.core
	$(BIN)/python -m pip install -q -e ".[lab]"
	touch $@

demo: $(VENV)/.core
	$(BIN)/python -m ssvi_lite demo --out runs/demo --overwrite

test: $(VENV)/.dev
	MPLBACKEND=Agg OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadfile --nbval-lax $(PYTEST_ARGS) tests notebooks

lint: $(VENV)/.dev
	$(BIN)/python -m ruff check ssvi_lite tests benchmarks scripts

exercises: $(VENV)/.dev
	$(BIN)/python scripts/make_exercises.py

figures: $(VENV)/.core
	MPLBACKEND=Agg $(BIN)/python scripts/make_figures.py

lab: $(VENV)/.lab
	$(BIN)/python -m jupyter lab notebooks

clean:
	rm -rf $(VENV) runs .pytest_cache
