"""Data-parallel search and retraining on torch.distributed (`torchrun -m parnasc ...`).

Every process (rank) builds the same supernet from the same seed and iterates the same global
batches; each takes its own contiguous share of every batch (`parnasc.data.cifar.Loader`'s
`shard`), so the total batch is the spec's. After each backward the gradients of all
parameters (weights and architecture parameters) are summed across ranks in one all-reduce,
each rank's weighted by its share of the batch, so every rank applies the gradient of the whole
batch's mean loss and the parameters stay bit-identical (checked at every epoch's end: a
digest of every rank's parameters and buffers must agree). Batch norm normalises with each
rank's own share (ghost batches of batch / ranks images); the running statistics are averaged
across ranks before every evaluation and checkpoint, which for equal shares is the running
average of the whole batches' means. Evaluation is sharded too and its counts summed; the
files of a run are written by rank 0 alone.

A single process uses `SOLO`, whose operations do nothing. Imports torch.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from parnasc.errors import OptionError, UserError

# Variables torchrun (and other launchers of the env:// method) set for every process.
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class RankError(UserError):
    """A user error another rank already reports: ranks other than 0 exit 1 without saying it
    again (`cli.main`)."""


def launched() -> bool:
    """Whether this process was started by torchrun (or another env:// launcher)."""
    return all(v in os.environ for v in LAUNCH_VARS)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise OptionError(f"{name}={text}: torchrun's variable must be an integer") from None


def launch_rank() -> int:
    """This process's rank as its launcher set it (0 without one); needs no process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return _env_int("RANK", 0) if launched() else 0


def local_processes() -> int:
    """How many ranks share this machine (torchrun's LOCAL_WORLD_SIZE; 1 without torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return _env_int("LOCAL_WORLD_SIZE", dist.get_world_size())
    return _env_int("LOCAL_WORLD_SIZE", 1) if launched() else 1


def local_rank() -> int:
    """This rank's index on its machine (LOCAL_RANK; the rank itself where it is not set)."""
    return _env_int("LOCAL_RANK", launch_rank())


def device_name(name: str | None) -> str | None:
    """The `--device` of this rank: under torchrun, `cuda` (and the default where CUDA is
    available) means `cuda:LOCAL_RANK`; an explicit `cuda:N` is refused when several ranks
    share the machine."""
    in_group = launched() or (dist.is_available() and dist.is_initialized())
    if not in_group or (name is not None and not name.startswith("cuda")):
        return name
    if name is None and not torch.cuda.is_available():
        return None
    if name is not None and name != "cuda":
        if local_processes() > 1:
            raise OptionError(
                f"--device {name}: under torchrun each process uses cuda:LOCAL_RANK; pass "
                "--device cuda"
            )
        return name
    return f"cuda:{local_rank()}"


@dataclass
class Ranks:
    """The processes of a data-parallel run (`world` of them; this one is `rank`), or `SOLO`.
    `comm_seconds` accumulates the time spent in gradient all-reduces (waiting for the slower
    rank included) since `reset_comm`."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    comm_seconds: float = 0.0
    comm_steps: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes files and shows progress."""
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        """(rank, world), as `Loader` takes it."""
        return self.rank, self.world

    def reset_comm(self) -> None:
        self.comm_seconds, self.comm_steps = 0.0, 0

    def comm_ms_per_step(self) -> float:
        """Mean milliseconds of the gradient all-reduce per step since `reset_comm`."""
        return 1000 * self.comm_seconds / max(1, self.comm_steps)

    def progress(self, values: dict[str, float]) -> dict[str, float]:
        """Running means of this rank's shares for the live display (rank 0's), its images per
        second scaled to all ranks."""
        if self.world > 1 and "images_per_s" in values:
            values = {**values, "images_per_s": values["images_per_s"] * self.world}
        return values

    def row(self, meter: Any) -> dict[str, float]:
        """An epoch's means over every rank's shares (`parnasc.nas.train.Meter.merged`); with
        several ranks also `processes` and `allreduce_ms`, the mean milliseconds of a
        gradient all-reduce since the last row (waiting for the slower rank included)."""
        means: dict[str, float] = meter.merged(self).means()
        if self.world > 1:
            means["processes"] = self.world
            means["allreduce_ms"] = round(self.comm_ms_per_step(), 3)
            self.reset_comm()
        return means

    def check_batch(self, batch: int, option: str = "--batch") -> None:
        """Refuse a batch that does not split into equal shares, one per rank."""
        if batch % self.world:
            raise OptionError(
                f"{option} {batch}: does not split over the {self.world} processes of this "
                "run; each takes an equal share of every batch, so give a multiple of "
                f"{self.world}"
            )

    def average_gradients(self, params: Iterable[nn.Parameter], rows: int) -> None:
        """Replace each parameter's gradient with the batch-weighted mean over the ranks,
        `rows` being this rank's share of the batch (0: it computed no gradient; a missing
        gradient counts as zeros). One all-reduce of all gradients and the row counts."""
        if self.world == 1:
            return
        ps = list(params)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in ps]
        count = torch.tensor([1.0], device=self.device)
        flat = torch.cat([*(g.reshape(-1) for g in grads), count])
        flat.mul_(rows)  # the gradients weighted by this rank's rows, and the rows
        t0 = time.perf_counter()
        dist.all_reduce(flat)
        self.comm_seconds += time.perf_counter() - t0
        self.comm_steps += 1
        means = flat[:-1].div_(flat[-1]).split([g.numel() for g in grads])
        for p, g, mean in zip(ps, grads, means, strict=True):
            if p.grad is None:
                p.grad = mean.view_as(g).clone()
            else:
                p.grad.copy_(mean.view_as(g))

    def average_buffers(self, net: nn.Module) -> None:
        """Average the floating-point buffers (batch-norm running statistics) over the ranks;
        integer ones (batches counted) are the same on every rank already."""
        if self.world == 1:
            return
        bufs = [b for b in net.buffers() if b.is_floating_point()]
        if not bufs:
            return
        flat = torch.cat([b.detach().reshape(-1).double() for b in bufs])
        dist.all_reduce(flat)
        flat /= self.world
        at = 0
        for b in bufs:
            n = b.numel()
            b.copy_(flat[at : at + n].view_as(b))
            at += n

    def broadcast_module(self, net: nn.Module) -> None:
        """Give every rank rank 0's parameters and buffers (the same start by construction;
        this makes it certain)."""
        if self.world == 1:
            return
        with torch.no_grad():
            for t in [*net.parameters(), *net.buffers()]:
                dist.broadcast(t.data, src=0)

    def sum(self, values: list[float]) -> list[float]:
        """The element-wise sum of `values` over the ranks."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return [float(v) for v in t.tolist()]

    def from_main(self, obj: Any) -> Any:
        """Rank 0's `obj` (picklable) on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def check_same(self, what: str, *objects: Any) -> None:
        """Fail when ranks hold different `objects` (modules: parameters and buffers, bit for
        bit; anything else: its repr), a sign that the ranks diverged."""
        if self.world == 1:
            return
        mine = digest(*objects)
        every: list[Any] = [None] * self.world
        dist.all_gather_object(every, mine)
        odd = [r for r, d in enumerate(every) if d != every[0]]
        if odd:
            raise RuntimeError(f"{what}: rank {odd[0]} differs from rank 0; the ranks diverged")

    @contextmanager
    def together(self) -> Iterator[None]:
        """Run a block of checks on every rank and agree on its outcome: when any rank raised
        a UserError, every rank raises one (rank 0 the first failing rank's message, the others
        a `RankError`), so no rank waits for another that has given up."""
        if self.world == 1:
            yield
            return
        error: UserError | None = None
        try:
            yield
        except UserError as exc:
            error = exc
        every: list[Any] = [None] * self.world
        dist.all_gather_object(every, None if error is None else str(error))
        failed = next(((r, m) for r, m in enumerate(every) if m is not None), None)
        if failed is None:
            return
        if not self.main:
            raise RankError(failed[1]) from error
        if error is not None:
            raise error
        raise UserError(f"rank {failed[0]}: {failed[1]}")


SOLO = Ranks()


def digest(*objects: Any) -> str:
    """sha256 of modules' parameters and buffers (bytes, on the CPU) and of other objects'
    repr."""
    h = hashlib.sha256()
    for obj in objects:
        if isinstance(obj, nn.Module):
            for name, t in [*obj.named_parameters(), *obj.named_buffers()]:
                h.update(name.encode())
                h.update(
                    t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                )
        else:
            h.update(repr(obj).encode())
    return h.hexdigest()


@contextmanager
def ranks_for(device: torch.device) -> Iterator[Ranks]:
    """The ranks of this run: the process group already started by the caller (kept open),
    one started here from torchrun's variables (gloo on the CPU, NCCL on CUDA; destroyed at
    the end), or `SOLO` without either."""
    if dist.is_available() and dist.is_initialized():
        backend = str(dist.get_backend())
        want = "nccl" if device.type == "cuda" else "gloo"
        if want not in backend:
            raise OptionError(
                f"--device {device}: the process group uses {backend}; the {device.type} needs "
                f"{want}"
            )
        yield Ranks(dist.get_rank(), dist.get_world_size(), device)
        return
    if not launched():
        yield SOLO
        return
    if not dist.is_available():
        raise OptionError("torchrun: this build of torch has no torch.distributed")
    # torch's first optimizer imports torch._dynamo, which keeps references to the default
    # process group when one exists by then: destroy_process_group could not free it, and its
    # gloo threads would outlive the run and race the interpreter's exit (an abort now and then)
    import torch._dynamo

    if device.type == "cuda":
        if not dist.is_nccl_available():
            raise OptionError(f"--device {device}: this build of torch has no NCCL")
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    try:
        yield Ranks(dist.get_rank(), dist.get_world_size(), device)
    finally:
        dist.destroy_process_group()


def default_threads(n_cpus: int) -> int:
    """torch threads per process by default: this machine's CPUs over the ranks on it."""
    return max(1, n_cpus // local_processes())


__all__ = [
    "LAUNCH_VARS",
    "SOLO",
    "RankError",
    "Ranks",
    "default_threads",
    "device_name",
    "digest",
    "launch_rank",
    "launched",
    "local_processes",
    "local_rank",
    "ranks_for",
]
