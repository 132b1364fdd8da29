"""ONNX Runtime sessions with explicit settings: the one place parnasc builds ``SessionOptions``.

Every session parnasc opens (the runtime's segments, the autotuner's candidates, the
benchmark's engines and profile, the partition file's optimized graph, the lanes experiment)
states its intra-op and inter-op thread counts, its execution mode and graph optimization
level, and whether idle intra-op threads spin, instead of relying on ORT's defaults.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import onnxruntime as ort

__all__ = ["open_session", "session_options"]

PROVIDERS = ["CPUExecutionProvider"]


def session_options(
    intra: int,
    inter: int = 1,
    *,
    parallel: bool = False,
    optimize: bool = True,
    spinning: bool = True,
    helper_cpus: Sequence[int] = (),
    config: Mapping[str, str] | None = None,
    optimized_path: Path | None = None,
    profile_prefix: Path | None = None,
) -> ort.SessionOptions:
    """ORT options: ``intra`` intra-op threads, ``inter`` inter-op threads, ``ORT_PARALLEL``
    with ``parallel`` (else ``ORT_SEQUENTIAL``), all graph optimizations with ``optimize``
    (else none), intra-op spinning on or off.

    ``helper_cpus``: pin the intra-op helper threads, one CPU each (sensible only when the
    calling thread is pinned elsewhere); ``config``: further session config entries;
    ``optimized_path``: where ORT saves its optimized graph; ``profile_prefix``: turn ORT's
    profiler on, writing there.
    """
    so = ort.SessionOptions()
    so.intra_op_num_threads = intra
    so.inter_op_num_threads = inter
    so.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL if parallel else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if helper_cpus:
        # ORT's affinity string uses 1-based logical processor ids, one entry per helper.
        aff = ";".join(str(c + 1) for c in helper_cpus)
        so.add_session_config_entry("session.intra_op_thread_affinities", aff)
    for key, value in (config or {}).items():
        so.add_session_config_entry(key, value)
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_prefix)
    return so


def open_session(model: Path | bytes, options: ort.SessionOptions) -> ort.InferenceSession:
    """A CPU session of a model file or serialized model."""
    src = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(src, options, providers=PROVIDERS)
