# The two commands a person needs: `make run` and `make test`. Both set up .venv first.
# `make bench` runs the load benchmarks (their correctness assertions fail it); CI runs it
# after `make test`. BENCH picks cases: `make bench BENCH=all`, or BENCH="sqlite:5 postgresql:20x2".
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench install install-dev clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml requirements.lock
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.lock
	$(BIN)/pip install -q -r requirements-dev.lock
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# Without Slack tokens (environment or .env) there is nothing to connect to: the local workspace.
run: install
	@if [ -n "$$SLACK_BOT_TOKEN$$SLACK_APP_TOKEN" ] || grep -qsE '^(export )?SLACK_(BOT|APP)_TOKEN=.' .env; then \
		$(BIN)/python app.py; \
	else \
		echo "No Slack tokens (SLACK_BOT_TOKEN, SLACK_APP_TOKEN): starting the local workspace, fixbot local."; \
		$(BIN)/fixbot local; \
	fi

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Four workers on any machine: most tests wait on the app, the model or a subprocess, so
# two cores keep four busy (6 and 8 were no faster on 2 cores). Bytecode caches on, even
# where the environment turns them off: each worker and each process the tests start
# would otherwise compile Fixbot and the tests from source. Tests go out one at a time, in
# the order tests/conftest.py sets (longest first), so no long one starts last.
test: lint
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -q -n 4 --dist load --maxschedchunk 1 --durations=10

BENCH ?=
bench: install-dev
	$(BIN)/python benchmarks/throughput.py $(if $(BENCH),--cases $(BENCH))

clean:
	rm -rf $(VENV)
