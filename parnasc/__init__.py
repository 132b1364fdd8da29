"""parnasc: a spec-to-model compiler for resource-aware neural architecture search on
multicore CPUs.

The pipeline as a Python API (dataclass results, no printing; `import parnasc` itself loads
nothing heavy, each name loads its module when first used):

    compile(spec, source=None) -> Compiled          .pnas file or text -> Spec + IR
    search(spec, run_dir=..., data=...) -> SearchResult
                                                    the search on CIFAR-10; writes run_dir
    derive(supernet, probabilities) -> Derived      the concrete architecture, as .pnas text
    retrain(concrete, data=...) -> TrainResult      retraining from the searched weights
    emit(run_or_concrete, out_dir) -> EmitResult    ONNX model + per-core schedule
    Runtime(model_dir)                              runs an emitted model: .run(x) -> logits
    classify(model_dir, images) -> [Prediction]     image files -> classes, through Runtime
    bench(model_dir) -> BenchResult                 batch-1 latency on every engine
    diff(old, new) -> SpecDiff                      semantic diff of two specs, cost impact
    check_provenance(derived, supernet) -> Provenance   a derived spec is of that supernet

Long steps take `progress` (phase, epoch, batch, values) and `log` (one-line messages)
callbacks. Errors a user can fix are `parnasc.errors.UserError`, one line each. The
`parnasc` command is a thin layer over this API; see `examples/api.py`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from parnasc.version import __version__

_LAZY = {
    "BenchResult": "parnasc.api",
    "Compiled": "parnasc.api",
    "Derived": "parnasc.api",
    "EmitResult": "parnasc.api",
    "Prediction": "parnasc.api",
    "Runtime": "parnasc.deploy.runtime",
    "SearchResult": "parnasc.nas.runs",
    "Settings": "parnasc.nas.recipes",
    "TrainResult": "parnasc.nas.runs",
    "bench": "parnasc.api",
    "check_provenance": "parnasc.api",
    "classify": "parnasc.api",
    "compile": "parnasc.api",
    "derive": "parnasc.api",
    "diff": "parnasc.api",
    "emit": "parnasc.api",
    "retrain": "parnasc.api",
    "search": "parnasc.api",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # the names as type checkers and editors see them
    from parnasc.api import BenchResult as BenchResult
    from parnasc.api import Compiled as Compiled
    from parnasc.api import Derived as Derived
    from parnasc.api import EmitResult as EmitResult
    from parnasc.api import Prediction as Prediction
    from parnasc.api import bench as bench
    from parnasc.api import check_provenance as check_provenance
    from parnasc.api import classify as classify
    from parnasc.api import compile as compile
    from parnasc.api import derive as derive
    from parnasc.api import diff as diff
    from parnasc.api import emit as emit
    from parnasc.api import retrain as retrain
    from parnasc.api import search as search
    from parnasc.deploy.runtime import Runtime as Runtime
    from parnasc.nas.recipes import Settings as Settings
    from parnasc.nas.runs import SearchResult as SearchResult
    from parnasc.nas.runs import TrainResult as TrainResult


def __getattr__(name: str) -> Any:
    """Load an API name's module on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'parnasc' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
