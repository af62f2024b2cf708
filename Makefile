# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck imports workflows pytest bench bench-gate bench-wrk bench-sampler bench-attribution bench-callgrind bench-workers clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# System programs that some tests read their output with (Go's pprof for the
# .pb.gz format, a Prometheus server scraping /_perf/metrics, Chromium showing
# the dashboard to Playwright, PostgreSQL for the database tests' private
# cluster (tests/postgres.py), valgrind counting the bench gate's
# instructions): installed with apt when this runs as root on Debian or
# Ubuntu; elsewhere those tests skip and name the package to install.
SYSDEPS := golang-go prometheus chromium postgresql valgrind
SYSSTAMP := $(VENV)/.sysdeps

$(SYSSTAMP): Makefile | $(BIN)/python
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  missing=""; \
	  for p in $(SYSDEPS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends $$missing; \
	  fi; \
	else echo "not root with apt-get: tests that need $(SYSDEPS) will skip"; fi
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

lint: $(STAMP)
	$(BIN)/ruff check asgi_perf tests benchmarks examples
	$(BIN)/ruff format --check asgi_perf tests benchmarks examples

typecheck: $(STAMP)
	$(BIN)/mypy --strict asgi_perf examples/app.py

# The layers of DESIGN.md, as an import-linter contract in pyproject.toml.
imports: $(STAMP)
	$(BIN)/lint-imports

# The whole suite under coverage (branch); the report fails under the figure
# in [tool.coverage.report]. The quick loop: $(BIN)/pytest -m "not slow".
pytest: $(STAMP) $(SYSSTAMP)
	$(BIN)/coverage run -m pytest
	$(BIN)/coverage report

# The GitHub workflows, this repository's and the one users copy, against the
# workflow schema that ships inside check-jsonschema (no network).
WORKFLOWS := $(wildcard .github/workflows/*.yml examples/ci/*.yml)

workflows: $(STAMP)
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows $(WORKFLOWS)

test: lint typecheck imports workflows pytest

bench: $(STAMP)
	$(BIN)/pytest benchmarks --benchmark-only -p no:randomly -o testpaths=benchmarks

bench-wrk: $(STAMP)
	$(BIN)/python benchmarks/wrk_throughput.py

# Several workers (issue #10): what sharing their numbers costs, and a window of all.
bench-workers: $(STAMP)
	$(BIN)/python -m benchmarks.workers_flush --routes 20
	$(BIN)/python -m benchmarks.workers_flush --routes 200

# Issue #9: the sampler, loop monitor, continuous ring and sample_rate, side by side; ~12 min.
bench-sampler: $(STAMP)
	$(BIN)/python benchmarks/sampler_overhead.py

# Issue #9: per-route shares of a sampler window, two routes burning 3 : 1; ~2 min.
bench-attribution: $(STAMP)
	$(BIN)/python benchmarks/attribution.py

bench-callgrind: $(STAMP)
	$(BIN)/python benchmarks/callgrind_instructions.py

# Issue #15: this tree against BASE (default origin/main, else main), both
# measured in this run: callgrind, pytest-benchmark, a Locust run of the shop.
# Knobs: BENCH_GATE_QUICK=1, BENCH_GATE_ONLY=callgrind,pytest,locust,
# BENCH_GATE_LOCUST_STRICT=1. Exit 1: a figure past its threshold; 2: set-up.
BASE ?=
bench-gate: $(STAMP)
	$(BIN)/python -m benchmarks.gate $(if $(BASE),--base $(BASE))

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .benchmarks perf-results .coverage htmlcov bench-gate-results
