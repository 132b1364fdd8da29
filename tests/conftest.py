"""Shared test helpers: run the installed `parnasc` command in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Tests run on the CPU: `--device` defaults to CUDA where torch finds it, so GPUs are hidden from
# this process and the commands it starts (before torch initialises CUDA).
# PARNASC_TEST_CUDA=1 keeps them, for the CUDA tests of test_device.py on a machine with one.
if os.environ.get("PARNASC_TEST_CUDA") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
PARNASC = Path(sys.executable).with_name("parnasc")  # the console script of this venv

RunCli = Callable[..., subprocess.CompletedProcess[str]]
CIFAR = Path(os.environ.get("PARNASC_CIFAR") or ROOT.parent / "shared/datasets/cifar10-jpeg.tar.gz")


@pytest.fixture(scope="session")
def cifar_archive() -> Path:
    """The real CIFAR-10 archive (`PARNASC_CIFAR`, default ../shared/datasets/), decoded once
    into the shared cache so that processes started later only read it."""
    if not CIFAR.is_file():
        pytest.fail(f"CIFAR-10 archive not found at {CIFAR} (set PARNASC_CIFAR to its path)")
    from parnasc.data.cifar import load_cifar10

    load_cifar10(CIFAR)
    return CIFAR


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torch on one thread (bit-exact comparisons within a test), the count restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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


# Environment variables that are not a test's doing: pytest's own, and torch's inductor cache
# directory, which torch sets the first time an optimizer steps in a process.
_ENV_NOT_STATE = {"PYTEST_CURRENT_TEST", "TORCHINDUCTOR_CACHE_DIR"}


def _global_state() -> dict[str, object]:
    """Process-wide settings a test could change and leave behind for later tests."""
    env = {k: v for k, v in os.environ.items() if k not in _ENV_NOT_STATE}
    state: dict[str, object] = {"cwd": os.getcwd(), "env": env}
    if hasattr(os, "sched_getaffinity"):
        state["affinity"] = os.sched_getaffinity(0)
    torch = sys.modules.get("torch")
    if torch is not None:
        state["torch_threads"] = torch.get_num_threads()
    return state


@pytest.fixture(autouse=True)
def _no_leaked_global_state() -> Iterator[None]:
    """Fail a test that leaves the cwd, environment, CPU affinity or torch's thread count
    changed (use monkeypatch or try/finally), after putting them back for the next test."""
    before = _global_state()
    yield
    after = _global_state()
    leaked = sorted(k for k in before if after.get(k) != before[k])
    if not leaked:
        return
    os.chdir(str(before["cwd"]))
    for k in set(os.environ) - set(before["env"]) - _ENV_NOT_STATE:  # type: ignore[arg-type]
        del os.environ[k]
    os.environ.update(before["env"])  # type: ignore[arg-type]
    if "affinity" in leaked:
        os.sched_setaffinity(0, before["affinity"])  # type: ignore[arg-type]
    if "torch_threads" in leaked:
        sys.modules["torch"].set_num_threads(before["torch_threads"])
    pytest.fail(f"the test changed global state and did not restore it: {', '.join(leaked)}")
