# The two commands of README.md: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
NPM ?= npm
CANVAS := frontend/dist/index.html
CANVAS_SOURCES := $(shell find frontend/src -type f 2>/dev/null) frontend/index.html frontend/vite.config.ts \
	frontend/tsconfig.json frontend/package.json

.PHONY: run test lint typecheck unit integration e2e canvas-test chromium bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

frontend/node_modules/.install-stamp: frontend/package-lock.json
	cd frontend && $(NPM) ci --no-audit --no-fund
	touch $@

$(CANVAS): frontend/node_modules/.install-stamp $(CANVAS_SOURCES)
	cd frontend && $(NPM) run build

# Server + canvas on embedded defaults (SQLite under .crewflow/, in-process queue), with a demo workspace
# whose flow runs offline; the login is printed at start-up. http://127.0.0.1:8000
run: $(STAMP) $(CANVAS)
	$(BIN)/crewflow serve --demo

# The whole suite: lint, types, Python tests (unit + integration: PostgreSQL and Redis on 127.0.0.1),
# the canvas's unit tests and its end-to-end test in headless Chromium against a real server.
test: $(STAMP) $(CANVAS) chromium
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src
	$(BIN)/pytest
	cd frontend && $(NPM) test
	cd frontend && CREWFLOW_BIN=$(CURDIR)/$(BIN)/crewflow $(NPM) run e2e:local

chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
		else echo "the canvas e2e test needs Debian's chromium: sudo apt-get install -y chromium" >&2; exit 1; fi; }

unit: $(STAMP)
	$(BIN)/pytest -m unit

integration: $(STAMP)
	$(BIN)/pytest -m integration

canvas-test: $(CANVAS)
	cd frontend && $(NPM) test

e2e: $(STAMP) $(CANVAS) chromium
	cd frontend && CREWFLOW_BIN=$(CURDIR)/$(BIN)/crewflow $(NPM) run e2e:local

bench: $(STAMP)
	$(BIN)/python bench/engine_overhead.py

clean:
	rm -rf $(VENV) build dist *.egg-info frontend/node_modules frontend/dist
