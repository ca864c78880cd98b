# The two set-up commands of README.md. Each builds its own virtual environment from the pins in
# pyproject.toml (a stamp file re-installs when they change).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test,web]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/crossdomainseg demo

test: $(STAMP)
	bash scripts/install_browser.sh
	bash scripts/install_system_deps.sh
	$(BIN)/python -m pytest -q
