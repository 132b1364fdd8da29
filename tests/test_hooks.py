"""The pre-commit hooks of .pre-commit-hooks.yaml, run by the pre-commit package against a
temporary spec repository, offline: once as a `repo: local` config made of the manifest's own
hook entries, once with the manifest itself from a temporary hooks repository (a local path
that pre-commit clones with git), and once through `pre-commit install` and `git commit`.
The hooks are `language: system`, so pre-commit builds no environment and downloads nothing;
PRE_COMMIT_HOME is a temporary folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")  # pre-commit's own dependency
pytest.importorskip("pre_commit")

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / ".pre-commit-hooks.yaml"
BIN = Path(sys.executable).parent  # parnasc and pre-commit of this venv
GOOD = (ROOT / "tests" / "diff" / "base.pnas").read_text()


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PARNASC_DEBUG"}
    env.update(
        {
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "PRE_COMMIT_HOME": str(home),
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CONFIG_NOSYSTEM": "1",
            "PRE_COMMIT_COLOR": "never",
        }
    )
    env.pop("PRE_COMMIT", None)
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _git(repo: Path, env: dict[str, str], *args: str) -> str:
    done = _run(["git", *args], repo, env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _repo(path: Path, env: dict[str, str]) -> Path:
    path.mkdir(parents=True)
    _git(path, env, "init", "-q")
    _git(path, env, "config", "user.name", "Test")
    _git(path, env, "config", "user.email", "test@example.com")
    _git(path, env, "config", "commit.gpgsign", "false")
    return path


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return _env(tmp_path / "pre-commit-home")


def _specs(repo: Path, env: dict[str, str]) -> None:
    """A canonical valid spec, one that is valid but not canonical, one that is invalid."""
    (repo / "specs").mkdir()
    (repo / "specs" / "good.pnas").write_text(GOOD)
    assert _run([str(BIN / "parnasc"), "fmt", "specs/good.pnas"], repo, env).returncode == 0
    (repo / "specs" / "messy.pnas").write_text(GOOD.replace("  out C\n", "    out   C\n"))
    (repo / "specs" / "bad.pnas").write_text(
        (repo / "specs" / "good.pnas").read_text().replace("sepconv(k=3)", "sepconf(k=3)")
    )
    (repo / "README").write_text("not a spec\n")
    _git(repo, env, "add", ".")


def _check(res: subprocess.CompletedProcess[str]) -> None:
    """Both hooks failed, each for its own file, and named the problem."""
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "parnasc fmt --check" in out and "parnasc check" in out
    assert "specs/messy.pnas: would reformat" in out
    assert "specs/bad.pnas:" in out and "error: unknown operation 'sepconf'" in out
    assert "hint: did you mean 'sepconv'?" in out
    assert "good.pnas: would reformat" not in out and "README" not in out


def test_manifest_hooks() -> None:
    hooks = {h["id"]: h for h in yaml.safe_load(MANIFEST.read_text())}
    assert set(hooks) == {"parnasc-fmt", "parnasc-check"}
    assert hooks["parnasc-fmt"]["entry"] == "parnasc fmt --check"
    assert hooks["parnasc-check"]["entry"] == "parnasc check"
    for h in hooks.values():
        assert h["language"] == "system" and h["files"] == r"\.pnas$"


def test_local_config(tmp_path: Path, env: dict[str, str]) -> None:
    repo = _repo(tmp_path / "specs-repo", env)
    _specs(repo, env)
    hooks = yaml.safe_load(MANIFEST.read_text())
    config = {"repos": [{"repo": "local", "hooks": hooks}]}
    (repo / ".pre-commit-config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    _git(repo, env, "add", ".pre-commit-config.yaml")
    _check(_run([str(BIN / "pre-commit"), "run", "--all-files"], repo, env))
    # fixed: both pass
    (repo / "specs" / "bad.pnas").unlink()
    assert _run([str(BIN / "parnasc"), "fmt", "specs/messy.pnas"], repo, env).returncode == 0
    _git(repo, env, "add", "-A")
    res = _run([str(BIN / "pre-commit"), "run", "--all-files"], repo, env)
    assert res.returncode == 0, res.stdout + res.stderr


def test_manifest_from_a_hooks_repository(tmp_path: Path, env: dict[str, str]) -> None:
    """What a spec repository's config names: the hooks repository and a rev (here a local
    path, which pre-commit clones with git, offline)."""
    hooks_repo = _repo(tmp_path / "hooks-repo", env)
    shutil.copy(MANIFEST, hooks_repo / ".pre-commit-hooks.yaml")
    _git(hooks_repo, env, "add", ".pre-commit-hooks.yaml")
    _git(hooks_repo, env, "commit", "-q", "-m", "hooks")
    rev = _git(hooks_repo, env, "rev-parse", "HEAD").strip()
    repo = _repo(tmp_path / "specs-repo", env)
    _specs(repo, env)
    config = {
        "repos": [
            {
                "repo": str(hooks_repo),
                "rev": rev,
                "hooks": [{"id": "parnasc-fmt"}, {"id": "parnasc-check"}],
            }
        ]
    }
    (repo / ".pre-commit-config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    _git(repo, env, "add", ".pre-commit-config.yaml")
    _check(_run([str(BIN / "pre-commit"), "run", "--all-files"], repo, env))


def test_git_commit_runs_the_hooks(tmp_path: Path, env: dict[str, str]) -> None:
    repo = _repo(tmp_path / "specs-repo", env)
    hooks = yaml.safe_load(MANIFEST.read_text())
    config = {"repos": [{"repo": "local", "hooks": hooks}]}
    (repo / ".pre-commit-config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    res = _run([str(BIN / "pre-commit"), "install"], repo, env)
    assert res.returncode == 0, res.stderr
    _specs(repo, env)
    res = _run(["git", "commit", "-q", "-m", "specs"], repo, env)
    assert res.returncode != 0
    assert "error: unknown operation 'sepconf'" in res.stdout + res.stderr
    (repo / "specs" / "bad.pnas").unlink()
    (repo / "specs" / "messy.pnas").unlink()
    _git(repo, env, "add", "-A")
    res = _run(["git", "commit", "-q", "-m", "specs"], repo, env)
    assert res.returncode == 0, res.stdout + res.stderr
    files = _git(repo, env, "ls-files").split()
    assert files == [".pre-commit-config.yaml", "README", "specs/good.pnas"]
