# tsr-platform: every target bootstraps what it needs (venv, tools) idempotently.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
TOOLS := $(CURDIR)/.tools/bin
# MinIO's community edition ships as source; this pseudo-version is the commit we test against.
MINIO_VERSION ?= v0.0.0-20260212201848-7aac2a2c5b7c
DEMO_EPOCHS ?= 18
DEMO_TRACKS ?= 0
DEMO_BATCH ?= 256
DEMO_MIN_ACCURACY ?= 0.95
COMPONENT_IMAGE ?= ghcr.io/tsr-platform/tsr-components:0.1.0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help venv tools prometheus monitoring bench-train bench-serving demo test lint typecheck compile bench clean clean-state

help:
	@echo "make demo   - run the whole platform locally (MinIO, pipeline, registry, predictor, requests)"
	@echo "make test   - the test suite (what CI runs)"
	@echo "make bench  - bench-train (default config on all data: accuracy, time) + bench-serving"
	@echo "make bench-serving - predictor throughput with and without batching (wrk, concurrency 32)"
	@echo "make monitoring - regenerate manifests/monitoring/ (alert rules, dashboard, monitors)"
	@echo "make compile- regenerate pipelines/compiled/tsr_training.yaml"

$(VENV)/.stamp: pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip==26.3
	$(PY) -m pip install -q -c requirements.lock -e '.[dev]'
	@touch $@

venv: $(VENV)/.stamp

$(TOOLS)/minio:
	@mkdir -p $(TOOLS)
	@if command -v go >/dev/null; then \
	  echo "building MinIO $(MINIO_VERSION) with go install (first time only, a few minutes)"; \
	  GOBIN=$(TOOLS) CGO_ENABLED=0 GOFLAGS=-trimpath go install github.com/minio/minio@$(MINIO_VERSION); \
	elif command -v minio >/dev/null; then \
	  ln -sf "$$(command -v minio)" $@; \
	else \
	  echo "WARNING: neither Go nor minio found: tsr falls back to a local directory store"; \
	fi

# Prometheus + promtool from Debian's package (alert rule checks, the Prometheus integration test,
# the demo's scrape). Best effort here; `make test` then insists on promtool being there.
prometheus:
	@if command -v prometheus >/dev/null && command -v promtool >/dev/null; then :; \
	elif command -v apt-get >/dev/null; then \
	  sudo=$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ); \
	  echo "installing Debian's prometheus package (prometheus, promtool)"; \
	  $$sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 || \
	  { $$sudo apt-get update -qq && $$sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } || \
	  echo "WARNING: could not install prometheus (needs root or sudo): monitoring checks will fail"; \
	else \
	  echo "WARNING: no apt-get: install prometheus + promtool yourself for the monitoring checks"; \
	fi

tools: $(TOOLS)/minio prometheus

demo: venv tools
	$(VENV)/bin/tsr demo --epochs $(DEMO_EPOCHS) --max-groups-per-class $(DEMO_TRACKS) \
	  --batch-size $(DEMO_BATCH) --min-accuracy $(DEMO_MIN_ACCURACY)

test: venv tools lint typecheck
	@command -v promtool >/dev/null || { echo "promtool not found: see 'make prometheus'"; exit 1; }
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy tsr components pipelines serving benchmarks

monitoring: venv
	$(PY) -m serving.monitoring

compile: venv
	$(PY) -m pipelines.compile --image $(COMPONENT_IMAGE)

bench: bench-train bench-serving

bench-train: venv
	$(PY) -m benchmarks.train_default

# wrk (Debian's package) drives the predictor: a C load generator leaves the server most of the CPU.
bench-serving: venv
	@command -v wrk >/dev/null || { sudo=$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ); \
	  $$sudo apt-get install -y -qq --no-install-recommends wrk >/dev/null 2>&1 || \
	  { $$sudo apt-get update -qq && $$sudo apt-get install -y -qq --no-install-recommends wrk >/dev/null; }; }
	$(PY) -m benchmarks.serving_throughput

clean-state:
	-$(VENV)/bin/tsr store stop
	rm -rf .state

clean: clean-state
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache
