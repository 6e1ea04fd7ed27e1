# Two commands for a newcomer: `make run` and `make test`. Both install what they need first.
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 1

.PHONY: run test static lint typecheck unit unit-servers unit-downstream unit-rest unit-engines unit-soak \
	js install bench clean

# Two stamps: `make run` installs the service's runtime dependencies only; the development
# tools (pytest, ruff, mypy, browsers' drivers...) come with the first `make test`.
$(VENV)/.runtime: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e .
	touch $@

# The resource-server kit (clients/python, its own distribution) is tested with the service.
$(VENV)/.installed: $(VENV)/.runtime clients/python/pyproject.toml
	$(VENV)/bin/pip install --quiet -e '.[dev]' -e 'clients/python[fastapi,redis]'
	touch $@

install: $(VENV)/.installed

## Run the service on the embedded SQLite default (migrations and signing key on first start).
run: $(VENV)/.runtime
	$(PY) -m app serve --host $(HOST) --port $(PORT) --workers $(WORKERS)

## The whole test suite: lint (ruff, import-linter architecture contracts) and strict typing,
## and every test on SQLite and PostgreSQL. The static checks and four pytest runs go side by
## side (two cores, but the tests mostly wait on servers, browsers and databases): the areas
## that start real servers, the downstream side (kit, notes, outbox and mail, service clients), the
## three browser engines, and everything else; beside them the browser client's npm package
## (`js`). Output is grouped per step.
SERVER_TESTS := tests/sessions tests/browser tests/gateway tests/keys tests/cli
DOWNSTREAM_TESTS := tests/downstream tests/outbox tests/clients tests/dpop tests/mail tests/recovery
# Browser mode in Chromium, Firefox ESR and WebKit, and HTTPS serving (docs/engines.md).
ENGINE_TESTS := tests/engines
# The logout-free hour's 5-minute variant (bench.soak; docs/scaling.md).
SOAK_TESTS := tests/soak
test: install
	@$(MAKE) --no-print-directory -j7 --output-sync=target static unit-servers unit-downstream \
		unit-rest unit-engines unit-soak js

static: lint typecheck

LINTED := app tests migrations bench clients/python examples

lint: install
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/lint-imports --no-cache

typecheck: install
	$(VENV)/bin/mypy

unit: install
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# Each run checks its own PostgreSQL tests ran (REQUIRE_POSTGRES) and its own log lines.
unit-servers: install
	$(VENV)/bin/pytest $(SERVER_TESTS) $(PYTEST_ARGS)

unit-downstream: install
	$(VENV)/bin/pytest $(DOWNSTREAM_TESTS) $(PYTEST_ARGS)

unit-rest: install
	$(VENV)/bin/pytest \
		$(addprefix --ignore=,$(SERVER_TESTS) $(DOWNSTREAM_TESTS) $(ENGINE_TESTS) $(SOAK_TESTS)) \
		$(PYTEST_ARGS)

unit-soak: install
	$(VENV)/bin/pytest $(SOAK_TESTS) $(PYTEST_ARGS)

# Firefox is driven by puppeteer-core (npm, pinned by package-lock.json; no browser download).
# Without npm the Firefox tests skip (fail under REQUIRE_BROWSER=1).
tests/engines/node_modules/.installed: tests/engines/package.json tests/engines/package-lock.json
	if command -v npm >/dev/null; then npm ci --prefix tests/engines --no-audit --no-fund \
		--loglevel=error && touch $@; fi

unit-engines: install tests/engines/node_modules/.installed
	$(VENV)/bin/pytest $(ENGINE_TESTS) $(PYTEST_ARGS)

## The browser client's npm package (clients/js): installed from its lock file, then its unit
## tests (node's runner), its types, and the check that /static/auth-client.js is its build.
## Without npm it says so and passes, except in CI (CI=true), where it fails.
js:
	@if ! command -v npm >/dev/null; then \
		echo "js: npm not found, clients/js not tested (apt-get install npm)"; test -z "$$CI"; \
	else cd clients/js && npm ci --no-audit --no-fund --loglevel=error && npm test; fi

## Throughput and latency against the bare-FastAPI ceiling (needs wrk and PostgreSQL).
bench: install
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) data .mypy_cache .ruff_cache .pytest_cache
