#!/usr/bin/env bash
# Move to the newest dependency releases that pyproject.toml's ranges allow: build a fresh
# venv (.venv-lock) without the constraints, run the whole test suite in it, and only if it
# passes rewrite constraints.txt with the exact versions it used. Review the diff, commit.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
V=.venv-lock
rm -rf "$V"
"$PY" -m venv "$V"
"$V/bin/python" -m pip install -q --upgrade pip
"$V/bin/python" -m pip install -q "torch==2.13.0"   # the CPU build on disk (see setup.sh)
"$V/bin/python" -m pip install -q -e ".[dev]"
"$V/bin/ruff" check parnasc tests benchmarks
"$V/bin/mypy" parnasc
"$V/bin/python" -m pytest -q -n 2 "$@"
{
  echo "# Exact versions the test suite passed with (written by scripts/lock.sh; used by setup.sh)."
  echo "pip==$("$V/bin/python" -m pip --version | cut -d' ' -f2)"
  "$V/bin/python" -m pip freeze --exclude-editable | grep -v "^-e " | sed 's/+cpu$//' | LC_ALL=C sort -f
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "constraints.txt updated from a passing run; review 'git diff constraints.txt' and commit"
