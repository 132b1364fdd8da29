#!/usr/bin/env bash
# Set up, then lint (ruff), type-check (mypy) and run the whole test suite. Fails on any error.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check parnasc tests benchmarks examples
.venv/bin/mypy parnasc
.venv/bin/python -m pytest -q "$@"
