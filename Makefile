# The two commands of the quick start. Both set everything up themselves:
#   make demo   - virtualenv, install, local Kafka + Redis, then the live demo
#   make test   - virtualenv, install, lint, then the whole test suite (its fixtures start
#                 Kafka + Redis when nothing answers, and stop what they started)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format stack-up stack-down stack-status bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/engage demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

stack-up: $(STAMP)
	$(BIN)/engage stack up

stack-down: $(STAMP)
	$(BIN)/engage stack down

stack-status: $(STAMP)
	$(BIN)/engage stack status

bench: $(STAMP)
	$(BIN)/python -m bench

clean: stack-down
	rm -rf .stack .data
