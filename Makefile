# inferq — the commands the README and CI use.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export INFERQ_TEST_POSTGRES_URL ?= postgresql://postgres@127.0.0.1:5432/postgres
export INFERQ_TEST_REDIS_URL ?= redis://127.0.0.1:6379/0
export INFERQ_TEST_AMQP_URL ?= amqp://guest:guest@127.0.0.1:5672//

.PHONY: install run test test-fast lint typecheck bench bench-quick models clean

$(BIN)/inferq: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch==2.13.0 is the CPU build pinned on purpose (anything else downloads gigabytes)
	$(BIN)/pip install -q -e ".[models,dev]"
	touch $@

install: $(BIN)/inferq  ## create .venv and install inferq with the model-building and dev extras

models: install  ## build the demo models into INFERQ_MODELS_DIR (default var/models)
	$(BIN)/inferq models build

run: install  ## the whole system on one machine: API + worker + beat (SQLite + filesystem broker by default)
	$(BIN)/inferq up

test: install  ## the test suite against real Postgres, Redis, RabbitMQ and worker processes
	$(BIN)/python -m pytest --cov=app --cov=api --cov=workers --cov-report=term:skip-covered $(PYTEST_ARGS)

test-fast: install  ## unit tests only (no worker processes)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install  ## ruff + mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install  ## the benchmark of shared/BENCH.md (results under bench/results/)
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-quick: install
	$(BIN)/python -m bench --quick $(BENCH_ARGS)

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
