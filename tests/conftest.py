"""Shared test helpers: run the installed `parnasc` command in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PARNASC = Path(sys.executable).with_name("parnasc")  # the console script of this venv

RunCli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_cli() -> RunCli:
    """`run_cli("check", "x.pnas", cwd=..., env={...})`: run parnasc, capture text output.

    PARNASC_DEBUG is cleared unless `env` sets it, so user errors print without a traceback.
    """

    def run(
        *args: str | Path, cwd: str | Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        full = {k: v for k, v in os.environ.items() if k != "PARNASC_DEBUG"}
        full.update(env or {})
        return subprocess.run(
            [str(PARNASC), *map(str, args)],
            cwd=cwd,
            env=full,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run
