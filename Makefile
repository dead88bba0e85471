# MobileNetV3 from data to a served classifier. `make help` lists the targets.
# Override any variable on the command line: make export CHECKPOINT=runs/x BUNDLE=bundles/x
PYTHON     ?= python3
VENV       ?= .venv
CHECKPOINT ?= runs/init
BUNDLE     ?= bundles/mbv3
IMAGES     ?=
BENCH_DIR  ?= build/bench

PY   := $(VENV)/bin/python
MBV3 := $(VENV)/bin/mbv3

.DEFAULT_GOAL := help
.PHONY: help venv test lint init export predict bench bench-onnx clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-11s %s\n", $$1, $$2}'

venv: $(VENV)/.installed ## create .venv: pinned CPU stack (tensorflow-cpu, tf2onnx, onnxruntime) + mbv3
$(VENV)/.installed: requirements/cpu.txt requirements/dev.txt model/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/dev.txt -e model
	touch $@

test: venv ## run the test suite (what CI runs)
	$(PY) -m pytest

lint: venv ## Python 3.7 syntax check of mbv3 (vermin) and ruff
	$(VENV)/bin/vermin -t=3.7- --violations --no-tips --eval-annotations model/mbv3
	$(VENV)/bin/ruff check model

init: venv ## write a randomly initialised step-0 checkpoint into CHECKPOINT
	$(MBV3) init --model-dir $(CHECKPOINT)

export: venv ## export CHECKPOINT as the model bundle BUNDLE (ONNX + frozen graph + model.json + labels)
	$(MBV3) export --checkpoint $(CHECKPOINT) --output $(BUNDLE)

predict: venv ## top-5 classes of IMAGES with BUNDLE (ONNX Runtime)
	$(MBV3) predict --bundle $(BUNDLE) $(IMAGES)

bench: bench-onnx ## every benchmark

bench-onnx: venv ## ONNX Runtime latency of V3_LARGE at batch 1 and 8, next to TensorFlow on the same graph
	@test -f $(BENCH_DIR)/bundle/model.json || { set -x; rm -rf $(BENCH_DIR)/ckpt && \
	  $(MBV3) init --model-dir $(BENCH_DIR)/ckpt && \
	  $(MBV3) export --checkpoint $(BENCH_DIR)/ckpt --output $(BENCH_DIR)/bundle; }
	$(MBV3) benchmark --bundle $(BENCH_DIR)/bundle --batch 1 8 --json $(BENCH_DIR)/onnx-latency.json

clean: ## remove build outputs (not .venv, runs/ or bundles/)
	rm -rf build .pytest_cache
