#!/usr/bin/env bash
# Create .venv and install parnasc with its dev tools at the exact versions the suite is tested
# with (constraints.txt; scripts/lock.sh moves to newer releases). torch is installed first and
# pinned to the CPU build that lies on disk (an unpinned torch would pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP=(.venv/bin/python -m pip install -q -c constraints.txt)
quiet() { grep -v "^WARNING: Location" || true; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
"${PIP[@]}" --upgrade pip 2>&1 | quiet
"${PIP[@]}" "torch==2.13.0" 2>&1 | quiet
"${PIP[@]}" -e ".[dev]" 2>&1 | quiet
# The native executor (parnasc/deploy/native.py): ORT's C headers fetched once into
# ~/.cache/parnasc, the library built with g++ (nothing to do when up to date); where it cannot
# be built the runtime says so and runs its Python lanes.
.venv/bin/python -m parnasc.deploy.native || true
.venv/bin/python -c "import torch, parnasc; print('parnasc', parnasc.__version__, 'torch', torch.__version__)"
