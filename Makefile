# HematoVision: `make run` starts the portal, two workers and a demo batch; `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck check-deploy clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required ($(PYTHON) not found)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The portal on http://127.0.0.1:$(PORT) plus two workers (classification; the `adapt` queue),
# on the embedded default (SQLite, filesystem broker, local media). Ctrl-C stops them all.
run: $(STAMP)
	DEBUG=true PORT=$(PORT) $(BIN)/python -m webportal.run

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	$(BIN)/lint-imports
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: $(STAMP)
	$(BIN)/mypy .

# Production settings must pass Django's deployment checklist.
check-deploy: $(STAMP)
	SECRET_KEY=$$(openssl rand -hex 32) ALLOWED_HOSTS=hematovision.example.org \
		$(BIN)/python manage.py check --deploy --fail-level WARNING

clean:
	rm -rf var .mypy_cache .ruff_cache .pytest_cache
