"""Concrete IR -> a concrete `.pnas` spec: one op per block, sync sites fixed, canonical form,
with each choice's final probability in a comment. Meant to be committed and diffed."""

from __future__ import annotations

from typing import Any

from parnasc.ir.decisions import decision, summary
from parnasc.ir.graph import IR
from parnasc.ir.provenance import ARCHITECTURE_PREFIX, SOURCE_PREFIX, architecture_hash
from parnasc.lang.fmt import fmt_number, format_document
from parnasc.lang.parse import parse
from parnasc.lang.spec import OptimSpec, Spec
from parnasc.lang.versions import version_line
from parnasc.version import __version__


def _p(probs: dict[str, list[float]], key: str, labels: list[str], chosen: str) -> str:
    if key not in probs:
        return ""
    ps = probs[key]
    others = ", ".join(f"{lab} {p:.3f}" for lab, p in zip(labels, ps, strict=True) if lab != chosen)
    margin = f" margin {decision(ps).margin:.3f}" if len(ps) > 1 else ""
    return (
        f"  # P={ps[labels.index(chosen)]:.3f}"
        + (f" (others: {others})" if others else "")
        + margin
    )


def _opt(o: Any) -> str:
    args = ", ".join(f"{k}={fmt_number(v)}" for k, v in o.model_dump().items() if k != "name")
    return f"{o.name}({args})"


def _size(n: int) -> str:
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n % div == 0:
            return f"{n // div}{unit}"
    return f"{n}B"


def _tau(settings: dict[str, Any]) -> str:
    """The temperature schedule in the header, where the search annealed one."""
    tau, end = settings.get("tau", 1.0), settings.get("tau_end", 1.0)
    return "" if tau == end == 1.0 else f" tau={tau}->{end}"


def concrete_spec_text(
    ir: IR, source: Spec, probs: dict[str, list[float]], settings: dict[str, Any]
) -> str:
    """The canonical text of the concrete architecture in `ir` (pruned from `source`)."""
    s = settings
    out = [
        version_line(),  # the language version the text is written in
        f"# Derived by parnasc {__version__} from {source.file}",
        f"{SOURCE_PREFIX}{source.spec_hash}",
        f"# search: alpha={s['alpha']} beta={s['beta']} cost={s['cost']} epochs={s['epochs']}"
        f" warmup={s['warmup']} mode={s['mode']} seed={s['seed']} cores={s['cores']}" + _tau(s),
        *([f"# decisions: {summary(probs)}"] if probs else []),
        f"model {source.name}",
        "input " + "x".join(map(str, source.input)),
        f"classes {source.classes}",
        f"paths {source.paths}",
    ]
    t = source.target
    if t.cores is not None or t.memory is not None:
        out.append("target {")
        if t.cores is not None:
            out.append(f"  cores {t.cores}")
        if t.memory is not None:
            out.append(f"  memory {_size(t.memory)}")
        out.append("}")
    out.append("stem {")
    out += [f"  {n.candidates[0].label}" for n in ir.nodes() if n.id.startswith("stem.")]
    out.append("}")
    for lv_spec in source.levels:
        lv = lv_spec.label
        out.append(f"level {lv} {{")
        out.append(f"  out {lv_spec.out}")
        if lv_spec.stride != 1:
            out.append(f"  stride {lv_spec.stride}")
        for p in range(1, ir.paths + 1):
            chosen = ir.block(lv, p).candidates[0].label
            labels = [o.label for o in lv_spec.candidates[p - 1]]
            out.append(f"  path {p} ops {chosen}{_p(probs, f'{lv}:p{p}', labels, chosen)}")
        out.append("}")
        sync = ir.sync(lv)
        key = f"{lv}:sync"
        if sync is not None:
            note = (
                f"  # P_sync={probs[key][0]:.3f} margin {decision(probs[key]).margin:.3f}"
                if key in probs
                else ""
            )
            out.append(f"sync always {sync.combiner}{note}")
        elif key in probs:
            out.append(
                f"# no sync after {lv}: P_sync={probs[key][0]:.3f} <= P_direct, margin "
                f"{decision(probs[key]).margin:.3f}"
            )
    out.append("head {")
    out.append(f"  merge {ir.node('merge').combiner}")
    out += [f"  {n.candidates[0].label}" for n in ir.nodes() if n.id.startswith("head.")]
    out.append("}")
    se = source.search
    # The search scaled the CE gradient by alpha (equation 12); retraining minimises CE alone,
    # so its learning rate is alpha * lr to keep the same effective step.
    w = s["weights"]
    retrain_opt = OptimSpec.model_validate({**w, "lr": float(f"{w['lr'] * s['alpha']:.6g}")})
    out += [
        "# retraining: weights lr = alpha * search lr (same effective step on the CE term)",
        "search {",
        f"  batch {se.batch}",
        f"  seed {se.seed}",
        f"  weights {_opt(retrain_opt)}",
        f"  retrain_epochs {se.retrain_epochs}",
        "}",
    ]
    # The hash of the statements (comments do not count) goes in the header, after the source's.
    arch = architecture_hash(parse("\n".join(out) + "\n"))
    out.insert(3, f"{ARCHITECTURE_PREFIX}{arch}")
    return format_document(parse("\n".join(out) + "\n"))
