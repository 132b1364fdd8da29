"""Supernet training throughput: the lowered `specs/cifar.pnas` (the fused forward, and the
previous plain per-candidate forward, `Net.fused = False`) against a hand-written PyTorch module
of the same supernet, measured in the same run; then the peak memory of a short search.

One step is what `parnasc.nas.search` does per batch. `--mode alternate` (the default): an
architecture step on a held-out batch (forward, the loss of equation 12, backward, Adam) and a
weight step on a training batch (forward, loss, backward, SGD with Nesterov momentum), so a step
counts 2 x batch images; `--mode joint`: one batch, both optimizers. All models get the same
channels_last batches (what `parnasc.data.cifar.Loader` yields) and are channels_last
themselves (`--contiguous` adds contiguous-layout runs of the fused lowering and of the hand
module). Rounds alternate the models (rotating which goes first), so a load change on the
machine hits all alike; the figures are the median and the p90 over the rounds of images/s,
where p90 is the rate 90% of the rounds reached (the slow tail), and the ratios are medians of
the per-round ratios. Other processes on a small machine make multi-thread wall-clock figures
noisy (OpenMP threads spin when they lose their core), so a second comparison runs one torch
thread timed by that thread's CPU clock, which they hardly disturb.

    .venv/bin/python benchmarks/bench_search.py [--batch 64] [--threads 2] [--mode alternate]
        [--rounds 15] [--steps 3] [--contiguous] [--retain-memory] [--arch-backward]
        [--precision fp32|bf16] [--no-search] [--no-cpu-check]
"""

from __future__ import annotations

import argparse
import copy
import ctypes
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
from parnasc.nas.precision import forward  # noqa: E402

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

    LEVELS = ((8, 8, 1), (8, 16, 2), (16, 32, 2), (32, 64, 1))  # (in, out, stride)

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
            [
                torch.stack([costs.blocks[f"l{lv + 1}:p{p + 1}"] for p in range(self.n_paths)])
                for lv in levels
            ]
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

Batch = tuple[torch.Tensor, torch.Tensor]


def make_step(
    model: nn.Module,
    costs: CostModel,
    train: Batch,
    held_out: Batch,
    mode: str,
    arch_grad_only: bool = True,
    precision: str = "fp32",
) -> Callable[[], None]:
    """One search step of `model` (generated Net or HandSupernet), as `parnasc.nas.search`
    runs it: in `alternate` mode an architecture step on `held_out`, then the weight step on
    `train`; in `joint` mode both optimizers step on `train`. `arch_grad_only` (what the
    search does): the architecture step asks for the architecture's gradient alone
    (`torch.autograd.grad`); else `backward()` over everything, the weights' gradients then
    discarded. `precision`: the forward passes in `fp32`, or under bf16 autocast as
    `parnasc search --precision bf16` runs them (`parnasc.nas.precision`)."""
    weights = model.weight_parameters()  # type: ignore[operator]
    w_opt = torch.optim.SGD(weights, lr=0.05, momentum=0.9, weight_decay=3e-4, nesterov=True)
    arch = list(model.arch.parameters()) if isinstance(model, Net) else model.arch_parameters()  # type: ignore[operator]
    a_opt = torch.optim.Adam(arch, lr=3e-3, betas=(0.5, 0.999), weight_decay=1e-3)
    model.train()

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = forward(model, x, precision)
        if isinstance(model, Net):
            return total_loss(logits, y, model.probabilities(), costs, ALPHA, BETA)[0]
        return ALPHA * F.cross_entropy(logits, y) + BETA * model.cost_terms(costs)  # type: ignore[operator]

    def step() -> None:
        if mode == "alternate":
            loss = loss_of(*held_out)
            a_opt.zero_grad(set_to_none=True)
            if arch_grad_only:
                for p, g in zip(arch, torch.autograd.grad(loss, arch), strict=True):
                    p.grad = g
            else:
                loss.backward()
            a_opt.step()
        loss = loss_of(*train)
        w_opt.zero_grad(set_to_none=True)
        a_opt.zero_grad(set_to_none=True)
        loss.backward()
        w_opt.step()
        if mode == "joint":
            a_opt.step()

    return step


def throughput(
    steps: dict[str, Callable[[], None]],
    images: int,
    rounds: int,
    per_round: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """images/s per round for each step function (`images` per step), after a warm-up; each
    round runs every model once, the first model rotating from round to round."""
    for fn in steps.values():
        for _ in range(3):
            fn()
    names = list(steps)
    rates: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = steps[name]
            t = clock()
            for _ in range(per_round):
                fn()
            rates[name].append(per_round * images / (clock() - t))
    return rates


def p90(rates: list[float]) -> float:
    """The rate that 90% of the rounds reached (the 10th percentile of images/s)."""
    return statistics.quantiles(rates, n=10, method="inclusive")[0]


def batch(g: torch.Generator, n: int, contiguous: bool = False) -> Batch:
    x = torch.randn(n, 3, 32, 32, generator=g)
    if not contiguous:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, 10, (n,), generator=g)


def models(ir: IR, contiguous: bool) -> dict[str, nn.Module]:
    """The compared modules (`fused` and `plain`: one supernet's weights, copied)."""
    torch.manual_seed(0)
    fused = lower(ir)
    plain = copy.deepcopy(fused)
    plain.fused = False
    cl = torch.channels_last
    out: dict[str, nn.Module] = {
        "hand": HandSupernet(ir.paths).to(memory_format=cl),  # type: ignore[call-overload]
        "plain": plain,
        "fused": fused,
    }
    if contiguous:
        out["hand-nchw"] = HandSupernet(ir.paths)
        out["fused-nchw"] = copy.deepcopy(fused).to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    return out


LABELS = {
    "hand": "hand-written PyTorch",
    "plain": "previous lowering (fused=False)",
    "fused": "parnasc.nas.lower (fused)",
    "hand-nchw": "hand-written, contiguous layout",
    "fused-nchw": "fused lowering, contiguous layout",
}


def compare(
    ir: IR, costs: CostModel, args: argparse.Namespace, threads: int, cpu: bool
) -> dict[str, list[float]]:
    """images/s per round of every model. `cpu`: time with this thread's CPU clock (one torch
    thread only), which other load hardly disturbs."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(1)
    data = {False: (batch(g, args.batch), batch(g, args.batch))}
    g = torch.Generator().manual_seed(1)
    data[True] = (batch(g, args.batch, True), batch(g, args.batch, True))
    steps = {
        name: make_step(
            m,
            costs,
            *data[name.endswith("-nchw")],
            args.mode,
            not args.arch_backward,
            args.precision,
        )
        for name, m in models(ir, args.contiguous).items()
    }
    images = args.batch * (2 if args.mode == "alternate" else 1)
    clock = time.thread_time if cpu else time.perf_counter
    return throughput(steps, images, args.rounds, args.steps, clock)


def report(rates: dict[str, list[float]]) -> None:
    hand = rates["hand"]
    print(f"  {'':34s} {'median':>8s} {'p90':>8s}   vs hand (median of per-round ratios)")
    for name, r in rates.items():
        ratio = statistics.median(a / b for a, b in zip(r, hand, strict=True))
        print(f"  {LABELS[name]:34s} {statistics.median(r):8.1f} {p90(r):8.1f}   {ratio:.3f}x")
    fused, plain = rates["fused"], rates["plain"]
    gain = statistics.median(a / b for a, b in zip(fused, plain, strict=True))
    print(f"  fused / previous lowering: {gain:.3f}x")


def check_same_function(net: Net, hand: HandSupernet, x: torch.Tensor) -> float:
    hand.load_from(net)
    net.eval()
    hand.eval()
    with torch.no_grad():
        return float((net(x) - hand(x)).abs().max())


def check_fused(net: Net, x: torch.Tensor) -> float:
    """max |fused - plain| over the outputs in train mode (batch statistics, dropout drawn from
    one seed) and in eval mode; the train forward updates both copies' BN statistics alike."""
    plain = copy.deepcopy(net)
    plain.fused = False
    diff = 0.0
    with torch.no_grad():
        for training in (True, False):
            net.train(training)
            plain.train(training)
            torch.manual_seed(3)
            a = net(x)
            torch.manual_seed(3)
            diff = max(diff, float((a - plain(x)).abs().max()))
    return diff


def retain_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the system: the
    training step frees and allocates the same multi-MB tensors every step, and by default
    many come back as fresh pages (~4,000 page faults per step of the fused supernet, ~150
    with this). Process-wide; the same as MALLOC_MMAP_THRESHOLD_=33554432
    MALLOC_TRIM_THRESHOLD_=1073741824 in the environment. False where it does not apply."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(
        libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30)
    )


def peak_memory_of_search() -> tuple[float, float, str]:
    """(peak RSS MiB, seconds, command) of a short real search in a child process."""
    archive = ROOT.parent / "shared/datasets/cifar10-jpeg.tar.gz"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            str(Path(sys.executable).with_name("parnasc")),
            "search",
            str(SPEC),
            "--data",
            str(archive),
            "--epochs",
            "2",
            "--warmup",
            "1",
            "--train-images",
            "2000",
            "--test-images",
            "500",
            "--batch",
            "128",
            "--threads",
            "2",
            "--out",
            f"{tmp}/run",
        ]
        t = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=tmp, capture_output=True)
        seconds = time.perf_counter() - t
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    shown = " ".join(cmd[1:]).replace(str(ROOT) + "/", "").replace(tmp, "TMP")
    return peak_kib / 1024, seconds, f"parnasc {shown}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode", choices=("alternate", "joint"), default="alternate")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=3, help="training steps per model and round")
    ap.add_argument("--contiguous", action="store_true", help="add contiguous-layout (NCHW) runs")
    ap.add_argument(
        "--retain-memory",
        action="store_true",
        help="keep freed memory in the process (glibc mallopt), see retain_freed_memory",
    )
    ap.add_argument(
        "--arch-backward",
        action="store_true",
        help="architecture steps call backward() over everything (not the search's way)",
    )
    ap.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="every module's forward passes in float32 or under bf16 autocast",
    )
    ap.add_argument("--no-search", action="store_true", help="skip the peak-memory search")
    ap.add_argument(
        "--no-cpu-check", action="store_true", help="skip the 1-thread CPU-time comparison"
    )
    args = ap.parse_args()
    if args.retain_memory:
        print(f"glibc keeps freed memory: {retain_freed_memory()}")

    _, ir = compile_file(SPEC)
    costs = flops_costs(ir)
    torch.manual_seed(0)
    net, hand = lower(ir), HandSupernet(ir.paths)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for p in net.arch.values():
            p.normal_(generator=g)
    diff = check_fused(net, x)
    print(f"max |fused - plain| output difference (train and eval, same weights): {diff:.2e}")
    assert diff < 1e-4, "the fused forward does not compute the plain supernet"
    diff = check_same_function(net, hand, x)
    print(f"max |generated - hand-written| output difference (eval, same weights): {diff:.2e}")
    assert diff < 1e-4, "the hand-written module does not compute the generated supernet"

    images = "weight + architecture" if args.mode == "alternate" else "joint-step"
    runs = [(args.threads, False)] + ([] if args.no_cpu_check else [(1, True)])
    for threads, cpu in runs:
        rates = compare(ir, costs, args, threads, cpu)
        clock = "CPU time of the thread" if cpu else "wall clock"
        print(
            f"supernet training throughput, {images} images/s, --mode {args.mode}, batch "
            f"{args.batch}, {threads} thread(s), {clock}, {args.precision}, {args.rounds} rounds "
            f"x {args.steps} steps:"
        )
        report(rates)
    if not args.no_search:
        mib, secs, cmd = peak_memory_of_search()
        print(f"peak RSS of a short search: {mib:.0f} MiB ({secs:.0f} s): {cmd}")


if __name__ == "__main__":
    main()
