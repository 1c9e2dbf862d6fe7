# Two entry points that work on a fresh machine with Python 3.11+: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test clean

# Reinstall whenever the dependencies change.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m skinjax.main --config=configs/demo.py --workdir=runs/demo

# Two workers, each running whole test files (their module fixtures: trained runs, Keras models,
# prepared datasets, are then built once): the CI machine has two cores. TEST_WORKERS=0 runs serially.
# The 30 slowest tests are listed at the end, so that the suite's time stays in view.
TEST_WORKERS ?= 2
test: $(VENV)/.installed
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=30

clean:
	rm -rf runs/demo
