# Two entry points for a newcomer: `make demo` (the main job) and `make test`.
# Each creates .venv and installs what it needs. On a machine without an NVIDIA GPU the CPU wheel
# of torch is pinned (a bare `torch` requirement would pull a multi-GB CUDA build) with CPU ONNX
# Runtime; with nvidia-smi on PATH, torch from the index and onnxruntime-gpu. TensorRT: see README.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
GPU    := $(shell command -v nvidia-smi 2>/dev/null)
TORCH  ?= $(if $(GPU),torch,torch==2.13.0)
# ONNX Runtime's CPU or CUDA build (one of them: both install the module onnxruntime)
EXTRAS ?= $(if $(GPU),dev$(comma)gpu,dev$(comma)cpu)
comma  := ,
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow readme lint clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/varrt demo

# the suite (under 10 minutes on 2 cores); the slowest tests it prints are the ones to keep an eye on
test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

# real-size smoke tests and the longest end-to-end runs (CI runs them as a step of their own)
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow --durations=15

readme: $(STAMP)
	$(BIN)/python -m pytest -q -m readme

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean-venv:
	rm -rf $(VENV)
