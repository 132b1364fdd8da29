"""The `parnasc` command line. Heavy modules (torch, onnx, matplotlib) load inside commands."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

try:  # typer >= 0.26 vendors click
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover - older typer
    from click import exceptions as click_exc  # type: ignore[no-redef]

from parnasc.errors import OptionError, PnasError, UserError
from parnasc.files import atomic_path
from parnasc.files import write_text as _atomic_write
from parnasc.version import __version__

app = typer.Typer(
    name="parnasc",
    help="Compile .pnas supernet specs, search them on real data, emit multicore models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

STATE = Path(".parnasc") / "last.json"  # the spec compiled last, per working directory

FilesArg = Annotated[list[Path], typer.Argument(help=".pnas files", show_default=False)]
DataOpt = Annotated[
    Path | None, typer.Option("--data", help="CIFAR-10: archive or folder [download to cache]")
]
TrainImagesOpt = Annotated[
    int | None, typer.Option("--train-images", help="use a class-balanced subset")
]
TestImagesOpt = Annotated[int | None, typer.Option("--test-images", help="subset of the test set")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="torch threads [all cores]")]
DeviceOpt = Annotated[
    str | None,
    typer.Option("--device", help="cpu, cuda or cuda:N [cuda if available, else cpu]"),
]
PrecisionOpt = Annotated[
    str | None,
    typer.Option(
        "--precision",
        help="training steps' arithmetic: fp32, bf16 (mixed) or auto [auto: bf16 where the "
        "device has it natively; a resume: the recorded one]",
    ),
]


def _version(value: bool) -> None:
    if value:
        print(f"parnasc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """parnasc: resource-aware neural architecture search for multicore CPUs."""
    command = ctx.invoked_subcommand
    if command not in DATA_PARALLEL and _rank() is not None:
        raise OptionError(
            f"torchrun runs 'parnasc search' and 'parnasc train' data-parallel, not "
            f"'parnasc {command}'; run it without torchrun"
            + (" (spread an experiment's runs with --shard I/N)" if command == "experiment" else "")
        )


DATA_PARALLEL = ("search", "train")  # the commands torchrun may start
RANK_ERROR_WAIT = 10.0  # seconds a rank waits for rank 0 to report an error they agreed on


def _rank() -> int | None:
    """This process's rank under torchrun, None without it (torch loads only under it)."""
    if "WORLD_SIZE" not in os.environ:
        return None
    from parnasc.nas.dist import launch_rank, launched

    return launch_rank() if launched() else None


def _main_rank() -> bool:
    """Whether this process prints results: always, except ranks other than 0 under torchrun."""
    return not _rank()


def _err(text: str) -> None:
    sys.stderr.write(text.rstrip("\n") + "\n")


@app.command()
def check(
    files: FilesArg,
    provenance: Annotated[
        bool,
        typer.Option(
            "--provenance",
            help="FILES are DERIVED SUPERNET: DERIVED must be an unedited architecture of "
            "SUPERNET's space, derived from it as it is now (the hash in its header).",
        ),
    ] = False,
) -> None:
    """Parse, validate and verify specs; exit 0 when all are valid.

    Example: parnasc check specs/*.pnas
    Example: parnasc check --provenance runs/a/derived.pnas specs/cifar.pnas
    """
    from parnasc.ir.frontend import compile_file

    if provenance:
        _check_provenance(files)
        return
    bad = 0
    for f in files:
        try:
            compile_file(f)
        except PnasError as exc:
            if os.environ.get("PARNASC_DEBUG") == "1":
                raise
            _err(str(exc))
            bad += 1
    if bad:
        raise typer.Exit(1)


def _check_provenance(files: list[Path]) -> None:
    from parnasc.api import check_provenance

    if len(files) != 2:
        raise OptionError(
            f"--provenance takes two files, DERIVED.pnas SUPERNET.pnas (got {len(files)})"
        )
    try:
        check_provenance(files[0], files[1])
    except PnasError as exc:
        if os.environ.get("PARNASC_DEBUG") == "1":
            raise
        _err(str(exc))
        raise typer.Exit(1) from None


@app.command()
def fmt(
    files: FilesArg,
    check: Annotated[
        bool, typer.Option("--check", help="Change nothing; exit 1 if a file would change.")
    ] = False,
) -> None:
    """Rewrite specs in canonical form (comments kept).

    Example: parnasc fmt --check specs/*.pnas
    """
    from parnasc.lang.fmt import format_document
    from parnasc.lang.parse import parse_file

    changed = failed = 0
    for f in files:
        try:
            doc = parse_file(f)
        except PnasError as exc:
            if os.environ.get("PARNASC_DEBUG") == "1":
                raise
            _err(str(exc))
            failed += 1
            continue
        text = format_document(doc)
        if text == doc.source:
            continue
        changed += 1
        if check:
            _err(f"{f}: would reformat")
        else:
            _atomic_write(Path(f), text)
            print(f"reformatted {f}")
    if failed or (check and changed):
        raise typer.Exit(1)


@app.command("diff")
def diff_cmd(
    files: Annotated[
        list[str] | None,
        typer.Argument(help="OLD NEW: .pnas files, or REV:PATH read from git", show_default=False),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the diff as JSON.")] = False,
) -> None:
    """Semantic diff of two specs: changed blocks, sync sites, levels, settings, and the cost
    impact (FLOPs, params, memory per core, latency where measured). Comments and formatting
    never count. Exit 0: nothing meaningful changed; 1: something did; 2: an error.

    As git's diff driver (7 or 9 arguments from git) it always exits 0.

    Example: parnasc diff HEAD~1:specs/cifar.pnas specs/cifar.pnas
    """
    from parnasc.api import diff

    args = files or []
    git_driver = len(args) in (7, 9)  # path old-file old-hex old-mode new-file new-hex new-mode
    if git_driver:
        _git_diff_driver(args, json_out)
        return
    if len(args) != 2:
        _err(f"parnasc: error: diff takes two specs, OLD NEW (got {len(args)})")
        raise typer.Exit(2)
    try:
        result = diff(args[0], args[1])
    except (PnasError, UserError) as exc:
        if os.environ.get("PARNASC_DEBUG") == "1":
            raise
        _err(str(exc) if isinstance(exc, PnasError) else f"parnasc: error: {exc}")
        raise typer.Exit(2) from None
    if json_out:
        print(json.dumps(result.to_json(), indent=1))
    else:
        sys.stdout.write(result.text())
    raise typer.Exit(1 if result.changed else 0)


def _git_diff_driver(args: list[str], json_out: bool) -> None:
    """`git diff` with `diff.pnas.command parnasc diff`: git passes the path and each side's
    temporary file, hex and mode. A new, deleted or invalid spec falls back to a line diff;
    exit 0 always (git stops at an external diff that exits otherwise)."""
    import difflib

    from parnasc.api import Compiled, diff
    from parnasc.ir.frontend import compile_bytes

    path, old_file, new_file = args[0], args[1], args[4]
    new_path = args[7] if len(args) == 9 else path
    labels = (f"a/{path}", f"b/{new_path}")
    why = "a new or deleted spec"
    if "/dev/null" not in (old_file, new_file):
        try:
            old, new = (
                Compiled(*compile_bytes(Path(f).read_bytes(), lab), path=Path(lab))
                for f, lab in zip((old_file, new_file), labels, strict=True)
            )
            result = diff(old, new)
        except (PnasError, UserError, OSError) as exc:
            why = str(exc).splitlines()[0]
        else:
            if json_out:
                print(json.dumps(result.to_json(), indent=1))
            else:
                sys.stdout.write(result.text())
            return
    texts = [
        Path(f).read_text(encoding="utf-8", errors="replace") if f != "/dev/null" else ""
        for f in (old_file, new_file)
    ]
    print(f"parnasc diff: {why}; showing the lines")
    a, b = (t.splitlines(keepends=True) for t in texts)
    sys.stdout.writelines(difflib.unified_diff(a, b, *labels))


@app.command("compile")
def compile_(
    file: Annotated[Path, typer.Argument(help="a .pnas spec", show_default=False)],
    out: Annotated[
        Path | None, typer.Option("-o", "--out", help="output directory [build/<model>]")
    ] = None,
) -> None:
    """Compile a spec to DIR/ir.json and print a summary of the search space.

    Example: parnasc compile specs/cifar.pnas
    """
    from parnasc.ir.frontend import compile_file
    from parnasc.viz.summary import print_summary

    spec, ir = compile_file(file)
    out_dir = out or Path("build") / spec.name
    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(out_dir / "ir.json", ir.dumps())
    from parnasc.ir.graph import print_ir

    _atomic_write(out_dir / "ir.txt", print_ir(ir))
    _remember(reset=True, spec=file, build=out_dir)
    print_summary(spec, ir)
    print(f"wrote {out_dir / 'ir.json'}")


@app.command()
def show(
    file: Annotated[Path, typer.Argument(help="a .pnas spec", show_default=False)],
    out: Annotated[
        Path | None, typer.Option("-o", "--out", help="picture file (.svg or .png)")
    ] = None,
) -> None:
    """Draw the supernet: paths side by side, levels top to bottom, sync sites between.

    Example: parnasc show specs/cifar.pnas -o cifar.svg
    """
    from parnasc.ir.frontend import compile_file
    from parnasc.viz.show import draw

    spec, ir = compile_file(file)
    target = out or Path(f"{spec.name}.svg")
    if target.suffix.lower() not in (".svg", ".png", ".pdf"):
        raise OptionError(
            f"--out: unsupported picture format '{target.suffix}' (use .svg, .png or .pdf)"
        )
    draw(ir, target)
    print(f"wrote {target}")


def _spec_or_last(spec: Path | None) -> Path:
    if spec is not None:
        return spec
    return Path(last_compiled()["spec"])


class _Live:
    """The live display of a run, opened at its "start" report (which gives the number of
    epochs and batches); `on_start` gets that report's values first."""

    def __init__(self, on_start: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.on_start = on_start
        self.display: Any = None

    def __call__(self, phase: str, epoch: int, batch: int, values: dict[str, Any]) -> None:
        if phase == "start":
            from parnasc.viz.display import Display

            if self.on_start is not None:
                self.on_start(values)
            self.display = Display(values["epochs"], values["batches"]).__enter__()
        elif self.display is not None:
            self.display(phase, epoch, batch, values)

    def __enter__(self) -> _Live:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.display is not None:
            self.display.__exit__(*exc)


@app.command("search")
def search_cmd(
    spec: Annotated[
        Path | None,
        typer.Argument(help="supernet spec [the spec compiled last]", show_default=False),
    ] = None,
    cores: Annotated[
        int | None,
        typer.Option("--cores", help="cores of the target [spec target, else this machine]"),
    ] = None,
    data: DataOpt = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="search epochs [spec]")] = None,
    warmup: Annotated[
        int | None, typer.Option("--warmup", help="weights-only epochs [spec]")
    ] = None,
    alpha: Annotated[
        float | None, typer.Option("--alpha", help="CE weight, equation (12) [spec]")
    ] = None,
    beta: Annotated[
        float | None, typer.Option("--beta", help="cost weight, equation (12) [spec]")
    ] = None,
    cost: Annotated[str | None, typer.Option("--cost", help="flops or latency [spec]")] = None,
    mode: Annotated[str | None, typer.Option("--mode", help="joint or alternate [spec]")] = None,
    recipe: Annotated[
        str | None, typer.Option("--recipe", help="default or paper [default]")
    ] = None,
    batch: Annotated[int | None, typer.Option("--batch", help="batch size [spec]")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="random seed [spec]")] = None,
    tau: Annotated[
        float | None,
        typer.Option("--tau", help="architecture softmax temperature at the start [spec]"),
    ] = None,
    tau_end: Annotated[
        float | None,
        typer.Option("--tau-end", help="... at the end, annealed geometrically [spec]"),
    ] = None,
    train_images: TrainImagesOpt = None,
    test_images: TestImagesOpt = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="run directory [runs/<model>-s<seed>]")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            help="continue a run directory with its recorded spec, data and settings "
            "(--epochs E extends it)",
        ),
    ] = None,
) -> None:
    """Search the supernet on CIFAR-10 and write the concrete architecture RUN/derived.pnas.

    Example: parnasc search specs/cifar.pnas --cores 2 --data cifar10.tar.gz --epochs 10
    """
    from parnasc import api
    from parnasc.nas.recipes import SearchOptions
    from parnasc.nas.runs import absolute, default_run_dir, epochs_text

    target: Path | api.Compiled | None
    if resume is not None:
        if out is not None and absolute(out) != absolute(resume):
            raise OptionError(
                f"--out {out}: cannot change the directory of the resumed run {resume}"
            )
        target, run_dir = spec, resume
    else:
        SearchOptions(cores=cores, recipe=recipe, cost=cost, mode=mode).check()  # before the spec
        target = api.compile(_spec_or_last(spec))
        run_dir = out or default_run_dir(target.spec, seed)

    def started(values: dict[str, Any]) -> None:
        _remember(spec=Path(values["spec"]), run=run_dir)

    with _Live(started) as live:
        result = api.search(
            target, run_dir=run_dir, resume=resume is not None, data=data, cores=cores,
            recipe=recipe, alpha=alpha, beta=beta, cost=cost, mode=mode, epochs=epochs,
            warmup=warmup, batch=batch, seed=seed, train_images=train_images,
            test_images=test_images, threads=threads, tau=tau, tau_end=tau_end, device=device,
            precision=precision, progress=live, log=_err,
        )  # fmt: skip
    if not _main_rank():
        return
    if result.up_to_date:
        n = result.settings.epochs
        print(
            f"{run_dir}: the search is already complete ({epochs_text(n)}); nothing to do "
            f"(--epochs E with E > {n} extends it)"
        )
        return
    print(f"search done: validation accuracy {result.val_acc:.2%}")
    for k, v in result.choices.items():
        print(f"  {k:<12} {v}")
    from parnasc.ir.decisions import summary

    print(("warning: " if result.undecided else "") + summary(result.probabilities))
    print(f"wrote {result.derived}  (retrain: parnasc train {result.derived})")


@app.command("train")
def train_cmd(
    spec: Annotated[
        Path, typer.Argument(help="a concrete spec, e.g. RUN/derived.pnas", show_default=False)
    ],
    data: DataOpt = None,
    epochs: Annotated[
        int | None, typer.Option("--epochs", help="epochs [spec retrain_epochs]")
    ] = None,
    from_scratch: Annotated[
        bool, typer.Option("--from-scratch", help="do not start from the searched weights")
    ] = False,
    train_images: TrainImagesOpt = None,
    test_images: TestImagesOpt = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    recipe: Annotated[
        str | None,
        typer.Option("--recipe", help="training recipe: default or paper [default]"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="output directory [the spec's directory]")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="continue the training in the output directory with its recorded data and "
            "settings (--epochs E extends it)",
        ),
    ] = False,
) -> None:
    """Retrain a concrete architecture (by default from its searched weights); print test accuracy.

    Example: parnasc train runs/cifar-s0/derived.pnas --data cifar10.tar.gz
    """
    from parnasc import api
    from parnasc.nas.runs import epochs_text

    with _Live() as live:
        result = api.retrain(
            spec, data=data, out_dir=out, epochs=epochs, from_scratch=from_scratch,
            train_images=train_images, test_images=test_images, threads=threads, resume=resume,
            recipe=recipe, device=device, precision=precision, progress=live, log=_err,
        )  # fmt: skip
    if not _main_rank():
        return
    if result.up_to_date:
        print(
            f"{result.out_dir}: the training is already complete ({epochs_text(result.epochs)}): "
            f"test accuracy {result.test_acc:.2%} ({result.model})"
        )
        return
    _remember(run=result.out_dir)
    tta = "" if result.test_acc_tta is None else f", {result.test_acc_tta:.2%} with flip TTA"
    print(f"test accuracy {result.test_acc:.2%}{tta}  (wrote {result.model})")


@app.command()
def emit(
    run: Annotated[
        Path | None,
        typer.Argument(
            help="run directory, or a concrete .pnas [the latest run]", show_default=False
        ),
    ] = None,
    onnx: Annotated[
        bool,
        typer.Option(
            "--onnx", help="ONNX output (the default, and only, format)", show_default=False
        ),
    ] = True,
    out: Annotated[
        Path | None, typer.Option("-o", "--out", help="output directory [RUN/emit]")
    ] = None,
    cores: Annotated[
        int | None, typer.Option("--cores", help="target cores [spec target, else this machine]")
    ] = None,
    no_measure: Annotated[
        bool, typer.Option("--no-measure", help="estimate segment times instead of measuring")
    ] = False,
) -> None:
    """Write DIR/model.onnx and the per-core schedule DIR/schedule.json for a concrete model.

    Weights: RUN/model.pt (retrained), else RUN/searched.pt; a bare concrete .pnas is
    emitted with its initial weights (enough for latency work).

    Example: parnasc emit runs/cifar-s0 --onnx -o build/cifar-emit
    """
    from parnasc import api

    if run is None:
        state = last_compiled()
        if "run" not in state:
            raise OptionError("no run given and none recorded; run 'parnasc search' first")
        run = Path(state["run"])
    result = api.emit(run, out, cores=cores, measure=not no_measure, log=_err)
    _remember(emit=result.model_dir)
    print(
        f"wrote {result.model}, {result.schedule} (plan {result.plan}, "
        f"expected {result.expected_ms:.3f} ms at batch 1)"
    )


@app.command("run")
def run_cmd(
    model_dir: Annotated[Path, typer.Argument(help="an emitted directory", show_default=False)],
    images: Annotated[list[Path], typer.Argument(help="image files", show_default=False)],
) -> None:
    """Classify images with an emitted model and its per-core schedule.

    Example: parnasc run runs/cifar-s0/emit cat.png ship.jpg
    """
    from parnasc import api

    for p in api.classify(model_dir, images):
        print(f"{p.image}: {p.label} ({p.probability:.1%})")


@app.command()
def bench(
    model_dir: Annotated[
        Path | None, typer.Argument(help="an emitted directory [the latest]", show_default=False)
    ] = None,
    cores: Annotated[int | None, typer.Option("--cores", help="cores [the schedule's]")] = None,
    reps: Annotated[int, typer.Option("--reps", help="timed runs per engine (>= 100)")] = 100,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the rows as JSON")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="bar chart (.svg/.png)")] = None,
    bound: Annotated[
        bool, typer.Option("--bound", help="also print the path-parallel ceiling (ORT profile)")
    ] = False,
) -> None:
    """Batch-1 latency of the emitted model on every engine (median, p90, p99) and speedups.

    With --bound it also prints the best latency any path-per-core schedule could reach with
    ONNX Runtime's kernels and zero dispatch cost (from ORT's per-node profile).

    Example: parnasc bench runs/cifar-s0/emit --reps 200 --json bench.json
    """
    import platform

    from parnasc import api
    from parnasc.deploy.bench import format_bound, format_table

    if model_dir is None:
        state = last_compiled()
        if "emit" not in state:
            raise OptionError("no emitted directory given or recorded; run 'parnasc emit' first")
        model_dir = Path(state["emit"])
    result = api.bench(model_dir, cores=cores, reps=reps, bound=bound)
    print(result.machine)
    print(format_table(result.rows))
    print(
        f"schedule estimate {result.expected_ms:.3f} ms vs measured {result.measured_ms:.3f} ms: "
        f"error {100 * result.estimate_error:+.1f}%"
    )
    if result.bound is not None:
        print(format_bound(result.bound))
    if json_out is not None:
        from parnasc.deploy.bench import ceiling_row

        rows = result.rows + ([ceiling_row(result.bound, result.rows)] if result.bound else [])
        _atomic_write(json_out, json.dumps(rows, indent=1) + "\n")
    if plot is not None:
        _plot(result.rows, plot, f"{model_dir} ({platform.node()})")


def _plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    names = [r["engine"] for r in rows]
    ax.barh(names, [r["median_ms"] for r in rows], xerr=None, color="#4477aa")
    ax.set_xlabel("median latency, batch 1 (ms)")
    ax.set_title(title, fontsize=9)
    ax.invert_yaxis()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)


@app.command("experiment")
def experiment_cmd(
    file: Annotated[Path, typer.Argument(help="an experiment file (.toml)", show_default=False)],
    budget: Annotated[
        str, typer.Option("--budget", help="quick, paper, or a budget the file defines")
    ] = "quick",
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="run only these runs or groups (glob patterns; repeatable)"),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option("--shard", help="I/N: every N-th run from the I-th (jobs sharing a disk)"),
    ] = None,
    data: DataOpt = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="output directory [runs/experiments/NAME-BUDGET]")
    ] = None,
    plan_only: Annotated[
        bool, typer.Option("--plan", help="list the runs and what is done; run nothing")
    ] = False,
) -> None:
    """Run an experiment: searches over a grid of settings, fixed and random architectures,
    each an ordinary run directory (resumed where it stopped, skipped when complete); then
    write results.csv, results.json, report.md and plots/ beside them.

    Example: parnasc experiment experiments/table2.toml --budget quick --data cifar10.tar.gz
    """
    from parnasc import experiment

    if plan_only:
        _print_plan(experiment.plan(file, budget=budget, only=only or (), shard=shard), out)
        return
    with _Stages() as live:
        result = experiment.run(
            file, budget=budget, only=only or (), shard=shard, out_dir=out, data=data,
            threads=threads, device=device, precision=precision, progress=live, log=_err,
        )  # fmt: skip
    print(
        f"{result.out_dir}: {len(result.ran)} runs ran, {len(result.skipped)} were complete already"
    )
    if result.report is not None:
        for v in result.report.verdicts:
            print(v.sentence())
        print(f"wrote {result.report.markdown}")


def _print_plan(p: Any, out: Path | None) -> None:
    from parnasc.experiment import default_out
    from parnasc.experiment.gather import gather_run

    root = out or default_out(p.experiment, p.budget)
    print(f"{p.experiment.file}: budget {p.budget}, {len(p.runs)} runs, {len(p.selected)} selected")
    for r in p.selected:
        d = root / r.name
        status = gather_run(d)["status"] if (d / "run.json").is_file() else "pending"
        seeds = ",".join(map(str, r.train_seeds))
        print(f"  {r.name:<24} {r.kind:<7} seeds {seeds:<10} {status}")


class _Stages(_Live):
    """The live display of a sequence of runs: one per search or training, from its "start"
    report to its last epoch's end (the runner's lines go between them)."""

    def __call__(self, phase: str, epoch: int, batch: int, values: dict[str, Any]) -> None:
        if phase == "start":
            self._close()
        super().__call__(phase, epoch, batch, values)
        if phase.endswith("-end") and self.display is not None and epoch >= self.display.epochs:
            self._close()

    def _close(self) -> None:
        if self.display is not None:
            self.display.__exit__(None, None, None)
            self.display = None


@app.command("report")
def report_cmd(
    dirs: Annotated[
        list[Path],
        typer.Argument(help="run directories, or experiment directories", show_default=False),
    ],
    out: Annotated[
        Path | None, typer.Option("--out", help="output directory [the first directory]")
    ] = None,
) -> None:
    """Gather experiment directories into results.csv, results.json, report.md and plots/
    (accuracy against latency and FLOPs with the Pareto front, decisions over the epochs,
    training curves); for one run directory, draw its pictures into RUN/plots.

    Example: parnasc report runs/experiments/table2-quick runs/experiments/random-quick
    """
    from parnasc import experiment

    result = experiment.report(dirs, out_dir=out)
    for v in result.verdicts:
        print(v.sentence())
    for f in result.files:
        print(f"wrote {f}")
    if not result.files:
        print(f"{dirs[0]}: nothing to draw yet")


# --- helpers shared by commands ------------------------------------------------------------


def _remember(reset: bool = False, **paths: Path) -> None:
    """Record the spec compiled last (and its latest run and emit) for commands that omit them."""
    state: dict[str, Any] = {}
    if not reset:
        try:
            state = json.loads(STATE.read_text())
        except (OSError, ValueError):
            state = {}
    state.update({k: str(v.resolve()) for k, v in paths.items()})
    STATE.parent.mkdir(exist_ok=True)
    _atomic_write(STATE, json.dumps(state) + "\n")


def last_compiled() -> dict[str, Any]:
    """The spec compiled last in this directory, or an OptionError telling what to do."""
    try:
        state: dict[str, Any] = json.loads(STATE.read_text())
    except (OSError, ValueError):
        raise OptionError(
            "no spec given and none compiled here yet; run 'parnasc compile SPEC' first"
        ) from None
    return state


def main() -> None:
    """Entry point: user errors print one message and exit 1; PARNASC_DEBUG=1 shows tracebacks."""
    debug = os.environ.get("PARNASC_DEBUG") == "1"
    try:
        rc = app(standalone_mode=False)
    except PnasError as exc:
        if debug:
            raise
        _err(str(exc))
        sys.exit(1)
    except UserError as exc:
        if debug:
            raise
        rank = _rank()
        if rank is not None:
            from parnasc.nas.dist import RankError

            if isinstance(exc, RankError):  # rank 0 says it: let its line come first
                time.sleep(RANK_ERROR_WAIT)  # (torchrun stops this rank when rank 0 exits)
                sys.exit(1)
        _err(f"parnasc: error{f' (rank {rank})' if rank else ''}: {exc}")
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except click_exc.ClickException as exc:
        if debug:
            raise
        exc.show()
        sys.exit(1)
    except (typer.Abort, KeyboardInterrupt):
        _err("parnasc: interrupted")
        sys.exit(130)
    sys.exit(rc if isinstance(rc, int) else 0)
