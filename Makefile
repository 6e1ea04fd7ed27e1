# Two commands for a newcomer: `make run` and `make test`. Both install what they need first.
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 1

.PHONY: run test static lint typecheck unit install bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

## Run the service on the embedded SQLite default (migrations and signing key on first start).
run: install
	$(PY) -m app serve --host $(HOST) --port $(PORT) --workers $(WORKERS)

## The whole test suite: lint (ruff, import-linter architecture contracts) and strict typing,
## and every test on SQLite and PostgreSQL. The static checks run beside pytest (two cores;
## pytest mostly waits on servers and browsers); output is grouped per step.
test: install
	@$(MAKE) --no-print-directory -j2 --output-sync=target static unit

static: lint typecheck

lint: install
	$(VENV)/bin/ruff check app tests migrations bench
	$(VENV)/bin/ruff format --check app tests migrations bench
	$(VENV)/bin/lint-imports --no-cache

typecheck: install
	$(VENV)/bin/mypy

unit: install
	$(VENV)/bin/pytest $(PYTEST_ARGS)

## Throughput and latency against the bare-FastAPI ceiling (needs wrk and PostgreSQL).
bench: install
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) data .mypy_cache .ruff_cache .pytest_cache
