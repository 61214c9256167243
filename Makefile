# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
TOOLS := .tools
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TOOLS_STAMP := $(TOOLS)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test lint unit tooling bench bench-tokenize bench-calibration bench-saturation bench-layer bench-estimate bench-pipeline bench-cost bench-large bench-intake clean setup

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[dev]"
	touch $@

# The template tools live in their own venv: installed next to sagemaker and moto they pin each other back.
$(TOOLS_STAMP):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q --upgrade pip
	$(TOOLS)/bin/pip install -q aws-sam-cli cfn-lint checkov
	touch $@

setup: $(STAMP) $(TOOLS_STAMP)

## make run: run examples/prompts.jsonl through the embedded local stack (moto + TGI emulator)
run: $(STAMP)
	$(VENV)/bin/sagebatch run examples/prompts.jsonl --out out/prompts

## make lint: ruff (lint + format check), mypy (strict on the domain, the ports and the use cases), import contracts
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	PYTHONPATH=shared $(VENV)/bin/lint-imports --no-cache

## make test: install everything, lint, and run the whole suite including cfn-lint, sam validate --lint, sam build, checkov
test: $(STAMP) $(TOOLS_STAMP) lint
	PATH="$(CURDIR)/$(TOOLS)/bin:$$PATH" $(PY) -m pytest -n 2 --dist loadfile -q

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

## make bench: all three benchmarks (about 5 min on 2 cores); or one at a time with the targets below
bench: bench-tokenize bench-calibration bench-saturation

bench-tokenize: $(STAMP)
	$(PY) bench/tokenize.py | tee bench/results/tokenize.txt

bench-calibration: $(STAMP)
	$(PY) bench/calibration.py --check

bench-saturation: $(STAMP)
	$(PY) bench/saturation.py

## make bench-estimate: `sagebatch estimate` against `sagebatch run --perf` on the four workloads (~1.5 min)
bench-estimate: $(STAMP)
	$(PY) bench/estimate.py

## make bench-pipeline: the whole pipeline (as deployed, and `sagebatch run`) against the best fixed client (~9 min)
bench-pipeline: $(STAMP)
	$(PY) bench/pipeline.py

## make bench-cost: AWS requests, Lambda GB-s and plumbing $ per 1,000 records, next to the endpoint's cost (~3 min)
bench-cost: $(STAMP)
	$(PY) bench/cost.py

## make bench-large: intake, workers and assembly of 100k and 1M records on the fakes, plus `sagebatch run` at 10k (~6 min)
bench-large: $(STAMP)
	$(PY) bench/large_job.py

## make bench-intake: intake of 1M and 10M lines on the fakes (records/s, memory; ~1 min)
bench-intake: $(STAMP)
	$(PY) bench/intake.py

## make bench-layer: the Lambda layer's unzipped size and each handler's import time (sam build + 30 imports, ~1 min)
bench-layer: $(STAMP) $(TOOLS_STAMP)
	PATH="$(CURDIR)/$(TOOLS)/bin:$$PATH" $(PY) bench/layer.py | tee bench/results/layer.txt

clean:
	rm -rf $(VENV) $(TOOLS) .aws-sam out .pytest_cache
