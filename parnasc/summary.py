"""The rich summary that `parnasc compile` prints: levels x paths, costs, search-space size."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from parnasc.ir import IR, fixed_cost, flops_range, search_space_size
from parnasc.spec import Spec


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M'."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def summary_table(spec: Spec, ir: IR) -> Table:
    table = Table(title=f"{spec.name}: {spec.paths} paths x {len(spec.levels)} levels", show_lines=True)
    table.add_column("level", style="bold")
    table.add_column("out x HxW")
    for p in range(1, spec.paths + 1):
        table.add_column(f"path {p}: candidate  FLOPs  params")
    table.add_column("sync")
    for lv in ir.levels:
        blocks = [ir.block(lv, p) for p in range(1, spec.paths + 1)]
        shape = blocks[0].out_shape or ()
        cells = [
            "\n".join(
                f"{c.label}  {human(c.cost.flops)}  {human(c.cost.params)}" for c in b.candidates
            )
            for b in blocks
        ]
        s = ir.sync(lv)
        sync = "-" if s is None else f"{s.mode} {s.combiner}\n{human(s.cost.flops)} FLOPs"
        table.add_row(lv, f"{shape[0]} x {shape[1]}x{shape[2]}", *cells, sync)
    return table


def print_summary(spec: Spec, ir: IR, console: Console | None = None) -> None:
    console = console or Console()
    console.print(summary_table(spec, ir))
    lo, hi = flops_range(ir)
    fixed = fixed_cost(ir)
    console.print(f"architectures in the search space: {search_space_size(ir):,}")
    console.print(f"FLOPs (mul + add): cheapest {human(lo)} ({lo:,}), most expensive {human(hi)} ({hi:,})")
    console.print(f"fixed part (stem, fixed syncs, merge, head): {human(fixed.flops)} FLOPs, {human(fixed.params)} params")
