# The README's two commands are `make demo` and `make test`; both build .venv first (the demo's part of it only).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test e2e cluster-e2e lint bench protos schemas stress-timing clean

# Two installs in one venv: the demo's (the package, an embedded PostgreSQL, rich, matplotlib) and the
# developer's (that plus the test and lint tools); `make demo` alone never installs the second.
define install
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed: make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(1)]'
	@touch $@
endef

$(VENV)/.installed: pyproject.toml
	$(call install,dev)

$(VENV)/.demo: pyproject.toml
	$(call install,demo)

demo: $(VENV)/.demo  ## the scaler on an embedded PostgreSQL with a synthetic Airflow workload
	$(BIN)/airflow-keda-scaler demo $(ARGS)

test: lint  ## lint, type-check, then the whole test suite against real PostgreSQL, PgBouncer, MariaDB
	@scripts/install-test-servers
	@scripts/build-go-tools >/dev/null
	$(BIN)/pytest $(ARGS)

e2e: $(VENV)/.installed  ## a real Airflow (CeleryExecutor, Redis) scaled by the scaler; installs Airflow once
	@scripts/install-test-servers
	$(BIN)/pytest -m e2e -s -p no:cacheprovider tests/e2e $(ARGS)

cluster-e2e: $(VENV)/.installed  ## safe scale-down on a real control plane (etcd, kube-apiserver, kube-controller-manager from the Go module proxy, built once per machine)
	@scripts/build-cluster-tools >/dev/null
	@scripts/build-go-tools >/dev/null
	$(BIN)/pytest -m cluster -p no:cacheprovider tests/cluster $(ARGS)

stress-timing: $(VENV)/.installed  ## the timing-sensitive tests RUNS times (20) with the other core busy
	@scripts/install-test-servers
	RUNS=$(or $(RUNS),20) ARGS="$(ARGS)" scripts/stress-timing

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(VENV)/.installed  ## the benchmark suite (a few minutes); writes docs/benchmarks.md
	$(BIN)/python -m bench $(ARGS)

protos: $(VENV)/.installed  ## regenerate scaler/_proto from protos/externalscaler.proto
	$(BIN)/python scripts/generate_protos.py

schemas: $(VENV)/.installed  ## regenerate scaler/fixtures/airflow_schema from real Airflow releases (slow, needs PyPI)
	$(BIN)/python scripts/generate_airflow_schemas.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .grimp_cache .import_linter_cache *.egg-info
