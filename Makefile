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

test: $(VENV)/.installed
	$(PY) -m pytest -q

clean:
	rm -rf runs/demo
