# Two entry points: `make run` (the workflow on the default preset) and `make test`.
# Both create the virtual environment .venv on first use.
VENV ?= .venv
PYTHON ?= python3
CORES ?= all
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test lint clean

run: $(VENV)/.installed
	snakemake --cores $(CORES) all

test: $(VENV)/.installed
	python -m pytest

lint: $(VENV)/.installed
	ruff check dspo tests && ruff format --check dspo tests && snakemake --lint

# torch is installed first and on its own: with torch already present, the project's
# `torch>=2.3` needs nothing more (on a CPU machine, pip's default torch is a CUDA build).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[workflow,test]"
	touch $@

clean:
	rm -rf results/* .snakemake
	git checkout results/README.md
