# erlib: every target creates the virtual environment if it is missing (Python >= 3.10: torch 2.14 needs it).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.erlib-installed

.PHONY: setup test lint mutate demo lab bench clean-runs

setup: $(STAMP)

# Create the venv with a Python >= 3.10 (macOS's bundled python3 is 3.9), then install requirements.txt with the
# exact versions of constraints.txt and erlib itself; again whenever one of the three files changes.
$(STAMP): requirements.txt constraints.txt pyproject.toml
	@if [ ! -x $(PY) ]; then \
	  found=$$($(PYTHON) -c 'import platform; print(platform.python_version())' 2>/dev/null) || { \
	    echo "error: '$(PYTHON)' was not found; install Python >= 3.10 and pick it with make PYTHON=python3.11" >&2; \
	    exit 1; }; \
	  $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { \
	    echo "error: erlib needs Python >= 3.10 (torch 2.14), but $(PYTHON) is Python $$found; pick another with make PYTHON=python3.11" >&2; \
	    exit 1; }; \
	  $(PYTHON) -m venv $(VENV); \
	fi
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

# two workers, one test file at a time each: the notebooks run in order on one worker (they share their runs);
# tests/test_browser.py runs where chromium and chromium-driver are installed and says why it skips elsewhere
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup --no-loadscope-reorder

# ruff (lint rules and formatting, pyproject.toml) on the code and tests, mypy on the package
lint: $(STAMP)
	$(VENV)/bin/ruff check erlib tests scripts
	$(VENV)/bin/ruff format --check erlib tests scripts
	$(VENV)/bin/mypy erlib

demo: $(STAMP)
	$(PY) -m erlib notebooks --preset tiny

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

bench: $(STAMP)
	$(PY) -m erlib bench

clean-runs:
	rm -rf runs/

# mutation testing of the pure modules (bounds, schedules, optimiser, augmentation, methods; [tool.mutmut] in
# pyproject.toml): slow, run outside CI; it prints the score per module, which goes into CONTRIBUTING.md. One module: make mutate MUTANTS='erlib.optim*'
MUTANTS ?=
mutate: $(STAMP)
	$(VENV)/bin/python -m pip install --quiet "mutmut>=3.8,<4"
	OMP_NUM_THREADS=1 $(VENV)/bin/mutmut run --max-children 2 $(MUTANTS) || true
	$(VENV)/bin/mutmut results --all true | awk -F': ' -f scripts/mutation_score.awk | sort
