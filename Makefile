# Two commands for a newcomer: `make run` and `make test`. Both install what they need first.
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 1

.PHONY: run test static lint typecheck unit unit-servers unit-downstream unit-rest install bench clean

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
## and every test on SQLite and PostgreSQL. The static checks and three pytest runs go side by
## side (two cores, but the tests mostly wait on servers, browsers and databases): the areas
## that start real servers, the downstream side (kit, notes, outbox, service clients), and
## everything else. Output is grouped per step.
SERVER_TESTS := tests/sessions tests/browser tests/gateway tests/keys tests/cli
DOWNSTREAM_TESTS := tests/downstream tests/outbox tests/clients tests/dpop
test: install
	@$(MAKE) --no-print-directory -j4 --output-sync=target static unit-servers unit-downstream \
		unit-rest

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
	$(VENV)/bin/pytest $(addprefix --ignore=,$(SERVER_TESTS) $(DOWNSTREAM_TESTS)) $(PYTEST_ARGS)

## Throughput and latency against the bare-FastAPI ceiling (needs wrk and PostgreSQL).
bench: install
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) data .mypy_cache .ruff_cache .pytest_cache
