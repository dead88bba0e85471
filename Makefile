# MobileNetV3 from data to a served classifier. `make help` lists the targets.
# Override any variable on the command line: make export CHECKPOINT=runs/x BUNDLE=bundles/x
# A variable left empty here is passed on only when set: its default lives in the program it
# configures (the service's settings.py, mbv3's atc.py, the recipe's YAML, compose.yaml).
PYTHON     ?= python3
VENV       ?= .venv
CHECKPOINT ?= runs/init
BUNDLE     ?= bundles/mbv3
IMAGES     ?=
BENCH_DIR  ?= build/bench
DATA       ?= data/tfrecords
RUN        ?= runs/mbv3
RECIPE     ?= digits-cpu
DEMO_DIR   ?= build/digits
MODEL      ?=
# `make om` (ATC in the convert container, no card needed): SOC_VERSION is the serving chip's
# (Ascend310, Ascend310P3, ...); empty = mbv3 om's default, the chip ASCEND_CHIP names (below; compose
# passes it on), never the converting host's (the container has no npu-smi); profiles: DEFAULT_PROFILES
SOC_VERSION ?=
PROFILES   ?=
# who owns the model.om and model.json that `make om` writes into BUNDLE
CONVERT_USER ?= $(shell id -u):$(shell id -g)
# the host's Ascend card, /dev/davinci$(DEVICE), that `make infer` and `make finetune-npu` mount
# (empty = compose.yaml's default); inside the container it is the only card, so CANN numbers it 0
DEVICE     ?=
# several host chips for `make infer` (e.g. 0,1,2,3): one service, one worker per chip
DEVICES    ?=
# `make infer ASCEND_RUNTIME=1`: the chips through the Ascend Docker Runtime (docker/compose.ascend-runtime.yaml)
ASCEND_RUNTIME ?=
RUNS       ?= runs
GPU_RECIPE ?= gpu-4p
NPU_RECIPE ?= npu-finetune
# the checkpoint finetune-npu starts from, as a path inside the container (RUNS is mounted at /runs);
# empty = the recipe's train.init_from (npu-finetune.yaml: train-gpu's checkpoint under /runs/gpu)
INIT_FROM  ?=
# who owns what train-gpu writes into RUNS
TRAIN_USER ?= $(shell id -u):$(shell id -g)
# finetune-npu's user: empty = the image's uid 10001 in group HwHiAiUser; NPU_USER=root if the driver refuses it
NPU_USER   ?=
# The serving chip: 310 (Atlas 300I) or 310P3 (Atlas 300I Pro / 300V Pro), the keys of model/mbv3/atc.py's
# CHIPS; empty = DEFAULT_CHIP there (read, not copied). It picks, together, the infer image's base
# (ASCEND_INFER_BASE_<chip> below; ASCEND_INFER_BASE_IMAGE=... overrides it), `make om`'s --soc_version
# (mbv3 om reads ASCEND_CHIP) and, on Kubernetes, deploy/overlays/ascend310 or ascend310p.
ASCEND_CHIP ?=
# 310: Huawei's nnrt inference image, built locally from Ascend/ascend-docker-image (Dockerfile/latest/ascend-infer;
# its README tags it ascend-infer:<a tag of your choosing>); 310P3: Ascend/cann-container-image's 310p toolkit image
# (cann/8.2.rc1-310p-ubuntu22.04-py3.11, published as ascendai/cann and quay.io/ascend/cann). docs/containers.md.
ASCEND_INFER_BASE_310 = ascend-infer:latest
ASCEND_INFER_BASE_310P3 = ascendai/cann:8.2.rc1-310p-ubuntu22.04-py3.11
ASCEND_INFER_BASE_IMAGE ?=
serving_chip = $(or $(ASCEND_CHIP),$(shell sed -n 's/^DEFAULT_CHIP = "\([^"]*\)".*/\1/p' model/mbv3/atc.py))
infer_base = $(or $(ASCEND_INFER_BASE_IMAGE),$(ASCEND_INFER_BASE_$(serving_chip)),$(error ASCEND_CHIP=$(serving_chip): \
  no infer image base for it; the chips are model/mbv3/atc.py's CHIPS))
# what the Ascend targets hand compose (and `make om` hands mbv3 om): the chip only when set, the base always
ascend_chip_env = $(if $(ASCEND_CHIP),ASCEND_CHIP=$(ASCEND_CHIP)) ASCEND_INFER_BASE_IMAGE=$(infer_base)
# the host's HwHiAiUser gid, which owns /dev/davinci*: given to the Ascend containers (compose's default: 1000)
ASCEND_GID ?= $(shell getent group HwHiAiUser 2>/dev/null | cut -d: -f3)
COMPOSE    ?= docker compose
# `make serve`: empty = the service's defaults (settings.py); `make serve-container` and `make infer`
# publish on 127.0.0.1:PORT (empty = compose.yaml's default)
HOST       ?=
PORT       ?=
UP_FLAGS   ?=

PY   := $(VENV)/bin/python
MBV3 := $(VENV)/bin/mbv3

.DEFAULT_GOAL := help
.PHONY: help venv test test-containers engine standins serve-container lint init train eval export om predict demo serve images train-gpu finetune-npu infer bench bench-bundle bench-onnx bench-train bench-serve bench-readme bench-shapes bench-ab bench-devices clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-15s %s\n", $$1, $$2}'

venv: $(VENV)/.installed ## create .venv: pinned CPU stack (tensorflow-cpu, tf2onnx, onnxruntime), mbv3, the service
$(VENV)/.installed: requirements/*.txt model/pyproject.toml services/classifier/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/dev.txt -e model -e services/classifier
	touch $@

test: venv ## run the test suite (what CI runs)
	$(PY) -m pytest

lint: venv ## Python 3.7 syntax check of mbv3 (vermin) and ruff
	$(VENV)/bin/vermin -t=3.7- --violations --no-tips --eval-annotations model/mbv3
	$(VENV)/bin/ruff check model services docker deploy testsupport

init: venv ## write a randomly initialised step-0 checkpoint into CHECKPOINT
	$(MBV3) init --model-dir $(CHECKPOINT)

train: venv ## train RECIPE on DATA into RUN (resumes; override with SET="train.steps=100 ...")
	$(MBV3) train --config $(RECIPE) --data $(DATA) --model-dir $(RUN) $(foreach s,$(SET),--set $(s))

eval: venv ## top-1/top-5 of RUN's latest checkpoint on DATA's validation split
	$(MBV3) eval --checkpoint $(RUN) --data $(DATA)

demo: venv ## the whole path on scikit-learn's digits (about a minute): images -> TFRecords -> train -> eval -> bundles/digits -> its eval
	$(PY) -c "from mbv3 import digits; digits.write_digits_folder('$(DEMO_DIR)/images', size=32)"
	$(MBV3) data build --images $(DEMO_DIR)/images --output $(DEMO_DIR)/data --val-split 0.2
	$(MBV3) train --config digits-demo --data $(DEMO_DIR)/data --model-dir $(DEMO_DIR)/run
	$(MBV3) eval --checkpoint $(DEMO_DIR)/run --data $(DEMO_DIR)/data
	$(MBV3) export --checkpoint $(DEMO_DIR)/run --output bundles/digits
	$(MBV3) eval --bundle bundles/digits --data $(DEMO_DIR)/data

export: venv ## export CHECKPOINT as the model bundle BUNDLE (ONNX + frozen graph + model.json + labels)
	$(MBV3) export --checkpoint $(CHECKPOINT) --output $(BUNDLE)

om: ## BUNDLE -> model.om for the serving chip with ATC in the convert container (CANN toolkit; AIPP=1 folds normalisation in), recorded in model.json
	BUNDLE=$(abspath $(BUNDLE)) $(if $(ASCEND_CHIP),ASCEND_CHIP=$(ASCEND_CHIP)) \
	  $(COMPOSE) --profile convert run --rm --user $(CONVERT_USER) convert \
	  om --bundle /bundle $(if $(SOC_VERSION),--soc-version $(SOC_VERSION)) \
	  $(if $(PROFILES),--batch-profiles $(PROFILES)) $(if $(AIPP),--aipp)

predict: venv ## top-5 classes of IMAGES with BUNDLE (ONNX Runtime)
	$(MBV3) predict --bundle $(BUNDLE) $(IMAGES)

serve: venv ## the classifier on HOST:PORT: MODEL (bundle or checkpoint), else the official ImageNet checkpoint, else the digits demo
	MODEL_DIR="$$($(MBV3) default-bundle --model "$(MODEL)")" && \
	  export MODEL_DIR HOST="$(HOST)" PORT="$(PORT)" && exec $(PY) -m classifier

serve-container: venv ## the same model as `make serve`, in the infer-cpu container (docker compose up infer-cpu) on 127.0.0.1:PORT
	BUNDLE="$$($(MBV3) default-bundle --model "$(MODEL)")" PORT=$(PORT) $(COMPOSE) up $(UP_FLAGS) infer-cpu

bench: bench-onnx bench-train bench-serve bench-devices ## every benchmark

bench-bundle: venv ## the benchmarks' bundle: V3_LARGE 224, random weights, 11 digit classes, bf16 and int8 variants recorded
	$(PY) services/classifier/benchmarks/bench_bundle.py --bundle $(BENCH_DIR)/bundle

bench-onnx: bench-bundle ## ONNX Runtime latency of V3_LARGE at batch 1 and 8, next to TensorFlow on the same graph
	$(MBV3) benchmark --bundle $(BENCH_DIR)/bundle --batch 1 8 --json $(BENCH_DIR)/onnx-latency.json

bench-train: venv ## training images/s of V3_LARGE 224 batch 32 vs keras MobileNetV3Large.fit, same run
	$(PY) model/benchmarks/train_throughput.py --steps 10 --json $(BENCH_DIR)/train-throughput.json

bench-serve: bench-bundle ## the service at f32, bf16, int8 over HTTP at 1, 8, 32 clients vs the engine alone, in process, the ceiling, both CPU backends and Python peers
	$(PY) services/classifier/benchmarks/serve_bench.py --bundle $(BENCH_DIR)/bundle --compare-backends \
	  --json $(BENCH_DIR)/serve.json --plot $(BENCH_DIR)/serve.png

# the serve.json files of several `make bench-serve` runs (copy each run's serve.json aside, e.g. serve-1.json)
BENCH_JSONS ?= $(wildcard $(BENCH_DIR)/serve*.json)
bench-readme: venv ## rewrite README's bench-serve rows (between its bench-serve markers) from BENCH_JSONS: medians, spread, load
	@test -n "$(BENCH_JSONS)" || { echo "no serve*.json in $(BENCH_DIR): run make bench-serve first"; exit 2; }
	$(PY) services/classifier/benchmarks/serve_report.py --readme README.md $(BENCH_JSONS)

bench-shapes: bench-bundle ## OpenVINO batch 8, static vs dynamic shapes, per precision, and the memory a static model adds
	$(PY) services/classifier/benchmarks/batch_shapes.py --bundle $(BENCH_DIR)/bundle --json $(BENCH_DIR)/shapes.json

bench-ab: bench-bundle ## A/B a service setting: make bench-ab B="ONE_HOP_MAX_PIXELS=0" (two services side by side, alternating rounds)
	@test -n "$(B)" || { echo 'usage: make bench-ab B="KEY=VALUE ..." [A="KEY=VALUE ..."]'; exit 2; }
	$(PY) services/classifier/benchmarks/ab_settings.py $(B) $(foreach kv,$(A),--a $(kv)) --bundle $(BENCH_DIR)/bundle \
	  --json $(BENCH_DIR)/ab.json

bench-devices: venv ## service throughput on 1, 2, 4 simulated Ascend devices (pyACL simulator), 32 clients, as ratios
	$(PY) services/classifier/benchmarks/device_scaling.py --json $(BENCH_DIR)/devices.json --plot $(BENCH_DIR)/devices.png

images: ## build the five images (infer-cpu, infer-ascend for ASCEND_CHIP, convert-ascend, train-gpu, train-npu) with docker compose
	$(ascend_chip_env) $(COMPOSE) --profile ascend --profile convert --profile train build

engine: ## start a private Docker engine (root, docker.io); prints the DOCKER_HOST to export
	docker/engine.sh start

standins: ## build the images on local stand-ins for their registry bases, the Ascend ones on both CANN layouts (no registry needed; see docker/standins)
	DOCKER_HOST="$$(docker/engine.sh start)" $(PY) docker/standins/build.py

test-containers: venv ## only the container tests: the images built on stand-ins, run on the private engine
	DOCKER_HOST="$$(docker/engine.sh start)" MBV3_CONTAINER_TESTS=1 $(PY) -m pytest docker/tests/test_containers.py

train-gpu: ## GPU_RECIPE (the published one) on this host's NVIDIA GPUs in the train-gpu container: DATA -> RUNS/gpu
	DATA=$(abspath $(DATA)) RUNS=$(abspath $(RUNS)) $(COMPOSE) --profile train run --rm --user $(TRAIN_USER) train-gpu \
	  train --config $(GPU_RECIPE) --data /data --model-dir /runs/gpu $(foreach s,$(SET),--set $(s))

finetune-npu: ## NPU_RECIPE from INIT_FROM on an Ascend 910 in the train-npu container: DATA -> RUNS/npu
	DATA=$(abspath $(DATA)) RUNS=$(abspath $(RUNS)) DEVICE=$(DEVICE) $(if $(ASCEND_GID),ASCEND_GID=$(ASCEND_GID)) \
	  $(COMPOSE) --profile train run --rm $(if $(NPU_USER),--user $(NPU_USER)) finetune-npu \
	  train --config $(NPU_RECIPE) --data /data --model-dir /runs/npu $(if $(INIT_FROM),--set train.init_from=$(INIT_FROM)) \
	  $(foreach s,$(SET),--set $(s))

infer: ## the Ascend service (ASCEND_CHIP's image) on 127.0.0.1:PORT for BUNDLE (with model.om from `make om`) on card DEVICE, or chips DEVICES=0,1,..
ifneq ($(ASCEND_RUNTIME),)
	BUNDLE=$(abspath $(BUNDLE)) DEVICES=$(DEVICES) PORT=$(PORT) $(if $(ASCEND_GID),ASCEND_GID=$(ASCEND_GID)) \
	  $(ascend_chip_env) COMPOSE_FILE=compose.yaml:docker/compose.ascend-runtime.yaml $(COMPOSE) up infer
else ifneq ($(DEVICES),)
	mkdir -p build && $(PYTHON) docker/infer_devices.py "$(DEVICES)" > build/compose.infer-devices.yaml
	BUNDLE=$(abspath $(BUNDLE)) PORT=$(PORT) $(if $(ASCEND_GID),ASCEND_GID=$(ASCEND_GID)) $(ascend_chip_env) \
	  COMPOSE_FILE=compose.yaml:build/compose.infer-devices.yaml $(COMPOSE) up infer
else
	BUNDLE=$(abspath $(BUNDLE)) DEVICE=$(DEVICE) PORT=$(PORT) $(if $(ASCEND_GID),ASCEND_GID=$(ASCEND_GID)) $(ascend_chip_env) \
	  $(COMPOSE) up infer
endif

clean: ## remove build outputs (not .venv, runs/ or bundles/)
	rm -rf build .pytest_cache
