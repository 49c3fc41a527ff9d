"""One seam that runs a manifest's artifact on a provider, whatever its format (ONNX or TensorRT plan).

verify, bench, export's parity check, the studies and the runtime open graphs here, so the rules live in one place: the path stays
inside its directory, a session runs on exactly the requested provider or not at all, fp16
sessions avoid onnxruntime's crashing optimizer, and an engine runs only with the TensorRT
version and GPU it was built for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clip_export.core.artifact import ArtifactEntry
from clip_export.core.errors import ClipExportError
from clip_export.core.manifest import resolve_inside
from clip_export.core.sessions import SessionOptions, create_session
from clip_export.core.spec import PRECISION_SPECS, TENSORRT_FORMAT, TENSORRT_RUNTIME


class NotRunnableHereError(ClipExportError):
    """The artifact cannot run on this machine (an engine built for another GPU or TensorRT)."""


@dataclass(frozen=True)
class ArtifactRunner:
    path: Path
    provider_ran: str
    run: Callable[[np.ndarray], np.ndarray]  # one batch in, the embeddings out
    session: Any | None = None  # the onnxruntime session, for structure checks and IO binding


def session_precision(entry: ArtifactEntry) -> str:
    """fp16 graphs need the CPU session workaround (sessions.FP16_DISABLED_OPTIMIZERS); the rule is the
    precision's row in spec.PRECISION_SPECS (a TensorRT engine's precision is one of those too)."""
    return PRECISION_SPECS[entry.precision].session_rule


def open_runner(
    model_dir: Path,
    entry: ArtifactEntry,
    provider: str = "cpu",
    *,
    threads: int = 0,
    provider_options: tuple[tuple[str, str], ...] = (),
    stop_spinning_after_run: bool = False,
) -> ArtifactRunner:
    """A runner for one manifest entry; ProviderUnavailableError or NotRunnableHereError otherwise."""
    path = resolve_inside(Path(model_dir), entry.path, "the artifact")
    if entry.format == TENSORRT_FORMAT:
        from clip_export.core import trt_runtime

        runnable, why = trt_runtime.runnable_here(entry)
        if not runnable:
            raise NotRunnableHereError(why)
        return ArtifactRunner(
            path, TENSORRT_RUNTIME, lambda inputs: trt_runtime.run_engine(path, inputs, batch=len(inputs))
        )
    options = SessionOptions(
        provider=provider,
        precision=session_precision(entry),
        intra_op_threads=threads,
        provider_options=provider_options,
        stop_spinning_after_run=stop_spinning_after_run,
    )
    return open_graph(path, options)


def open_graph(graph: Path | bytes, options: SessionOptions | None = None) -> ArtifactRunner:
    """A runner for an ONNX graph that is not a manifest entry: export's parity check on the tower it
    has just written, bench's rows and fused baseline, the ceiling models. The same session rules as
    open_runner (exact provider, the fp16 workaround through options.precision)."""
    session = create_session(graph, options or SessionOptions())
    input_name = session.get_inputs()[0].name
    path = graph if isinstance(graph, Path) else Path("<in-memory graph>")
    return ArtifactRunner(
        path, session.get_providers()[0], lambda inputs: session.run(None, {input_name: inputs})[0], session
    )
