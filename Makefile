# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck imports pytest bench bench-wrk bench-sampler bench-attribution bench-callgrind clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

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
pytest: $(STAMP)
	$(BIN)/coverage run -m pytest
	$(BIN)/coverage report

test: lint typecheck imports pytest

bench: $(STAMP)
	$(BIN)/pytest benchmarks --benchmark-only -p no:randomly -o testpaths=benchmarks

bench-wrk: $(STAMP)
	$(BIN)/python benchmarks/wrk_throughput.py

# Issue #9: the sampler, loop monitor, continuous ring and sample_rate, side by side; ~12 min.
bench-sampler: $(STAMP)
	$(BIN)/python benchmarks/sampler_overhead.py

# Issue #9: per-route shares of a sampler window, two routes burning 3 : 1; ~2 min.
bench-attribution: $(STAMP)
	$(BIN)/python benchmarks/attribution.py

bench-callgrind: $(STAMP)
	$(BIN)/python benchmarks/callgrind_instructions.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .benchmarks perf-results .coverage htmlcov
