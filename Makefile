# Two entry points: `make run` (the workflow on the default preset) and `make test`.
# Both create the virtual environment .venv on first use.
VENV ?= .venv
PYTHON ?= python3
CORES ?= all
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test lint clean rehearse gpu-check

run: $(VENV)/.installed
	snakemake --cores $(CORES) all

test: $(VENV)/.installed
	python -m pytest

# The sd15 preset on stand-ins (`dspo standins`: real architectures and file formats, random
# weights), every rule of its DAG, offline on CPUs. STANDINS=/path keeps the ~20 GB of
# stand-ins elsewhere (./standins then links there); they are written when absent.
STANDINS ?= standins
REHEARSAL ?= config/presets/sd15.yaml config/presets/rehearsal.yaml
REHEARSE_CORES ?= 2
export HF_HUB_OFFLINE := 1

rehearse: $(VENV)/.installed standins/standins.json
	dspo standins --out standins --skip-existing
	snakemake --cores $(REHEARSE_CORES) all --configfile $(REHEARSAL)

# A few steps of the SD1.5 stand-in at 512 px in bf16 on one CUDA GPU (fails at once without).
gpu-check: $(VENV)/.installed standins/standins.json
	dspo standins --out standins --skip-existing
	timeout 480 python -m dspo.gpucheck --standins standins

standins/standins.json:
	if [ "$(STANDINS)" != standins ]; then mkdir -p "$(STANDINS)" && ln -sfn "$(abspath $(STANDINS))" standins; fi
	dspo standins --out standins --skip-existing

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
