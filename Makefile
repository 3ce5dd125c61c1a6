# Two entry points: `make run` (the workflow on the default preset) and `make test`.
# Both create the virtual environment .venv on first use.
VENV ?= .venv
PYTHON ?= python3
CORES ?= all
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test durations test-fast test-unit lint clean rehearse gpu-check reward-parity config-doc watch readme-results readme-ai-feedback

run: $(VENV)/.installed
	snakemake --cores $(CORES) all

# The one full gate, on TEST_WORKERS pytest-xdist workers, a test module at a time
# (tests/parallel.py orders the modules; `--no-loadscope-reorder` keeps that order). The
# slowest 30 tests' times close the output; every test's time goes to .gate-durations.json,
# which `make durations` keeps as tests/durations.json (the plan and the loops select by it).
TEST_WORKERS ?= 2
test: $(VENV)/.installed
	python -m pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder \
		--durations=30 --record-durations .gate-durations.json

durations: .gate-durations.json
	cp .gate-durations.json tests/durations.json

# The edit-test loops (docs/development.md; markers applied by tests/conftest.py from
# tests/durations.json): test-fast leaves out the tests that run Snakemake jobs or the
# system's tools and those measured over 2 s; test-unit runs the tests measured at 0.1 s or
# less that build no DAG.
test-fast: $(VENV)/.installed
	python -m pytest -m "not workflow and not system and not slow"

test-unit: $(VENV)/.installed
	python -m pytest -m unit

# In a second terminal while `make run` runs: each running job's latest progress line,
# refreshed every WATCH seconds.
WATCH ?= 10
watch: $(VENV)/.installed
	python -m dspo.core.progress --watch $(WATCH)

# The sd15 preset on stand-ins (`dspo standins`: real architectures and file formats, random
# weights), every rule of its DAG, offline on CPUs; each job's peak memory is written to
# results/bench/memory_rehearsal.csv and each stage's disk to results/bench/disk_rehearsal.csv
# (docs/cluster.md). STANDINS=/path keeps the ~17 GB of
# stand-ins elsewhere (./standins then links there); they are written when absent.
# Other DAGs on the same stand-ins (docs/cluster.md, "Other rehearsals"):
#   SDXL (after `dspo standins --out standins --only sdxl`):
#     REHEARSAL="config/presets/sd15.yaml config/presets/sdxl.yaml config/presets/rehearsal.yaml config/presets/rehearsal_sdxl.yaml"
#   two rounds of AI feedback (config/presets/rehearsal-ai-feedback.yaml says why this order):
#     REHEARSAL="config/presets/sd15.yaml config/presets/rehearsal.yaml config/presets/sd15-ai-feedback.yaml config/presets/rehearsal-ai-feedback.yaml"
STANDINS ?= standins
REHEARSAL ?= config/presets/sd15.yaml config/presets/rehearsal.yaml
REHEARSE_CORES ?= 2
export HF_HUB_OFFLINE := 1

rehearse: $(VENV)/.installed standins/standins.json
	dspo standins --out standins --skip-existing
	dspo bench memory --out results/bench/memory_rehearsal.csv -- \
		snakemake --cores $(REHEARSE_CORES) all --configfile $(REHEARSAL)
	dspo disk --configfile $(REHEARSAL) --out results/bench/disk_rehearsal.csv

# A few steps of the SD1.5 stand-in at 512 px in bf16 on one CUDA GPU (fails at once without).
gpu-check: $(VENV)/.installed standins/standins.json
	dspo standins --out standins --skip-existing
	timeout 480 python -m dspo.bench.gpucheck --standins standins

standins/standins.json:
	if [ "$(STANDINS)" != standins ]; then mkdir -p "$(STANDINS)" && ln -sfn "$(abspath $(STANDINS))" standins; fi
	dspo standins --out standins --skip-existing

# After `make run`: keep the run's summary as docs/run_summary.json and rewrite the README's
# results block from it (tests/evaluation/test_summary.py checks that the two agree). RERUN=other.json
# RERUN_LABEL="with ..." adds how far the same config moved when run another way.
SUMMARY ?= results/summary.json
RERUN ?=
RERUN_LABEL ?=
readme-results: $(VENV)/.installed
	if [ "$(SUMMARY)" != docs/run_summary.json ]; then cp "$(SUMMARY)" docs/run_summary.json; fi
	dspo readme-results --input docs/run_summary.json --out README.md \
		$(if $(RERUN),--rerun "$(RERUN)" --rerun-label "$(RERUN_LABEL)")

# After a run of config/presets/ai-feedback.yaml: keep its summary as
# docs/ai_feedback_summary.json and rewrite the README's AI-feedback block from it
# (tests/evaluation/test_rounds.py checks that the two agree).
AI_FEEDBACK_SUMMARY ?= results/summary.json
readme-ai-feedback: $(VENV)/.installed
	if [ "$(AI_FEEDBACK_SUMMARY)" != docs/ai_feedback_summary.json ]; then cp "$(AI_FEEDBACK_SUMMARY)" docs/ai_feedback_summary.json; fi
	dspo readme-results --rounds --input docs/ai_feedback_summary.json --out README.md

# config/README.md from the schema's descriptions and the default config.
config-doc: $(VENV)/.installed
	python -m dspo.config.doc

lint: $(VENV)/.installed
	ruff check dspo tests && ruff format --check dspo tests && snakefmt --check Snakefile rules && snakemake --lint

# torch and torchvision are installed first and on their own: with them present, the
# project's `torch>=2.3` needs nothing more (on a CPU machine, pip's default torch is a CUDA
# build, and torchvision must match torch's build).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch torchvision
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[workflow,test]"
	touch $@

# Reward scores vs the original packages (docs/rewards.md): builds their own environment
# once, then random-initialised models with them; PARITY_SCALE=tiny is CI's smaller check.
PARITY ?= build/reward-parity
PARITY_SCALE ?= full
reward-parity: $(VENV)/.installed $(PARITY)/venv/.installed
	python -m dspo.rewards.parity --work $(PARITY) --python $(PARITY)/venv/bin/python \
		--scale $(PARITY_SCALE) $(if $(filter full,$(PARITY_SCALE)),--doc docs/rewards.md)

$(PARITY)/venv/.installed: scripts/reward_parity/make_env.sh scripts/reward_parity/requirements.txt
	bash scripts/reward_parity/make_env.sh $(PARITY)/venv
	touch $@

clean:
	rm -rf results/* .snakemake
	git checkout results/README.md
