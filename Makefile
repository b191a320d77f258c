# One-command set-up for a fresh machine: `make test` installs torch and the
# test dependencies when they are missing, builds the extension against the
# installed torch, and runs the whole suite. `make bench` prints the speed table.
#
# PYTHON may name any interpreter or virtual environment's python.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# torch 2.13.0 is built for CUDA 13.0, the major version of the nvcc that
# torch.utils.cpp_extension requires when it builds CUDA sources.
TORCH_SPEC ?= torch==2.13.0

SOURCES := $(wildcard csrc/*.h csrc/*.cpp csrc/cpu/*.h csrc/cpu/*.cpp csrc/cuda/*.cu csrc/cuda/*.cuh)
STAMP := build/.installed

.PHONY: all deps build test bench clean

all: build

# Build tools and torch first: the build runs without isolation so that it
# compiles against the torch in this environment.
deps:
	$(PIP) install "setuptools>=70.1" wheel ninja
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"

$(STAMP): $(SOURCES) setup.py pyproject.toml | deps
	$(PIP) install --no-build-isolation -e ".[test]"
	@mkdir -p build && touch $@

build: deps $(STAMP)

test: build
	$(PYTHON) -m pytest tests

bench: build
	$(PYTHON) -m torch_quant.bench

clean:
	rm -rf build torch_quant/*.so *.egg-info .pytest_cache .hypothesis
