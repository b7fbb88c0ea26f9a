# taxi-mlops: one model's life in production — train, register, serve, monitor.
# `make help` lists the targets.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
UV ?= $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
COMPONENTS := training transformer monitoring
ENVS := $(addsuffix /pyproject.toml,$(COMPONENTS) stack tests)
STACK := stack/.venv/bin/python -m stack
PYTEST_ARGS ?=

##@ General

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make \033[36m<target>\033[0m\n"} \
		/^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2 } \
		/^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ On one machine (no Kubernetes, no Docker)

.PHONY: demo
demo: setup ## Run the whole loop locally: S3, MLflow, train, serve, replay rides, drift job, summary (DATA_DIR=… to work offline)
	$(STACK) demo

.PHONY: up
up: setup ## Start the local stack (S3, MLflow, trained model, predictor, transformer) and leave it running
	$(STACK) up

.PHONY: traffic
traffic: setup ## Replay rides of a month through the transformer on localhost (local stack or port-forward)
	$(STACK) traffic --url http://localhost:$${TRANSFORMER_PORT:-8080}

.PHONY: down
down: ## Stop the local stack started by `make up`
	@if [ -x stack/.venv/bin/python ]; then $(STACK) down; else echo "nothing to stop"; fi

##@ Development

.PHONY: setup
setup: ## Install uv if missing and sync every environment from its lock file
	@$(UV) --version >/dev/null 2>&1 || { echo "uv not found: installing it with pip"; $(PYTHON) -m pip install --quiet uv; }
	@for project in $(dir $(ENVS)); do \
		echo "==> syncing $$project"; \
		$(UV) sync --quiet --frozen --project $$project; \
	done

.PHONY: test
test: setup ## Run the whole test suite (unit tests per component, then the black-box tests)
	@for component in $(COMPONENTS); do \
		if [ -d $$component/tests ]; then \
			echo "==> unit tests: $$component"; \
			$$component/.venv/bin/python -m pytest -q $$component/tests; \
		fi; \
	done
	@echo "==> integration tests"
	cd tests && .venv/bin/python -m pytest $(PYTEST_ARGS)

.PHONY: bench
bench: setup ## Run the benchmarks and print their tables (results also in bench/results/)
	tests/.venv/bin/python bench/serving.py
	tests/.venv/bin/python bench/drift.py
