.DEFAULT_GOAL := help

# ---- fleet: local processes and Compose checks (deploy/) ----
# The .venv interpreter when there is one, so honcho and uvicorn come from it.
PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
FLEET_TIMEOUT ?= 180

# What the local fleet serves (deploy/fleet.env names the same folder for a
# fleet started without make).
SERVING_MODELS ?= var/models-serving

.PHONY: up down wait compose-check

# The environment overrides deploy/fleet.env, so the fleet serves SERVING_MODELS even when it is changed here.
up: $(SERVING_MODELS)/quantize_report.json ## start the local fleet in the background and wait until every /readyz answers 200
	DETECTOR_MODEL_DIR=$(SERVING_MODELS)/detector DETECTOR_WEARER_MODEL_DIR=$(SERVING_MODELS)/wearer \
		CLASSIFIER_MODELS_DIR=$(SERVING_MODELS)/classifiers $(PYTHON) deploy/fleet.py up --timeout $(FLEET_TIMEOUT)

down: ## stop the local fleet
	$(PYTHON) deploy/fleet.py down

wait: ## wait for a fleet that is starting
	$(PYTHON) deploy/fleet.py wait --timeout $(FLEET_TIMEOUT)

compose-check: ## validate docker-compose.yml without a Docker engine
	$(PYTHON) deploy/check_compose.py
# ---- end fleet ----

# ---- install, models, index, demo, tests ----
VENV ?= .venv
CATEGORIES := top bottom footwear bag eyewear wristwear headwear belt dress
SMALL_CATEGORIES := tie scarf
DETECTOR_EPOCHS ?= 5
CLASSIFIER_EPOCHS ?= 8
INDEX_DIR ?= var/index
MANIFEST ?= var/catalog/manifest.jsonl

DATASETS ?= $(if $(DATASETS_DIR),$(DATASETS_DIR),../shared/datasets)
# Models served as int8 (ONNX Runtime static quantization, QDQ); the others are
# served as committed. Each of these lost at most 1 point of type
# precision@10 to quantization on the held-out split (reports/bench.md).
INT8_MODELS ?= detector wearer top bottom footwear bag eyewear wristwear headwear belt dress tie scarf
MODEL_CARDS := $(shell find models -name card.json)
SPLIT ?= heldout
EVAL_OUT ?= reports
ABLATION_CATEGORIES ?= top
ABLATION_EPOCHS ?= 4

.PHONY: install install-dev models report manifest serving-models index demo test eval ablation bench

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip

# Each install leaves a stamp, so targets that need one pay for pip only
# when a requirements file changed.
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev

$(RUN_STAMP): requirements/run.txt requirements/serve.txt | $(VENV)/bin/python
	$(VENV)/bin/pip install --quiet -r requirements/run.txt
	touch $@

$(DEV_STAMP): requirements/dev.txt requirements/serve.txt requirements/train.txt | $(VENV)/bin/python
	$(VENV)/bin/pip install --quiet -r requirements/dev.txt
	touch $@

install: $(RUN_STAMP) ## serving, the local runner and the demo (no torch)

install-dev: $(DEV_STAMP) ## everything: serving, training and tests

models: install-dev ## retrain every committed model from scratch (about an hour on 2 CPU cores)
	$(VENV)/bin/python -m training.train_detector --epochs $(DETECTOR_EPOCHS) --run-dir runs/detector --out models/detector
	$(VENV)/bin/python -m training.catalog_boxes --detector models/detector --out runs/catalog_boxes.json
	for category in $(CATEGORIES); do \
		$(VENV)/bin/python -m training.train_classifier --category $$category --epochs $(CLASSIFIER_EPOCHS) \
			--run-dir runs/classifier-$$category --out models/classifiers/$$category || exit 1; \
	done
	# tie and scarf have few products: a network without Lite0's last block keeps the model files under 80 MB.
	for category in $(SMALL_CATEGORIES); do \
		$(VENV)/bin/python -m training.train_classifier --category $$category --epochs $(CLASSIFIER_EPOCHS) --last-block 14 \
			--run-dir runs/classifier-$$category --out models/classifiers/$$category || exit 1; \
	done
	$(VENV)/bin/python -m training.train_wearer --run-dir runs/wearer --out models/wearer
	$(VENV)/bin/python -m training.report
	$(VENV)/bin/python -m training.thresholds

report: install-dev ## measure the committed models on the held-out split (reports/models.md, reports/thresholds.md)
	$(VENV)/bin/python -m training.report
	$(VENV)/bin/python -m training.thresholds

$(MANIFEST):
	$(VENV)/bin/python -m services.indexer.adapters --out $(MANIFEST)

manifest: $(MANIFEST) ## write the catalog manifest from fashion-product-images

# Rebuilt whenever a committed model changes; calibration reads DATASETS.
$(SERVING_MODELS)/quantize_report.json: $(MODEL_CARDS) | $(RUN_STAMP)
	rm -rf $(SERVING_MODELS)
	$(VENV)/bin/python -m training.quantize --models models --out $(SERVING_MODELS) --only $(INT8_MODELS) \
		--datasets $(DATASETS) --skip-speed

serving-models: $(SERVING_MODELS)/quantize_report.json ## quantize the committed models into var/models-serving, the models the fleet serves (about 2 minutes on two cores)

index: install $(SERVING_MODELS)/quantize_report.json $(MANIFEST) ## index the demo catalog into var/index with the served models
	$(VENV)/bin/python -m services.indexer --manifest $(MANIFEST) --models $(SERVING_MODELS) --out $(INDEX_DIR)

# The catalog is embedded by the served models, so it is indexed again when they change.
$(INDEX_DIR)/routing.json: $(SERVING_MODELS)/quantize_report.json $(MANIFEST)
	$(MAKE) index

demo: install ## install, index the demo catalog, start the fleet, search street photos, draw a result sheet
	$(MAKE) $(INDEX_DIR)/routing.json
	$(MAKE) up
	$(VENV)/bin/python scripts/demo.py --out var/demo/result_sheet.png
	@echo "The fleet is still running on 127.0.0.1 (gateway on port 8000); stop it with 'make down'."

eval: install-dev $(SERVING_MODELS)/quantize_report.json ## measure search quality of the served models on DATASETS (SPLIT=heldout|all): reports/quality.json and quality.md
	$(VENV)/bin/python -m evaluation --datasets $(DATASETS) --split $(SPLIT) --models $(SERVING_MODELS) --out $(EVAL_OUT)

ablation: install-dev ## train the embedding ablation variants, evaluate them and merge them into reports/quality.* (after make eval)
	$(VENV)/bin/python -m training.ablation --datasets $(DATASETS) --categories $(ABLATION_CATEGORIES) --epochs $(ABLATION_EPOCHS) --out var/ablation
	$(VENV)/bin/python -m evaluation.ablation --datasets $(DATASETS) --split $(SPLIT) --variants var/ablation --out $(EVAL_OUT)

bench: install-dev $(SERVING_MODELS)/quantize_report.json ## measure speed and scaling on this machine: reports/bench.json and bench.md (HNSW_RESULT=FILE reuses an earlier HNSW run, which saves about 20 minutes)
	$(VENV)/bin/python -m benchmarks.run --datasets $(DATASETS) --serving-models $(SERVING_MODELS) $(if $(HNSW_RESULT),--hnsw-result $(HNSW_RESULT))

test: install-dev ## run the test suite (starts its own services; needs Redis on 127.0.0.1:6379)
	$(VENV)/bin/python -m pytest -q
# ---- end install, models, index, demo, tests ----

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | awk -F'\t' '{printf "  %-14s %s\n", $$1, $$2}'
