# The two commands of the README:  `make demo`  and  `make test`.
# Each sets everything up from a fresh clone (only Python needed) and then runs.
.PHONY: setup demo test test-fast lint bench browser clean

setup:
	bash scripts/bootstrap.sh all

demo: setup
	.venv/bin/shortcut-detect demo

test:
	bash scripts/bootstrap.sh test
	bash scripts/install_browser.sh
	.venv/bin/python -m ruff check src tests benchmarks
	.venv/bin/python -m pytest -q

test-fast:
	bash scripts/bootstrap.sh test
	.venv/bin/python -m pytest -q -m "not slow and not browser and not ray"

lint:
	.venv/bin/python -m ruff check src tests benchmarks
	.venv/bin/python -m ruff format --check src tests benchmarks

bench: setup
	.venv/bin/python benchmarks/bench_engine.py

clean:
	rm -rf .venv build dist *.egg-info .pytest_cache
