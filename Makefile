# Everything a fresh machine needs: `make test` creates .venv, installs the pinned CPU
# torch first (a looser requirement pulls gigabytes of CUDA packages), then the project
# with its test extras, then lints and tests. A stamp file keeps re-runs from reinstalling.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION := 2.13.0
STAMP := $(VENV)/.installed
# torchaudio has no CPU build here, but its compliance/kaldi.py is plain PyTorch: the tests
# read it from the registry's wheel (not installed, nothing else used) as the reference
# that AST's features were computed with.
TORCHAUDIO_REF_VERSION := 2.11.0
TORCHAUDIO_REF := $(VENV)/reference/torchaudio_kaldi.py

.PHONY: install browser vendor test lint bench demo docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

$(TORCHAUDIO_REF): | $(BIN)/python
	mkdir -p $(VENV)/reference
	$(BIN)/pip download --quiet --no-deps --only-binary=:all: torchaudio==$(TORCHAUDIO_REF_VERSION) -d $(VENV)/reference
	$(BIN)/python -c "import glob, pathlib, zipfile; \
	  wheel = zipfile.ZipFile(glob.glob('$(VENV)/reference/torchaudio-*.whl')[0]); \
	  pathlib.Path('$(TORCHAUDIO_REF)').write_bytes(wheel.read('torchaudio/compliance/kaldi.py'))"
	rm -f $(VENV)/reference/torchaudio-*.whl

# The HEAR 2021 validator (tests/test_hear.py): its wheel requires TensorFlow, which only its
# TensorFlow path imports for use, so it goes in without dependencies (the test says how).
HEARVALIDATOR := $(VENV)/.hearvalidator

$(HEARVALIDATOR): $(STAMP)
	$(BIN)/pip install --quiet --no-deps hearvalidator
	touch $(HEARVALIDATOR)

# The browser test of `ast-audio serve` drives Debian's chromium through its chromedriver
# (Selenium). Installed once, with apt-get (as root, else through sudo); skipped when both
# are already on PATH.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; else \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium chromium-driver; \
	fi

# The page's client-side mode (`serve --client-side`, `export --format web`) runs the model in
# the visitor's browser with onnxruntime-web, fetched here from the npm registry (pinned, checked
# by its sha256) and copied into the package (gitignored; package data), so nothing comes from a
# CDN at run time. Only the WebAssembly bundle, its loader and the SIMD .wasm are taken: no
# WebGPU/JSEP build, and the page runs it on one thread, so no cross-origin isolation is needed.
# npm comes from apt-get (as the browser does) when it is not on PATH.
ORT_WEB_VERSION := 1.31.1
ORT_WEB_SHA256 := bdccdb9fbb9ab537247c0c734e9b1d2b1b338b4f2a09faa58f0dc1cfa27c312c
ORT_WEB_FILES := ort.wasm.min.js ort-wasm-simd-threaded.mjs ort-wasm-simd-threaded.wasm
ORT_VENDOR := src/ast_audio/serve/static/vendor/ort
ORT_STAMP := $(ORT_VENDOR)/.onnxruntime-web-$(ORT_WEB_VERSION)
ORT_PACK := build/ort-web

vendor: $(ORT_STAMP)

$(ORT_STAMP):
	@if ! command -v npm >/dev/null 2>&1; then \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends npm; \
	fi
	rm -rf $(ORT_PACK) $(ORT_VENDOR).tmp
	mkdir -p $(ORT_PACK) $(ORT_VENDOR).tmp
	cd $(ORT_PACK) && npm pack --silent onnxruntime-web@$(ORT_WEB_VERSION) >/dev/null
	echo "$(ORT_WEB_SHA256)  $(ORT_PACK)/onnxruntime-web-$(ORT_WEB_VERSION).tgz" | sha256sum --check --quiet
	tar -xzf $(ORT_PACK)/onnxruntime-web-$(ORT_WEB_VERSION).tgz -C $(ORT_PACK) $(addprefix package/dist/,$(ORT_WEB_FILES))
	cp $(addprefix $(ORT_PACK)/package/dist/,$(ORT_WEB_FILES)) $(ORT_VENDOR).tmp/
	echo "onnxruntime-web $(ORT_WEB_VERSION) from the npm registry (MIT License, Copyright (c) Microsoft Corporation)" \
	  > $(ORT_VENDOR).tmp/VERSION
	touch $(ORT_VENDOR).tmp/$(notdir $(ORT_STAMP))
	rm -rf $(ORT_VENDOR) $(ORT_PACK)
	mv $(ORT_VENDOR).tmp $(ORT_VENDOR)

install: $(STAMP) $(TORCHAUDIO_REF) $(HEARVALIDATOR) browser vendor

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

# Test files are spread over the cores (pytest-xdist; a file's tests stay on one worker, so its
# module fixtures are built once; at most 4 workers, each holding torch and its fixtures) and the
# 25 slowest tests are listed at the end. Then the tests marked `precision` (what precision auto
# promises) run again with auto pinned to each precision, so a change that breaks one precision
# fails on any CPU, whatever auto means there (PRECISION_TESTS: the files that mark them).
PRECISION_TESTS := tests/test_infer_fast.py tests/test_precision.py
test: install lint
	$(BIN)/pytest -q -n auto --maxprocesses 4 --dist loadfile --durations=25
	for pin in fp32 bf16 int8; do echo "AST_AUDIO_PRECISION=$$pin:"; \
	  AST_AUDIO_PRECISION=$$pin $(BIN)/pytest -q -m precision $(PRECISION_TESTS) || exit 1; done

# The documentation site (mkdocs.yml, docs/): strict, so a broken link or reference fails; offline
# (no fonts or scripts fetched). `make test` builds it too, in tests/test_docs.py.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site

demo: install
	$(BIN)/ast-audio demo --out runs/demo

# The model benchmark's accuracy check uses the model `make demo` trains and its held-out fold.
# bench/real.py fetches Debian's recording packages (apt-get download, dpkg -x) into
# ~/.cache/ast-audio/real the first time.
bench: demo
	$(BIN)/python bench/features.py
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/model.py --trained runs/demo/exp/models/best_audio_model.safetensors \
	  --trained-data runs/demo/prepared/demo_test.json
	$(BIN)/python bench/export.py --browser
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/finetune.py
	$(BIN)/python bench/openset.py
	$(BIN)/python bench/train.py --jobs 2
	$(BIN)/python bench/real.py
	$(BIN)/python bench/pretrain.py
	@if $(BIN)/python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
	  $(BIN)/python bench/device.py; \
	else echo "bench/device.py: no CUDA device here, skipped"; fi

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache $(ORT_VENDOR)
