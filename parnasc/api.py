"""The pipeline as a Python API: compile -> search -> derive -> retrain -> emit -> run, bench.

Every step returns a dataclass and prints nothing. Long steps report through an optional
`progress` callback, `(phase, epoch, batch, values)` (see `parnasc.nas.train.Report`), and
pass their one-line messages (data loading, latency measurement) to an optional `log`.
Mistakes a user can fix raise `parnasc.errors.UserError` (a bad spec: `PnasError`) with one
line that names the option as the command line spells it (`beta=` is `--beta`). The `parnasc`
command is a thin layer over these functions. Heavy modules (torch, onnx, onnxruntime) load
inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from parnasc.cpus import allowed_cpus, cpu_model
from parnasc.errors import OptionError
from parnasc.nas.recipes import RECIPES, SearchOptions, Settings, make_settings, recipe, validate
from parnasc.nas.runs import (
    RECORD_FORMAT,
    DataRecord,
    RunRecord,
    SearchResult,
    TrainRecord,
    TrainResult,
    absolute,
    check_resumed_search,
    check_resumed_spec,
    check_resumed_training,
    data_record,
    finished_search,
    is_complete,
    read_record,
    resumed_data,
    resumed_spec_path,
)
from parnasc.version import __version__

if TYPE_CHECKING:
    from parnasc.data.cifar import Cifar
    from parnasc.ir.diff import LatencyLookup, SpecDiff
    from parnasc.ir.graph import IR
    from parnasc.ir.provenance import Provenance
    from parnasc.lang.spec import Spec
    from parnasc.nas.dist import Ranks
    from parnasc.nas.latency import Measurer
    from parnasc.nas.train import Report

Log = Callable[[str], None]
PathLike = str | Path


@dataclass(frozen=True)
class Compiled:
    """A validated spec and its IR (shapes and costs annotated)."""

    spec: Spec
    ir: IR
    path: Path | None = None  # the file it was read from; None for text

    @property
    def where(self) -> Path:
        """The file (or the name of the text) in messages."""
        return self.path if self.path is not None else Path(self.spec.file)


def compile(spec: PathLike, *, source: str | None = None) -> Compiled:
    """Compile the .pnas file `spec`, or the text `source` (then `spec` names it in
    diagnostics); raises PnasError with every diagnostic of the text."""
    from parnasc.ir.frontend import compile_file, compile_source

    if source is not None:
        s, ir = compile_source(source, str(spec))
        return Compiled(s, ir)
    s, ir = compile_file(spec)
    return Compiled(s, ir, Path(spec))


def _compiled(spec: PathLike | Compiled) -> Compiled:
    return spec if isinstance(spec, Compiled) else compile(spec)


# --- search -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SearchJob:
    """A search decided before any data is loaded."""

    compiled: Compiled
    settings: Settings
    run_dir: Path
    record: RunRecord | None  # the resumed run's; None for a new run
    checkpoint: dict[str, Any] | None
    data: Path | None
    test_images: int | None
    threads: int | None
    device: str  # resolved: `cpu`, `cuda:N`
    precision: str  # resolved: `fp32` or `bf16`


def search(
    spec: PathLike | Compiled | None = None,
    *,
    run_dir: PathLike,
    data: PathLike | None = None,
    resume: bool = False,
    cores: int | None = None,
    recipe: str | None = None,
    alpha: float | None = None,
    beta: float | None = None,
    cost: str | None = None,
    mode: str | None = None,
    epochs: int | None = None,
    warmup: int | None = None,
    batch: int | None = None,
    seed: int | None = None,
    train_images: int | None = None,
    test_images: int | None = None,
    threads: int | None = None,
    tau: float | None = None,
    tau_end: float | None = None,
    device: str | None = None,
    precision: str | None = None,
    progress: Report | None = None,
    log: Log | None = None,
) -> SearchResult:
    """Search the supernet `spec` on CIFAR-10 and derive its concrete architecture, writing
    the run directory `run_dir` (settings.json, checkpoints, logs, searched.pt, derived.pnas
    and last result.json; a resume depends on them).

    A new search takes the spec's `search` settings, then the `recipe` ("default" or "paper"),
    then every option given; `cores` defaults to the spec's target, else this machine's.
    `data` is an archive or folder (None: the official archive, downloaded into the cache);
    `train_images` / `test_images` take class-balanced subsets. `threads` are torch's
    intra-op threads for the call (default: all cores), restored after. `device` is where
    the supernet trains: `cpu`, `cuda` or `cuda:N` (default: CUDA if available, else the
    CPU); the files hold CPU tensors. `precision` is the training steps' arithmetic: `fp32`,
    `bf16` (mixed precision) or `auto` (bf16 where the device computes it natively; the
    default; `parnasc.nas.precision`). A `run_dir` that holds a run already is refused.

    `resume=True` continues `run_dir` with its recorded spec, data and settings (`spec` and
    `data` may name the same ones where they are now); an option given must equal the
    recorded value, except `epochs`, which may extend the run, and `threads`, `device` and
    `precision` (default: the recorded one), which change speed and float results. A resume
    of a complete run returns its recorded result with `up_to_date=True` and changes nothing.

    Under torchrun, or in a process group the caller started, the search is data-parallel
    (`parnasc.nas.dist`: each rank a share of every batch, rank 0 writes; `threads` per
    process); `progress` and `log` are called on rank 0 only."""
    options = SearchOptions(
        cores=cores,
        recipe=recipe,
        alpha=alpha,
        beta=beta,
        cost=cost,
        mode=mode,
        epochs=epochs,
        warmup=warmup,
        batch=batch,
        seed=seed,
        train_images=train_images,
        tau=tau,
        tau_end=tau_end,
    )
    options.check()
    dev = _device(device)
    _precision(precision, dev)  # a bad word fails before anything is read
    run = Path(run_dir)
    source = None if data is None else Path(data)
    with _ranks(dev) as ranks:
        if not ranks.main:
            progress = log = None
        with ranks.together():  # every check on every rank before any rank writes
            if resume:
                job = _resumed_search(
                    run, spec, options, source, test_images, threads, dev, ranks.world, precision
                )
            elif spec is None:
                raise OptionError("no spec given; a new search needs one")
            else:
                job = _new_search(
                    run, _compiled(spec), options, source, test_images, threads, dev, precision
                )
            inputs = None if job is None else _search_data(job, ranks, log)
        if job is None or inputs is None:
            return SearchResult.read(run, up_to_date=True)
        return _run_search(job, inputs, ranks, progress, log)


def _device(name: str | None) -> str:
    """The resolved `--device` (`parnasc.nas.device.resolve_device`) as text; under torchrun
    `cuda` is this rank's GPU (`parnasc.nas.dist.device_name`)."""
    from parnasc.nas.device import resolve_device
    from parnasc.nas.dist import device_name

    return str(resolve_device(device_name(name)))


def _precision(name: str | None, device: str, recorded: str | None = None) -> str:
    """The resolved `--precision` (`parnasc.nas.precision.resolve_precision`) on `device`;
    None takes `recorded` (a resume's) where there is one, else `auto`."""
    from parnasc.nas.precision import resolve_precision

    return resolve_precision(name or recorded, device)


@contextmanager
def _ranks(device: str) -> Iterator[Ranks]:
    """The ranks of a data-parallel run under torchrun (or in the caller's process group;
    `parnasc.nas.dist.ranks_for`), else the single process."""
    import torch

    from parnasc.nas.dist import ranks_for

    with ranks_for(torch.device(device)) as ranks:
        yield ranks


def _processes_changed(what: str, recorded: int, ranks: Ranks, log: Log | None) -> None:
    """Tell a resume that continues on another number of data-parallel processes."""
    if log is not None and recorded != ranks.world:
        log(
            f"note: {what} ran on {recorded} process{'es' if recorded > 1 else ''}; continuing "
            f"on {ranks.world} (batch-norm shares and float sums differ)"
        )


def _moved(what: str, recorded: str | None, device: str, log: Log | None) -> None:
    """Tell a resume that continues on another device than the one recorded."""
    if log is not None and recorded is not None and recorded != device:
        log(
            f"note: {what} ran on {recorded}; continuing on {device} (float results differ "
            "in the last bits)"
        )


def _new_search(
    run_dir: Path,
    compiled: Compiled,
    options: SearchOptions,
    data: Path | None,
    test_images: int | None,
    threads: int | None,
    device: str,
    precision: str | None,
) -> _SearchJob:
    s = compiled.spec
    n_cores = options.cores or s.target.cores or len(allowed_cpus())
    settings = make_settings(s.search, n_cores, options)
    if (run_dir / "checkpoint.pt").exists():
        raise OptionError(
            f"--out {run_dir}: a run is already there; use --resume {run_dir} or another --out"
        )
    return _SearchJob(
        compiled=compiled,
        settings=settings,
        run_dir=run_dir,
        record=None,
        checkpoint=None,
        data=data,
        test_images=test_images,
        threads=threads,
        device=device,
        precision=_precision(precision, device),
    )


def _resumed_search(
    run_dir: Path,
    spec: PathLike | Compiled | None,
    options: SearchOptions,
    data: Path | None,
    test_images: int | None,
    threads: int | None,
    device: str,
    processes: int = 1,
    precision: str | None = None,
) -> _SearchJob | None:
    """The job of a resumed search, or None when the run is complete already; the recorded
    thread count is the default when it ran on `processes` processes, as now."""
    from parnasc.nas.search import read_checkpoint

    what = f"run {run_dir}"
    record = read_record(run_dir / "settings.json", RunRecord, "search run")
    epochs = check_resumed_search(what, record, options, test_images)
    if isinstance(spec, Compiled):
        compiled = spec
    else:
        compiled = compile(resumed_spec_path(what, record, None if spec is None else Path(spec)))
    s = check_resumed_spec(what, record, compiled.spec, compiled.where, spec is not None)
    compiled = replace(compiled, spec=s)
    old = record.run_settings()
    settings = replace(old, epochs=epochs)
    validate(settings)
    if is_complete(run_dir) and settings.epochs == old.epochs:
        return None
    checkpoint = read_checkpoint(run_dir, s, settings)  # before the data: fail fast
    return _SearchJob(
        compiled=compiled,
        settings=settings,
        run_dir=run_dir,
        record=record,
        checkpoint=checkpoint,
        data=resumed_data(what, record.data, data),
        test_images=record.data.test_images if record.data else test_images,
        threads=threads or (record.threads if record.processes == processes else None),
        device=device,
        precision=_precision(precision, device, record.precision),
    )


def _search_data(job: _SearchJob, ranks: Ranks, log: Log | None) -> tuple[Cifar, DataRecord]:
    """The checks of a search that need its settings, then its data and the data's record."""
    from parnasc.data.loaders import check_input

    s, settings = job.compiled.spec, job.settings
    if s.paths > settings.cores:
        raise OptionError(
            f"--cores {settings.cores}: {job.compiled.where} has {s.paths} paths; the method "
            f"runs one path per core, so it needs at least {s.paths} cores"
        )
    check_input(s.input)
    ranks.check_batch(settings.batch)
    what = None if job.record is None else f"run {job.run_dir}"
    recorded = None if job.record is None else job.record.data
    cifar, rec = _data(what, recorded, job.data, settings.n_train, job.test_images, settings, log)
    if job.record is not None:
        _moved(f"run {job.run_dir}", job.record.device, job.device, log)
        _processes_changed(f"run {job.run_dir}", job.record.processes, ranks, log)
    return cifar, rec


def _run_search(
    job: _SearchJob,
    inputs: tuple[Cifar, DataRecord],
    ranks: Ranks,
    progress: Report | None,
    log: Log | None,
) -> SearchResult:
    from parnasc.data.loaders import make_loaders
    from parnasc.nas.dist import default_threads
    from parnasc.nas.search import search as run_search
    from parnasc.nas.train import torch_threads

    s, ir, settings = job.compiled.spec, job.compiled.ir, job.settings
    cifar, rec = inputs
    threads = job.threads or default_threads(len(allowed_cpus()))
    with torch_threads(threads):  # after every check: a refusal leaves torch as it was
        augment = recipe(settings.recipe).augment
        loaders = make_loaders(
            cifar, settings.batch, settings.val_fraction, settings.seed, augment, ranks.shard
        )
        costs = None
        if settings.cost == "latency":
            from parnasc.nas.latency import latency_costs

            costs = ranks.from_main(
                latency_costs(ir, progress=log, measurer=_latency_measurer(log))
                if ranks.main
                else None
            )
        return run_search(
            s,
            ir,
            settings,
            loaders.train,
            loaders.val,
            job.run_dir,
            costs=costs,
            resume=job.record is not None,
            report=progress,
            data=rec,
            checkpoint=job.checkpoint,
            spec_path=job.compiled.where,
            device=job.device,
            ranks=ranks,
            precision=job.precision,
        )


def _latency_measurer(log: Log | None) -> Measurer | None:
    """The deployed engine's latency measurer (ORT ops, native joins); None, with one note,
    where the native executor is unavailable (the table is then measured in torch eager)."""
    from parnasc.deploy.measure import native_measurer

    measurer, why = native_measurer()
    if measurer is None and log is not None:
        log(f"note: latency table measured in torch eager (native executor unavailable: {why})")
    return measurer


def _data(
    what: str | None,
    recorded: DataRecord | None,
    source: Path | None,
    train_images: int | None,
    test_images: int | None,
    settings: Settings,
    log: Log | None,
) -> tuple[Cifar, DataRecord]:
    """Load the data of a run and its record (for a resume, `what`: the recorded data)."""
    from parnasc.data.loaders import load_data

    cifar = load_data(source, train_images, test_images, settings.seed, log)
    arrays = (cifar.train_x, cifar.train_y, cifar.test_x, cifar.test_y)
    return cifar, data_record(what, recorded, source, arrays, train_images, test_images)


# --- derive -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Derived:
    """A concrete architecture pruned from a supernet."""

    choices: dict[str, str]  # architecture key -> chosen candidate
    text: str  # its canonical .pnas text (what a search writes as RUN/derived.pnas)
    concrete: Compiled  # the text compiled


def derive(
    supernet: PathLike | Compiled,
    probabilities: Mapping[str, Sequence[float]],
    *,
    memory: int | None = None,
    settings: Settings | None = None,
) -> Derived:
    """The concrete architecture of `supernet` under `probabilities` (architecture key ->
    probability per candidate, e.g. `SearchResult.probabilities`): argmax per block, a sync
    kept where P_sync > P_direct, then smaller candidates until it fits `memory` bytes per core
    (default: the spec's target memory). `settings` go into the text's header (default: the
    spec's own search section); writes nothing."""
    from parnasc.ir.passes.prune import prune
    from parnasc.ir.to_pnas import concrete_spec_text
    from parnasc.nas.search import derive as derive_choices

    c = _compiled(supernet)
    budget = memory if memory is not None else c.spec.target.memory
    choices = derive_choices(probabilities, c.ir, budget)
    header = settings or Settings.from_spec(c.spec.search, c.spec.target.cores or c.spec.paths)
    probs = {k: list(v) for k, v in probabilities.items()}
    text = concrete_spec_text(prune(c.ir, choices), c.spec, probs, asdict(header))
    return Derived(choices, text, compile("derived.pnas", source=text))


# --- retrain ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TrainJob:
    """A retraining decided before any data is loaded."""

    compiled: Compiled
    out_dir: Path
    record: TrainRecord | None  # the resumed training's; None for a new one
    init: str  # "scratch", or the searched weights to start from
    run_id: str
    epochs: int
    data: Path | None
    train_images: int | None
    test_images: int | None
    threads: int | None
    recipe: str
    device: str  # resolved: `cpu`, `cuda:N`
    precision: str  # resolved: `fp32` or `bf16`


def retrain(
    spec: PathLike | Compiled,
    *,
    data: PathLike | None = None,
    out_dir: PathLike | None = None,
    epochs: int | None = None,
    from_scratch: bool = False,
    train_images: int | None = None,
    test_images: int | None = None,
    threads: int | None = None,
    resume: bool = False,
    recipe: str | None = None,
    device: str | None = None,
    precision: str | None = None,
    progress: Report | None = None,
    log: Log | None = None,
) -> TrainResult:
    """Retrain the concrete spec `spec` (e.g. `SearchResult.derived`) on CIFAR-10 for `epochs`
    (default: the spec's `retrain_epochs`), by default from the searched weights beside it
    (`searched.pt`; refused while that run's search is unfinished); writes `out_dir` (default:
    the spec's directory): train_settings.json, a checkpoint per epoch, train_metrics.jsonl
    and last model.pt. `recipe` is the training recipe (`default`: the best measured;
    `paper`: the paper's SGD at lr 0.0001, constant, no augmentation). `device`: `cpu`,
    `cuda` or `cuda:N` (default: CUDA if available, else the CPU); model.pt holds CPU
    tensors. `precision`: the training steps' arithmetic, as for `search`. `resume=True`
    continues the training there with its recorded data and settings (`epochs` may extend it;
    `threads`, `device` and `precision` may change); a complete one returns
    `up_to_date=True`. Under torchrun (or in the caller's process group) it is data-parallel
    like `search`."""
    if recipe is not None and recipe not in RECIPES:
        raise OptionError(f"--recipe {recipe}: expected one of {', '.join(RECIPES)}")
    dev = _device(device)
    _precision(precision, dev)  # a bad word fails before anything is read
    with _ranks(dev) as ranks:
        if not ranks.main:
            progress = log = None
        with ranks.together():  # every check on every rank before any rank writes
            job = _train_job(
                spec, data, out_dir, epochs, from_scratch, train_images, test_images, threads,
                resume, recipe, dev, ranks.world, precision,
            )  # fmt: skip
            inputs = None if isinstance(job, TrainResult) else _training_data(job, ranks, log)
        if isinstance(job, TrainResult) or inputs is None:
            return cast(TrainResult, job)
        job = replace(job, run_id=ranks.from_main(job.run_id))  # uuid4 differs on every rank
        return _run_training(job, inputs, ranks, progress)


def _train_job(
    spec: PathLike | Compiled,
    data: PathLike | None,
    out_dir: PathLike | None,
    epochs: int | None,
    from_scratch: bool,
    train_images: int | None,
    test_images: int | None,
    threads: int | None,
    resume: bool,
    recipe: str | None,
    dev: str,
    processes: int,
    precision: str | None = None,
) -> _TrainJob | TrainResult:
    """The job of a retraining (`retrain`'s arguments checked), or the result of a complete
    one; the recorded thread count is the default when it ran on `processes` processes."""
    c = _compiled(spec)
    if not c.spec.concrete:
        raise OptionError(
            f"{c.where}: not a concrete spec (blocks with several candidates or searchable "
            "syncs); run 'parnasc search' first"
        )
    run = None if c.path is None else c.path.parent
    if run is not None:
        finished_search(run)
    if epochs is not None and epochs < 0:
        raise OptionError(f"--epochs {epochs}: must be at least 0")
    out = Path(out_dir) if out_dir is not None else run
    if out is None:
        raise OptionError("--out: a spec given as text needs an output directory")
    source = None if data is None else Path(data)
    if not resume:
        if not from_scratch and run is None:
            raise OptionError("a spec given as text has no searched weights; pass --from-scratch")
        init = "scratch" if from_scratch or run is None else str(absolute(run / "searched.pt"))
        n_epochs = epochs if epochs is not None else c.spec.search.retrain_epochs
        job = _TrainJob(
            compiled=c,
            out_dir=out,
            record=None,
            init=init,
            run_id=uuid.uuid4().hex,
            epochs=n_epochs,
            data=source,
            train_images=train_images,
            test_images=test_images,
            threads=threads,
            recipe=recipe or "default",
            device=dev,
            precision=_precision(precision, dev),
        )
        return job
    what = f"training {out}"
    record = read_record(out / "train_settings.json", TrainRecord, "training")
    n_epochs = check_resumed_training(
        what, record, c.spec, c.where, from_scratch, train_images, test_images, epochs, recipe
    )
    from parnasc.nas.train import trained_accuracy

    done = trained_accuracy(out, record)
    if done is not None and n_epochs == record.epochs:
        return TrainResult(out, done.plain, record.epochs, done.flip, up_to_date=True)
    if (out / "train_checkpoint.pt").exists():
        from parnasc.nas.train import read_train_checkpoint

        read_train_checkpoint(out, n_epochs)  # before the data: fail fast
    job = _TrainJob(
        compiled=c,
        out_dir=out,
        record=record,
        init=record.init,
        run_id=record.run_id,
        epochs=n_epochs,
        data=resumed_data(what, record.data, source),
        train_images=record.data.train_images,
        test_images=record.data.test_images,
        threads=threads or (record.threads if record.processes == processes else None),
        recipe=record.recipe,
        device=dev,
        precision=_precision(precision, dev, record.precision),
    )
    return job


def _initial_net(c: Compiled, init: str, from_checkpoint: bool) -> Any:
    """The network to retrain: lowered with the spec's seed, with the searched weights `init`
    loaded (not for "scratch", nor when a checkpoint will replace them)."""
    import torch

    from parnasc.nas.lower import lower
    from parnasc.nas.train import load_checkpoint, load_state

    torch.manual_seed(c.spec.search.seed)
    net = lower(c.ir)
    if init != "scratch" and not from_checkpoint:
        weights = Path(init)
        if not weights.exists():
            raise OptionError(
                f"{weights} not found: training from the searched weights needs it; "
                "or pass --from-scratch"
            )
        what = f"the network of {c.where} (edited after the search?)"
        load_state(net, load_checkpoint(weights)["net"], weights, what)
    return net


def _training_data(
    job: _TrainJob, ranks: Ranks, log: Log | None
) -> tuple[Any, Settings, Cifar, DataRecord]:
    """The network to retrain (its initial weights loaded), the settings of its spec, its
    data and the data's record, after the checks that need them."""
    from parnasc.data.loaders import check_input

    s, out = job.compiled.spec, job.out_dir
    check_input(s.input)
    out.mkdir(parents=True, exist_ok=True)
    resume = job.record is not None
    net = _initial_net(job.compiled, job.init, resume and (out / "train_checkpoint.pt").exists())
    settings = Settings.from_spec(s.search, s.paths, n_train=job.train_images)
    ranks.check_batch(settings.batch, "the spec's batch")
    what = None if job.record is None else f"training {out}"
    recorded = None if job.record is None else job.record.data
    cifar, rec = _data(what, recorded, job.data, job.train_images, job.test_images, settings, log)
    if job.record is not None:
        _moved(f"training {out}", job.record.device, job.device, log)
        _processes_changed(f"training {out}", job.record.processes, ranks, log)
    return net, settings, cifar, rec


def _run_training(
    job: _TrainJob,
    inputs: tuple[Any, Settings, Cifar, DataRecord],
    ranks: Ranks,
    progress: Report | None,
) -> TrainResult:
    from parnasc.data.loaders import retrain_loaders
    from parnasc.nas.dist import default_threads
    from parnasc.nas.train import retrain as run_retrain
    from parnasc.nas.train import torch_threads

    s, out = job.compiled.spec, job.out_dir
    net, settings, cifar, rec = inputs
    resume = job.record is not None
    threads = job.threads or default_threads(len(allowed_cpus()))
    with torch_threads(threads) as n_threads:  # after every check
        how = recipe(job.recipe)
        train, test = retrain_loaders(
            cifar, settings.batch, settings.seed, how.augment, how.cutout, ranks.shard
        )
        record = TrainRecord(
            format=RECORD_FORMAT,
            parnasc=__version__,
            run_id=job.run_id,
            spec=str(absolute(job.compiled.where)),
            spec_hash=s.spec_hash,
            init=job.init,
            epochs=job.epochs,
            data=rec,
            threads=n_threads,
            recipe=cast(Literal["default", "paper"], job.recipe),  # checked by retrain()
            device=job.device,
            processes=ranks.world,
            precision=cast(Literal["fp32", "bf16"], job.precision),  # resolved by _precision
        )
        meta = {
            "spec": str(job.compiled.where),
            "spec_hash": s.spec_hash,
            "init": job.init,
            "epochs": job.epochs,
            "recipe": job.recipe,
        }
        acc = run_retrain(
            net,
            train,
            test,
            s.search.weights,
            job.epochs,
            out,
            s.search.seed,
            meta,
            progress,
            resume,
            record,
            how,
            job.device,
            ranks,
            job.precision,
        )
    return TrainResult(out, acc.plain, job.epochs, acc.flip)


# --- emit, run, bench -------------------------------------------------------------------------


@dataclass(frozen=True)
class EmitResult:
    """An emitted model directory: model.onnx, schedule.json, segments, the spec, weights."""

    model_dir: Path
    cores: int
    plan: str  # the plan the schedule runs (e.g. `fused-2`, `streams`)
    expected_ms: float  # its measured (or estimated) latency at batch 1
    weights: str  # the weights file exported, or "untrained"

    @property
    def model(self) -> Path:
        return self.model_dir / "model.onnx"

    @property
    def schedule(self) -> Path:
        return self.model_dir / "schedule.json"


def emit(
    source: PathLike,
    out_dir: PathLike | None = None,
    *,
    cores: int | None = None,
    measure: bool = True,
    log: Log | None = None,
) -> EmitResult:
    """Export a concrete model to `out_dir/model.onnx` with its per-core schedule
    (`schedule.json`, autotuned on this machine unless `measure=False`).

    `source` is a finished run directory (weights: model.pt if retrained, else searched.pt;
    `out_dir` defaults to RUN/emit) or a concrete .pnas (its initial weights, enough for
    latency work; default `build/<model>/emit`). `out_dir` is replaced as a whole, so it must
    be new, empty or an emitted directory. `cores` defaults to the spec's target, else this
    machine's."""
    from parnasc.deploy.emit import compile_model_dir
    from parnasc.files import replace_dir
    from parnasc.nas.train import atomic_save, load_concrete

    run = Path(source)
    if run.is_dir():
        finished_search(run)
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
    s, net = load_concrete(spec, weights)
    n_cores = cores or s.target.cores or len(allowed_cpus())
    if s.paths > n_cores:
        raise OptionError(f"--cores {n_cores}: the model has {s.paths} paths; it needs {s.paths}")
    default = run / "emit" if run.is_dir() else Path("build") / s.name / "emit"
    out = Path(out_dir) if out_dir is not None else default
    _check_emit_dir(out)
    text = spec.read_text(encoding="utf-8")
    used = "untrained" if weights is None else str(weights)
    meta = {
        "parnasc.version": __version__,
        "parnasc.spec_hash": s.spec_hash,
        "parnasc.weights": used,
        "parnasc.architecture": text,
    }
    if log:
        log(f"exporting {s.name} and measuring the schedule on {n_cores} cores...")
    with replace_dir(out) as stage:  # the directory changes as a whole or not at all
        sched = compile_model_dir(net, s.input, stage, n_cores, meta, measure=measure, quiet=True)
        (stage / "model.pnas").write_text(text, encoding="utf-8")
        atomic_save({"net": net.state_dict()}, stage / "weights.pt")
    return EmitResult(out, n_cores, str(sched["plan"]), sched["expected_us"] / 1000, used)


def _check_emit_dir(out_dir: Path) -> None:
    """Emit replaces its output directory whole: refuse one that holds anything else."""
    from parnasc.files import recover_dir

    recover_dir(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OptionError(f"--out {out_dir}: not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "schedule.json").exists():
        raise OptionError(
            f"--out {out_dir}: the directory holds other files and emit replaces it whole; "
            "give a new or an emitted directory"
        )


@dataclass(frozen=True)
class Prediction:
    """The class an emitted model gives one image."""

    image: Path
    index: int  # class index
    label: str  # CIFAR-10 class name (the index as text for other class counts)
    probability: float  # softmax probability of that class


def classify(model_dir: PathLike, images: Sequence[PathLike]) -> list[Prediction]:
    """Classify image files (resized to the model's input) with an emitted model, run by the
    parnasc runtime on its per-core schedule."""
    import numpy as np
    import torch

    from parnasc.data.cifar import CIFAR10_CLASSES, load_images, normalize
    from parnasc.deploy.runtime import Runtime, load_schedule

    model = Path(model_dir)
    files = [Path(p) for p in images]
    _, h, w = load_schedule(model)["input_shape"]
    x = normalize(torch.from_numpy(load_images(files, (h, w)))).numpy()
    out = []
    with Runtime(model) as rt:
        for path, row in zip(files, x, strict=True):
            logits = rt.run(np.ascontiguousarray(row[None]))[0]
            p = np.exp(logits - logits.max())
            p /= p.sum()
            k = int(p.argmax())
            name = CIFAR10_CLASSES[k] if len(p) == len(CIFAR10_CLASSES) else str(k)
            out.append(Prediction(path, k, name, float(p[k])))
    return out


@dataclass(frozen=True)
class BenchResult:
    """Batch-1 latency of an emitted model on every engine."""

    model_dir: Path
    cores: int
    rows: list[dict[str, Any]]  # one per engine: engine, threads, median_ms, p90_ms, p99_ms, ...
    expected_ms: float  # the schedule's estimate
    measured_ms: float  # the parnasc runtime's median
    machine: str  # CPU model, affinity, torch and onnxruntime versions
    bound: dict[str, Any] | None = None  # the path-parallel ceiling, when asked for

    @property
    def estimate_error(self) -> float:
        """(estimate - measured) / measured."""
        return (self.expected_ms - self.measured_ms) / self.measured_ms


def bench(
    model_dir: PathLike, *, cores: int | None = None, reps: int = 100, bound: bool = False
) -> BenchResult:
    """Time an emitted model at batch 1 (warm-up, then `reps` >= 100 timed runs, engines
    interleaved): ONNX Runtime sequential, intra-op (defaults; pinned spinning helpers) and
    parallel with the partition file (spinning off; on), PyTorch eager and the parnasc runtime,
    outputs checked equal; the parnasc row names the best ORT configuration and the speedup
    over it. `bound` adds the
    path-parallel ceiling from ONNX Runtime's per-node profile. `cores` defaults to the
    schedule's."""
    from parnasc.deploy.bench import benchmark, path_parallel_bound
    from parnasc.deploy.runtime import load_schedule
    from parnasc.nas.train import load_concrete

    model = Path(model_dir)
    sched = load_schedule(model)
    if reps < 100:
        raise OptionError(f"--reps {reps}: the protocol needs at least 100 timed runs")
    n_cores = cores or int(sched["cores"])
    _, net = load_concrete(model / "model.pnas", model / "weights.pt")
    rows = benchmark(model, n_cores, reps, torch_module=net)
    got = next(r for r in rows if r["engine"] == "parnasc")["median_ms"]
    ceiling = path_parallel_bound(model, n_cores, reps) if bound else None
    return BenchResult(model, n_cores, rows, sched["expected_us"] / 1000, got, _machine(), ceiling)


def _machine() -> str:
    import onnxruntime
    import torch

    return (
        f"{cpu_model()}; affinity {allowed_cpus()}; torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}"
    )


# --- diff -------------------------------------------------------------------------------------


def diff(
    old: PathLike | Compiled,
    new: PathLike | Compiled,
    *,
    latency: bool = True,
    latency_dir: PathLike | None = None,
) -> SpecDiff:
    """The semantic diff of two specs (`parnasc.ir.diff`): the changes after resolution
    (comments and formatting never count) and the cost impact of each side. A side is a
    compiled spec, a .pnas file, or `REV:PATH` read from git (`git show`; a file of that name
    wins). `latency` adds the predicted batch-1 latency where a latency table of this machine
    is cached (`latency_dir`, default `$PARNASC_CACHE/latency`); nothing is measured. Raises
    PnasError for a bad spec, UserError for a side that cannot be read."""
    from parnasc.ir.diff import spec_diff

    a, b = _diff_side(old), _diff_side(new)
    lookup = _latency_lookup(Path(latency_dir) if latency_dir is not None else None)
    return spec_diff(
        (a.spec, a.ir),
        (b.spec, b.ir),
        old_label=str(a.where),
        new_label=str(b.where),
        latency=lookup if latency else None,
    )


def _diff_side(side: PathLike | Compiled) -> Compiled:
    if isinstance(side, Compiled):
        return side
    from parnasc.ir.diff import read_source
    from parnasc.ir.frontend import compile_bytes

    label, data = read_source(str(side))
    s, ir = compile_bytes(data, label)
    return Compiled(s, ir)


def check_provenance(derived: PathLike, supernet: PathLike | Compiled) -> Provenance:
    """Check that the derived spec `derived` is an architecture of `supernet`'s space (one of
    the candidates in every block, sync sites only where the supernet has them), that the
    source hash in its header is the supernet's spec hash as it is now, and that its
    architecture hash still matches (no hand edit since the search). Raises PnasError with
    every problem, located in the derived file; returns the checked `Provenance`. The supernet
    may be `REV:PATH`, read from git."""
    from parnasc.ir.frontend import compile_file
    from parnasc.ir.provenance import check_provenance as check
    from parnasc.lang.parse import parse_file

    spec, _ = compile_file(derived)  # every ordinary error first
    sup = _diff_side(supernet)  # a file, or REV:PATH from git
    return check(parse_file(derived), spec, sup.spec, str(sup.where))


def _latency_lookup(root: Path | None) -> LatencyLookup:
    from parnasc.nas.latency_table import find_table, latency_range

    def lookup(ir: IR) -> tuple[str, float, float] | None:
        found = find_table(ir, root)
        if found is None:
            return None
        file, table = found
        return (str(file), *latency_range(ir, table))

    return lookup


__all__ = [
    "BenchResult",
    "Compiled",
    "Derived",
    "EmitResult",
    "Prediction",
    "SearchResult",
    "Settings",
    "TrainResult",
    "bench",
    "check_provenance",
    "classify",
    "compile",
    "derive",
    "diff",
    "emit",
    "retrain",
    "search",
]
