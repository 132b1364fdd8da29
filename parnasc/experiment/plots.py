"""The pictures of a run or an experiment, each as PNG and SVG (matplotlib's Agg canvas; no
pyplot state): accuracy against latency and against FLOPs with the Pareto front, searched runs
marked against random ones; every decision's probabilities over a search's epochs
(`arch.jsonl`); training curves (`metrics.jsonl`, `train_metrics.jsonl`). Sized for a paper
column, 9-point text."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parnasc.experiment.gather import read_jsonl, short_op
from parnasc.experiment.pareto import AXES, front
from parnasc.files import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

STYLE: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.hashsalt": "parnasc",  # stable ids: the same picture is the same file
    "svg.fonttype": "none",  # text stays text in the SVG
}
KIND = {  # marker, colour, label
    "search": ("^", "#cc3311", "searched"),
    "fixed": ("s", "#0077bb", "fixed"),
    "random": ("o", "#999999", "random"),
}


@contextlib.contextmanager
def _figure(width: float, height: float) -> Iterator[Figure]:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.rc_context(STYLE):  # type: ignore[arg-type]
        fig = Figure(figsize=(width, height), layout="constrained")
        FigureCanvasAgg(fig)
        yield fig


def _whole(ax: Any) -> None:
    """Whole-number ticks (epochs)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def save(fig: Figure, stem: Path) -> list[Path]:
    """`STEM.png` (200 dpi) and `STEM.svg`, each written atomically."""
    out = []
    for suffix, extra in ((".png", {"dpi": 200}), (".svg", {"metadata": {"Date": None}})):
        path = stem.parent / (stem.name + suffix)  # names hold dots: beta0.001
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=suffix[1:], **extra)
        out.append(path)
    return out


def tradeoff(rows: Sequence[dict[str, Any]], axis: str, stem: Path) -> list[Path]:
    """Test accuracy (mean over seeds, a bar for the standard deviation) against `axis`
    (`latency` or `flops`) for every run that has both; the Pareto front of all of them as a
    staircase; searched runs labelled. Nothing when no run has both."""
    key = AXES[axis]
    pts = [r for r in rows if r.get("test_acc_mean") is not None and r.get(key) is not None]
    if not pts:
        return []
    scale = 1e6 if axis == "flops" else 1.0
    with _figure(4.6, 3.3) as fig:
        ax = fig.add_subplot()
        for kind, (marker, colour, label) in KIND.items():
            mine = [r for r in pts if r["kind"] == kind]
            if not mine:
                continue
            xs = [float(r[key]) / scale for r in mine]
            ys = [100 * float(r["test_acc_mean"]) for r in mine]
            err = [100 * float(r["test_acc_std"] or 0) for r in mine]
            ax.errorbar(
                xs, ys, yerr=err if any(err) else None, fmt=marker, color=colour, label=label,
                markersize=6 if kind != "random" else 4, elinewidth=0.8, capsize=2,
                zorder=3 if kind != "random" else 2,
            )  # fmt: skip
            if kind != "random":
                for x, y, r in zip(xs, ys, mine, strict=True):
                    ax.annotate(
                        str(r["name"]), (x, y), textcoords="offset points", xytext=(4, 3),
                        fontsize=7, color=colour,
                    )  # fmt: skip
        points = [(float(r["test_acc_mean"]), float(r[key])) for r in pts]
        on = front(points)
        fx: list[float] = []
        fy: list[float] = []
        for i in on:  # a staircase: each front point holds its accuracy up to the next one
            x, y = points[i][1] / scale, 100 * points[i][0]
            if fx:
                fx.append(x)
                fy.append(fy[-1])
            fx.append(x)
            fy.append(y)
        ax.plot(fx, fy, color="#222222", linewidth=0.9, linestyle="--", label="Pareto front")
        ax.set_xlabel("batch-1 latency, median (ms)" if axis == "latency" else "MFLOPs")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(True, linewidth=0.3, alpha=0.5)
        ax.legend(loc="best", frameon=False)
        return save(fig, stem)


def _labels(run_dir: Path, keys: list[str]) -> dict[str, list[str]]:
    """The candidate labels of each decision, from the run's spec (recorded in settings.json);
    `sync`/`direct` for sync sites."""
    from parnasc.experiment.planning import decisions

    labels: dict[str, list[str]] = {}
    try:
        import json

        from parnasc.ir.frontend import compile_file

        spec = json.loads((run_dir / "settings.json").read_text(encoding="utf-8"))["spec"]
        labels = {k: [short_op(x) for x in v] for k, v in decisions(compile_file(spec)[1]).items()}
    except Exception:  # the spec moved or changed: numbered candidates
        labels = {}
    for k in keys:
        if k.endswith(":sync"):
            labels[k] = ["sync", "direct"]
    return labels


def probabilities(run_dir: Path, stem: Path, title: str | None = None) -> list[Path]:
    """Every decision's candidate probabilities over the epochs of the search in `run_dir`
    (one panel per decision: a row per level, a column per path and one for the sync site),
    from the uniform start (epoch 0); warm-up epochs shaded, the decided line at 0.9.
    Nothing without an `arch.jsonl`."""
    rows = read_jsonl(run_dir / "arch.jsonl")
    if not rows:
        return []
    keys = list(rows[-1].get("probabilities", {}))
    if not keys:
        return []
    levels = list(dict.fromkeys(k.split(":")[0] for k in keys))
    columns = sorted({k.split(":")[1] for k in keys}, key=lambda c: (c == "sync", c))
    labels = _labels(run_dir, keys)
    first = {k: [1 / len(p)] * len(p) for k, p in rows[0]["probabilities"].items()}
    rows = [{"epoch": 0, "probabilities": first}, *rows]  # before the first step: uniform
    epochs = [int(r["epoch"]) for r in rows]
    warm = [
        int(r["epoch"]) for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("phase") == "warmup"
    ]
    colours = ("#0077bb", "#ee7733", "#009988", "#cc3311", "#33bbee", "#ee3377")
    with _figure(1.6 * len(columns) + 0.6, 1.15 * len(levels) + 0.7) as fig:
        axes = fig.subplots(len(levels), len(columns), sharex=True, sharey=True, squeeze=False)
        for i, lv in enumerate(levels):
            for j, col in enumerate(columns):
                ax = axes[i][j]
                k = f"{lv}:{col}"
                if k not in keys:
                    ax.set_visible(False)
                    continue
                series = [r["probabilities"][k] for r in rows]
                names = labels.get(k) or [f"#{n + 1}" for n in range(len(series[0]))]
                for n in range(len(series[0])):
                    ax.plot(
                        epochs, [p[n] for p in series], color=colours[n % len(colours)],
                        linewidth=1.2, marker="o", markersize=2,
                        label=names[n] if n < len(names) else f"#{n + 1}",
                    )  # fmt: skip
                if warm:
                    ax.axvspan(min(warm) - 1, max(warm), color="#e4e4e4", linewidth=0)
                ax.set_ylim(-0.03, 1.03)
                ax.set_title(k, fontsize=8, pad=2)
                ax.axhline(0.9, color="#bbbbbb", linewidth=0.5, linestyle=":")
                ax.legend(loc="best", frameon=False, fontsize=6, handlelength=1)
                if i == len(levels) - 1:
                    ax.set_xlabel("epoch")
                    _whole(ax)
                if j == 0:
                    ax.set_ylabel("P")
        fig.suptitle(title or f"decisions of {run_dir.name}", fontsize=9)
        return save(fig, stem)


def _training_dirs(run_dir: Path) -> list[Path]:
    """The trainings of a run: the run directory itself (`parnasc train` there) and its
    `train-s*` directories."""
    own = [run_dir] if (run_dir / "train_metrics.jsonl").is_file() else []
    seeds = sorted(run_dir.glob("train-s*/train_metrics.jsonl"), key=lambda p: p.parent.name)
    return own + [p.parent for p in seeds]


def curves(run_dir: Path, stem: Path, title: str | None = None) -> list[Path]:
    """The run's curves: the search's training and validation accuracy per epoch (left) and
    every training's test accuracy per epoch (right); the panels there is data for."""
    search = read_jsonl(run_dir / "metrics.jsonl")
    trainings = [(d, read_jsonl(d / "train_metrics.jsonl")) for d in _training_dirs(run_dir)]
    trainings = [(d, rows) for d, rows in trainings if rows]
    panels = int(bool(search)) + int(bool(trainings))
    if not panels:
        return []
    with _figure(3.0 * panels + 0.4, 2.6) as fig:
        axes = fig.subplots(1, panels, squeeze=False)[0]
        k = 0
        if search:
            ax = axes[k]
            k += 1
            ep = [r["epoch"] for r in search]
            for col, label, colour in (
                ("train_acc", "training (supernet)", "#0077bb"),
                ("val_acc", "held out (supernet)", "#cc3311"),
            ):
                if all(col in r for r in search):
                    ax.plot(ep, [100 * r[col] for r in search], label=label, color=colour)
            ax.set_title("search")
            ax.set_xlabel("epoch")
            _whole(ax)
            ax.set_ylabel("accuracy (%)")
            ax.legend(frameon=False)
            ax.grid(True, linewidth=0.3, alpha=0.5)
        if trainings:
            ax = axes[k]
            for d, rows in trainings:
                name = "train" if d == run_dir else d.name
                ep = [r["epoch"] for r in rows]
                ax.plot(
                    ep, [100 * r.get("test_acc", float("nan")) for r in rows], label=f"{name} test"
                )
                if all("train_acc" in r for r in rows):
                    ax.plot(
                        ep, [100 * r["train_acc"] for r in rows], linestyle=":", linewidth=0.9,
                        color=ax.lines[-1].get_color(), label=f"{name} training",
                    )  # fmt: skip
            ax.set_title("retraining")
            ax.set_xlabel("epoch")
            _whole(ax)
            ax.set_ylabel("accuracy (%)")
            ax.legend(frameon=False, fontsize=6)
            ax.grid(True, linewidth=0.3, alpha=0.5)
        fig.suptitle(title or run_dir.name, fontsize=9)
        return save(fig, stem)


def all_curves(rows: Sequence[dict[str, Any]], stem: Path) -> list[Path]:
    """Test accuracy per retraining epoch of every run of an experiment (the mean over its
    seeds), coloured by kind, searched and fixed runs named. Nothing when no run trained."""
    series = []
    for r in rows:
        per_seed = [
            read_jsonl(d / "train_metrics.jsonl") for d in _training_dirs(Path(r["run_dir"]))
        ]
        per_seed = [s for s in per_seed if s]
        if not per_seed:
            continue
        n = min(len(s) for s in per_seed)
        mean = [
            sum(100 * s[i].get("test_acc", 0.0) for s in per_seed) / len(per_seed) for i in range(n)
        ]
        series.append((r, list(range(1, n + 1)), mean))
    if not series:
        return []
    with _figure(4.6, 3.0) as fig:
        ax = fig.add_subplot()
        shown: set[str] = set()
        for r, ep, mean in series:
            _, colour, label = KIND[r["kind"]]
            ax.plot(
                ep, mean, color=colour, linewidth=1.2 if r["kind"] != "random" else 0.7,
                alpha=1.0 if r["kind"] != "random" else 0.6,
                label=None if label in shown else label,
            )  # fmt: skip
            shown.add(label)
            if r["kind"] != "random":  # named at its end
                ax.annotate(
                    str(r["name"]), (ep[-1], mean[-1]), textcoords="offset points",
                    xytext=(3, 0), fontsize=6, color=colour, va="center",
                )  # fmt: skip
        ax.set_xlabel("retraining epoch")
        _whole(ax)
        ax.set_ylabel("test accuracy (%), mean over seeds")
        ax.grid(True, linewidth=0.3, alpha=0.5)
        ax.legend(frameon=False)
        return save(fig, stem)


__all__ = ["all_curves", "curves", "probabilities", "save", "tradeoff"]
