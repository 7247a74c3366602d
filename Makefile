# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test lint demo bench-teacher bench-rubric reliability clean

setup: $(STAMP)

$(STAMP): pyproject.toml client/pyproject.toml setup.py deploy/install.sh
	bash deploy/install.sh $(VENV)
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

test: setup
	@echo "machine: $$($(PY) -m rcsd.loading.dtype)"
	bash deploy/ensure_postgres.sh
	$(MAKE) lint
	$(VENV)/bin/pytest -q

demo: setup
	$(PY) -m rcsd.recipes.cli demo

# The long reliability suites (tests/reliability, figures in docs/reliability.md): fuzzing 300 cases per
# operation and 64 clients per service; `make test` runs their short versions, the faults and security checks.
reliability: setup
	@echo "machine: $$($(PY) -m rcsd.loading.dtype)"
	bash deploy/ensure_postgres.sh
	$(VENV)/bin/pytest -q -s -m reliability tests/reliability

bench-teacher: setup
	$(PY) bench/teacher_throughput.py

bench-rubric: setup
	$(PY) bench/rubric_concurrency.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache runs

# `docker compose --profile cpu up` for real (deploy/compose_check.sh): as root, on a machine with no
# Docker engine running; it starts its own, builds the CPU image and runs the stack. Cache: RCSD_DOCKER_CACHE.
.PHONY: compose-check
compose-check:
	bash deploy/compose_check.sh
