"""End to end through the CLI on a small real CIFAR-10 subset: search -> derived.pnas ->
fmt/check -> train; determinism, resume after kill -9 (and after every state a kill can
leave, made on disk), resume keeps the recorded data and settings, bad input, safe
checkpoints, no library warnings."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

# torch's first optimizer step imports torch._dynamo, which sets TORCHINDUCTOR_CACHE_DIR in
# os.environ; importing it here does that before the leak check (conftest.py) of any test.
import torch._dynamo

from parnasc.ir.frontend import compile_file
from parnasc.ir.graph import sync_key

PARNASC = str(Path(sys.executable).with_name("parnasc"))
ARCHIVE = Path(
    os.environ.get("PARNASC_CIFAR")
    or Path(__file__).resolve().parents[2] / "shared/datasets/cifar10-jpeg.tar.gz"
)

# A small supernet over real 3x32x32 CIFAR-10: two paths, two levels, searchable concat syncs.
SMALL = """\
model small
input 3x32x32
classes 10
paths 2
stem {
  conv(k=3, out=16, stride=2)
}
level l1 {
  out 16
  ops conv(k=3) | sepconv(k=3)
}
sync search concat
level l2 {
  out 32
  stride 2
  ops conv(k=3) | conv(k=1)
}
sync search concat
head {
  merge concat
  gap
  fc(out=classes)
}
search {
  epochs 3
  warmup 1
  batch 32
  seed 0
  weights sgd(lr=0.05, momentum=0.9, wd=0.0003, nesterov=1)
  arch adam(lr=0.01, wd=0.001)
  retrain_epochs 2
}
"""
DATA = ["--data", str(ARCHIVE), "--train-images", "1000", "--test-images", "500", "--threads", "1"]
CORES = ["--cores", "2"]  # the spec has no target: without it the count would be this machine's
TIMEOUT = 300


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PARNASC_DEBUG", None)
    return env


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PARNASC, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT
    )


def _start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PARNASC, *args],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(p: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=TIMEOUT)
    return p.returncode, out, err


class Runs:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.spec = root / "small.pnas"
        self.a = root / "A"  # uninterrupted
        self.b = root / "B"  # the same again (determinism)
        self.c = root / "C"  # killed after its first checkpoint, then resumed
        self.stderr: dict[str, str] = {}  # of the searches A and B and the resume of C


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    if not ARCHIVE.is_file():
        pytest.fail(f"CIFAR-10 archive not found at {ARCHIVE} (set PARNASC_CIFAR to its path)")
    from parnasc.data.cifar import load_cifar10

    load_cifar10(ARCHIVE)  # decode once into the shared cache before three runs read it
    r = Runs(tmp_path_factory.mktemp("search"))
    r.spec.write_text(SMALL)
    search = ["search", r.spec.name, *CORES, *DATA]  # relative: a resume names it the same
    a = _start([*search, "--out", str(r.a)], r.root)
    b = _start([*search, "--out", str(r.b)], r.root)
    c = _start([*search, "--out", str(r.c)], r.root)
    # Poll for the file (no fixed sleep); the deadline only stops a hung run. The kill lands
    # within milliseconds of the first checkpoint, two epochs before the run could finish.
    deadline = time.monotonic() + TIMEOUT
    while not (r.c / "checkpoint.pt").exists():
        assert c.poll() is None, f"run C ended before its first checkpoint: {c.communicate()}"
        assert time.monotonic() < deadline, "no checkpoint from run C"
        time.sleep(0.01)
    os.kill(c.pid, signal.SIGKILL)
    rc, _, _ = _finish(c)
    assert rc == -signal.SIGKILL  # killed mid-run, not finished
    assert not (r.c / "result.json").exists()
    for p, name in ((a, "A"), (b, "B")):
        rc, out, err = _finish(p)
        assert rc == 0, f"search {name} failed:\n{out}\n{err}"
        r.stderr[name] = err
    # Neither --data nor --threads: a resume reads its data source and thread count from
    # settings.json (it used to try to download CIFAR-10).
    done = _run(["search", "--resume", str(r.c)], r.root)
    assert done.returncode == 0, done.stdout + done.stderr
    r.stderr["C"] = done.stderr
    return r


def test_search_writes_a_valid_concrete_spec(runs: Runs) -> None:
    derived = runs.a / "derived.pnas"
    assert derived.is_file()
    fmt = _run(["fmt", "--check", str(derived)], runs.root)
    assert fmt.returncode == 0, fmt.stderr
    check = _run(["check", str(derived)], runs.root)
    assert check.returncode == 0, check.stderr
    spec, ir = compile_file(derived)
    assert spec.concrete
    result = json.loads((runs.a / "result.json").read_text())
    assert set(result["choices"]) == {"l1:p1", "l1:p2", "l2:p1", "l2:p2", "l1:sync", "l2:sync"}
    for lv in ("l1", "l2"):
        assert (ir.sync(lv) is not None) == (result["choices"][sync_key(lv)] == "concat")


def test_search_records_how_decided_each_decision_is(runs: Runs) -> None:
    """arch.jsonl has every decision's margin and entropy per epoch, derived.pnas its final
    margin and a summary line, the result the undecided decisions."""
    from parnasc.ir.decisions import decisions, summary
    from parnasc.nas.runs import SearchResult

    rows = [json.loads(line) for line in (runs.a / "arch.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for r in rows:
        ds = decisions(r["probabilities"])
        assert r["margin"] == {k: pytest.approx(d.margin, abs=1e-6) for k, d in ds.items()}
        assert r["entropy"] == {k: pytest.approx(d.entropy, abs=1e-6) for k, d in ds.items()}
        assert r["undecided"] == sum(not d.decided for d in ds.values())
    result = SearchResult.read(runs.a)
    text = (runs.a / "derived.pnas").read_text()
    assert f"# decisions: {summary(result.probabilities)}\n" in text
    assert text.count(" margin ") == len(result.probabilities)  # 4 blocks and 2 sync sites
    assert result.undecided == [
        k for k, d in decisions(result.probabilities).items() if not d.decided
    ]


def test_train_derived_beats_chance(runs: Runs) -> None:
    derived = runs.a / "derived.pnas"
    done = _run(["train", str(derived), "--epochs", "2", *DATA], runs.root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Warning" not in done.stderr, done.stderr  # e.g. torch's float(loss) UserWarning
    m = re.search(r"test accuracy (\d+(?:\.\d+)?)%", done.stdout)
    assert m, done.stdout
    assert float(m.group(1)) > 10.0  # chance on 10 balanced classes
    assert (runs.a / "model.pt").is_file()


def test_same_seed_same_result(runs: Runs) -> None:
    assert (runs.a / "derived.pnas").read_text() == (runs.b / "derived.pnas").read_text()
    assert (runs.a / "arch.jsonl").read_text() == (runs.b / "arch.jsonl").read_text()


def test_search_prints_no_library_warnings(runs: Runs) -> None:
    for name, err in runs.stderr.items():
        assert "Warning" not in err, f"search {name}:\n{err}"


def test_resume_after_kill_matches_uninterrupted(runs: Runs) -> None:
    record = json.loads((runs.c / "settings.json").read_text())
    assert record["data"]["source"] == os.path.abspath(ARCHIVE)
    assert record["data"]["train_images"] == 1000 and record["threads"] == 1
    assert (runs.c / "derived.pnas").read_text() == (runs.a / "derived.pnas").read_text()
    arch_a = (runs.a / "arch.jsonl").read_text().splitlines()
    arch_c = (runs.c / "arch.jsonl").read_text().splitlines()
    assert [json.loads(ln)["epoch"] for ln in arch_c] == [1, 2, 3]
    assert arch_c == arch_a  # the last line holds the final probabilities
    epochs = [json.loads(ln)["epoch"] for ln in (runs.c / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    res_a = json.loads((runs.a / "result.json").read_text())
    res_c = json.loads((runs.c / "result.json").read_text())
    for key in ("choices", "probabilities", "val_acc"):
        assert res_c[key] == res_a[key]
    net_a = torch.load(runs.a / "supernet.pt", weights_only=True)["net"]
    net_c = torch.load(runs.c / "supernet.pt", weights_only=True)["net"]
    assert net_a.keys() == net_c.keys()
    for k in net_a:
        assert torch.equal(net_a[k], net_c[k]), k


def test_checkpoints_load_with_weights_only(runs: Runs) -> None:
    files = [runs.a / f for f in ("checkpoint.pt", "searched.pt", "supernet.pt")] + [
        runs.c / "checkpoint.pt"
    ]
    files += [runs.a / f for f in ("model.pt", "train_checkpoint.pt") if (runs.a / f).exists()]
    for f in files:
        ck = torch.load(f, map_location="cpu", weights_only=True)
        assert "net" in ck and all(isinstance(v, torch.Tensor) for v in ck["net"].values())


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_too_few_cores_is_one_line_error(tmp_path: Path) -> None:
    spec = tmp_path / "small.pnas"
    spec.write_text(SMALL)
    done = _run(["search", str(spec), "--cores", "1", "--data", str(ARCHIVE)], tmp_path)
    line = _one_line_error(done)
    assert "--cores 1" in line and "2 paths" in line
    assert not (tmp_path / "runs").exists()


def test_missing_data_is_one_line_error(tmp_path: Path) -> None:
    spec = tmp_path / "small.pnas"
    spec.write_text(SMALL)
    missing = tmp_path / "no-such-cifar.tar.gz"
    args = ["search", str(spec), *CORES, "--data", str(missing), "--out", str(tmp_path / "r")]
    done = _run(args, tmp_path)
    line = _one_line_error(done)
    assert str(missing) in line


@pytest.mark.parametrize(
    ("option", "needle"),
    [
        (["--epochs", "0"], "--epochs 0: must be greater than or equal to 1"),
        (["--beta", "-1"], "--beta -1.0: must be greater than or equal to 0"),
        (["--cost", "time"], "--cost time: expected one of flops, latency"),
        (["--mode", "darts"], "--mode darts: expected one of joint, alternate"),
        (["--recipe", "fast"], "--recipe fast: expected one of default, paper"),
        (["--train-images", "5"], "--train-images 5: need at least 20"),
    ],
)
def test_bad_option_values_are_one_line_errors(
    tmp_path: Path, option: list[str], needle: str
) -> None:
    spec = tmp_path / "small.pnas"
    spec.write_text(SMALL)
    done = _run(["search", str(spec), *CORES, "--data", str(ARCHIVE), *option], tmp_path)
    assert needle in _one_line_error(done)


def test_emit_and_bench_need_inputs(tmp_path: Path) -> None:
    supernet = tmp_path / "small.pnas"
    supernet.write_text(SMALL)
    assert "not a concrete spec" in _one_line_error(_run(["emit", str(supernet)], tmp_path))
    assert "no schedule.json" in _one_line_error(_run(["bench", str(tmp_path)], tmp_path))
    assert "no spec given" in _one_line_error(_run(["search"], tmp_path))


# --- resume keeps the run; every state a kill can leave; damaged files (CLI) -----------------

SEARCH_FILES = (
    "settings.json",
    "checkpoint.pt",
    "metrics.jsonl",
    "arch.jsonl",
    "searched.pt",
    "supernet.pt",
    "derived.pnas",
    "result.json",
)


def _copy_run(src: Path, dst: Path) -> Path:
    """The search outputs of `src` (not what a retraining added) in a new directory."""
    dst.mkdir()
    for name in SEARCH_FILES:
        shutil.copy2(src / name, dst / name)
    return dst


def _cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """`parnasc ARGS` in this process, for commands that stop before any training (refusals,
    'already complete'): no interpreter start-up; argv, env, torch's RNG and thread count are
    restored."""
    from parnasc.cli import main

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp, torch.random.fork_rng(devices=[]):
        mp.setattr(sys, "argv", ["parnasc", *map(str, args)])
        mp.delenv("PARNASC_DEBUG", raising=False)
        try:
            with pytest.raises(SystemExit) as stop:
                main()
        finally:
            torch.set_num_threads(threads)
    got = capsys.readouterr()
    return int(stop.value.code or 0), got.out, got.err


def _refused(capsys: pytest.CaptureFixture[str], *args: object) -> str:
    """The one-line error of an in-process command that must fail with exit 1."""
    rc, out, err = _cli(capsys, *args)
    assert rc == 1, out + err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("parnasc: error: ")
    return lines[0]


def test_resume_of_a_complete_run_changes_nothing(
    runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy_run(runs.a, tmp_path / "A")
    before = {name: (run / name).read_bytes() for name in SEARCH_FILES}
    same = ["--beta", "0.01", "--train-images", "1000", "--cores", "2", "--epochs", "3"]
    for extra in ([], same):  # giving a recorded value again is no change
        rc, out, err = _cli(capsys, "search", "--resume", run, *extra)
        assert rc == 0, err
        assert f"{run}: the search is already complete (3 epochs)" in out
    assert {name: (run / name).read_bytes() for name in SEARCH_FILES} == before


@pytest.mark.parametrize(
    ("option", "needle"),
    [
        (
            ["--beta", "0.1"],
            "--beta 0.1: cannot change a setting of the resumed run {run} (recorded 0.01)",
        ),
        (
            ["--train-images", "500"],
            "--train-images 500: cannot change a setting of the resumed run {run} (recorded 1000)",
        ),
        (["--test-images", "100"], "(recorded 500)"),
        (["--cores", "3"], "--cores 3: cannot change a setting"),
        (["--seed", "1"], "--seed 1: cannot change a setting"),
        (["--mode", "alternate"], "(recorded joint)"),
        (["--recipe", "paper"], "(recorded default)"),
        (["--tau-end", "0.1"], "--tau-end 0.1: cannot change a setting"),
        (
            ["--epochs", "2"],
            "--epochs 2: cannot change a setting of the resumed run {run} "
            "(recorded 3); --epochs can only extend a run",
        ),
        (["--out", "elsewhere"], "--out elsewhere: cannot change the directory"),
        (["{other}"], "{other}: cannot change the spec of the resumed run {run}"),
    ],
)
def test_resume_refuses_a_changed_setting(
    runs: Runs,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    option: list[str],
    needle: str,
) -> None:
    run = _copy_run(runs.a, tmp_path / "A")
    other = tmp_path / "other.pnas"
    other.write_text(SMALL.replace("epochs 3", "epochs 4"))
    args = [a.format(other=other) for a in option]
    line = _refused(capsys, "search", "--resume", run, *args)
    assert needle.format(run=run, other=other) in line


def test_resume_finds_a_moved_spec_and_data_and_checks_them(
    runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy_run(runs.a, tmp_path / "A")
    record = json.loads((run / "settings.json").read_text())
    gone = tmp_path / "gone"
    record["spec"] = str(gone / "small.pnas")
    (run / "settings.json").write_text(json.dumps(record))
    line = _refused(capsys, "search", "--resume", run)
    assert f"was made from {gone / 'small.pnas'}, which is gone; pass SPEC" in line
    rc, out, _ = _cli(capsys, "search", runs.spec, "--resume", run)  # the same spec, elsewhere
    assert rc == 0 and "already complete" in out

    (run / "result.json").unlink()  # unfinished, so the resume goes on to the data
    record["spec"], record["data"]["source"] = str(runs.spec), str(gone / "cifar.tar.gz")
    (run / "settings.json").write_text(json.dumps(record))
    line = _refused(capsys, "search", "--resume", run)
    assert f"{gone / 'cifar.tar.gz'}, which is gone; pass --data PATH" in line
    record["data"]["fingerprint"] = "0" * 64  # as if --data named other images
    (run / "settings.json").write_text(json.dumps(record))
    rc, _, err = _cli(capsys, "search", "--resume", run, "--data", ARCHIVE)
    assert rc == 1 and "Traceback" not in err
    assert err.splitlines()[-1] == (
        f"parnasc: error: --data {ARCHIVE}: not the data run {run} was made with "
        "(its fingerprint differs)"
    )


def _damage_settings(text: str, how: str) -> str:
    record = json.loads(text)
    if how == "truncated":
        return text[: len(text) // 2]
    if how == "binary":
        return "\x00\x9f\x92\x96 not json"
    if how == "a list":
        return json.dumps([record])
    if how == "no settings":
        del record["settings"]
    elif how == "beta a string":
        record["settings"]["beta"] = "0.01"
    elif how == "older format":
        del record["format"]
    elif how == "foreign format":
        record["format"] = 99
    elif how == "unknown key":
        record["settings"]["gamma"] = 1.0
    elif how == "bad optimizer":
        record["settings"]["weights"]["name"] = "lion"
    return json.dumps(record)


@pytest.mark.parametrize(
    ("how", "needle"),
    [
        ("truncated", "not valid JSON"),
        ("binary", "not valid JSON"),
        ("a list", "expected a JSON object, found a list"),
        ("no settings", "settings: Field required"),
        ("beta a string", "settings.beta: Input should be a valid number"),
        ("older format", "written by another version of parnasc (format None"),
        ("foreign format", "written by another version of parnasc (format 99"),
        ("unknown key", "settings.gamma: Extra inputs are not permitted"),
        ("bad optimizer", "settings.weights.name: Input should be"),
    ],
)
def test_damaged_settings_json_is_one_line_error(
    runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str, needle: str
) -> None:
    run = _copy_run(runs.a, tmp_path / "A")
    f = run / "settings.json"
    f.write_text(_damage_settings(f.read_text(), how))
    line = _refused(capsys, "search", "--resume", run)
    assert f"{f}: " in line and needle in line


def _save(obj: object, path: Path) -> None:
    torch.save(obj, path)


@pytest.mark.parametrize(
    ("name", "damage", "needle"),
    [
        ("checkpoint.pt", "garbage", "cannot load checkpoint, damaged or not a parnasc"),
        ("checkpoint.pt", "truncated", "cannot load checkpoint, damaged or not a parnasc"),
        ("checkpoint.pt", "only net", "not a parnasc checkpoint (no 'epoch', 'w_opt'"),
        ("checkpoint.pt", "a list", "not a parnasc checkpoint (a list, not a dict)"),
        ("checkpoint.pt", "other spec", "made from another spec than"),
        ("checkpoint.pt", "bad epoch", "epoch 7 is outside the run's 3"),
        ("checkpoint.pt", "other net", "does not match the supernet of"),
    ],
)
def test_damaged_checkpoint_on_resume_is_one_line_error(
    runs: Runs,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    damage: str,
    needle: str,
) -> None:
    run = _copy_run(runs.a, tmp_path / "A")
    (run / "result.json").unlink()  # as if killed before the end: the resume loads it
    f = run / name
    _damage(f, damage)
    rc, _, err = _cli(capsys, "search", "--resume", run)
    assert rc == 1 and "Traceback" not in err
    assert err.splitlines()[-1].startswith(f"parnasc: error: {f}: ")
    assert needle in err.splitlines()[-1]


def _damage(f: Path, damage: str) -> None:
    ck = torch.load(f, weights_only=True)
    if damage == "garbage":
        f.write_bytes(b"this is not a checkpoint\n")
    elif damage == "truncated":
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif damage == "only net":
        _save({"net": ck["net"]}, f)
    elif damage == "no net":
        _save({"meta": ck.get("meta")}, f)
    elif damage == "a list":
        _save([ck["net"]], f)
    elif damage == "other spec":
        _save({**ck, "meta": {**ck["meta"], "spec_hash": "0" * 64}}, f)
    elif damage == "bad epoch":
        _save({**ck, "epoch": 7}, f)
    elif damage == "other net":
        net = dict(ck["net"])
        net.pop(next(iter(net)))  # a key the network has is missing
        _save({**ck, "net": net}, f)


@pytest.mark.parametrize(
    ("name", "damage", "command"),
    [
        ("searched.pt", "garbage", "train"),
        ("searched.pt", "truncated", "train"),
        ("searched.pt", "no net", "train"),
        ("searched.pt", "truncated", "emit"),
        ("searched.pt", "no net", "emit"),
    ],
)
def test_damaged_weights_are_one_line_errors(
    runs: Runs,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    damage: str,
    command: str,
) -> None:
    run = _copy_run(runs.a, tmp_path / "A")
    f = run / name
    _damage(f, damage)
    args = ["train", run / "derived.pnas", *DATA] if command == "train" else ["emit", run]
    line = _refused(capsys, *args)
    assert line.startswith(f"parnasc: error: {f}: ")


def test_emit_of_a_damaged_model_dir_is_one_line_error(
    runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy_run(runs.a, tmp_path / "A")
    ck = torch.load(run / "searched.pt", weights_only=True)
    _save({"net": ck["net"]}, run / "model.pt")
    _damage(run / "model.pt", "truncated")
    line = _refused(capsys, "emit", run)
    assert line.startswith(f"parnasc: error: {run / 'model.pt'}: cannot load checkpoint")


def test_edited_derived_spec_is_one_line_error(
    runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """derived.pnas edited after the search (the stem's conv k=3 made k=5): its weights no
    longer fit, and train and emit say so in one line instead of torch's traceback."""
    run = _copy_run(runs.a, tmp_path / "A")
    derived = run / "derived.pnas"
    text = derived.read_text()
    assert "conv(k=3, out=16, stride=2)" in text
    derived.write_text(text.replace("conv(k=3, out=16, stride=2)", "conv(k=5, out=16, stride=2)"))
    for args in (["train", derived, *DATA], ["emit", run]):
        line = _refused(capsys, *args)
        assert f"{run / 'searched.pt'}: does not match the network of {derived}" in line
        assert "size mismatch" in line
    ck = torch.load(run / "searched.pt", weights_only=True)
    _save({"net": ck["net"], "meta": {"spec_hash": "0" * 64}}, run / "model.pt")  # retrained
    line = _refused(capsys, "emit", run)  # ... from the derived.pnas before the edit
    assert f"{run / 'model.pt'}: trained from another version of {derived}" in line


def test_unfinished_search_is_refused_then_resumed(
    runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Kills in the final phase leave no result.json (the completion marker, written last):
    train and emit refuse the run; a resume derives again and ends where the uninterrupted
    run did."""
    run = _copy_run(runs.a, tmp_path / "A")
    (run / "result.json").unlink()  # killed between derived.pnas and result.json
    for args in (["train", run / "derived.pnas"], ["emit", run]):
        line = _refused(capsys, *args)
        assert (
            f"{run}: the search there has not finished (no result.json); finish it with "
            f"'parnasc search --resume {run}'" in line
        )
    for name in ("derived.pnas", "supernet.pt"):  # killed right after searched.pt
        (run / name).unlink()
    (run / ".derived.pnas.k3j4.tmp.pnas").write_text("model sm")  # a write the kill cut short
    done = _run(["search", "--resume", str(run)], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (run / "derived.pnas").read_text() == (runs.a / "derived.pnas").read_text()
    res, res_a = (json.loads((d / "result.json").read_text()) for d in (run, runs.a))
    for key in ("choices", "probabilities", "val_acc"):
        assert res[key] == res_a[key]
    assert not list(run.glob(".*tmp*"))


def test_resume_with_more_epochs_extends_a_finished_run(runs: Runs, tmp_path: Path) -> None:
    """--epochs beyond the recorded count continues from the last checkpoint and derives
    again; --data may name the same data in another place (checked by its fingerprint)."""
    run = _copy_run(runs.a, tmp_path / "A")
    moved = tmp_path / "elsewhere.tar.gz"
    moved.symlink_to(ARCHIVE)
    done = _run(["search", "--resume", str(run), "--epochs", "4", "--data", str(moved)], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Warning" not in done.stderr
    arch = (run / "arch.jsonl").read_text().splitlines()
    assert [json.loads(ln)["epoch"] for ln in arch] == [1, 2, 3, 4]
    assert arch[:3] == (runs.a / "arch.jsonl").read_text().splitlines()
    record = json.loads((run / "settings.json").read_text())
    assert record["settings"]["epochs"] == 4 and record["data"]["source"] == str(moved)
    assert "epochs=4" in (run / "derived.pnas").read_text()
    assert (run / "result.json").is_file()
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 4


def test_train_resume_keeps_its_settings(
    runs: Runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy_run(runs.a, tmp_path / "A")
    derived = run / "derived.pnas"
    line = _refused(capsys, "train", derived, "--resume")
    assert f"{run}: not a training directory (no train_settings.json)" in line
    done = _run(["train", str(derived), "--epochs", "1", *DATA], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Warning" not in done.stderr, done.stderr
    rc, out, err = _cli(capsys, "train", derived, "--resume")
    assert rc == 0, err
    assert f"{run}: the training is already complete (1 epoch): test accuracy" in out
    for option, needle in (
        (
            ["--test-images", "100"],
            "--test-images 100: cannot change a setting of the resumed "
            f"training {run} (recorded 500)",
        ),
        (["--from-scratch"], "--from-scratch: cannot change a setting"),
        (["--epochs", "0"], "--epochs 0: cannot change a setting"),
    ):
        assert needle in _refused(capsys, "train", derived, "--resume", *option)
    done = _run(["train", str(derived), "--resume", "--epochs", "2"], tmp_path)  # no --data
    assert done.returncode == 0, done.stdout + done.stderr
    rows = (run / "train_metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["epoch"] for ln in rows] == [1, 2]
    assert json.loads((run / "train_settings.json").read_text())["epochs"] == 2
    meta = torch.load(run / "model.pt", weights_only=True)["meta"]
    assert meta["epochs"] == 2 and meta["training"]["epochs"] == 2
    # A new training with the same settings, killed before its end, has another run_id: the
    # model.pt the last one left does not pass for its result, so --resume continues it.
    from parnasc.nas.runs import TrainRecord, read_record
    from parnasc.nas.train import Accuracy, trained_accuracy

    record = read_record(run / "train_settings.json", TrainRecord, "training")
    assert trained_accuracy(run, record) == Accuracy(meta["test_acc"], meta["test_acc_tta"])
    assert trained_accuracy(run, record.model_copy(update={"run_id": "started later"})) is None


# --- resume through the API, both search modes (fast, synthetic data) ----------------------


class _Stop(Exception):
    pass


@pytest.mark.parametrize("mode", ["joint", "alternate"])
def test_resume_is_exact_in_both_modes(tmp_path: Path, mode: str, one_thread: None) -> None:
    import numpy as np

    from parnasc.data.cifar import Loader
    from parnasc.ir.frontend import compile_source
    from parnasc.nas.recipes import Settings
    from parnasc.nas.search import search

    spec, ir = compile_source(SMALL, "small.pnas")
    settings = Settings.from_spec(
        spec.search, 2, mode=mode, epochs=3, warmup=1, batch=16, tau=1.0, tau_end=0.1
    )  # an annealed temperature: a resume must take it up where the run stopped
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (112, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, 112)

    def loaders() -> tuple[Loader, Loader]:
        # 4 training batches per epoch against 3 held-out ones: the architecture steps of
        # `alternate` mode do not line up with the held-out epochs.
        train = Loader(x[:64], y[:64], 16, shuffle=True, augment=True, seed=0, drop_last=True)
        val = Loader(x[64:], y[64:], 16, shuffle=True, augment=False, seed=1)
        return train, val

    def stop_after_second_epoch(phase: str, epoch: int, batch: int, values: object) -> None:
        if phase == "epoch-end" and epoch == 2:  # after a searching epoch
            raise _Stop

    whole = search(spec, ir, settings, *loaders(), tmp_path / "whole")
    cut = tmp_path / "cut"
    with pytest.raises(_Stop):
        search(spec, ir, settings, *loaders(), cut, report=stop_after_second_epoch)
    # What a kill during epoch 3's log write leaves with append-only logs: half a line.
    for log in ("metrics.jsonl", "arch.jsonl"):
        with (cut / log).open("a") as f:
            f.write('{"epoch": 3, "probabilities": {"l1:p1": [0.5')
    (cut / ".checkpoint.pt.x1y2.tmp.pt").write_bytes(b"half a checkpoint")  # a killed save
    resumed = search(spec, ir, settings, *loaders(), cut, resume=True)
    assert resumed.probabilities == whole.probabilities
    assert (cut / "arch.jsonl").read_text() == (tmp_path / "whole/arch.jsonl").read_text()
    assert [r["epoch"] for r in map(json.loads, (cut / "metrics.jsonl").open())] == [1, 2, 3]
    assert not list(cut.glob(".*tmp*"))

    def stop_in_first_epoch(phase: str, epoch: int, batch: int, values: object) -> None:
        raise _Stop  # killed before the first checkpoint: only settings.json is there

    early = tmp_path / "early"
    with pytest.raises(_Stop):
        search(spec, ir, settings, *loaders(), early, report=stop_in_first_epoch)
    assert {f.name for f in early.iterdir()} == {"settings.json"}
    resumed = search(spec, ir, settings, *loaders(), early, resume=True)  # starts over
    assert resumed.probabilities == whole.probabilities


def test_tie_removes_sync_and_latency_search_runs(tmp_path: Path) -> None:
    """At P_sync == P_direct a sync is removed (kept only if P_sync > P_direct); a short
    search with the measured latency cost model runs through."""
    import numpy as np

    from parnasc.data.cifar import Loader
    from parnasc.ir.frontend import compile_source
    from parnasc.nas.latency import latency_costs
    from parnasc.nas.lower import lower
    from parnasc.nas.recipes import Settings
    from parnasc.nas.search import derive, search

    spec, ir = compile_source(SMALL, "small.pnas")
    ties = {k: p.tolist() for k, p in lower(ir).probabilities().items()}  # all logits 0
    choices = derive(ties, ir, None)
    assert choices["l1:sync"] == choices["l2:sync"] == "none"
    costs = latency_costs(ir, cache_dir=tmp_path / "lat")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, 64)
    train = Loader(x[:48], y[:48], 16, shuffle=True, augment=True, seed=0, drop_last=True)
    val = Loader(x[48:], y[48:], 16, shuffle=False, augment=False, seed=1)
    settings = Settings.from_spec(spec.search, 2, cost="latency", epochs=2, warmup=0, beta=1.0)
    result = search(spec, ir, settings, train, val, tmp_path / "run", costs=costs)
    assert result.cost_kind == "latency"
    # The chosen architecture costs at most the costliest one (norm); the relative 1e-6 allows
    # for float32 rounding when they are the same architecture.
    assert costs.fixed < result.cost <= costs.norm * (1 + 1e-6)
    assert (tmp_path / "run/derived.pnas").is_file()


def test_emit_run_and_bench_the_searched_model(runs: Runs, tmp_path: Path) -> None:
    """search -> emit -> ONNX equals PyTorch on real CIFAR-10 images -> run -> bench."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    from PIL import Image

    from parnasc.data.cifar import load_cifar10, normalize, subset
    from parnasc.nas.lower import lower
    from parnasc.nas.train import load_checkpoint

    out = tmp_path / "emit"
    emit = ["emit", str(runs.a), "--onnx", "-o", str(out), "--no-measure", *CORES]
    done = _run(emit, runs.root)
    assert done.returncode == 0, done.stdout + done.stderr
    model = onnx.load(str(out / "model.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    spec, ir = compile_file(runs.a / "derived.pnas")
    assert props["parnasc.spec_hash"] == spec.spec_hash
    assert props["parnasc.architecture"] == (runs.a / "derived.pnas").read_text()
    assert model.opset_import[0].version >= 17
    assert not {n.op_type for n in model.graph.node} & {"BatchNormalization", "Cast"}

    images = subset(load_cifar10(ARCHIVE), None, 20, seed=1).test_x[:8]
    x = normalize(torch.from_numpy(images)).contiguous()
    net = lower(ir)
    weights = runs.a / ("model.pt" if (runs.a / "model.pt").exists() else "searched.pt")
    net.load_state_dict(load_checkpoint(weights)["net"])
    with torch.no_grad():
        want = net.eval()(x).numpy()
    got = ort.InferenceSession(str(out / "model.onnx")).run(None, {"input": x.numpy()})[0]
    # Not bit-identical: the ONNX graph has BatchNorm folded into the conv weights and ORT's
    # kernels sum in another order; float32 over these short sums stays far inside 1e-4.
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

    files = []
    for i, img in enumerate(images[:3]):
        f = tmp_path / f"img{i}.png"
        Image.fromarray(img.transpose(1, 2, 0)).save(f)
        files.append(str(f))
    ran = _run(["run", str(out), *files], runs.root)
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert len(lines) == 3
    for line, logits in zip(lines, got[:3], strict=True):
        from parnasc.data.cifar import CIFAR10_CLASSES

        assert f": {CIFAR10_CLASSES[int(logits.argmax())]} (" in line

    rows_file = tmp_path / "bench.json"
    b = _run(["bench", str(out), "--reps", "100", "--json", str(rows_file), "--bound"], runs.root)
    assert b.returncode == 0, b.stdout + b.stderr
    assert "path-parallel ceiling on 2 cores" in b.stdout
    rows = json.loads(rows_file.read_text())
    *rows, ceiling = rows  # --bound: the path-parallel ceiling last
    assert ceiling["engine"] == "ceiling" and ceiling["ceiling_vs_sequential"] > 0
    assert ceiling["median_ms"] > 0
    assert [r["engine"] for r in rows] == [
        "ort-sequential",
        "ort-intra",
        *(["ort-intra-pinned"] if hasattr(os, "sched_setaffinity") else []),
        "ort-parallel-partition",
        "ort-parallel-partition-spin",
        "torch",
        "parnasc",
    ]
    for r in rows:
        assert {"engine", "threads", "median_ms", "p90_ms", "p99_ms"} <= set(r)
        assert r["matches"], r
        assert 0 < r["median_ms"] <= r["p90_ms"] <= r["p99_ms"]
