"""Live progress of long runs: a rich progress bar on a terminal, one line per epoch otherwise."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from parnasc.ir.decisions import summary


class Display:
    """Receives (phase, epoch, batch, values) reports from search and training loops."""

    def __init__(self, epochs: int, batches: int, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.epochs = epochs
        self.batches = batches
        self.live = self.console.is_terminal
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            disable=not self.live,
        )
        self.task = self.progress.add_task("", total=epochs * batches, info="")

    def __enter__(self) -> Display:
        self.progress.__enter__()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.progress.__exit__(t, e, tb)

    def __call__(self, phase: str, epoch: int, batch: int, v: dict[str, Any]) -> None:
        if phase.endswith("-end"):
            self.progress.update(self.task, completed=epoch * self.batches)
            line = f"epoch {epoch}/{self.epochs}  " + _values(v)
            if "arch" in v:
                temperature = f" (T {v['temperature']:.3g})" if "temperature" in v else ""
                line += f"\n  arch{temperature}: " + _arch(v["arch"], v.get("labels", {}))
            self.console.print(line, highlight=False)
            return
        done = (epoch - 1) * self.batches + batch
        self.progress.update(
            self.task,
            completed=done,
            description=f"{phase} {epoch}/{self.epochs}",
            info=_values(v),
        )


def _values(v: dict[str, Any]) -> str:
    parts = []
    for key, fmt in (
        ("loss", "loss {:.3f}"),
        ("ce", "ce {:.3f}"),
        ("ops", "ops {:.3f}"),
        ("sync", "sync {:.3f}"),
        ("train_acc", "acc {:.1%}"),
        ("val_acc", "val {:.1%}"),
        ("test_acc", "test {:.1%}"),
        ("images_per_s", "{:.0f} img/s"),
    ):
        if key in v:
            parts.append(fmt.format(v[key]))
    return "  ".join(parts)


def _arch(probs: dict[str, list[float]], labels: dict[str, list[str]]) -> str:
    """The current most likely choice of each block/sync with its probability, and how many
    decisions are still undecided."""
    out = []
    for k, ps in probs.items():
        i = max(range(len(ps)), key=ps.__getitem__)
        if k.endswith(":sync"):
            out.append(f"{k}={'on' if i == 0 else 'off'}({ps[0]:.2f})")
        else:
            name = labels[k][i] if k in labels else f"#{i + 1}"
            out.append(f"{k}={name}({ps[i]:.2f})")
    return " ".join(out) + f"\n  {summary(probs)}"
