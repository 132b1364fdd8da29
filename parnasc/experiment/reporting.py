"""The report of an experiment: `report.md` (every run's row; Table 2 and Figure 7 beside the
paper's; the verdict of the search against random architectures, in words), `results.csv`,
`results.json` and the pictures in `plots/`. `report_run` draws the pictures of one run."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parnasc.experiment import paper
from parnasc.experiment.gather import Gathered, architecture_text, gather, write_results
from parnasc.experiment.pareto import Verdict, verdicts
from parnasc.files import write_text
from parnasc.version import __version__


@dataclass(frozen=True)
class Report:
    """What a report wrote."""

    out_dir: Path
    files: list[Path]
    rows: list[dict[str, Any]] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def markdown(self) -> Path:
        return self.out_dir / "report.md"


# --- formatting -------------------------------------------------------------------------------


def _pct(v: Any) -> str:
    return "" if v is None else f"{100 * float(v):.2f}"


def _acc(r: dict[str, Any]) -> str:
    if r.get("test_acc_mean") is None:
        return ""
    std = r.get("test_acc_std")
    return _pct(r["test_acc_mean"]) + ("" if std is None else f" ± {100 * std:.2f}")


def _mflops(v: Any) -> str:
    return "" if v is None else f"{v / 1e6:.2f}"


def _latency(r: dict[str, Any]) -> str:
    med, p90 = r.get("latency_median_ms"), r.get("latency_p90_ms")
    return "" if med is None else f"{med:.3f} / {p90:.3f}"


def _settings(r: dict[str, Any]) -> str:
    s = r.get("settings") or {}
    if r["kind"] == "search":  # the loss's settings and the seed, then any other axis given
        given = r.get("search") or {}
        keys = [k for k in s if k in ("alpha", "beta", "cost", "seed") or k in given]
        return ", ".join(_setting(k, s[k]) for k in keys)
    if r["kind"] == "random":
        return f"{s.get('sampling')}" + (f", stratum {s['stratum']}" if "stratum" in s else "")
    return r.get("paper") or ""


def _setting(k: str, v: Any) -> str:
    return f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    return [*out, ""]


def _runs_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    body = []
    for r in rows:
        mem = r.get("memory_per_core")
        body.append(
            [
                r["name"],
                r["kind"],
                _settings(r),
                r.get("architecture") or "",
                _mflops(r.get("flops")),
                "" if r.get("params") is None else f"{r['params'] / 1e3:.1f}k",
                "" if mem is None else " / ".join(f"{m / 1024:.0f}" for m in mem),
                _pct(r.get("val_acc")),
                _acc(r),
                str(r.get("trainings") or 0),
                _latency(r),
                r["status"],
            ]
        )
    head = (
        "run", "kind", "settings", "architecture", "MFLOPs", "params", "memory/core KiB",
        "val acc %", "test acc %", "n", "latency ms (median / p90)", "status",
    )  # fmt: skip
    return _table(head, body)


# --- Table 2 ----------------------------------------------------------------------------------


def _paper_levels(beta: float) -> list[dict[str, Any]] | None:
    got = next((v for k, v in paper.TABLE2.items() if abs(k - beta) <= 1e-12 * max(1, k)), None)
    return None if got is None else [{"ops": list(lv.ops), "sync": lv.sync} for lv in got]


def _agreement(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> str:
    """`k of n`: the decisions (each path's op, each sync) where ours and the paper's agree."""
    if len(ours) != len(theirs) or any(
        len(a["ops"]) != len(b["ops"]) for a, b in zip(ours, theirs, strict=True)
    ):
        return "n/a (another space)"
    n = k = 0
    for a, b in zip(ours, theirs, strict=True):
        for x, y in zip(a["ops"], b["ops"], strict=True):
            n, k = n + 1, k + (x == y)
        n, k = n + 1, k + (a["sync"] == b["sync"])
    return f"{k} of {n}"


def _paper_flops(spec: str | None, levels: list[dict[str, Any]]) -> int | None:
    """The FLOPs of the paper's structure in the supernet `spec`, when it is of that space."""
    if spec is None:
        return None
    try:
        from parnasc.ir.frontend import compile_file
        from parnasc.ir.graph import flops_range
        from parnasc.ir.passes.prune import prune

        _, ir = compile_file(spec)
        choices: dict[str, str] = {}
        for lv_name, lv in zip(ir.levels, levels, strict=True):
            for p, op in enumerate(lv["ops"], 1):
                choices[f"{lv_name}:p{p}"] = op
            site = ir.sync(lv_name)
            if site is not None and site.mode == "search":
                choices[f"{lv_name}:sync"] = str(site.combiner) if lv["sync"] else "none"
        return flops_range(prune(ir, choices))[0]
    except Exception:  # another space: no figure
        return None


def _table2(rows: Sequence[dict[str, Any]]) -> list[str]:
    mine = [r for r in rows if r.get("paper") == "table2" and r.get("levels")]
    if not mine:
        return []
    out = [
        "## Table 2 beside the paper",
        "",
        "alpha 0.28 in the paper; each row the structure derived for that beta (levels l1 / l2 / "
        "l3 / l4; path 1-path 2; S: a sync after that level) and the paper's.",
        "",
    ]
    body = []
    for r in sorted(mine, key=lambda r: (-(r.get("beta") or 0), r["name"])):
        theirs = _paper_levels(float(r["beta"])) if r.get("beta") is not None else None
        body.append(
            [
                f"{r['beta']:g}" if r.get("beta") is not None else "",
                r["name"],
                architecture_text(theirs) if theirs else "(not in Table 2)",
                r["architecture"],
                _agreement(r["levels"], theirs) if theirs else "",
                _mflops(_paper_flops(r.get("spec"), theirs)) if theirs else "",
                _mflops(r.get("flops")),
                _acc(r),
            ]
        )
    out += _table(
        (
            "beta",
            "run",
            "paper",
            "ours",
            "decisions agreeing",
            "paper's MFLOPs here",
            "our MFLOPs",
            "test acc %",
        ),
        body,
    )
    out += [_monotone(mine), ""]
    return out


def _monotone(rows: Sequence[dict[str, Any]]) -> str:
    """Whether the derived FLOPs never increase as beta grows (per search seed)."""
    lines = []
    by_seed: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("beta") is not None and r.get("flops") is not None:
            by_seed.setdefault((r.get("alpha"), r.get("cost"), r.get("seed")), []).append(r)
    for key, group in by_seed.items():
        group.sort(key=lambda r: r["beta"])
        figures = ", ".join(f"beta {r['beta']:g}: {_mflops(r['flops'])}M" for r in group)
        rises = [
            (a["beta"], b["beta"]) for a, b in itertools.pairwise(group) if b["flops"] > a["flops"]
        ]
        seed = f" (search seed {key[2]})" if len(by_seed) > 1 else ""
        if rises:
            where = "; ".join(f"from beta {a:g} to {b:g}" for a, b in rises)
            verdict = f"**no**: they rise {where}"
        else:
            verdict = "**yes**"
        lines.append(f"Derived FLOPs never increase as beta grows{seed}: {verdict} ({figures}).")
    return "\n".join(lines)


# --- Figure 7 ---------------------------------------------------------------------------------


def _figure7(rows: Sequence[dict[str, Any]]) -> list[str]:
    mine = {
        str(r["paper"]).split(":", 1)[1]: r
        for r in rows
        if str(r.get("paper") or "").startswith("fig7:") and r.get("test_acc_mean") is not None
    }
    if not mine:
        return []
    out = [
        "## Figure 7 beside the paper",
        "",
        "Path 1 conv 3x3 and path 2 conv 5x5 at every level, four sync configurations. The "
        "paper: all sync points gave the best accuracy and the highest latency, none the lowest "
        "of both, the other two fell between.",
        "",
    ]
    has_latency = all(r.get("latency_median_ms") is not None for r in mine.values())
    cost_key, cost_name = ("latency_median_ms", "latency") if has_latency else ("flops", "FLOPs")
    body = [
        [
            c,
            paper.FIG7[c],
            mine[c]["name"],
            _acc(mine[c]),
            _latency(mine[c]),
            _mflops(mine[c].get("flops")),
        ]
        for c in paper.FIG7_ORDER
        if c in mine
    ]
    out += _table(
        ("configuration", "", "run", "test acc %", "latency ms (median / p90)", "MFLOPs"), body
    )
    by_acc = sorted(mine, key=lambda c: -mine[c]["test_acc_mean"])
    by_cost = sorted(mine, key=lambda c: -mine[c][cost_key])
    out.append(f"- Accuracy, highest first: {' > '.join(by_acc)}.")
    out.append(f"- {cost_name.capitalize()}, highest first: {' > '.join(by_cost)}.")
    checks = []
    if "all" in mine:
        checks.append(("all syncs the most accurate", by_acc[0] == "all"))
        checks.append((f"all syncs the highest {cost_name}", by_cost[0] == "all"))
    if "none" in mine:
        checks.append(("no sync the least accurate", by_acc[-1] == "none"))
        checks.append((f"no sync the lowest {cost_name}", by_cost[-1] == "none"))
    if checks:
        agreed = sum(ok for _, ok in checks)
        out.append(
            f"- The paper's ordering holds in {agreed} of {len(checks)} points: "
            + "; ".join(f"{what}: {'yes' if ok else 'no'}" for what, ok in checks)
            + "."
        )
    return [*out, ""]


# --- the verdict ------------------------------------------------------------------------------


def _verdict(rows: Sequence[dict[str, Any]], found: list[Verdict]) -> list[str]:
    searched = [r for r in rows if r["kind"] == "search" and r.get("test_acc_mean") is not None]
    if not searched:
        return []
    out = ["## The search against random architectures", ""]
    if not found:
        out += [
            "No random architectures of the same space with results here, so no verdict: add a "
            "`[[random]]` group, or report this directory together with a random experiment's "
            "(`parnasc report THIS OTHER`).",
            "",
        ]
        return out
    out.append(
        "A random architecture dominates a searched one when it is at least as accurate (test "
        "accuracy, mean over seeds) and at most as costly, and better in one of the two."
    )
    out.append("")
    for axis in ("latency", "flops"):
        mine = [v for v in found if v.axis == axis]
        if not mine:
            continue
        out.append(f"On {'batch-1 latency' if axis == 'latency' else 'FLOPs'}:")
        out.append("")
        out += [f"- {v.sentence()}" for v in mine]
        beaten = [v for v in mine if v.dominated_by]
        out.append("")
        if beaten:
            out.append(
                f"**Verdict ({axis}): {len(beaten)} of {len(mine)} searched architectures are "
                "dominated by a random one: on those, the search did no better than chance.**"
            )
        else:
            out.append(
                f"**Verdict ({axis}): no random architecture dominates any of the {len(mine)} "
                "searched ones.**"
            )
        out.append("")
    return out


# --- writing ----------------------------------------------------------------------------------


def _plots(g: Gathered, out: Path) -> list[Path]:
    from parnasc.experiment import plots

    d = out / "plots"
    files = plots.tradeoff(g.rows, "latency", d / "accuracy-latency")
    files += plots.tradeoff(g.rows, "flops", d / "accuracy-flops")
    files += plots.all_curves(g.rows, d / "curves")
    for r in g.rows:
        if r["kind"] == "search":
            run = Path(r["run_dir"])
            files += plots.probabilities(run, d / f"decisions-{r['name'].replace('/', '-')}")
            files += plots.curves(run, d / f"curves-{r['name'].replace('/', '-')}")
    return files


def markdown(g: Gathered, found: list[Verdict], pictures: Sequence[Path], out: Path) -> str:
    """The text of `report.md`."""
    names = ", ".join(str(e.get("name")) for e in g.experiments)
    budgets = ", ".join(sorted({str(e.get("budget")) for e in g.experiments if e.get("budget")}))
    status = [r["status"] for r in g.rows]
    lines = [f"# Experiment {names}" + (f" (budget {budgets})" if budgets else ""), ""]
    for e in g.experiments:
        if e.get("description"):
            lines += [str(e["description"]).strip(), ""]
    lines += [
        f"Gathered by parnasc {__version__} from {', '.join(str(d) for d in g.dirs)}: "
        f"{len(g.rows) + len(g.pending)} runs planned, {status.count('complete')} complete, "
        f"{status.count('partial')} partial, {status.count('pending') + len(g.pending)} not "
        "started" + (f" ({', '.join(g.pending)})" if g.pending else "") + ".",
        "",
        "## Runs",
        "",
        "Architecture: levels in order, separated by `/`; in each, the op of path 1, path 2, ... "
        "(`3`: conv 3x3, `5`: conv 5x5, `sepconv3`: separable 3x3, ...); `S`: a sync after that "
        "level. Test accuracy: mean ± standard deviation over the n trainings (seeds). Latency: "
        "the parnasc runtime at batch 1 (`parnasc bench`). val acc: the supernet's, after search.",
        "",
    ]
    lines += _runs_table(g.rows)
    lines += _table2(g.rows)
    lines += _figure7(g.rows)
    lines += _verdict(g.rows, found)
    pngs = [p for p in pictures if p.suffix == ".png"]
    if pngs:
        lines += ["## Pictures", ""]
        lines += [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in pngs]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def report_experiment(
    dirs: Sequence[Path], out: Path | None = None, *, pictures: bool = True
) -> Report:
    """Gather the experiment directories `dirs` and write the report into `out` (default:
    the first): results.csv, results.json, report.md and (with `pictures`) plots/."""
    g = gather(list(dirs))
    target = out or Path(dirs[0])
    target.mkdir(parents=True, exist_ok=True)
    found = verdicts(g.rows)
    csv_path, json_path = write_results(g, target)
    drawn = _plots(g, target) if pictures else []
    md = target / "report.md"
    write_text(md, markdown(g, found, drawn, target))
    return Report(target, [csv_path, json_path, md, *drawn], g.rows, found)


def report_run(run_dir: Path, out: Path | None = None) -> Report:
    """The pictures of one run directory (a search, a training, or an experiment's run):
    decisions over the epochs and training curves, into `out` (default RUN/plots)."""
    from parnasc.experiment import plots

    d = out or run_dir / "plots"
    files = plots.probabilities(run_dir, d / "decisions") + plots.curves(run_dir, d / "curves")
    return Report(d, files)


__all__ = ["Report", "markdown", "report_experiment", "report_run"]
