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
        raise OptionError(f"--out: unsupported picture format '{target.suffix}' (use .svg, .png or .pdf)")
    draw(ir, target)
    print(f"wrote {target}")


# --- helpers shared by commands ------------------------------------------------------------


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _remember(spec: Path, build_dir: Path) -> None:
    STATE.parent.mkdir(exist_ok=True)
    _atomic_write(
        STATE, json.dumps({"spec": str(spec.resolve()), "build": str(build_dir.resolve())}) + "\n"
    )


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
