# The two commands of the README:  make run   (serve on SQLite with the dev key)
#                                   make test  (every test, on a fresh machine too)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
DEV_API_KEY ?= dev-key-change-me
APT_INSTALL := apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends

.PHONY: run test lint test-sqlite test-postgres servers venv clean bench bench-smoke bench-pages screenshots

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || { echo "python3 -m venv failed: on Debian, apt-get install python3-venv"; exit 1; }

$(VENV)/.prod: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@ $(VENV)/.prod

venv: $(VENV)/.prod

run: $(VENV)/.prod
	API_KEY="$${API_KEY:-$(DEV_API_KEY)}" BIND="$(HOST):$(PORT)" \
		$(BIN)/gunicorn --config gunicorn.conf.py 'app:create_app()'

# The real servers the tests start themselves (in temporary directories, on free ports):
# nginx and PostgreSQL from Debian's packages, headless Chromium and its driver for the
# browser tests (tests/test_pages.py), and, as root (rootful podman), podman with
# runc and mmdebstrap to build and run the container image. Installs only what is
# missing, as root; anyone else is told the one command to run.
servers:
	@missing=""; \
	command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$$missing nginx-light"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 \
		|| missing="$$missing postgresql"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	[ -x /usr/bin/chromedriver ] || missing="$$missing chromium-driver"; \
	if [ "$$(id -u)" -eq 0 ]; then \
		command -v podman >/dev/null 2>&1 || missing="$$missing podman"; \
		command -v runc >/dev/null 2>&1 || missing="$$missing runc"; \
		command -v mmdebstrap >/dev/null 2>&1 || missing="$$missing mmdebstrap"; \
	fi; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" -ne 0 ]; then \
		echo "make test needs Debian's$$missing; as root run: apt-get install -y$$missing"; \
		exit 1; \
	fi; \
	$(APT_INSTALL)$$missing

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test-sqlite: $(VENV)/.dev servers
	TEST_DATABASE=sqlite $(BIN)/pytest

test-postgres: $(VENV)/.dev servers
	TEST_DATABASE=postgresql $(BIN)/pytest

# Lint, then the whole suite twice: on SQLite, and on a real PostgreSQL.
test: lint test-sqlite test-postgres

$(VENV)/.bench: requirements.txt requirements-bench.txt | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-bench.txt
	touch $@

# The benchmark (bench/run.py): the service against its floor, on 127.0.0.1, bounded in
# time. `bench` takes about 5 minutes and rewrites bench/results.md and bench/results.png;
# `make bench BASELINE=REV` instead runs the upserts against that git revision,
# alternately, and prints both medians and their ratio (about 5 minutes too).
bench: $(VENV)/.bench servers
	$(BIN)/python bench/run.py $(if $(BASELINE),--baseline $(BASELINE))

bench-smoke: $(VENV)/.prod servers
	$(BIN)/python bench/run.py --smoke

# The customer browser's time to draw a page of 50 customers (bench/pages.py), in Chromium.
bench-pages: $(VENV)/.dev servers
	$(BIN)/python bench/pages.py

# The README's pictures of the two pages (docs/*.png), taken in headless Chromium.
screenshots: $(VENV)/.dev servers
	$(BIN)/python docs/screenshots.py

clean:
	rm -rf $(VENV)
