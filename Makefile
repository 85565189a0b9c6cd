# The two commands of the quick start. Both set everything up themselves:
#   make demo   - virtualenv, install, local Kafka + Redis, then the live demo
#   make test   - virtualenv, install, lint, then the whole test suite (its fixtures start
#                 Kafka + Redis when nothing answers, and stop what they started), then the
#                 consumer's tests again with the librdkafka client
#   make unit   - the tests that need no server and take seconds (under a minute): no Kafka,
#                 no Redis, nothing started. Tests that need the servers are marked `stack`
#                 (tests/conftest.py marks every user of the server fixtures), long ones `slow`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test unit lint format stack-up stack-down stack-status bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/engage demo

# The consumer reaches Kafka through engage/transport, kafka-python by default or librdkafka
# with ENGAGE_KAFKA_CLIENT=confluent (confluent-kafka: .[dev] pulls in .[fast]). `make test`
# runs the whole suite with the default, then the tests that run the consumer pipeline (and the
# benchmark smoke) again with librdkafka (tests/test_transport_contract.py covers both clients in the first run).
# `make test CONFLUENT_TESTS=` skips that second run.
CONFLUENT_TESTS ?= tests/test_consumer_state.py tests/test_consumer_admission.py tests/test_commit_overlap.py \
	tests/test_consumer_faults.py tests/test_reliability_restarts.py tests/test_model_hot_swap.py \
	tests/test_fuzz_decoder.py::test_consumer_survives_hostile_messages_end_to_end \
	tests/test_cli_commands.py::test_consume_with_services_down_is_exit_3 \
	tests/test_bench_smoke.py \
	--deselect 'tests/test_consumer_faults.py::test_sigkill_at_random_moments_loses_and_doubles_nothing[arrival]'

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest $(PYTEST_ARGS)
	$(if $(strip $(CONFLUENT_TESTS)),ENGAGE_KAFKA_CLIENT=confluent $(BIN)/pytest $(PYTEST_ARGS) $(CONFLUENT_TESTS))

unit: $(STAMP)
	$(BIN)/pytest -m "not stack and not soak and not slow" $(PYTEST_ARGS)

# ruff, then mypy (pyproject.toml [tool.mypy]: strict on features/ and scoring/).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

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

# The README's data-flow diagram: docs/dataflow.png rendered from its text source
# docs/dataflow.dot (needs Graphviz: apt-get install graphviz).
.PHONY: docs docs-dashboard
docs:
	dot -Tpng -Gdpi=100 docs/dataflow.dot -o docs/dataflow.png

# The README's dashboard image: docs/dashboard.png from a short MovieLens run in its own
# namespace (fresh topics, Redis database 11, a model trained into a temporary folder unless
# ENGAGE_DATA_DIR holds one), on the running Kafka and Redis; needs chromium and
# chromium-driver. See docs/make_dashboard_png.py.
docs-dashboard: $(STAMP)
	$(BIN)/python docs/make_dashboard_png.py $(DASHBOARD_ARGS)
