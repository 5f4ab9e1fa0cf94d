# Two commands on a fresh machine (Python 3.11 and root): `make demo`, `make test`.
# Each creates/updates .venv, installs what is missing (Python packages; Debian's
# mosquitto and a font; for the test suite PostgreSQL and espeak-ng, only where absent),
# then runs.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends

.PHONY: demo test lint typecheck unit hooks bench system-deps test-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[controller,dev]'
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

test-deps:
	@if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "Installing Debian's postgresql (the integration suite also runs on it)..."; \
	  apt-get update -qq && $(APT_INSTALL) postgresql; \
	fi
	@if ! command -v espeak-ng >/dev/null 2>&1; then \
	  echo "Installing Debian's espeak-ng (the TTS contract suite also runs on the program)..."; \
	  apt-get update -qq && $(APT_INSTALL) espeak-ng; \
	fi

demo: $(STAMP) system-deps
	$(BIN)/loudspeaker demo

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) system-deps test-deps lint typecheck
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest -m "not integration"

# A git pre-commit hook running lint and typecheck (.pre-commit-config.yaml); optional:
# nothing else needs pre-commit.
hooks: $(STAMP)
	$(BIN)/pip install --quiet pre-commit
	$(BIN)/pre-commit install

bench: $(STAMP) system-deps
	$(BIN)/python bench/fanout.py
	$(BIN)/python bench/emergency.py
	$(BIN)/python bench/scheduler.py
	$(BIN)/python bench/audio_render.py
	$(BIN)/python bench/serial_link.py
	$(BIN)/python bench/health_latency.py
	$(BIN)/python bench/report.py
	$(BIN)/python bench/security.py
	$(BIN)/python bench/field.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
