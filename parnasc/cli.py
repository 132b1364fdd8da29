"""The `parnasc` command line. Heavy modules (torch, onnx, matplotlib) load inside commands."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

try:  # typer >= 0.26 vendors click
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover - older typer
    from click import exceptions as click_exc  # type: ignore[no-redef]

from parnasc import __version__
from parnasc.errors import OptionError, PnasError, UserError

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


def _version(value: bool) -> None:
    if value:
        print(f"parnasc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """parnasc: resource-aware neural architecture search for multicore CPUs."""


def _err(text: str) -> None:
    sys.stderr.write(text.rstrip("\n") + "\n")


@app.command()
def check(files: FilesArg) -> None:
    """Parse, validate and verify specs; exit 0 when all are valid.

    Example: parnasc check specs/*.pnas
    """
    from parnasc.compile import compile_file

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
    from parnasc.fmt import format_document
    from parnasc.parse import parse_file

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
    from parnasc.compile import compile_file
    from parnasc.summary import print_summary

    spec, ir = compile_file(file)
    out_dir = out or Path("build") / spec.name
    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(out_dir / "ir.json", ir.dumps())
    from parnasc.ir import print_ir

    _atomic_write(out_dir / "ir.txt", print_ir(ir))
    _remember(file, out_dir)
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
    from parnasc.compile import compile_file
    from parnasc.show import draw

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


def _load_data(data: Path | None, n_train: int | None, n_test: int | None, seed: int) -> Any:
    from parnasc.data import load_cifar10, subset

    cifar = load_cifar10(data, progress=lambda msg: _err(msg))
    if n_train is not None or n_test is not None:
        cifar = subset(cifar, n_train, n_test, seed)
    return cifar


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
    data: Annotated[
        Path | None, typer.Option("--data", help="CIFAR-10: archive or folder [download to cache]")
    ] = None,
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
    recipe: Annotated[str, typer.Option("--recipe", help="default or paper")] = "default",
    batch: Annotated[int | None, typer.Option("--batch", help="batch size [spec]")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="random seed [spec]")] = None,
    train_images: Annotated[
        int | None, typer.Option("--train-images", help="use a class-balanced subset")
    ] = None,
    test_images: Annotated[
        int | None, typer.Option("--test-images", help="subset of the test set")
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", help="torch threads [all cores]")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="run directory [runs/<model>-s<seed>]")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="continue an interrupted run directory")
    ] = None,
) -> None:
    """Search the supernet on CIFAR-10 and write the concrete architecture RUN/derived.pnas.

    Example: parnasc search specs/cifar.pnas --cores 2 --data cifar10.tar.gz --epochs 10
    """
    from parnasc.compile import compile_file
    from parnasc.display import Display
    from parnasc.search import PAPER_RECIPE, Settings, search
    from parnasc.train import set_threads

    previous: dict[str, Any] = {}
    if resume is not None:
        try:
            previous = json.loads((resume / "settings.json").read_text())
        except (OSError, ValueError):
            raise OptionError(
                f"--resume {resume}: not a search run directory (no settings.json)"
            ) from None
        spec = Path(previous["spec"])
        out = resume
    spec_path = _spec_or_last(spec)
    s, ir = compile_file(spec_path)
    for name, value, allowed in (
        ("--cost", cost, ("flops", "latency")),
        ("--mode", mode, ("joint", "alternate")),
        ("--recipe", recipe, ("default", "paper")),
    ):
        if value is not None and value not in allowed:
            raise OptionError(f"{name} {value}: expected one of {', '.join(allowed)}")
    n_cores = cores or s.target.cores or len(os.sched_getaffinity(0))
    if cores is not None and cores < 1:
        raise OptionError(f"--cores {cores}: must be at least 1")
    if s.paths > n_cores:
        raise OptionError(
            f"--cores {n_cores}: {spec_path} has {s.paths} paths; the method runs one path "
            f"per core, so it needs at least {s.paths} cores"
        )
    if previous:
        settings = Settings(**previous["settings"])
    else:
        overrides: dict[str, Any] = dict(
            alpha=alpha,
            beta=beta,
            cost=cost,
            epochs=epochs,
            warmup=warmup,
            batch=batch,
            seed=seed,
            mode=mode,
            n_train=train_images,
            recipe=recipe,
        )
        if recipe == "paper":
            overrides = {**PAPER_RECIPE, **{k: v for k, v in overrides.items() if v is not None}}
        settings = Settings.from_spec(s.search, n_cores, **overrides)
    run_dir = out or Path("runs") / f"{s.name}-s{settings.seed}"
    if resume is None and (run_dir / "checkpoint.pt").exists():
        raise OptionError(
            f"--out {run_dir}: a run is already there; use --resume {run_dir} or another --out"
        )
    set_threads(threads)
    train, val, _ = _loaders(data, settings.n_train, test_images, settings, s.input)
    costs = None
    if settings.cost == "latency":
        from parnasc.latency import latency_costs

        costs = latency_costs(ir, progress=_err)
    _remember(
        spec_path,
        Path(last_compiled()["build"]) if STATE.exists() else Path("build") / s.name,
        run=run_dir,
    )
    with Display(settings.epochs, len(train)) as display:
        result = search(
            s,
            ir,
            settings,
            train,
            val,
            run_dir,
            costs=costs,
            resume=resume is not None,
            report=display,
        )
    print(f"search done: validation accuracy {result['val_acc']:.2%}")
    for k, v in result["choices"].items():
        print(f"  {k:<12} {v}")
    print(f"wrote {run_dir / 'derived.pnas'}  (retrain: parnasc train {run_dir / 'derived.pnas'})")


def _loaders(
    data: Path | None,
    n_train: int | None,
    n_test: int | None,
    settings: Any,
    shape: tuple[int, int, int],
) -> tuple[Any, Any, Any]:
    from parnasc.data import Loader, split_train

    if shape != (3, 32, 32):
        raise OptionError(
            f"the data is 3x32x32 CIFAR-10 but the spec's input is {'x'.join(map(str, shape))}"
        )
    cifar = _load_data(data, n_train, n_test, settings.seed)
    (xt, yt), (xv, yv) = split_train(
        cifar.train_x, cifar.train_y, settings.val_fraction, settings.seed
    )
    train = Loader(
        xt, yt, settings.batch, shuffle=True, augment=True, seed=settings.seed, drop_last=True
    )
    val = Loader(xv, yv, settings.batch, shuffle=True, augment=False, seed=settings.seed + 1)
    test = Loader(cifar.test_x, cifar.test_y, 500, shuffle=False, augment=False, seed=0)
    return train, val, test


@app.command("train")
def train_cmd(
    spec: Annotated[
        Path, typer.Argument(help="a concrete spec, e.g. RUN/derived.pnas", show_default=False)
    ],
    data: Annotated[
        Path | None, typer.Option("--data", help="CIFAR-10: archive or folder [download to cache]")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option("--epochs", help="epochs [spec retrain_epochs]")
    ] = None,
    from_scratch: Annotated[
        bool, typer.Option("--from-scratch", help="do not start from the searched weights")
    ] = False,
    train_images: Annotated[
        int | None, typer.Option("--train-images", help="use a class-balanced subset")
    ] = None,
    test_images: Annotated[
        int | None, typer.Option("--test-images", help="subset of the test set")
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", help="torch threads [all cores]")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="output directory [the spec's directory]")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue an interrupted training")
    ] = False,
) -> None:
    """Retrain a concrete architecture (by default from its searched weights); print test accuracy.

    Example: parnasc train runs/cifar-s0/derived.pnas --data cifar10.tar.gz
    """
    from parnasc.compile import compile_file
    from parnasc.display import Display
    from parnasc.lower import lower
    from parnasc.search import Settings
    from parnasc.train import load_checkpoint, retrain, set_threads

    s, ir = compile_file(spec)
    if not s.concrete:
        raise OptionError(
            f"{spec}: not a concrete spec (blocks with several candidates or searchable "
            "syncs); run 'parnasc search' first"
        )
    out_dir = out or spec.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    torch_seed = s.search.seed
    import torch

    torch.manual_seed(torch_seed)
    net = lower(ir)
    source = "scratch"
    if not from_scratch:
        weights = spec.parent / "searched.pt"
        if not weights.exists():
            raise OptionError(
                f"{weights} not found: training from the searched weights needs it; "
                "or pass --from-scratch"
            )
        net.load_state_dict(load_checkpoint(weights)["net"])
        source = str(weights)
    set_threads(threads)
    settings = Settings.from_spec(s.search, s.paths, n_train=train_images)
    train, _, test = _loaders(data, train_images, test_images, settings, s.input)
    n_epochs = epochs if epochs is not None else s.search.retrain_epochs
    meta = {"spec": str(spec), "spec_hash": s.spec_hash, "init": source, "epochs": n_epochs}
    with Display(n_epochs, len(train)) as display:
        acc = retrain(
            net,
            train,
            test,
            s.search.weights,
            n_epochs,
            out_dir,
            s.search.seed,
            meta,
            display,
            resume,
        )
    _remember(spec, Path("build") / s.name, run=out_dir)
    print(f"test accuracy {acc:.2%}  (wrote {out_dir / 'model.pt'})")


# --- helpers shared by commands ------------------------------------------------------------


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _remember(spec: Path, build_dir: Path, run: Path | None = None) -> None:
    state = {"spec": str(spec.resolve()), "build": str(build_dir.resolve())}
    if run is not None:
        state["run"] = str(run.resolve())
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
        _err(f"parnasc: error: {exc}")
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
