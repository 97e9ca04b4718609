# Quick start:  make demo   (set up, then transcode a clip: bitrate, PSNR, speed)
#               make test   (set up, then run the test suite)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint
setup: $(VENV)/.done

# torch is pinned to the CPU build this project is developed on (any other
# spec pulls a multi-GB CUDA build); compressai goes in without its declared
# dependencies, which would pull torchvision and CUDA torch (see neurocodec/_compat.py).
$(VENV)/.done: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps compressai==1.2.8
	touch $@

demo: setup
	$(BIN)/neurocodec demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
