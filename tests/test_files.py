"""Atomic outputs (parnasc/files.py): modes are kept, interruptions leave the old output whole."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from parnasc.files import atomic_path, recover_dir, replace_dir, write_bytes, write_text

RunCli = Callable[..., subprocess.CompletedProcess[str]]  # the `run_cli` fixture (conftest.py)
ROOT = Path(__file__).resolve().parents[1]
PARNASC = Path(sys.executable).with_name("parnasc")


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.parametrize("mode", [0o644, 0o600, 0o755, 0o640])
def test_replaced_file_keeps_its_mode(tmp_path: Path, mode: int) -> None:
    f = tmp_path / "spec.pnas"
    f.write_text("old\n")
    f.chmod(mode)
    write_text(f, "new\n")
    assert f.read_text() == "new\n" and _mode(f) == mode


def test_new_file_gets_the_umask_mode(tmp_path: Path, umask_022: None) -> None:
    write_bytes(tmp_path / "a.bin", b"x")
    assert _mode(tmp_path / "a.bin") == 0o644  # like open(), not mkstemp's 0o600
    old = os.umask(0o077)
    try:
        write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "b.txt") == 0o600


def test_error_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    f = tmp_path / "out.json"
    f.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_path(f) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert f.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_fmt_keeps_the_spec_mode(tmp_path: Path, run_cli: RunCli) -> None:
    f = tmp_path / "tiny.pnas"
    f.write_text(
        "model t input 3x8x8 classes 2 paths 1 stem { conv(k=3,out=4) }\n"
        "level a {out 4 ops conv(k=3)} head { gap fc(out=classes) }\n"
    )
    f.chmod(0o644)
    r = run_cli("fmt", f)
    assert r.returncode == 0 and "reformatted" in r.stdout, r.stderr
    assert _mode(f) == 0o644


_WRITER = """
import sys
from pathlib import Path
from parnasc.files import write_bytes
target = Path(sys.argv[1])
i = 0
print("ready", flush=True)
while True:
    i += 1
    write_bytes(target, bytes([i % 251]) * (1 << 20))
"""


def test_kill_9_never_leaves_a_partial_file(tmp_path: Path) -> None:
    """A writer replacing a 1 MiB file in a loop is killed with SIGKILL at varied moments; the
    file always holds one whole version (1 MiB of one byte value)."""
    target = tmp_path / "big.bin"
    target.write_bytes(b"\0" * (1 << 20))
    for k in range(6):
        p = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(target)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        try:
            p.wait(timeout=0.05 * (k + 1))
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=30)
        data = target.read_bytes()
        assert len(data) == 1 << 20 and data.count(data[:1]) == len(data)
    # killed writers may leave their temporary files; never the target's name half-written
    assert all(f.name.startswith(".big.bin.") for f in tmp_path.iterdir() if f != target)


def test_replace_dir_swaps_a_whole_directory(tmp_path: Path) -> None:
    out = tmp_path / "emit"
    out.mkdir()
    (out / "old.txt").write_text("old")
    out.chmod(0o750)
    with replace_dir(out) as stage:
        (stage / "segments").mkdir()
        (stage / "model.onnx").write_text("new")
        assert not (out / "model.onnx").exists()  # nothing visible until the swap
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "segments"]
    assert _mode(out) == 0o750
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emit"]


def test_replace_dir_error_keeps_the_old_directory(tmp_path: Path) -> None:
    out = tmp_path / "emit"
    out.mkdir()
    (out / "schedule.json").write_text("old")
    with pytest.raises(RuntimeError), replace_dir(out) as stage:
        (stage / "schedule.json").write_text("half")
        raise RuntimeError("export failed")
    assert (out / "schedule.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emit"]


def test_recover_dir_after_a_kill_between_the_renames(tmp_path: Path) -> None:
    out = tmp_path / "emit"
    aside = tmp_path / ".emit.old-abc"  # the old directory, set aside before the kill
    aside.mkdir()
    (aside / "schedule.json").write_text("old")
    stage = tmp_path / ".emit.new-def"  # a staging directory the kill left behind
    stage.mkdir()
    recover_dir(out)
    assert (out / "schedule.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emit"]


def _emitted_whole(d: Path) -> bool:
    """An emitted directory is whole: its schedule parses and names files that all exist."""
    sched = json.loads((d / "schedule.json").read_text())
    files = {"model.onnx", "model.pnas", "weights.pt", *(s["file"] for s in sched["segments"])}
    return all((d / f).is_file() for f in files)


def test_emit_replaces_its_directory_whole(tmp_path: Path, run_cli: RunCli) -> None:
    out = tmp_path / "emit"
    spec = ROOT / "examples" / "cifar_arch.pnas"
    args = ("emit", spec, "-o", out, "--cores", "2")
    r = run_cli(*args, "--no-measure", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert _emitted_whole(out)
    out.chmod(0o750)
    # kill -9 a measuring emit over the first one at varied moments: the directory is always
    # the old whole one or the new whole one, never a mix
    for delay in (0.5, 2.0, 4.0):
        p = subprocess.Popen(
            [str(PARNASC), *map(str, args)],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=30)
        if not out.exists():  # killed between the two renames: the next emit puts it back
            recover_dir(out)
        assert _emitted_whole(out) and _mode(out) == 0o750
    r = run_cli(*args, "--no-measure", cwd=tmp_path)
    assert r.returncode == 0 and _emitted_whole(out), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".parnasc", "emit"]


def test_emit_refuses_a_directory_it_did_not_make(tmp_path: Path, run_cli: RunCli) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    r = run_cli(
        "emit", ROOT / "examples" / "cifar_arch.pnas", "-o", tmp_path, "--no-measure", cwd=tmp_path
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"parnasc: error: --out {tmp_path}: the directory holds other")
    assert (tmp_path / "notes.txt").read_text() == "keep me"
