# tickwire: `make serve` runs the server on its embedded default, `make test` runs the
# whole test suite. Both set up the project's own virtual environment (.venv) first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: serve test lint autobahn clean

serve: $(VENV)/.installed
	$(BIN)/tickwire serve $(ARGS)

test: $(VENV)/.installed
	$(BIN)/ruff check feed clients replay tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest $(ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check feed clients replay tests benchmarks
	$(BIN)/mypy

autobahn: $(VENV)/.installed
	scripts/autobahn $(ARGS)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "tickwire needs Python 3.11 or newer (set PYTHON=...)" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,dev,bench]'
	touch $@

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache
