# Two commands on a fresh machine: `make demo` runs the main job, `make test` runs the tests.
# Each creates the virtual environment it needs (torch first, pinned: see pyproject.toml).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export RQSID_HOME ?= $(CURDIR)/.rqsid

.PHONY: venv demo test clean

$(BIN)/rqsid: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(BIN)/rqsid

venv: $(BIN)/rqsid

demo: venv
	$(BIN)/rqsid nightly

test: venv
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) .rqsid
