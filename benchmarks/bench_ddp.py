"""Data-parallel search against one process: `torchrun --nproc-per-node 2 -m parnasc search`
(one torch thread per process) against `parnasc search --threads 2` (one process, two
threads), the same spec, data and settings, so the same total batch.

Rounds alternate the two (rotating which goes first), each run a new search of `--epochs`
epochs in its own run directory; a run's rate is the median over its epochs after the first
(the first pays for one-time imports and allocations) of the training images per second that
the search logs (`metrics.jsonl`: training steps only, the evaluation excluded; for two
processes, all ranks' images over rank 0's time). The figures are the medians over the rounds,
and the ratio the median of the per-round ratios. The two-process runs also log the mean time
of a gradient all-reduce per step (`allreduce_ms`, waiting for the slower rank included). Every
run of a kind derives the same architecture (the same seed and reductions); both are printed
side by side with their probabilities.

    .venv/bin/python benchmarks/bench_ddp.py [--data PATH] [--spec specs/cifar.pnas]
        [--train-images 6000] [--epochs 4] [--warmup 1] [--rounds 5] [--json FILE]

`--step` instead times one training step of the supernet alone (forward, the loss of
equation 12, backward, both optimizers; random channels_last inputs; median of 15 steps after
5): 2 threads on the whole batch, 1 thread on half of it, and two such 1-thread processes side
by side, which is the ceiling of the data-parallel speed-up before any communication.

Run it with nothing else running: other processes on 2 cores distort both.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared/datasets/cifar10-jpeg.tar.gz"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _command(kind: str, search: list[str]) -> list[str]:
    if kind == "1x2":
        return [sys.executable, "-m", "parnasc", *search, "--threads", "2"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    launch += ["--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    return [*launch, "-m", "parnasc", *search, "--threads", "1"]


def _run(kind: str, search: list[str], out: Path) -> dict[str, Any]:
    """One search; its rate, all-reduce time, architecture and probabilities."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # torchrun's default, said explicitly
    p = subprocess.run(
        [*_command(kind, search), "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        sys.exit(f"{kind} search failed:\n{p.stdout}\n{p.stderr}")
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    later = rows[1:] or rows
    result = json.loads((out / "result.json").read_text())
    return {
        "images_per_s": statistics.median(r["images_per_s"] for r in later),
        "allreduce_ms": statistics.median(r.get("allreduce_ms", 0.0) for r in later),
        "choices": result["choices"],
        "probabilities": result["probabilities"],
        "val_acc": result["val_acc"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--spec", type=Path, default=ROOT / "specs/cifar.pnas")
    ap.add_argument("--train-images", type=int, default=6000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None, help="write the figures as JSON")
    ap.add_argument("--step", action="store_true", help="time one step, no search (above)")
    ap.add_argument("--step-one", nargs=2, type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.step_one:
        _step(a.spec, *a.step_one)
        return
    if a.step:
        _steps(a.spec)
        return
    search = ["search", str(a.spec.resolve()), "--cores", "2", "--data", str(a.data.resolve())]
    search += ["--train-images", str(a.train_images), "--test-images", "500"]
    search += ["--epochs", str(a.epochs), "--warmup", str(a.warmup)]
    kinds = ("1x2", "2x1")
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        for i in range(a.rounds):
            for kind in kinds if i % 2 == 0 else kinds[::-1]:
                r = _run(kind, search, Path(tmp) / f"{kind}-{i}")
                runs[kind].append(r)
                print(
                    f"round {i + 1} {kind}: {r['images_per_s']:.0f} img/s"
                    + (f", all-reduce {r['allreduce_ms']:.1f} ms/step" if kind == "2x1" else ""),
                    flush=True,
                )
    one, two = runs["1x2"], runs["2x1"]
    rate1 = statistics.median(r["images_per_s"] for r in one)
    rate2 = statistics.median(r["images_per_s"] for r in two)
    ratio = statistics.median(
        q["images_per_s"] / p["images_per_s"] for p, q in zip(one, two, strict=True)
    )
    comm = statistics.median(r["allreduce_ms"] for r in two)
    batch = _batch(a.spec)
    step_ms = 1000 * batch / rate2
    print(f"\n{a.spec.name}, batch {batch}, {a.train_images} images, {a.epochs} epochs")
    print(f"1 process x 2 threads:  {rate1:.0f} img/s")
    print(f"2 processes x 1 thread: {rate2:.0f} img/s ({ratio:.2f}x, median of per-round ratios)")
    print(
        f"all-reduce: {comm:.1f} ms per step of {step_ms:.0f} ms "
        f"({100 * comm / step_ms:.0f}%), waiting for the slower rank included"
    )
    same = all(r["choices"] == one[0]["choices"] for r in one) and all(
        r["choices"] == two[0]["choices"] for r in two
    )
    print(f"architecture (every run of a kind the same: {same}):")
    print(f"  {'decision':<10} {'1 x 2':<24} {'2 x 1':<24}")
    for k, c1 in one[0]["choices"].items():
        p1, p2 = one[0]["probabilities"][k], two[0]["probabilities"][k]
        c2 = two[0]["choices"][k]
        print(f"  {k:<10} {c1 + f' ({max(p1):.2f})':<24} {c2 + f' ({max(p2):.2f})':<24}")
    print(f"  val acc    {one[0]['val_acc']:<24.3f} {two[0]['val_acc']:<24.3f}")
    if a.json is not None:
        from parnasc.files import write_text

        figures = {"rate_1x2": rate1, "rate_2x1": rate2, "ratio": ratio, "allreduce_ms": comm}
        write_text(a.json, json.dumps({**figures, "runs": runs}, indent=1) + "\n")


def _step(spec: Path, threads: int, batch: int) -> None:
    """Print the median time of one training step of the supernet of `spec`."""
    sys.path.insert(0, str(ROOT))
    import torch

    from parnasc.ir.frontend import compile_file
    from parnasc.nas.loss import flops_costs, total_loss
    from parnasc.nas.lower import lower

    torch.set_num_threads(threads)
    s, ir = compile_file(spec)
    torch.manual_seed(0)
    net, costs = lower(ir).train(), flops_costs(ir)
    w = torch.optim.SGD(net.weight_parameters(), lr=0.01, momentum=0.9, nesterov=True)
    arch = torch.optim.Adam(list(net.arch.parameters()), lr=0.03)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        logits = net(x)
        loss, _ = total_loss(logits, y, net.probabilities(), costs, s.search.alpha, s.search.beta)
        w.zero_grad()
        arch.zero_grad()
        loss.backward()
        w.step()
        arch.step()
        times.append(time.perf_counter() - t0)
    ms = 1000 * statistics.median(times[5:])
    print(f"{threads} thread(s), {batch} images: {ms:.1f} ms per step", flush=True)


def _steps(spec: Path) -> None:
    """One step at 2 threads x batch, 1 thread x batch / 2 alone, and two of those at once."""
    batch = _batch(spec)
    me = [sys.executable, __file__, "--spec", str(spec), "--step-one"]
    subprocess.run([*me, "2", str(batch)], check=True)
    subprocess.run([*me, "1", str(batch // 2)], check=True)
    print("side by side:", flush=True)
    both = [subprocess.Popen([*me, "1", str(batch // 2)]) for _ in range(2)]
    for p in both:
        p.wait()


def _batch(spec: Path) -> int:
    sys.path.insert(0, str(ROOT))
    from parnasc.ir.frontend import compile_file

    return compile_file(spec)[0].search.batch


if __name__ == "__main__":
    main()
