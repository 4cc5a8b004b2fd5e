# The two commands of README.md: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
NPM ?= npm
CANVAS := frontend/dist/index.html
CANVAS_SOURCES := $(shell find frontend/src -type f 2>/dev/null) frontend/index.html frontend/vite.config.ts \
	frontend/tsconfig.json frontend/package.json

.PHONY: run test lint typecheck unit integration e2e canvas-test chromium promtool sandbox-engine bench bench-sandbox clean

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
test: $(STAMP) $(CANVAS) chromium promtool sandbox-engine
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src
	$(BIN)/pytest
	cd frontend && $(NPM) test
	cd frontend && CREWFLOW_BIN=$(CURDIR)/$(BIN)/crewflow $(NPM) run e2e:local

chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
		else echo "the canvas e2e test needs Debian's chromium: sudo apt-get install -y chromium" >&2; exit 1; fi; }

# Checks the alert rules and their unit tests (tests/unit/test_dashboards.py); only promtool is wanted, so the
# package's services are kept from starting during the install.
promtool:
	@command -v promtool >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then \
			placed=; [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; \
				chmod 755 /usr/sbin/policy-rc.d; placed=1; }; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
				prometheus >/dev/null; status=$$?; [ -z "$$placed" ] || rm -f /usr/sbin/policy-rc.d; exit $$status; \
		else echo "promtool missing (apt-get install prometheus): the alert-rule checks will be skipped" >&2; fi; }

# The tool sandbox's engine (ADR 0014): a private bridge-less dockerd, bubblewrap, the offline base image and
# a local registry. As root it is set up (fast when already running/cached); otherwise the Docker tests skip
# with the reason and the bubblewrap tests run where bwrap exists.
sandbox-engine:
	@if [ "$$(id -u)" = 0 ]; then deploy/ci/sandbox-engine.sh >/dev/null; \
	else echo "not root: the Docker sandbox tests will skip unless an engine already answers" >&2; fi

bench-sandbox: $(STAMP)
	$(BIN)/python bench/sandbox.py --calls 50

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
