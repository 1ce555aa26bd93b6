# One command for each common task. Each installs what it needs into .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RUNTIME ?= cpu          # cpu (onnxruntime) or gpu (onnxruntime-gpu); never both
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
MODEL_REPO ?= models

.PHONY: demo serve test lint bench install install-dev clean dashboards dashboards-previews console-screenshots \
	kubernetes-apply

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed-$(strip $(RUNTIME)): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[$(strip $(RUNTIME))]"
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed-$(strip $(RUNTIME))
	$(BIN)/pip install --quiet -e ".[$(strip $(RUNTIME)),dev,ray]"
	touch $@

install: $(VENV)/.installed-$(strip $(RUNTIME))   ## install the gateway into .venv
install-dev: $(VENV)/.installed-dev               ## install the gateway and the dev tools

demo: install                                      ## write the demo models, serve them with the console and a tour
	$(BIN)/sluice demo --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT)

serve: install                                     ## serve MODEL_REPO
	$(BIN)/sluice serve --model-repo $(MODEL_REPO) --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT)

test: install-dev                                  ## run the test suite
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15

lint: install-dev                                  ## ruff and mypy --strict
	$(BIN)/ruff check gateway runtimes monitors dashboards tests loadtests
	$(BIN)/ruff format --check gateway runtimes monitors dashboards tests loadtests
	$(BIN)/mypy

bench: install-dev                                 ## benchmark against raw ONNX Runtime (needs wrk)
	$(BIN)/python -m loadtests.bench

dashboards: install-dev                            ## rewrite dashboards/*.json, and deploy/kubernetes' rule and dashboards from them
	$(BIN)/python -m dashboards.build
	$(BIN)/python -m dashboards.kubernetes

kubernetes-apply:                                  ## kubectl apply -k deploy/kubernetes (create its Secrets first: see the README)
	kubectl apply -k deploy/kubernetes

dashboards-previews: install-dev                   ## redraw docs/previews/*.png from a live run (needs prometheus)
	SLUICE_PREVIEWS_DIR=$(CURDIR)/docs/previews $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/test_dashboards_live.py -k previews

console-screenshots: install-dev                   ## retake docs/console-*.png in headless Chromium (needs chromium, chromium-driver)
	SLUICE_CONSOLE_SCREENSHOTS_DIR=$(CURDIR)/docs $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/test_console.py -k "canary_started"

clean:
	rm -rf $(VENV) demo-models bench-results .pytest_cache .mypy_cache .ruff_cache
