"""Training-step time of concrete architectures: what one retraining step (forward, cross
entropy, backward, SGD with Nesterov momentum) costs for each spec, all specs timed
interleaved in one run (`parnasc.timing.interleaved`, the order rotating every round), so a
load change on the machine hits all alike. Prints per spec the median, p90 and p99 of a step,
images/s at the median, the spec's FLOPs, and the ratio of its median to the first spec's.

Batches are channels_last float32 of the spec's input shape (what `parnasc.data.cifar.Loader`
yields); their values do not change the time of these dense kernels, so they are random.

    .venv/bin/python benchmarks/bench_train_step.py SPEC [SPEC...] [--batch 128] [--threads 2]
        [--rounds 10] [--steps 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from parnasc.ir.frontend import compile_file  # noqa: E402
from parnasc.ir.graph import flops_range  # noqa: E402
from parnasc.nas.train import load_concrete  # noqa: E402
from parnasc.timing import interleaved  # noqa: E402


def make_step(spec: Path, batch: int) -> tuple[object, float]:
    """A callable running one training step of `spec`'s network, and the spec's FLOPs."""
    _, ir = compile_file(spec)
    s, net = load_concrete(spec, None)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    x = torch.randn(batch, *s.input).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, s.classes, (batch,))

    def step() -> None:
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, float(flops_range(ir)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("specs", nargs="+", type=Path)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=5, help="steps per spec and round")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    steps, flops = zip(*(make_step(p, a.batch) for p in a.specs), strict=True)
    series = interleaved(list(steps), a.rounds, a.steps, warmup=3)
    print(f"training step, batch {a.batch}, {a.threads} torch threads, {a.rounds} rounds x "
          f"{a.steps} steps, interleaved:")  # fmt: skip
    base = series[0].stats()["median_ms"]
    for path, fl, ser in zip(a.specs, flops, series, strict=True):
        st = ser.stats()
        rate = a.batch / st["median_ms"] * 1e3
        print(f"  {path!s:<60} {fl / 1e6:6.1f} MFLOPs  median {st['median_ms']:7.1f} ms  "
              f"p90 {st['p90_ms']:7.1f}  p99 {st['p99_ms']:7.1f}  {rate:6.0f} img/s  "
              f"{st['median_ms'] / base:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
