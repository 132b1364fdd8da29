"""`parnasc diff`: the semantic diff of two specs, its cost figures, git revisions and git's
diff driver.

Golden files: tests/golden/diff/<pair>.txt and <pair>.json are the exact stdout of
`parnasc diff OLD NEW` and `parnasc diff --json OLD NEW`, run in the repository root with an
empty cache (no latency table). The pairs are in PAIRS; the spec pairs made for the test are in
tests/diff/ (base.pnas and one variant per kind of change, each saying in its first line what
differs). Regenerate with `PARNASC_REGEN=1 pytest tests/test_diff.py` and read every changed
file: each line must name a real change of the pair, and nothing else.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import parnasc
from parnasc import cli
from parnasc.ir.diff import spec_diff
from parnasc.ir.frontend import compile_file
from parnasc.ir.graph import IR, arch_key, flops_range
from parnasc.ir.passes.prune import prune
from parnasc.ir.resources import memory_per_core, memory_range_per_core, params_range
from parnasc.lang.fmt import canonical_text
from parnasc.lang.parse import parse_file

RunCli = Callable[..., subprocess.CompletedProcess[str]]
ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "diff"
CASES = ROOT / "tests" / "diff"
REGEN = os.environ.get("PARNASC_REGEN") == "1"
DERIVED = "benchmarks/results/full-cifar/derived.pnas"
DERIVED_B = "benchmarks/results/full-cifar-beta0.001/derived.pnas"

# name -> (old, new, exit code)
PAIRS: dict[str, tuple[str, str, int]] = {
    "formatting": ("tests/diff/base.pnas", "tests/diff/reformatted.pnas", 0),
    "constants": ("tests/diff/base.pnas", "tests/diff/constants.pnas", 1),
    "level_added": ("tests/diff/base.pnas", "tests/diff/level_added.pnas", 1),
    "level_removed": ("tests/diff/level_added.pnas", "tests/diff/base.pnas", 1),
    "sync": ("tests/diff/base.pnas", "tests/diff/sync.pnas", 1),
    "settings": ("tests/diff/base.pnas", "tests/diff/settings.pnas", 1),
    "head_stem": ("tests/diff/base.pnas", "tests/diff/head_stem.pnas", 1),
    "moved": ("tests/diff/base.pnas", "tests/diff/moved.pnas", 1),
    "supernet_concrete": ("tests/diff/base.pnas", "tests/diff/base_arch.pnas", 1),
    "supernet_derived": ("specs/cifar.pnas", DERIVED, 1),
    "derived_runs": (DERIVED, DERIVED_B, 1),
    "concrete": ("examples/cifar_arch.pnas", DERIVED, 1),
    "paths": ("specs/cifar.pnas", "specs/cifar4.pnas", 1),
    "hetero": ("specs/cifar.pnas", "specs/hetero.pnas", 1),
}
ALL_SPECS = sorted(
    [*ROOT.glob("specs/*.pnas"), *ROOT.glob("examples/*.pnas"), *ROOT.glob("benchmarks/*/*/*.pnas")]
)


def run_diff(
    args: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    cache: Path,
) -> tuple[int, str, str]:
    """`parnasc diff ARGS` in-process in the repository root, with an empty cache."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("PARNASC_CACHE", str(cache))
    monkeypatch.delenv("PARNASC_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["parnasc", "diff", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def _golden(name: str, text: str) -> None:
    golden = GOLDEN / name
    if REGEN:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text, encoding="utf-8")
    assert golden.is_file(), f"no golden file {golden}; run with PARNASC_REGEN=1"
    assert text == golden.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", PAIRS)
def test_golden_text(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    old, new, want = PAIRS[name]
    rc, out, err = run_diff([old, new], monkeypatch, capsys, tmp_path)
    assert (rc, err) == (want, "")
    _golden(f"{name}.txt", out)
    if want == 0:
        assert out == ""


@pytest.mark.parametrize("name", PAIRS)
def test_golden_json(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    old, new, want = PAIRS[name]
    rc, out, err = run_diff(["--json", old, new], monkeypatch, capsys, tmp_path)
    assert (rc, err) == (want, "")
    _golden(f"{name}.json", out)
    data = json.loads(out)
    assert data["schema"] == "parnasc.diff/1"
    assert data["changed"] == bool(data["changes"]) == (want == 1)
    assert (data["old"]["label"], data["new"]["label"]) == (old, new)


def test_golden_set_is_complete() -> None:
    names = {p.name for p in GOLDEN.iterdir()}
    assert names == {f"{n}.{ext}" for n in PAIRS for ext in ("txt", "json")}, "stale goldens"
    for case in CASES.glob("*.pnas"):  # each case says what it is in its first line
        assert case.read_text(encoding="utf-8").startswith("# "), case
    used = {Path(p).name for old, new, _ in PAIRS.values() for p in (old, new)}
    assert {p.name for p in CASES.glob("*.pnas")} <= used


def test_formatting_and_comments_are_no_change() -> None:
    """The reformatted case is other text (another spec hash) with the same meaning."""
    base, same = (parse_file(CASES / f) for f in ("base.pnas", "reformatted.pnas"))
    assert canonical_text(base.stmts) != canonical_text(same.stmts)
    d = spec_diff(compile_file(CASES / "base.pnas"), compile_file(CASES / "reformatted.pnas"))
    assert d.old.spec_hash != d.new.spec_hash
    assert not d.changed and d.text() == ""


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_spec_against_its_canonical_text(spec: Path, tmp_path: Path) -> None:
    """Each spec in specs/, examples/ and the recorded runs against itself without comments
    and blank lines, in canonical form: nothing changed."""
    bare = tmp_path / spec.name
    bare.write_text(canonical_text(parse_file(spec).stmts), encoding="utf-8")
    d = parnasc.diff(spec, bare, latency=False)
    assert not d.changed, d.text()
    assert d.old.costs == d.new.costs


# --- cost figures ---------------------------------------------------------------------------


def _architectures(ir: IR) -> list[dict[str, str]]:
    """Every architecture of a small supernet as prune choices."""
    keys, options = [], []
    for n in ir.nodes():
        if n.kind == "block" and len(n.candidates) > 1:
            keys.append(arch_key(n.id))
            options.append([c.label for c in n.candidates])
        elif n.kind == "sync" and n.mode == "search":
            keys.append(arch_key(n.id))
            options.append([str(n.combiner), "none"])
    return [dict(zip(keys, pick, strict=True)) for pick in itertools.product(*options)]


def _memory_of(ir: IR, choices: dict[str, str]) -> list[int]:
    """memory_per_core of one architecture, straight on the supernet (checked against prune)."""
    cores, peak = [0] * ir.paths, [0] * ir.paths
    for n in ir.nodes():
        key = arch_key(n.id)
        if n.kind in ("input", "output") or choices.get(key) == "none":
            continue
        c = n.candidate_costs()[0]
        if n.kind == "block" and key in choices:
            c = next(x.cost for x in n.candidates if x.label == choices[key])
        core = (n.path or 1) - 1
        cores[core] += 4 * c.params
        ins = sum(4 * math.prod(s) for s in n.in_shapes)
        peak[core] = max(peak[core], ins + c.act_bytes)
    return [a + b for a, b in zip(cores, peak, strict=True)]


@pytest.mark.parametrize(
    "spec", ["tests/diff/base.pnas", "tests/diff/sync.pnas", "tests/diff/moved.pnas"]
)
def test_cost_ranges_are_exact(spec: str) -> None:
    """FLOPs, parameters and memory per core against every architecture of the space.

    Checked against `prune` only where the paths do not end in a sync site that is on: there
    prune's canonicalization merges the identical paths (a smaller head than the supernet
    graph's, which the ranges are computed on)."""
    _, ir = compile_file(ROOT / spec)
    archs = _architectures(ir)
    assert 1 < len(archs) <= 5000
    last = ir.sync(ir.levels[-1])
    plain = [
        ch
        for ch in archs
        if last is None or (last.mode == "search" and ch[f"{ir.levels[-1]}:sync"] == "none")
    ]
    sample = random.Random(0).sample(plain, min(12, len(plain)))
    for choices in sample:
        assert _memory_of(ir, choices) == memory_per_core(prune(ir, choices))
    mems = [_memory_of(ir, ch) for ch in archs]
    least, most = memory_range_per_core(ir)
    assert least == [min(m[k] for m in mems) for k in range(ir.paths)]
    assert most == [max(m[k] for m in mems) for k in range(ir.paths)]
    lo, hi = params_range(ir)
    flo, fhi = flops_range(ir)
    for choices in sample:  # moved.pnas ends in an always-on sync: no sample
        c = prune(ir, choices)
        assert params_range(c)[0] == params_range(c)[1]
        assert lo <= params_range(c)[0] <= hi
        assert flo <= flops_range(c)[0] == flops_range(c)[1] <= fhi
        assert memory_range_per_core(c) == (memory_per_core(c), memory_per_core(c))


def test_latency_from_a_table_of_this_machine(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A latency table cached for a supernet also serves a concrete architecture of it (whose
    ops are the supernet's), the prediction is the latency cost model's, nothing is measured.
    (A concrete spec whose paths end in a sync site that is on is canonicalized to a smaller
    head, an op the supernet's table does not hold: no figure there.)"""
    from parnasc.nas import latency_table as lt
    from parnasc.nas.latency import latency_costs

    supernet, concrete = "tests/diff/base.pnas", "tests/diff/base_arch.pnas"
    _, ir = compile_file(ROOT / supernet)
    keys = sorted({lt.item_key(it) for it in lt.items(ir).values()})
    table = {
        "protocol": lt.PROTOCOL,
        "cpu": lt.cpu_model(),
        "torch": lt.torch_version(),
        "paths": ir.paths,
        "unit": "us",
        "barrier_us": 7.0,
        "items": {k: 10.0 + 3 * i for i, k in enumerate(keys)},
    }
    folder = tmp_path / "latency"
    folder.mkdir()
    (folder / f"{lt.cache_key(keys, ir.paths)}.json").write_text(json.dumps(table))
    rc, out, _ = run_diff([supernet, concrete], monkeypatch, capsys, tmp_path)
    assert rc == 1
    row = next(ln for ln in out.splitlines() if ln.strip().startswith("latency, batch 1"))
    assert row.count(" ms") == 3 and "no table" not in row, row
    d = parnasc.diff(supernet, concrete, latency_dir=folder)
    assert (
        d.new.costs.latency_table
        == d.old.costs.latency_table
        == str(folder / f"{lt.cache_key(keys, ir.paths)}.json")
    )
    lo, hi = d.new.costs.latency_us or (0, 0)
    assert lo == hi > 0
    old = d.old.costs.latency_us
    assert old is not None and old[0] <= lo <= old[1]

    # the figures of the search's latency cost model (torch), from tables it finds by key
    _, cir = compile_file(ROOT / concrete)
    ckeys = sorted({lt.item_key(it) for it in lt.items(cir).values()})
    ctable = {**table, "items": {k: table["items"][k] for k in ckeys}}
    (folder / f"{lt.cache_key(ckeys, cir.paths)}.json").write_text(json.dumps(ctable))
    files = sorted(folder.iterdir())
    model = latency_costs(ir, cache_dir=folder)
    assert lt.latency_range(ir, table)[1] == pytest.approx(model.norm)
    model = latency_costs(cir, cache_dir=folder)
    ops, sync = model.terms({})
    assert lo == pytest.approx(float(ops + sync) * model.norm + model.fixed)
    assert sorted(folder.iterdir()) == files  # nothing measured, nothing written


def test_no_table_elsewhere(tmp_path: Path) -> None:
    """A table of another machine (CPU model) or of too few ops is not used."""
    from parnasc.nas import latency_table as lt

    _, ir = compile_file(ROOT / "specs/cifar.pnas")
    keys = sorted({lt.item_key(it) for it in lt.items(ir).values()})
    table = {
        "protocol": lt.PROTOCOL,
        "cpu": "another CPU",
        "torch": lt.torch_version(),
        "paths": 2,
        "barrier_us": 1.0,
        "items": dict.fromkeys(keys, 1.0),
    }
    (tmp_path / "a.json").write_text(json.dumps(table))
    (tmp_path / "b.json").write_text(json.dumps({**table, "cpu": lt.cpu_model(), "items": {}}))
    (tmp_path / "c.json").write_text("not json")
    assert lt.find_table(ir, tmp_path) is None
    (tmp_path / "d.json").write_text(json.dumps({**table, "cpu": lt.cpu_model()}))
    found = lt.find_table(ir, tmp_path)
    assert found is not None and found[0].name == "d.json"


# --- errors ---------------------------------------------------------------------------------


def test_errors_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rc, out, err = run_diff(
        ["tests/errors/op_typo.pnas", "specs/cifar.pnas"], monkeypatch, capsys, tmp_path
    )
    assert (rc, out) == (2, "")
    assert err.startswith("tests/errors/op_typo.pnas:9:7: error: unknown operation 'cnov'\n")
    rc, out, err = run_diff(["missing.pnas", "specs/cifar.pnas"], monkeypatch, capsys, tmp_path)
    assert (rc, out, err) == (
        2,
        "",
        "parnasc: error: cannot read missing.pnas: No such file or directory\n",
    )
    rc, out, err = run_diff(["specs/cifar.pnas"], monkeypatch, capsys, tmp_path)
    assert (rc, out, err) == (2, "", "parnasc: error: diff takes two specs, OLD NEW (got 1)\n")


def test_diff_loads_no_torch() -> None:
    code = (
        "import sys\n"
        "from parnasc.cli import main\n"
        "sys.argv = ['parnasc', 'diff', 'specs/cifar.pnas', 'specs/cifar4.pnas']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 1, exc.code\n"
        "print('MODULES', sorted({m.split('.')[0] for m in sys.modules}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PARNASC_DEBUG"}
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120
    )
    assert res.returncode == 0, res.stderr
    loaded = res.stdout.rsplit("MODULES", 1)[1]
    for heavy in ("torch", "onnx", "onnxruntime", "matplotlib", "networkx"):
        assert f"'{heavy}'" not in loaded, heavy


# --- git ------------------------------------------------------------------------------------


def _git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_PAGER": "cat",
        "PAGER": "cat",
    }
    done = subprocess.run(
        ["git", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with specs/base.pnas committed, then changed in the work tree."""
    r = tmp_path / "repo"
    (r / "specs").mkdir(parents=True)
    _git(r, "init", "-q")
    _git(r, "config", "user.name", "Test")
    _git(r, "config", "user.email", "test@example.com")
    _git(r, "config", "commit.gpgsign", "false")
    (r / "specs" / "base.pnas").write_text((CASES / "base.pnas").read_text())
    _git(r, "add", "specs/base.pnas")
    _git(r, "commit", "-q", "-m", "base")
    (r / "specs" / "base.pnas").write_text((CASES / "sync.pnas").read_text())
    return r


def test_git_revision(repo: Path, run_cli: RunCli) -> None:
    env = {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    res = run_cli("diff", "HEAD:specs/base.pnas", "specs/base.pnas", cwd=repo, env=env)
    assert res.returncode == 1, res.stderr
    assert res.stdout.startswith("--- HEAD:specs/base.pnas (supernet small")
    assert "- sync after wide: always concat\n" in res.stdout
    # from a sub-folder, PATH relative to it as git reads ./PATH
    res = run_cli("diff", "HEAD:./base.pnas", "base.pnas", cwd=repo / "specs", env=env)
    assert res.returncode == 1 and "+ sync after tail: search concat" in res.stdout
    res = run_cli("diff", "HEAD:specs/base.pnas", "HEAD:specs/base.pnas", cwd=repo, env=env)
    assert (res.returncode, res.stdout) == (0, "")
    for bad, why in (
        ("HEAD~3:specs/base.pnas", "HEAD~3"),
        ("HEAD:specs/nothing.pnas", "nothing.pnas"),
        ("HEAD:specs", "it is a tree, not a file"),
    ):
        res = run_cli("diff", bad, "specs/base.pnas", cwd=repo, env=env)
        assert res.returncode == 2 and res.stdout == ""
        assert res.stderr.startswith(f"parnasc: error: cannot read {bad} from git: "), res.stderr
        assert why in res.stderr and len(res.stderr.splitlines()) == 1


def test_git_revision_with_a_bad_spec(repo: Path, run_cli: RunCli) -> None:
    (repo / "specs" / "base.pnas").write_text((ROOT / "tests/errors/op_typo.pnas").read_text())
    _git(repo, "commit", "-q", "-am", "typo")
    env = {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    res = run_cli("diff", "HEAD:specs/base.pnas", "HEAD~1:specs/base.pnas", cwd=repo, env=env)
    assert res.returncode == 2
    assert res.stderr.startswith("HEAD:specs/base.pnas:9:7: error: unknown operation 'cnov'")


def test_git_diff_driver(repo: Path) -> None:
    """`*.pnas diff=pnas` and `diff.pnas.command = parnasc diff`: `git diff` shows the
    semantic diff, and a new file falls back to its lines."""
    parnasc_cmd = Path(sys.executable).with_name("parnasc")
    (repo / ".gitattributes").write_text("*.pnas diff=pnas\n")
    _git(repo, "config", "diff.pnas.command", f"{parnasc_cmd} diff")
    out = _git(repo, "diff")
    assert "--- a/specs/base.pnas (supernet small, 1,024 architectures)" in out
    assert "+++ b/specs/base.pnas (supernet small, 512 architectures)" in out
    assert "~ sync after b_1: search sum -> always sum" in out
    (repo / "specs" / "new.pnas").write_text((CASES / "base.pnas").read_text())
    _git(repo, "add", "-N", "specs/new.pnas")
    out = _git(repo, "diff", "--", "specs/new.pnas")
    assert "parnasc diff: a new or deleted spec; showing the lines" in out
    assert "+model small" in out
    (repo / "specs" / "base.pnas").write_text("model broken\n")
    out = _git(repo, "diff", "--", "specs/base.pnas")
    assert "parnasc diff: b/specs/base.pnas:" in out and "-model small" in out
