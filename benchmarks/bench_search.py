"""Supernet training throughput: the lowered `specs/cifar.pnas` against a hand-written PyTorch
module of the same supernet, measured in the same run; then the peak memory of a short search.

One training step = forward, the loss of equation (12), backward, the weight optimizer step
(SGD, Nesterov momentum) and the architecture optimizer step (Adam), as `parnasc.nas.search` does.
Both models get the same channels_last batches (what `parnasc.data.cifar.Loader` yields). Windows
of the two models alternate, so a load change on the machine hits both alike; the figures are
the median (and the best) images/s over the windows. Other processes on a small machine make
multi-thread wall-clock figures noisy (OpenMP threads spin when they lose their core), so a
second comparison runs one torch thread timed by that thread's CPU clock, which they hardly
disturb.

    .venv/bin/python benchmarks/bench_search.py [--batch 128] [--threads 2] [--windows 9]
        [--steps 2] [--no-search] [--no-cpu-check]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from parnasc.ir.frontend import compile_file  # noqa: E402
from parnasc.ir.graph import IR  # noqa: E402
from parnasc.nas.loss import CostModel, flops_costs, total_loss  # noqa: E402
from parnasc.nas.lower import Net, lower  # noqa: E402

SPEC = ROOT / "specs/cifar.pnas"
ALPHA, BETA = 0.28, 0.01


# --- the hand-written supernet -----------------------------------------------------------------


def cbr(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class HandSupernet(nn.Module):
    """Table 1 by hand: 5x5 stem, 4 levels x 2 paths of {conv 3x3, conv 5x5} mixed by softmax
    weights (equations 1-2), a searchable concat + 1x1 sync after each level (equation 3),
    concat merge, GAP, FC-ReLU, dropout, FC."""

    LEVELS = ((8, 8, 1), (8, 16, 2), (16, 32, 2), (32, 64, 2))  # (in, out, stride)

    def __init__(self, paths: int = 2) -> None:
        super().__init__()
        self.n_paths = paths
        self.stem = cbr(3, 8, 5)
        self.blocks = nn.ModuleList(
            nn.ModuleList(
                nn.ModuleList([cbr(ci, co, 3, s), cbr(ci, co, 5, s)]) for _ in range(paths)
            )
            for ci, co, s in self.LEVELS
        )
        self.syncs = nn.ModuleList(cbr(paths * co, co, 1) for _, co, _ in self.LEVELS)
        self.op_logits = nn.Parameter(torch.zeros(len(self.LEVELS), paths, 2))
        self.sync_logits = nn.Parameter(torch.zeros(len(self.LEVELS), 2))  # [sync, direct]
        co = self.LEVELS[-1][1]
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(paths * co, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(0.2),
            nn.Linear(128, 10),
        )

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.op_logits, self.sync_logits]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p_op = F.softmax(self.op_logits, -1)
        p_sync = F.softmax(self.sync_logits, -1)
        x = self.stem(x)
        outs = [x] * self.n_paths
        for lv, (level, sync) in enumerate(zip(self.blocks, self.syncs, strict=True)):
            outs = [
                level[p][0](outs[p]) * p_op[lv, p, 0] + level[p][1](outs[p]) * p_op[lv, p, 1]
                for p in range(self.n_paths)
            ]
            s = sync(torch.cat(outs, 1))
            outs = [s * p_sync[lv, 0] + o * p_sync[lv, 1] for o in outs]
        return self.head(torch.cat(outs, 1))

    def cost_terms(self, costs: CostModel) -> torch.Tensor:
        """loss_ops + loss_sync (equations 6 and 11) from the same FLOPs table."""
        levels = range(len(self.LEVELS))
        c_op = torch.stack(
            [torch.stack([costs.blocks[f"l{lv + 1}:p{p + 1}"] for p in range(self.n_paths)])
             for lv in levels]
        )
        c_sync = torch.tensor([costs.syncs[f"l{lv + 1}:sync"] for lv in levels])
        p_op = F.softmax(self.op_logits, -1)
        p_sync = F.softmax(self.sync_logits, -1)
        return ((p_op * c_op).sum() + (p_sync[:, 0] * c_sync).sum()) / costs.norm

    def load_from(self, net: Net) -> None:
        """Copy the generated supernet's weights (to check that both compute the same)."""
        self.stem.load_state_dict(net.stem[0].state_dict())
        for lv, level in enumerate(self.blocks):
            name = f"l{lv + 1}"
            for p in range(self.n_paths):
                for i in range(2):
                    level[p][i].load_state_dict(net.paths[f"p{p + 1}"][name].ops[i].state_dict())
            self.syncs[lv].load_state_dict(net.syncs[name].reduce.state_dict())
        self.head[2].load_state_dict(net.head[1][0].state_dict())
        self.head[5].load_state_dict(net.head[3].state_dict())
        with torch.no_grad():
            for lv in range(len(self.LEVELS)):
                for p in range(self.n_paths):
                    self.op_logits[lv, p] = net.arch[f"l{lv + 1}:p{p + 1}"]
                self.sync_logits[lv] = net.arch[f"l{lv + 1}:sync"]


# --- timing ----------------------------------------------------------------------------------


def make_step(
    model: nn.Module, costs: CostModel, x: torch.Tensor, y: torch.Tensor
) -> Callable[[], None]:
    """One search step of `model` (generated Net or HandSupernet) on the batch (x, y)."""
    w_opt = torch.optim.SGD(
        model.weight_parameters(), lr=0.05, momentum=0.9, weight_decay=3e-4, nesterov=True  # type: ignore[operator]
    )
    arch = list(model.arch.parameters()) if isinstance(model, Net) else model.arch_parameters()  # type: ignore[operator]
    a_opt = torch.optim.Adam(arch, lr=3e-3, betas=(0.5, 0.999), weight_decay=1e-3)
    model.train()

    def step() -> None:
        logits = model(x)
        if isinstance(model, Net):
            loss, _ = total_loss(logits, y, model.probabilities(), costs, ALPHA, BETA)
        else:
            loss = ALPHA * F.cross_entropy(logits, y) + BETA * model.cost_terms(costs)  # type: ignore[operator]
        w_opt.zero_grad(set_to_none=True)
        a_opt.zero_grad(set_to_none=True)
        loss.backward()
        w_opt.step()
        a_opt.step()

    return step


def throughput(
    steps: dict[str, Callable[[], None]],
    batch: int,
    windows: int,
    per_window: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """images/s per window for each step function, windows interleaved, after a warm-up."""
    for fn in steps.values():
        for _ in range(3):
            fn()
    rates: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(windows):
        for name, fn in steps.items():
            t = clock()
            for _ in range(per_window):
                fn()
            rates[name].append(per_window * batch / (clock() - t))
    return rates


def compare(
    ir: IR, costs: CostModel, batch: int, threads: int, windows: int, per_window: int, cpu: bool
) -> tuple[float, float, float, float]:
    """(generated, hand-written) images/s: medians, then bests over the windows. `cpu`: time
    with this thread's CPU clock (one torch thread only), which other load hardly disturbs."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net, hand = lower(ir), HandSupernet(ir.paths)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, 32, 32, generator=g)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), generator=g)
    rates = throughput(
        {"generated": make_step(net, costs, x, y), "hand": make_step(hand, costs, x, y)},
        batch, windows, per_window, time.thread_time if cpu else time.perf_counter,
    )
    gen, ref = rates["generated"], rates["hand"]
    return statistics.median(gen), statistics.median(ref), max(gen), max(ref)


def check_same_function(net: Net, hand: HandSupernet, x: torch.Tensor) -> float:
    hand.load_from(net)
    net.eval()
    hand.eval()
    with torch.no_grad():
        return float((net(x) - hand(x)).abs().max())


def peak_memory_of_search() -> tuple[float, float, str]:
    """(peak RSS MiB, seconds, command) of a short real search in a child process."""
    archive = ROOT.parent / "shared/datasets/cifar10-jpeg.tar.gz"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            str(Path(sys.executable).with_name("parnasc")), "search", str(SPEC),
            "--data", str(archive), "--epochs", "2", "--warmup", "1", "--train-images", "2000",
            "--test-images", "500", "--batch", "128", "--threads", "2", "--out", f"{tmp}/run",
        ]
        t = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=tmp, capture_output=True)
        seconds = time.perf_counter() - t
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    shown = " ".join(cmd[1:]).replace(str(ROOT) + "/", "").replace(tmp, "TMP")
    return peak_kib / 1024, seconds, f"parnasc {shown}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--windows", type=int, default=9)
    ap.add_argument("--steps", type=int, default=2, help="training steps per timed window")
    ap.add_argument("--no-search", action="store_true", help="skip the peak-memory search")
    ap.add_argument(
        "--no-cpu-check", action="store_true", help="skip the 1-thread CPU-time comparison"
    )
    args = ap.parse_args()

    _, ir = compile_file(SPEC)
    costs = flops_costs(ir)
    torch.manual_seed(0)
    net, hand = lower(ir), HandSupernet(ir.paths)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for p in net.arch.values():
            p.normal_(generator=g)
    diff = check_same_function(net, hand, x)
    print(f"max |generated - hand-written| output difference (eval, same weights): {diff:.2e}")
    assert diff < 1e-4, "the hand-written module does not compute the generated supernet"

    runs = [(args.threads, False)] + ([] if args.no_cpu_check else [(1, True)])
    for threads, cpu in runs:
        gen, ref, gen_best, ref_best = compare(
            ir, costs, args.batch, threads, args.windows, args.steps, cpu
        )
        clock = "CPU time of the thread" if cpu else "wall clock"
        print(
            f"supernet training throughput, batch {args.batch}, {threads} thread(s), {clock}, "
            f"{args.windows} windows x {args.steps} steps (median / best window):"
        )
        print(f"  generated (parnasc.nas.lower)  {gen:8.1f} / {gen_best:8.1f} images/s")
        print(f"  hand-written PyTorch       {ref:8.1f} / {ref_best:8.1f} images/s")
        print(f"  ratio generated / hand     {gen / ref:8.3f} / {gen_best / ref_best:8.3f}")
    if not args.no_search:
        mib, secs, cmd = peak_memory_of_search()
        print(f"peak RSS of a short search: {mib:.0f} MiB ({secs:.0f} s): {cmd}")


if __name__ == "__main__":
    main()
