"""Front-end timings: `parnasc check` as a whole process, and compile time against spec size.

    .venv/bin/python benchmarks/bench_compile.py            # everything (about two minutes)
    .venv/bin/python benchmarks/bench_compile.py --quick    # 100 and 1,000 levels only

(a) `parnasc check specs/cifar.pnas`: median wall time of >= 21 runs, interleaved with a bare
    `python -c pass`, once as the environment is (PYTHONDONTWRITEBYTECODE may be set, then
    parnasc's own modules are compiled from source on every run) and once with a bytecode cache
    (PYTHONPYCACHEPREFIX in a temporary folder, warmed first). Asserts that torch, onnx,
    matplotlib and networkx are never imported, and shows what the import time is spent on
    (the self time of each package, and what lark, typer and pydantic cost on their own).
(b) parse + resolve + build + passes, in-process, median of 3, for generated specs of 100,
    1,000 and 10,000 levels x 4 paths: each step on its own with the cyclic GC running, and
    the front end's entry `compile_source`, which runs them all with the GC paused once
    (parnasc.ir.graph.gc_paused): that is what keeps the growth linear. CPU time
    (time.process_time: single-threaded work, less disturbed by other load than wall time).

Nothing here is asserted about time: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
PARNASC = str(Path(PY).with_name("parnasc"))
SPEC = ROOT / "specs" / "cifar.pnas"
sys.path.insert(0, str(ROOT / "tests"))  # the generated specs are the tests' own

from test_ir import generated_spec  # noqa: E402

Run = tuple[list[str], dict[str, str]]  # a command and its environment


def median_walls(runs: list[Run], rounds: int) -> list[float]:
    """Median wall time of each command, the commands interleaved round by round (so that a
    change of the machine's load hits all of them alike)."""
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(rounds):
        for cmd_times, (cmd, env) in zip(times, runs, strict=True):
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, cwd=ROOT, capture_output=True)
            cmd_times.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


# --- (a) the check command ---------------------------------------------------------------------


def heavy_modules() -> list[str]:
    """Modules of the heavy stack (and networkx) that `parnasc check` loads (must be none)."""
    code = (
        "import sys\n"
        f"sys.argv = ['parnasc', 'check', {str(SPEC)!r}]\n"
        "from parnasc.cli import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = ('torch', 'onnx', 'onnxruntime', 'matplotlib', 'PIL', 'networkx')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([PY, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT)
    return [m for m in out.stdout.strip().split(",") if m]


def import_profile(stmt: str, env: dict[str, str]) -> tuple[float, dict[str, float]]:
    """Total import time of `stmt` and self time per top-level package, in seconds."""
    out = subprocess.run(
        [PY, "-X", "importtime", "-c", stmt], check=True, capture_output=True, text=True, env=env
    )
    per: dict[str, float] = defaultdict(float)
    total = 0.0
    for line in out.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if not m:
            continue
        self_us, cum_us, indent, name = int(m[1]), int(m[2]), len(m[3]), m[4]
        per[name.split(".")[0]] += self_us / 1e6
        if indent == 1:
            total += cum_us / 1e6
    return total, dict(per)


def bench_check(runs: int) -> None:
    print("(a) parnasc check specs/cifar.pnas (whole process)")
    heavy = heavy_modules()
    assert not heavy, f"parnasc check imported {heavy}"
    print("    imports none of torch, onnx, onnxruntime, matplotlib, PIL, networkx: ok")
    with tempfile.TemporaryDirectory() as cache:
        envs = {
            "as configured": dict(os.environ),
            "bytecode cache": {
                **{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
                "PYTHONPYCACHEPREFIX": cache,
            },
        }
        for env in envs.values():  # warm the disk cache (and the bytecode cache)
            subprocess.run([PARNASC, "check", str(SPEC)], check=True, env=env)
        note = os.environ.get("PYTHONDONTWRITEBYTECODE")
        print(f"    PYTHONDONTWRITEBYTECODE={note!r} in this environment; median of {runs} runs:")
        print(f"    {'':16} {'check':>8} {'python -c pass':>15} {'ratio':>6}")
        pairs = [
            run for env in envs.values() for run in (([PARNASC, "check", str(SPEC)], env),
                                                     ([PY, "-c", "pass"], env))
        ]  # fmt: skip
        walls = median_walls(pairs, runs)
        for i, name in enumerate(envs):
            check, bare = walls[2 * i], walls[2 * i + 1]
            print(f"    {name:16} {check:7.3f}s {bare:14.3f}s {check / bare:6.1f}")
        env = envs["bytecode cache"]
        stmt = "import parnasc.cli, parnasc.ir.frontend"
        total, per = import_profile(stmt, env)
        print(f"    import profile of `{stmt}` (-X importtime, bytecode cache): {total:.3f}s")
        top = sorted(per.items(), key=lambda kv: -kv[1])[:10]
        print("      self time by package: " + ", ".join(f"{k} {v * 1000:.0f}ms" for k, v in top))
        stmts = [
            "pass",
            "import lark",
            "import typer",
            "import pydantic",
            "from pydantic import BaseModel\nclass M(BaseModel): x: int",
        ]
        walls = median_walls([([PY, "-c", stmt], env) for stmt in stmts], runs)
        for stmt, t in zip(stmts[1:], walls[1:], strict=True):
            shown = stmt.replace("\n", "; ")
            print(f"    `{shown}`: {t - walls[0]:.3f}s over bare startup")


# --- (b) compile time against size -------------------------------------------------------------


def compile_once(text: str, entry: bool) -> dict[str, float]:
    """CPU time of each step (GC running), or of the front end's entry (`entry`: GC paused)."""
    from parnasc.ir import passes
    from parnasc.ir.frontend import compile_source
    from parnasc.ir.graph import build
    from parnasc.lang.parse import parse
    from parnasc.lang.spec import resolve

    if entry:
        t0 = time.process_time()
        compile_source(text)
        return {"total": time.process_time() - t0}
    stages: list[tuple[str, Callable[[object], object]]] = [
        ("parse", lambda t: parse(str(t))),
        ("resolve", resolve),  # type: ignore[list-item]
        ("build", build),  # type: ignore[list-item]
        ("passes", passes.run),  # type: ignore[list-item]
    ]
    times: dict[str, float] = {}
    value: object = text
    for name, f in stages:
        t0 = time.process_time()
        value = f(value)
        times[name] = time.process_time() - t0
    times["total"] = sum(times.values())
    return times


def bench_compile(sizes: list[int], runs: int) -> None:
    import gc

    print(f"\n(b) compile CPU time (s), generated specs x 4 paths, in-process, median of {runs}")
    head = f"    {'levels':>7} {'parse':>7} {'resolve':>8} {'build':>7} {'passes':>7}"
    print(f"{head} {'total':>7} {'per level':>10}   {'entry':>9} {'per level':>10}")
    totals: dict[int, tuple[float, float]] = {}
    for n in sizes:
        text = generated_spec(n, 4)
        med: dict[str, float] = {}
        samples = [compile_once(text, False) for _ in range(runs)]
        for k in samples[0]:
            med[k] = statistics.median(s[k] for s in samples)
        gc.collect()
        paused = statistics.median(compile_once(text, True)["total"] for _ in range(runs))
        gc.collect()
        totals[n] = (med["total"], paused)
        print(
            f"    {n:>7,} {med['parse']:7.3f} {med['resolve']:8.3f} {med['build']:7.3f} "
            f"{med['passes']:7.3f} {med['total']:7.3f} {med['total'] / n * 1e3:8.3f}ms"
            f"   {paused:8.3f}s {paused / n * 1e3:8.3f}ms"
        )
    for a, b in itertools.pairwise(sizes):
        r, rp = totals[b][0] / totals[a][0], totals[b][1] / totals[a][1]
        print(f"    ratio {b:,}/{a:,}: {r:.1f} (entry: {rp:.1f}; linear: {b / a:.0f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the 10,000-level spec")
    ap.add_argument("--runs", type=int, default=21, help="process runs per median (>= 21)")
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    bench_check(max(21, args.runs))
    bench_compile([100, 1000] if args.quick else [100, 1000, 10000], 3)


if __name__ == "__main__":
    main()
