"""Experiments: experiment files and their errors (one line at the file's line), planning (the
grid, budgets, sharding, random draws seeded and stratified), the Pareto front and dominance
(exact, tiny cases), gathering and the report from fabricated run directories, and a tiny real
experiment end to end through the command line (resume, skip, report)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from parnasc import experiment
from parnasc.errors import OptionError, UserError
from parnasc.experiment.gather import gather, trained_accuracy
from parnasc.experiment.pareto import dominates, front, layers, verdicts
from parnasc.experiment.planning import (
    Run,
    decisions,
    random_arch_text,
    sample_stratified,
    sample_uniform,
    search_flops,
    with_seed,
)
from parnasc.ir.frontend import compile_file, compile_source
from parnasc.ir.graph import flops_range
from parnasc.lang.parse import parse

ROOT = Path(__file__).resolve().parent.parent
PARNASC = Path(sys.executable).with_name("parnasc")
ARCHIVE = Path(
    os.environ.get("PARNASC_CIFAR") or ROOT.parent / "shared/datasets/cifar10-jpeg.tar.gz"
)
CIFAR = ROOT / "specs" / "cifar.pnas"
TINY = ROOT / "examples" / "tiny.pnas"


def _exp(tmp_path: Path, text: str, name: str = "exp.toml") -> Path:
    (tmp_path / "tiny.pnas").write_text(TINY.read_text())
    f = tmp_path / name
    f.write_text(text)
    return f


def _cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PARNASC_DEBUG"}
    return subprocess.run(
        [str(PARNASC), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


# --- the shipped experiments ------------------------------------------------------------------


def test_the_shipped_experiments_plan() -> None:
    table2 = experiment.plan(ROOT / "experiments/table2.toml", budget="quick")
    assert [r.name for r in table2.runs] == [
        "table2-beta1", "table2-beta0.1", "table2-beta0.01", "table2-beta0.001",
    ]  # fmt: skip
    assert all(r.kind == "search" and r.paper == "table2" for r in table2.runs)
    r = table2.runs[0]
    assert r.search == {"alpha": 0.28, "beta": 1.0, "epochs": 6, "warmup": 1}
    assert (r.train_images, r.test_images, r.train_seeds, r.retrain_epochs) == (10000, 2000, [0], 8)
    paper = experiment.plan(ROOT / "experiments/table2.toml", budget="paper")
    p = paper.runs[0]
    assert p.search == {"alpha": 0.28, "beta": 1.0} and p.train_seeds == [0, 1, 2, 3, 4]
    assert (p.train_images, p.retrain_epochs, p.autotune) == (None, None, True)

    fig7 = experiment.plan(ROOT / "experiments/fig7.toml", budget="quick")
    assert [r.paper for r in fig7.runs] == ["fig7:none", "fig7:first2", "fig7:last2", "fig7:all"]
    syncs = {}
    for r in fig7.runs:
        spec, ir = compile_file(r.spec)
        assert spec.concrete
        assert [ir.block(lv, 1).candidates[0].label for lv in ir.levels] == ["conv(k=3)"] * 4
        assert [ir.block(lv, 2).candidates[0].label for lv in ir.levels] == ["conv(k=5)"] * 4
        syncs[r.paper] = [ir.sync(lv) is not None for lv in ir.levels]
    assert syncs == {
        "fig7:none": [False] * 4,
        "fig7:first2": [True, True, False, False],
        "fig7:last2": [False, False, True, True],
        "fig7:all": [True] * 4,
    }

    rand = experiment.plan(ROOT / "experiments/random.toml", budget="quick")
    assert [r.name for r in rand.runs] == [
        "search-beta0.01", "uniform-01", "uniform-02", "uniform-03",
        "stratified-01", "stratified-02", "stratified-03",
    ]  # fmt: skip
    full = experiment.plan(ROOT / "experiments/random.toml", budget="paper")
    assert len(full.runs) == 2 + 12 + 12
    # the quick draws are the first of the full ones
    assert [r.choices for r in rand.runs[1:4]] == [r.choices for r in full.runs[2:5]]


# --- errors -----------------------------------------------------------------------------------

S = '[[search]]\nspec = "tiny.pnas"\n'  # a search group's first lines
ERRORS = [
    (S + "beta = [1,\n", "{f}:3: invalid value (TOML syntax)"),
    ("x = 1\nx = 2\n", "{f}:2:6: cannot overwrite a value (TOML syntax)"),
    (S + "bta = 1\n", "{f}:3: unknown key 'bta' in [[search]] (did you mean 'beta'?)"),
    (
        S + '\n[[search]]\nname = "b"\nspec = "tiny.pnas"\nzzz = 1\n',
        "{f}:7: unknown key 'zzz' in [[search]] (expected one of: name, spec, paper, alpha, "
        "beta, cost, seed, mode, tau, tau_end, epochs, warmup, batch, from_scratch, "
        "train_seeds, retrain_epochs, recipe, bench, cores)",
    ),
    ('[serach]\nspec = "x"\n', "{f}:1: unknown table 'serach' (did you mean 'search'?)"),
    (
        '[experiment]\nname = "x"\n\n' + S + 'beta = "high"\n',
        "{f}:6: beta: expected a number, got a string",
    ),
    (S + 'cost = ["flops", "time"]\n', "{f}:3: cost: 'time': expected one of flops, latency"),
    (S + "beta = [0.1, 0.1]\n", "{f}:3: beta: a value is listed twice"),
    (
        '[[fixed]]\nspec = "nope.pnas"\n',
        "{f}:2: spec: nope.pnas not found (looked for {d}/nope.pnas)",
    ),
    ("[[fixed]]\nname = 'a'\n", "{f}:1: [[fixed]] needs a spec (or one in [defaults])"),
    ("[budget.quick]\nepochs = 0\n" + S, "{f}:2: epochs: 0 must be >= 1"),
    (
        "[experiment]\nname = 'x'\n",
        "{f}:1: no runs: add a [[search]], [[fixed]] or [[random]] table",
    ),
    (
        '[defaults]\nspec = "tiny.pnas"\n[[search]]\nname = "a"\n[[random]]\nname = "a"\n',
        "{f}:5: the name 'a' is taken (line 3); give each group its own name",
    ),
    (
        '[[search]]\nname = "a b"\nspec = "tiny.pnas"\n',
        "{f}:2: name: 'a b': use letters, digits, '.', '_' and '-' (a directory name)",
    ),
]


@pytest.mark.parametrize(("text", "message"), ERRORS)
def test_a_bad_file_is_one_line_at_its_line(tmp_path: Path, text: str, message: str) -> None:
    f = _exp(tmp_path, text)
    with pytest.raises(UserError) as got:
        experiment.load(f)
    assert str(got.value) == message.format(f=f, d=tmp_path)


def test_errors_found_while_planning(tmp_path: Path) -> None:
    supernet = _exp(tmp_path, '[[fixed]]\nspec = "tiny.pnas"\n', "supernet.toml")
    with pytest.raises(UserError, match=r"supernet\.toml:1: \[\[fixed\]\] tiny: .* is a supernet"):
        experiment.plan(supernet)
    count = _exp(tmp_path, '[[random]]\nspec = "tiny.pnas"\ncount = 100\n', "count.toml")
    with pytest.raises(UserError, match="count 100: the space has only 32 architectures"):
        experiment.plan(count, budget="paper")
    grid = _exp(tmp_path, S + "beta = [1, 2]\ntau_end = 0.0\n", "grid.toml")
    with pytest.raises(UserError, match=r"grid\.toml:4: tau_end: 0\.0 must be > 0"):
        experiment.load(grid)
    with pytest.raises(UserError, match=r"--budget quik: not a budget .*did you mean 'quick'\?"):
        experiment.plan(count, budget="quik")
    with pytest.raises(OptionError, match=r"--only zz: no run or group of that name"):
        experiment.plan(count, only=["zz"])
    for bad in ("3/2", "0/2", "x", "1/2/3"):
        with pytest.raises(OptionError, match=f"--shard {bad}"):
            experiment.plan(count, shard=bad)
    runs = _exp(tmp_path, '[budget.quick]\nruns = ["zz"]\n' + S, "runs.toml")
    with pytest.raises(UserError, match=r"runs\.toml:1: budget quick: runs: 'zz' matches no run"):
        experiment.plan(runs)


def test_the_command_prints_one_line_and_exits_1(tmp_path: Path) -> None:
    f = _exp(tmp_path, '[[search]]\nspec = "tiny.pnas"\nbta = 1\n')
    done = _cli("experiment", f.name, "--plan", cwd=tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (
        "parnasc: error: exp.toml:3: unknown key 'bta' in [[search]] (did you mean 'beta'?)\n"
    )
    done = _cli("report", tmp_path / "nowhere", cwd=tmp_path)
    assert done.returncode == 1 and done.stderr.count("\n") == 1


# --- planning ---------------------------------------------------------------------------------

GRID = """
[defaults]
spec = "tiny.pnas"
train_seeds = [3]

[[search]]
name = "g"
beta = [1, 0.01]
seed = [0, 1]
alpha = 0.5
epochs = 9
retrain_epochs = 7

[[random]]
name = "r"
count = 5

[budget.small]
epochs = 2
train_images = 100
"""


def test_the_grid_names_budget_and_shards(tmp_path: Path) -> None:
    f = _exp(tmp_path, GRID)
    p = experiment.plan(f, budget="small")
    names = [r.name for r in p.runs]
    assert names == [
        "g-beta1-seed0", "g-beta1-seed1", "g-beta0.01-seed0", "g-beta0.01-seed1",
        "r-01", "r-02", "r-03", "r-04", "r-05",
    ]  # fmt: skip
    g = p.runs[1]
    # the budget wins over the group, the group over [defaults], the defaults over the spec
    assert g.search == {"alpha": 0.5, "beta": 1.0, "seed": 1, "epochs": 2}
    assert (g.train_seeds, g.retrain_epochs, g.train_images, g.test_images) == ([3], 7, 100, None)
    assert g.settings["cost"] == "flops" and g.settings["tau_end"] == 0.02  # the spec's
    assert p.runs[4].train_seeds == [3] and p.runs[4].retrain_epochs is None
    quick = experiment.plan(f, budget="quick")
    assert quick.runs[0].search["epochs"] == 6 and quick.runs[0].train_seeds == [0]

    shards = [experiment.plan(f, budget="small", shard=f"{i}/3").selected for i in (1, 2, 3)]
    assert sorted(r.name for s in shards for r in s) == sorted(names)
    assert [r.name for r in shards[0]] == ["g-beta1-seed0", "g-beta0.01-seed1", "r-03"]
    only = experiment.plan(f, budget="small", only=["g-beta1-*", "r-05"])
    assert [r.name for r in only.selected] == ["g-beta1-seed0", "g-beta1-seed1", "r-05"]
    assert experiment.plan(f, budget="small", only=["r"]).selected == p.runs[4:]
    assert len(only.runs) == 9  # experiment.json lists the whole plan


def test_random_draws_are_seeded_distinct_and_fit() -> None:
    _, ir = compile_file(CIFAR)
    space = decisions(ir)
    assert len(space) == 12 and space["l1:sync"] == ["concat", "none"]
    a = sample_uniform(space, 20, seed=0)
    assert a == sample_uniform(space, 20, seed=0)
    assert a != sample_uniform(space, 20, seed=1)
    assert a[:5] == sample_uniform(space, 5, seed=0)  # a smaller count: the first draws
    assert len({tuple(c.values()) for c in a}) == 20
    # a filter: only architectures without any sync
    no_sync = sample_uniform(space, 10, seed=0, fits=lambda c: "concat" not in c.values())
    assert all("concat" not in c.values() for c in no_sync)
    with pytest.raises(UserError, match="the space has only 4096"):
        sample_uniform(space, 5000, seed=0)


def test_stratified_draws_take_the_cost_bins_in_turn() -> None:
    _, ir = compile_file(CIFAR)
    lo, hi = flops_range(ir)
    drawn = sample_stratified(ir, 10, strata=4, seed=0)
    assert [s for s, _ in drawn] == [1, 2, 3, 4, 1, 2, 3, 4, 1, 2]
    width = (hi - lo) / 4
    for stratum, choices in drawn:
        f = search_flops(ir, choices)
        assert lo + (stratum - 1) * width <= f <= lo + stratum * width
    assert drawn == sample_stratified(ir, 10, strata=4, seed=0)
    assert drawn[:3] == sample_stratified(ir, 3, strata=4, seed=0)
    # the cheapest and the costliest architectures cost the ends of flops_range
    cheapest = {k: "none" if k.endswith(":sync") else v[0] for k, v in decisions(ir).items()}
    assert search_flops(ir, cheapest) == lo


def test_architecture_texts(tmp_path: Path) -> None:
    spec, ir = compile_file(CIFAR)
    choices = sample_uniform(decisions(ir), 1, seed=3)[0]
    text = random_arch_text(spec, ir, choices, "uniform, seed 3, draw 1")
    assert "# drawn at random: uniform, seed 3, draw 1" in text and "# search:" not in text
    s, _ = compile_source(text, "a.pnas")
    assert s.concrete and "lr=0.056" in text  # a search's retraining settings
    seeded = with_seed(text, 4)
    s4, _ = compile_source(seeded, "b.pnas")
    assert s4.search.seed == 4 and s.search.seed == 0
    from parnasc.ir.provenance import architecture_hash

    assert architecture_hash(parse(seeded)) == architecture_hash(parse(text))
    assert [ln for ln in seeded.splitlines() if "seed" not in ln] == [
        ln for ln in text.splitlines() if "seed" not in ln
    ]
    bare = with_seed((ROOT / "examples/cifar_arch.pnas").read_text(), 2)
    assert compile_source(bare, "c.pnas")[0].search.seed == 2


# --- the Pareto front -------------------------------------------------------------------------


def test_dominance_front_and_layers() -> None:
    assert dominates((0.9, 1.0), (0.8, 2.0))
    assert dominates((0.9, 1.0), (0.9, 2.0)) and dominates((0.9, 1.0), (0.8, 1.0))
    assert not dominates((0.9, 1.0), (0.9, 1.0))  # equal: neither
    assert not dominates((0.9, 2.0), (0.8, 1.0)) and not dominates((0.8, 1.0), (0.9, 2.0))
    pts = [(0.5, 1.0), (0.7, 2.0), (0.6, 3.0), (0.9, 5.0), (0.4, 0.5), (0.5, 1.0), (0.55, 4.0)]
    assert front(pts) == [4, 0, 5, 1, 3]  # cheapest first; the tie (0, 5) both on it
    assert layers(pts) == [1, 1, 2, 1, 1, 1, 3]
    assert front([]) == [] and layers([]) == []


def _row(name: str, kind: str, acc: float | None, lat: float | None, flops: int) -> dict[str, Any]:
    return {
        "name": name, "kind": kind, "spec": "s", "test_acc_mean": acc,
        "latency_median_ms": lat, "flops": flops,
    }  # fmt: skip


def test_verdicts_count_the_random_architectures_that_dominate() -> None:
    rows = [
        _row("s1", "search", 0.61, 1.0, 100),
        _row("s2", "search", 0.70, 2.0, 300),
        _row("u1", "random", 0.65, 0.9, 100),  # dominates s1 on both axes
        _row("u2", "random", 0.50, 3.0, 400),  # dominated by both
        _row("u3", "random", 0.75, 2.5, 200),  # dominates s2 on FLOPs only
        _row("u4", "random", None, 0.1, 50),  # not trained: not compared
        {**_row("o", "random", 0.99, 0.1, 1), "spec": "other"},  # another space
        _row("f", "fixed", 0.99, 0.1, 1),  # not random
    ]
    got = {(v.name, v.axis): v for v in verdicts(rows)}
    assert set(got) == {("s1", "latency"), ("s1", "flops"), ("s2", "latency"), ("s2", "flops")}
    v = got["s1", "latency"]
    assert (v.randoms, v.dominated_by, v.dominates, v.layer) == (3, ["u1"], 1, 2)
    assert not v.on_front
    assert v.sentence() == (
        "s1: 1 of 3 random architectures dominate it (at least as accurate and at most its "
        "latency, better in one); it is behind the front (layer 2); it dominates 1 of them."
    )
    v = got["s2", "latency"]
    assert (v.dominated_by, v.dominates, v.layer, v.on_front) == ([], 1, 1, True)
    assert got["s2", "flops"].dominated_by == ["u3"] and got["s1", "flops"].dominated_by == ["u1"]


# --- gathering and the report from fabricated run directories ---------------------------------


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _levels(*levels: tuple[str, str, bool]) -> dict[str, str]:
    choices = {}
    for i, (a, b, sync) in enumerate(levels, 1):
        choices[f"l{i}:p1"] = f"conv(k={a})"
        choices[f"l{i}:p2"] = f"conv(k={b})"
        choices[f"l{i}:sync"] = "concat" if sync else "none"
    return choices


BETA1 = _levels(("3", "3", False), ("3", "3", False), ("3", "3", False), ("3", "3", False))
BETA001 = _levels(("5", "5", False), ("5", "5", True), ("5", "5", False), ("5", "5", True))


def _fabricate(
    out: Path,
    run: Run,
    accs: list[float | None],
    latency: float | None,
    choices: dict[str, str] | None = None,
) -> None:
    """A run directory as the runner leaves it, without any training."""
    d = out / run.name
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps(run.to_json()))
    if run.kind == "fixed":
        (d / "arch.pnas").write_text(Path(run.spec).read_text())
    else:
        spec, ir = compile_file(CIFAR)
        assert choices is not None
        text = random_arch_text(spec, ir, choices, "test")
        if run.kind == "search":
            (d / "derived.pnas").write_text(text)
            keys = decisions(ir)
            probs = {
                k: [0.99, 0.01] if choices[k] == v[0] else [0.01, 0.99] for k, v in keys.items()
            }
            (d / "result.json").write_text(
                json.dumps({"val_acc": 0.5, "probabilities": probs, "choices": choices})
            )
            (d / "settings.json").write_text(json.dumps({"spec": str(CIFAR)}))
            arch = [
                {"epoch": e, "probabilities": {k: [0.5 + 0.16 * e, 0.5 - 0.16 * e] for k in keys}}
                for e in (1, 2, 3)
            ]
            _jsonl(d / "arch.jsonl", arch)
            phases = ["warmup", "search", "search"]
            metrics = [
                {"epoch": e, "phase": phases[e - 1], "train_acc": 0.2 * e} for e in (1, 2, 3)
            ]
            _jsonl(d / "metrics.jsonl", [{**m, "val_acc": 0.15 * m["epoch"]} for m in metrics])
        else:
            (d / "arch.pnas").write_text(text)
    for seed, acc in zip(run.train_seeds, accs, strict=True):
        if acc is None:
            continue
        td = d / f"train-s{seed}"
        td.mkdir()
        (td / "train_settings.json").write_text(json.dumps({"epochs": 2}))
        _jsonl(td / "train_metrics.jsonl", [
            {"epoch": 1, "train_acc": acc - 0.1, "test_acc": acc - 0.05},
            {"epoch": 2, "train_acc": acc, "test_acc": acc},
        ])  # fmt: skip
        (td / "model.pt").write_bytes(b"")
    if latency is not None:
        (d / "latency.json").write_text(json.dumps({"median_ms": latency, "p90_ms": latency * 1.1}))


def _search_run(name: str, beta: float, seeds: list[int]) -> Run:
    settings = {"alpha": 0.28, "beta": beta, "cost": "flops", "seed": 0}
    return Run(name, "table2", "search", str(CIFAR), settings, {"beta": beta}, None, seeds,
               paper="table2")  # fmt: skip


def _random_run(name: str, choices: dict[str, str]) -> Run:
    settings = {"sampling": "uniform", "seed": 0, "draw": 1}
    return Run(name, "uniform", "random", str(CIFAR), settings, choices=choices, train_seeds=[0])


def _fixed_run(name: str, config: str) -> Run:
    spec = str(ROOT / f"experiments/fig7/{config}.pnas")
    return Run(name, name, "fixed", spec, {}, train_seeds=[0], paper=f"fig7:{config}")


@pytest.fixture(scope="module")
def fabricated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fab") / "exp"
    cheap = _levels(("3", "3", False), ("3", "3", False), ("3", "5", False), ("3", "3", False))
    dear = _levels(("5", "5", True), ("5", "5", True), ("5", "5", True), ("5", "5", True))
    _fabricate(out, _search_run("table2-beta1", 1.0, [0, 1]), [0.60, 0.62], 1.0, BETA1)
    _fabricate(out, _search_run("table2-beta0.001", 0.001, [0, 1]), [0.70, 0.70], 2.0, BETA001)
    _fabricate(out, _random_run("uniform-01", cheap), [0.65], 0.9, cheap)
    _fabricate(out, _random_run("uniform-02", dear), [0.50], 3.0, dear)
    _fabricate(out, _random_run("uniform-03", BETA1), [None], None, BETA1)  # not trained yet
    _fabricate(out, _fixed_run("fig7-all", "all"), [0.80], 3.0)
    _fabricate(out, _fixed_run("fig7-none", "none"), [0.70], 1.0)
    names = [p.name for p in sorted(out.iterdir())]
    meta = {"format": 1, "name": "fab", "description": "A fabricated experiment.",
            "budget": "quick", "runs": [*sorted(names), "later"]}  # fmt: skip
    (out / "experiment.json").write_text(json.dumps(meta))
    return out


def test_gathering_reads_what_the_runs_wrote(fabricated: Path) -> None:
    g = gather([fabricated])
    rows = {r["name"]: r for r in g.rows}
    assert g.pending == ["later"]
    b1 = rows["table2-beta1"]
    assert b1["status"] == "complete" and b1["trainings"] == 2
    assert b1["test_acc_mean"] == pytest.approx(0.61)
    assert b1["test_acc_std"] == pytest.approx(0.0141421356)
    assert b1["architecture"] == "3-3 / 3-3 / 3-3 / 3-3" and b1["undecided"] == 0
    assert b1["latency_median_ms"] == 1.0 and b1["latency_p90_ms"] == pytest.approx(1.1)
    _, ir = compile_file(CIFAR)
    assert b1["flops"] == flops_range(ir)[0]  # beta 1's architecture is the cheapest
    assert rows["table2-beta0.001"]["architecture"] == "5-5 / 5-5 S / 5-5 / 5-5 S"
    assert rows["table2-beta0.001"]["test_acc_std"] == 0.0
    assert rows["uniform-01"]["test_acc_std"] is None  # one training: no spread
    assert rows["uniform-03"]["status"] == "partial" and rows["uniform-03"]["test_accs"] == []
    assert rows["fig7-all"]["architecture"] == "3-5 S / 3-5 S / 3-5 S / 3-5 S"
    assert len(rows["fig7-all"]["memory_per_core"]) == 2
    # a training that has not reached its recorded epochs does not count
    td = fabricated / "uniform-01" / "train-s0"
    assert trained_accuracy(td) == 0.65
    (td / "train_settings.json").write_text(json.dumps({"epochs": 3}))
    try:
        assert trained_accuracy(td) is None
    finally:
        (td / "train_settings.json").write_text(json.dumps({"epochs": 2}))


def test_the_report_beside_the_paper(fabricated: Path, tmp_path: Path) -> None:
    rep = experiment.report(fabricated, out_dir=tmp_path)
    names = {p.name for p in rep.files}
    for stem in ("accuracy-latency", "accuracy-flops", "curves", "decisions-table2-beta1",
                 "curves-table2-beta1", "decisions-table2-beta0.001"):  # fmt: skip
        assert {f"{stem}.png", f"{stem}.svg"} <= names, stem
    with open(tmp_path / "results.csv", newline="") as fh:
        table = {r["name"]: r for r in csv.DictReader(fh)}
    assert list(table) == ["fig7-all", "fig7-none", "table2-beta0.001", "table2-beta1",
                           "uniform-01", "uniform-02", "uniform-03"]  # fmt: skip
    assert table["table2-beta1"]["test_acc_mean"] == "0.61"
    assert table["table2-beta1"]["test_accs"] == "0.6;0.62"
    assert table["uniform-03"]["test_acc_mean"] == "" and table["uniform-03"]["status"] == "partial"
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["pending"] == ["later"] and len(data["runs"]) == 7
    assert data["runs"][3]["levels"][0] == {
        "level": "l1",
        "ops": ["conv(k=3)", "conv(k=3)"],
        "sync": False,
    }

    md = (tmp_path / "report.md").read_text()
    assert "8 runs planned, 6 complete, 1 partial, 1 not started (later)" in md
    assert "A fabricated experiment." in md
    # Table 2: each row beside the paper's, with the decisions that agree
    assert "| 1 | table2-beta1 | 3-3 / 3-3 / 3-3 / 3-3 | 3-3 / 3-3 / 3-3 / 3-3 | 12 of 12 |" in md
    b001 = "5-5 / 5-5 S / 5-5 / 5-5 S"
    assert f"| 0.001 | table2-beta0.001 | {b001} | {b001} | 12 of 12 |" in md
    assert "Derived FLOPs never increase as beta grows: **yes**" in md
    # Figure 7's ordering
    assert "- Accuracy, highest first: all > none." in md
    assert "- Latency, highest first: all > none." in md
    assert "The paper's ordering holds in 4 of 4 points" in md
    # the verdict
    assert (
        "table2-beta1: 1 of 2 random architectures dominate it (at least as accurate and "
        "at most its latency, better in one); it is behind the front (layer 2)"
    ) in md
    assert "table2-beta0.001: 0 of 2 random architectures dominate it" in md
    assert "**Verdict (latency): 1 of 2 searched architectures are dominated by a random one" in md
    assert "![accuracy-latency](plots/accuracy-latency.png)" in md
    again = experiment.report(fabricated, out_dir=tmp_path / "again", pictures=False)
    assert again.markdown.read_text() == md.split("## Pictures")[0].rstrip() + "\n"  # stable


def test_report_of_a_run_and_of_several_experiments(fabricated: Path, tmp_path: Path) -> None:
    run = experiment.report(fabricated / "table2-beta1", out_dir=tmp_path / "one")
    assert sorted(p.name for p in run.files) == [
        "curves.png", "curves.svg", "decisions.png", "decisions.svg",
    ]  # fmt: skip
    both = experiment.report([fabricated, fabricated], out_dir=tmp_path / "two", pictures=False)
    assert sum(r["name"].startswith("fab/") for r in both.rows) == 7  # the second, prefixed
    with pytest.raises(UserError, match="not an experiment directory"):
        experiment.report([fabricated, fabricated / "table2-beta1"])


# --- a tiny real experiment -------------------------------------------------------------------

TINY_EXPERIMENT = """
[experiment]
name = "tiny"
description = "Two runs on the tiny supernet."

[defaults]
spec = "tiny.pnas"

[[search]]
name = "s"
beta = 0.1

[[random]]
name = "r"
count = 1

[budget.quick]
train_images = 200
test_images = 100
epochs = 1
warmup = 0
retrain_epochs = 1
bench = false
"""


def test_a_tiny_experiment_end_to_end(tmp_path: Path) -> None:
    if not ARCHIVE.is_file():
        pytest.fail(f"CIFAR-10 archive not found at {ARCHIVE} (set PARNASC_CIFAR to its path)")
    f = _exp(tmp_path, TINY_EXPERIMENT)
    args = ("experiment", f.name, "--data", ARCHIVE, "--threads", "1", "--out", "out")
    bad = _cli(*args, "--precision", "fp16", cwd=tmp_path)
    assert bad.returncode == 1 and not (tmp_path / "out").exists()
    assert bad.stderr == "parnasc: error: --precision fp16: expected one of auto, bf16, fp32\n"
    args = (*args, "--precision", "fp32")  # the searches' and the trainings' steps
    done = _cli(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "out: 2 runs ran, 0 were complete already" in done.stdout
    assert "[1/2] s: search, trained with seed 0" in done.stderr
    out = tmp_path / "out"
    written = (
        "experiment.json", "s/result.json", "s/train-s0/model.pt", "s/train-s0/searched.pt",
        "r-01/arch.pnas", "r-01/train-s0/model.pt", "results.csv", "report.md",
        "plots/accuracy-flops.png", "plots/decisions-s.svg",
    )  # fmt: skip
    for path in written:
        assert (out / path).is_file(), path
    rows = {r["name"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert set(rows) == {"s", "r-01"} and all(r["status"] == "complete" for r in rows.values())
    assert 0 <= float(rows["s"]["test_acc_mean"]) <= 1 and rows["s"]["beta"] == "0.1"
    train = json.loads((out / "s/train-s0/train_settings.json").read_text())
    assert train["init"].endswith("s/train-s0/searched.pt")
    assert json.loads((out / "s/settings.json").read_text())["precision"] == "fp32"
    assert train["precision"] == "fp32"
    assert json.loads((out / "r-01/train-s0/train_settings.json").read_text())["init"] == "scratch"

    # complete: everything is skipped, nothing rewritten
    model = out / "s/train-s0/model.pt"
    stamp = model.stat().st_mtime_ns
    again = _cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "out: 0 runs ran, 2 were complete already" in again.stdout
    assert model.stat().st_mtime_ns == stamp

    # interrupted states: a search without its completion marker derives again (the same
    # architecture, so its training stands); a training without model.pt finishes
    (out / "s/result.json").unlink()
    (out / "r-01/train-s0/model.pt").unlink()
    third = _cli(*args, "--only", "s", "--only", "r", cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert "out: 2 runs ran, 0 were complete already" in third.stdout
    assert model.stat().st_mtime_ns == stamp
    assert (out / "r-01/train-s0/model.pt").is_file()
    after = {r["name"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert after["r-01"]["test_acc_mean"] == rows["r-01"]["test_acc_mean"]

    # another budget in the same directory is refused before anything runs
    other = f.read_text().replace("train_images = 200", "train_images = 300")
    f.write_text(other)
    refused = _cli(*args, cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.startswith("parnasc: error: out/s: planned with other settings (images")

    plan = _cli("experiment", f.name, "--plan", "--out", "out", cwd=tmp_path)
    assert plan.returncode == 0 and "s " in plan.stdout
    pictures = _cli("report", out / "s", cwd=tmp_path)
    assert pictures.returncode == 0, pictures.stderr
    assert (out / "s/plots/decisions.png").is_file() and (out / "s/plots/curves.svg").is_file()
