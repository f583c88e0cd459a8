# fazt-agent: `make run` starts the daemon on a demo ops folder, `make test` runs the suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OPS    ?= ops

.PHONY: run test test-any-date bench install system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# `make run` installs only what the daemon needs; `make test` adds the test extra (pytest, the
# Node wheel for the MCP conformance suite: 200 MB the daemon never uses).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

$(OPS)/config.toml: | $(VENV)/.installed
	$(BIN)/fazt-agent init $(OPS)

run: $(VENV)/.installed $(OPS)/config.toml
	$(BIN)/fazt-agent --config $(OPS)/config.toml run

system-deps:
	scripts/system-deps

# The JavaScript MCP clients of the tests (TypeScript SDK, conformance suite), from the lock file.
tests/js/node_modules/.package-lock.json: tests/js/package-lock.json tests/js/package.json
	npm ci --prefix tests/js --no-audit --no-fund
	touch $@

test: system-deps $(VENV)/.installed-test tests/js/node_modules/.package-lock.json
	$(BIN)/python -m pytest -n 2 -q --timeout 300

# The whole suite a year ahead and a year back (Debian faketime): no test depends on the date.
test-any-date: system-deps $(VENV)/.installed-test tests/js/node_modules/.package-lock.json
	scripts/test-any-date

bench: $(VENV)/.installed-test
	scripts/bench-deps
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
