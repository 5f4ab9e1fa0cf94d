# Two commands on a fresh machine (Python 3.11 and root): `make demo`, `make test`.
# Each creates/updates .venv, installs what is missing (Python packages; Debian's
# mosquitto, and PostgreSQL for the test suite, only where absent), then runs.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends

.PHONY: demo test lint typecheck unit bench system-deps postgres-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

system-deps:
	@if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then \
	  echo "Installing Debian's mosquitto (MQTT broker)..."; \
	  apt-get update -qq && $(APT_INSTALL) mosquitto; \
	fi
	@if [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then \
	  echo "Installing a font with Vietnamese glyphs for report charts..."; \
	  apt-get update -qq && $(APT_INSTALL) fonts-dejavu-core; \
	fi

postgres-deps:
	@if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "Installing Debian's postgresql (the integration suite also runs on it)..."; \
	  apt-get update -qq && $(APT_INSTALL) postgresql; \
	fi

demo: $(STAMP) system-deps
	$(BIN)/loudspeaker demo

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) system-deps postgres-deps lint typecheck
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest -m "not integration"

bench: $(STAMP) system-deps
	$(BIN)/python bench/fanout.py
	$(BIN)/python bench/report.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
