# The two commands of the README:  make run  (serve on SQLite with the dev key)
#                                   make test (every test, on a fresh machine too)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
DEV_API_KEY ?= dev-key-change-me

.PHONY: run test lint venv clean

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
	API_KEY="$${API_KEY:-$(DEV_API_KEY)}" $(BIN)/gunicorn --bind $(HOST):$(PORT) --workers 2 'app:create_app()'

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV)
