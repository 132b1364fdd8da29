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
from parnasc.cpus import allowed_cpus
from parnasc.errors import OptionError, PnasError, UserError
from parnasc.files import atomic_path, recover_dir, replace_dir
from parnasc.files import write_text as _atomic_write

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
    from parnasc.ir.frontend import compile_file

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


def _load_data(data: Path | None, n_train: int | None, n_test: int | None, seed: int) -> Any:
    from parnasc.data.cifar import load_cifar10, subset

    cifar = load_cifar10(data, progress=lambda msg: _err(msg))
    if n_train is not None or n_test is not None:
        cifar = subset(cifar, n_train, n_test, seed)
    return cifar


def _abs(path: Path) -> Path:
    """An absolute path without resolving symlinks (the location as the user named it)."""
    return Path(os.path.abspath(path.expanduser()))


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def _shown(value: Any) -> str:
    return "all" if value is None else str(value)


def _unchanged(what: str, options: list[tuple[str, Any, Any]]) -> None:
    """Refuse an option that would change a recorded setting of a resumed run."""
    for name, given, recorded in options:
        if given is not None and given != recorded:
            raise OptionError(
                f"{name} {given}: cannot change a setting of the resumed {what} "
                f"(recorded {_shown(recorded)})"
            )


def _resumed_data(what: str, recorded: Any, data: Path | None) -> Path | None:
    """The data source of a resumed run: the recorded one, or `--data` naming where the same
    data is now (the fingerprint check after loading tells whether it is the same)."""
    if data is not None:
        return data
    if recorded is None:
        raise OptionError(f"{what} records no data source; pass --data PATH")
    if recorded.source is None:
        return None  # the official archive, downloaded into the cache
    src = Path(recorded.source)
    if not src.exists():
        raise OptionError(
            f"{what} was made with the data {src}, which is gone; pass --data PATH to the "
            "same data where it is now"
        )
    return src


def _data_record(
    what: str | None,
    recorded: Any,
    data: Path | None,
    cifar: Any,
    n_train: int | None,
    n_test: int | None,
) -> Any:
    """The DataRecord of the data just loaded; for a resume (`what`), it must be the same data
    as the recorded one."""
    from parnasc.nas.train import DataRecord, fingerprint

    fp = fingerprint(cifar.train_x, cifar.train_y, cifar.test_x, cifar.test_y)
    if what is not None and recorded is not None and fp != recorded.fingerprint:
        where = f"--data {data}" if data is not None else (recorded.source or "CIFAR-10")
        raise OptionError(f"{where}: not the data {what} was made with (its fingerprint differs)")
    return DataRecord(
        source=None if data is None else str(_abs(data)),
        train_images=n_train,
        test_images=n_test,
        fingerprint=fp,
    )


def _finished_search(run: Path) -> None:
    """Refuse a search run directory whose search has not finished (result.json comes last)."""
    from parnasc.nas.search import is_complete

    started = (run / "settings.json").exists() or (run / "checkpoint.pt").exists()
    if started and not is_complete(run):
        raise UserError(
            f"{run}: the search there has not finished (no result.json); finish it with "
            f"'parnasc search --resume {run}'"
        )


def _check_choices(options: list[tuple[str, str | None, tuple[str, ...]]]) -> None:
    for name, value, allowed in options:
        if value is not None and value not in allowed:
            raise OptionError(f"{name} {value}: expected one of {', '.join(allowed)}")


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
    train_images: TrainImagesOpt = None,
    test_images: TestImagesOpt = None,
    threads: ThreadsOpt = None,
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
    from dataclasses import replace

    from parnasc.ir.frontend import compile_file
    from parnasc.nas.search import (
        PAPER_RECIPE,
        RunRecord,
        Settings,
        is_complete,
        read_checkpoint,
        search,
    )
    from parnasc.nas.train import read_record, set_threads
    from parnasc.viz.display import Display

    _check_choices(
        [
            ("--cost", cost, ("flops", "latency")),
            ("--mode", mode, ("joint", "alternate")),
            ("--recipe", recipe, ("default", "paper")),
        ]
    )
    if cores is not None and cores < 1:
        raise OptionError(f"--cores {cores}: must be at least 1")
    record: RunRecord | None = None
    if resume is not None:
        what = f"run {resume}"
        record = read_record(resume / "settings.json", RunRecord, "search run")
        old = record.run_settings()
        if out is not None and _abs(out) != _abs(resume):
            raise OptionError(f"--out {out}: cannot change the directory of the resumed {what}")
        _unchanged(
            what,
            [
                ("--cores", cores, old.cores),
                ("--alpha", alpha, old.alpha),
                ("--beta", beta, old.beta),
                ("--cost", cost, old.cost),
                ("--mode", mode, old.mode),
                ("--recipe", recipe, old.recipe),
                ("--warmup", warmup, old.warmup),
                ("--batch", batch, old.batch),
                ("--seed", seed, old.seed),
                ("--train-images", train_images, old.n_train),
                ("--test-images", test_images, record.data.test_images if record.data else None),
            ],
        )
        if epochs is not None and epochs < old.epochs:
            raise OptionError(
                f"--epochs {epochs}: cannot change a setting of the resumed {what} (recorded "
                f"{old.epochs}); --epochs can only extend a run"
            )
        spec_path = spec if spec is not None else Path(record.spec)
        if spec is None and not spec_path.is_file():
            raise OptionError(
                f"{what} was made from {spec_path}, which is gone; pass SPEC, the same spec "
                "where it is now"
            )
        s, ir = compile_file(spec_path)
        if s.spec_hash != record.spec_hash:
            if spec is not None:
                raise OptionError(
                    f"{spec}: cannot change the spec of the resumed {what} (recorded "
                    f"{record.spec}; this one differs)"
                )
            raise OptionError(
                f"{spec_path}: changed since {what} began (its sha256 differs from the "
                "recorded one); restore it, or start a new run"
            )
        s = s.model_copy(update={"file": record.spec_file})  # outputs name it as at the start
        settings = replace(old, epochs=epochs or old.epochs)
        _validate(settings)
        if is_complete(resume) and settings.epochs == old.epochs:
            print(
                f"{resume}: the search is already complete ({_epochs(old.epochs)}); nothing to do "
                f"(--epochs E with E > {old.epochs} extends it)"
            )
            return
        run_dir = resume
        checkpoint = read_checkpoint(resume, s, settings)  # before the data: fail fast
        data_path = _resumed_data(what, record.data, data)
        n_test = record.data.test_images if record.data else test_images
        threads = threads or record.threads
    else:
        spec_path = _spec_or_last(spec)
        s, ir = compile_file(spec_path)
        n_cores = cores or s.target.cores or len(allowed_cpus())
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
            recipe=recipe or "default",
        )
        if recipe == "paper":
            overrides = {**PAPER_RECIPE, **{k: v for k, v in overrides.items() if v is not None}}
        settings = Settings.from_spec(s.search, n_cores, **overrides)
        _validate(settings)
        run_dir = out or Path("runs") / f"{s.name}-s{settings.seed}"
        if (run_dir / "checkpoint.pt").exists():
            raise OptionError(
                f"--out {run_dir}: a run is already there; use --resume {run_dir} or another --out"
            )
        data_path, n_test, checkpoint = data, test_images, None
    if s.paths > settings.cores:
        raise OptionError(
            f"--cores {settings.cores}: {spec_path} has {s.paths} paths; the method runs one "
            f"path per core, so it needs at least {s.paths} cores"
        )
    _check_shape(s.input)
    cifar = _load_data(data_path, settings.n_train, n_test, settings.seed)
    data_rec = _data_record(
        None if resume is None else f"run {resume}",
        record.data if record else None,
        data_path,
        cifar,
        settings.n_train,
        n_test,
    )
    set_threads(threads)  # after every check: a refused command leaves the process as it was
    train, val, _ = _loaders(cifar, settings)
    costs = None
    if settings.cost == "latency":
        from parnasc.nas.latency import latency_costs

        costs = latency_costs(ir, progress=_err)
    _remember(spec=spec_path, run=run_dir)
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
            data=data_rec,
            checkpoint=checkpoint,
            spec_path=spec_path,
        )
    print(f"search done: validation accuracy {result['val_acc']:.2%}")
    for k, v in result["choices"].items():
        print(f"  {k:<12} {v}")
    print(f"wrote {run_dir / 'derived.pnas'}  (retrain: parnasc train {run_dir / 'derived.pnas'})")


def _validate(settings: Any) -> None:
    """Check command-line overrides with the same rules as the spec's search section."""
    from dataclasses import asdict

    from pydantic import ValidationError

    from parnasc.lang.spec import SearchSpec

    values = {k: v for k, v in asdict(settings).items() if k in SearchSpec.model_fields}
    try:
        SearchSpec.model_validate(values)
    except ValidationError as exc:
        e = exc.errors()[0]
        name = str(e["loc"][0]).replace("_", "-")
        msg = str(e["msg"]).replace("Input should be", "must be")
        raise OptionError(f"--{name} {values.get(str(e['loc'][0]))}: {msg}") from None
    if settings.n_train is not None and settings.n_train < 20:
        raise OptionError(f"--train-images {settings.n_train}: need at least 20")


def _check_shape(shape: tuple[int, int, int]) -> None:
    if shape != (3, 32, 32):
        raise OptionError(
            f"the data is 3x32x32 CIFAR-10 but the spec's input is {'x'.join(map(str, shape))}"
        )


def _loaders(cifar: Any, settings: Any) -> tuple[Any, Any, Any]:
    from parnasc.data.cifar import Loader, split_train

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
    import uuid

    from parnasc.ir.frontend import compile_file
    from parnasc.nas.lower import lower
    from parnasc.nas.search import Settings
    from parnasc.nas.train import (
        RECORD_FORMAT,
        TrainRecord,
        load_checkpoint,
        load_state,
        read_record,
        read_train_checkpoint,
        retrain,
        set_threads,
    )
    from parnasc.viz.display import Display

    s, ir = compile_file(spec)
    if not s.concrete:
        raise OptionError(
            f"{spec}: not a concrete spec (blocks with several candidates or searchable "
            "syncs); run 'parnasc search' first"
        )
    _finished_search(spec.parent)
    if epochs is not None and epochs < 0:
        raise OptionError(f"--epochs {epochs}: must be at least 0")
    out_dir = out or spec.parent
    record: TrainRecord | None = None
    if resume:
        what = f"training {out_dir}"
        record = read_record(out_dir / "train_settings.json", TrainRecord, "training")
        if record.spec_hash != s.spec_hash:
            raise OptionError(
                f"{spec}: not the spec the {what} began with (recorded {record.spec}; this one "
                "differs); start a new training without --resume"
            )
        if from_scratch and record.init != "scratch":
            raise OptionError(
                f"--from-scratch: cannot change a setting of the resumed {what} (recorded: "
                f"from {record.init})"
            )
        _unchanged(
            what,
            [
                ("--train-images", train_images, record.data.train_images),
                ("--test-images", test_images, record.data.test_images),
            ],
        )
        if epochs is not None and epochs < record.epochs:
            raise OptionError(
                f"--epochs {epochs}: cannot change a setting of the resumed {what} (recorded "
                f"{record.epochs}); --epochs can only extend a training"
            )
        n_epochs = epochs if epochs is not None else record.epochs
        done = _trained(out_dir, record)
        if done is not None and n_epochs == record.epochs:
            print(
                f"{out_dir}: the training is already complete ({_epochs(record.epochs)}): test "
                f"accuracy {done:.2%} ({out_dir / 'model.pt'})"
            )
            return
        if (out_dir / "train_checkpoint.pt").exists():
            read_train_checkpoint(out_dir, n_epochs)  # before the data: fail fast
        init, run_id = record.init, record.run_id
        data_path = _resumed_data(what, record.data, data)
        n_train, n_test = record.data.train_images, record.data.test_images
        threads = threads or record.threads
    else:
        n_epochs = epochs if epochs is not None else s.search.retrain_epochs
        init = "scratch" if from_scratch else str(_abs(spec.parent / "searched.pt"))
        run_id = uuid.uuid4().hex
        data_path, n_train, n_test = data, train_images, test_images
    _check_shape(s.input)
    out_dir.mkdir(parents=True, exist_ok=True)
    import torch

    torch.manual_seed(s.search.seed)
    net = lower(ir)
    if init != "scratch" and not (resume and (out_dir / "train_checkpoint.pt").exists()):
        weights = Path(init)
        if not weights.exists():
            raise OptionError(
                f"{weights} not found: training from the searched weights needs it; "
                "or pass --from-scratch"
            )
        what_net = f"the network of {spec} (edited after the search?)"
        load_state(net, load_checkpoint(weights)["net"], weights, what_net)
    settings = Settings.from_spec(s.search, s.paths, n_train=n_train)
    cifar = _load_data(data_path, n_train, n_test, settings.seed)
    data_rec = _data_record(
        f"training {out_dir}" if record else None,
        record.data if record else None,
        data_path,
        cifar,
        n_train,
        n_test,
    )
    set_threads(threads)
    train, _, test = _loaders(cifar, settings)
    new_record = TrainRecord(
        format=RECORD_FORMAT,
        parnasc=__version__,
        run_id=run_id,
        spec=str(_abs(spec)),
        spec_hash=s.spec_hash,
        init=init,
        epochs=n_epochs,
        data=data_rec,
        threads=torch.get_num_threads(),
    )
    meta = {"spec": str(spec), "spec_hash": s.spec_hash, "init": init, "epochs": n_epochs}
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
            new_record,
        )
    _remember(run=out_dir)
    print(f"test accuracy {acc:.2%}  (wrote {out_dir / 'model.pt'})")


def _trained(out_dir: Path, record: Any) -> float | None:
    """The test accuracy of `out_dir/model.pt` if it is the result of the recorded training."""
    from parnasc.nas.train import load_checkpoint

    model = out_dir / "model.pt"
    if not model.exists():
        return None
    meta = load_checkpoint(model, ("net", "meta"))["meta"]
    if not isinstance(meta, dict) or meta.get("training") != record.identity():
        return None
    acc = meta.get("test_acc")
    return float(acc) if isinstance(acc, int | float) else None


def _concrete_net(spec: Path, weights: Path | None) -> tuple[Any, Any, str]:
    """Compile a concrete spec, lower it and load `weights` (None: the initial weights)."""
    from parnasc.ir.frontend import compile_file
    from parnasc.nas.lower import lower
    from parnasc.nas.train import load_checkpoint, load_state

    s, ir = compile_file(spec)
    if not s.concrete:
        raise OptionError(f"{spec}: not a concrete spec; search it first ('parnasc search {spec}')")
    import torch

    torch.manual_seed(s.search.seed)
    net = lower(ir)
    if weights is not None:
        ck = load_checkpoint(weights)
        meta = ck.get("meta")
        if weights.name == "model.pt" and isinstance(meta, dict):
            trained_for = meta.get("spec_hash")
            if trained_for is not None and trained_for != s.spec_hash:
                raise UserError(
                    f"{weights}: trained from another version of {spec} (edited or re-derived "
                    f"since); retrain it with 'parnasc train {spec}'"
                )
        load_state(net, ck["net"], weights, f"the network of {spec} (edited since it was saved?)")
    return s, net.eval(), "untrained" if weights is None else str(weights)


@app.command()
def emit(
    run: Annotated[
        Path | None,
        typer.Argument(
            help="run directory, or a concrete .pnas [the latest run]", show_default=False
        ),
    ] = None,
    onnx: Annotated[
        bool, typer.Option("--onnx/--no-onnx", help="emit ONNX (the only format)")
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
    from parnasc.deploy.emit import compile_model_dir
    from parnasc.nas.train import atomic_save

    if not onnx:
        raise OptionError("--no-onnx: ONNX is the only output format")
    if run is None:
        state = last_compiled()
        if "run" not in state:
            raise OptionError("no run given and none recorded; run 'parnasc search' first")
        run = Path(state["run"])
    if run.is_dir():
        _finished_search(run)
        spec = run / "derived.pnas"
        weights = next((w for w in (run / "model.pt", run / "searched.pt") if w.exists()), None)
        if not spec.exists() or weights is None:
            raise OptionError(
                f"{run}: not a finished run (needs derived.pnas and searched.pt or model.pt)"
            )
    elif run.suffix == ".pnas":
        spec, weights = run, None
    else:
        raise OptionError(f"{run}: expected a run directory or a concrete .pnas file")
    s, net, source = _concrete_net(spec, weights)
    n_cores = cores or s.target.cores or len(allowed_cpus())
    if s.paths > n_cores:
        raise OptionError(f"--cores {n_cores}: the model has {s.paths} paths; it needs {s.paths}")
    out_dir = out or (run / "emit" if run.is_dir() else Path("build") / s.name / "emit")
    _check_emit_dir(out_dir)
    meta = {
        "parnasc.version": __version__,
        "parnasc.spec_hash": s.spec_hash,
        "parnasc.weights": source,
        "parnasc.architecture": (run / "derived.pnas" if run.is_dir() else spec).read_text(),
    }
    _err(f"exporting {s.name} and measuring the schedule on {n_cores} cores...")
    with replace_dir(out_dir) as stage:  # the directory changes as a whole or not at all
        sched = compile_model_dir(
            net, s.input, stage, n_cores, meta, measure=not no_measure, quiet=True
        )
        (stage / "model.pnas").write_text(spec.read_text(encoding="utf-8"), encoding="utf-8")
        atomic_save({"net": net.state_dict()}, stage / "weights.pt")
    _remember(emit=out_dir)
    print(
        f"wrote {out_dir / 'model.onnx'}, {out_dir / 'schedule.json'} (plan {sched['plan']}, "
        f"expected {sched['expected_us'] / 1000:.3f} ms at batch 1)"
    )


def _check_emit_dir(out_dir: Path) -> None:
    """Emit replaces its output directory whole: refuse one that holds anything else."""
    recover_dir(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OptionError(f"--out {out_dir}: not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "schedule.json").exists():
        raise OptionError(
            f"--out {out_dir}: the directory holds other files and emit replaces it whole; "
            "give a new or an emitted directory"
        )


@app.command("run")
def run_cmd(
    model_dir: Annotated[Path, typer.Argument(help="an emitted directory", show_default=False)],
    images: Annotated[list[Path], typer.Argument(help="image files", show_default=False)],
) -> None:
    """Classify images with an emitted model and its per-core schedule.

    Example: parnasc run runs/cifar-s0/emit cat.png ship.jpg
    """
    import numpy as np
    import torch

    from parnasc.data.cifar import CIFAR10_CLASSES, load_images, normalize
    from parnasc.deploy.runtime import Runtime

    sched = _schedule(model_dir)
    _, h, w = sched["input_shape"]
    x = normalize(torch.from_numpy(load_images(images, (h, w)))).numpy()
    with Runtime(model_dir) as rt:
        for path, row in zip(images, x, strict=True):
            logits = rt.run(np.ascontiguousarray(row[None]))[0]
            p = np.exp(logits - logits.max())
            p /= p.sum()
            k = int(p.argmax())
            name = CIFAR10_CLASSES[k] if len(p) == len(CIFAR10_CLASSES) else str(k)
            print(f"{path}: {name} ({p[k]:.1%})")


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

    from parnasc.deploy.bench import benchmark, format_table

    if model_dir is None:
        state = last_compiled()
        if "emit" not in state:
            raise OptionError("no emitted directory given or recorded; run 'parnasc emit' first")
        model_dir = Path(state["emit"])
    sched = _schedule(model_dir)
    if reps < 100:
        raise OptionError(f"--reps {reps}: the protocol needs at least 100 timed runs")
    n_cores = cores or int(sched["cores"])
    _, net, _ = _concrete_net(model_dir / "model.pnas", model_dir / "weights.pt")
    rows = benchmark(model_dir, n_cores, reps, torch_module=net)
    print(_machine_line())
    print(format_table(rows))
    got = next(r for r in rows if r["engine"] == "parnasc")["median_ms"]
    est = sched["expected_us"] / 1000
    err = 100 * (est - got) / got
    print(f"schedule estimate {est:.3f} ms vs measured {got:.3f} ms: error {err:+.1f}%")
    if bound:
        from parnasc.deploy.bench import format_bound, path_parallel_bound

        print(format_bound(path_parallel_bound(model_dir, n_cores, reps)))
    if json_out is not None:
        _atomic_write(json_out, json.dumps(rows, indent=1) + "\n")
    if plot is not None:
        _plot(rows, plot, f"{model_dir} ({platform.node()})")


def _schedule(model_dir: Path) -> dict[str, Any]:
    from parnasc.deploy.runtime import load_schedule

    return load_schedule(model_dir)


def _machine_line() -> str:
    import onnxruntime
    import torch

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    aff = allowed_cpus()
    return (
        f"{cpu}; affinity {aff}; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}"
    )


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
