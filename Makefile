# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel of torch must be installed first: any other torch spec would pull the CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test venv dev-venv benchmark clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"

venv: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .

dev-venv: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"

demo: venv
	$(BIN)/python -m mask2former.cli.main demo

test: dev-venv
	$(BIN)/python -m pytest tests

benchmark: dev-venv
	MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736 $(BIN)/python benchmarks/forward.py
	$(BIN)/python benchmarks/forward.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
