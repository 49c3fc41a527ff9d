"""onnxruntime sessions: provider names, honest provider checks, and the fp16 CPU workaround."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clip_export.core.errors import ProviderUnavailableError, import_optional
from clip_export.core.spec import CPU_PROVIDER, PROVIDERS, ExecutionProvider, find_provider

# onnxruntime's NchwcTransformer crashes (SIGSEGV) while building CPU sessions for fp16 ViT
# graphs at the default ORT_ENABLE_ALL level; every fp16 session disables it (docs/convert.md).
FP16_DISABLED_OPTIMIZERS = ("NchwcTransformer",)


def ort() -> Any:
    return import_optional("onnxruntime", package="onnxruntime", extra="cpu", purpose="running ONNX artifacts")


def provider_spec(name: str) -> ExecutionProvider:
    """The registry's entry for a short name, alias or onnxruntime name; ProviderUnavailableError otherwise."""
    found = find_provider(name)
    if found is None:
        raise ProviderUnavailableError(f"unknown provider '{name}'; choose from {', '.join(PROVIDERS)}")
    return found


def provider_name(name: str) -> str:
    """onnxruntime's name for a provider, whichever spelling the caller was given."""
    return provider_spec(name).ort_name


def available_providers() -> list[str]:
    return list(ort().get_available_providers())


def check_available(short: str) -> str:
    """Refuse before building a session: onnxruntime would silently run the graph on CPU instead."""
    spec = provider_spec(short)
    available = available_providers()
    if spec.ort_name not in available:
        raise ProviderUnavailableError(
            f"the requested provider was {spec.ort_name}; available: {', '.join(available)} ({spec.install_hint})"
        )
    return spec.ort_name


@dataclass(frozen=True)
class SessionOptions:
    provider: str = "cpu"
    intra_op_threads: int = 0
    allow_spinning: bool = True
    # Park the spinning workers as soon as run() returns: otherwise they keep a core busy for a
    # while and starve whatever the caller does next (preprocessing threads, another session).
    stop_spinning_after_run: bool = False
    precision: str = "fp32"
    graph_optimization: str = "all"
    provider_options: tuple[tuple[str, str], ...] = ()
    # Pre-packing keeps a second, re-laid-out copy of every weight matrix: faster, but a one-off
    # check (the export gate) does not need it and it doubles the session's memory.
    prepacking: bool = True
    # Write onnxruntime's node profile (a JSON trace named from this prefix; session.end_profiling()
    # returns its path): for studies of where the time goes (benchmarks/int8_profile.py).
    profile_prefix: str | None = None


def create_session(path: Path | bytes, options: SessionOptions = SessionOptions()) -> Any:
    """An InferenceSession on exactly the requested provider, or ProviderUnavailableError."""
    rt = ort()
    wanted = check_available(options.provider)
    so = rt.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = {
        "all": rt.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": rt.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": rt.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "none": rt.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[options.graph_optimization]
    if options.intra_op_threads:
        so.intra_op_num_threads = options.intra_op_threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.allow_spinning else "0")
    if options.stop_spinning_after_run:
        so.add_session_config_entry("session.force_spinning_stop", "1")
    if not options.prepacking:
        so.add_session_config_entry("session.disable_prepacking", "1")
    if options.profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = options.profile_prefix
    providers: list[Any] = [(wanted, dict(options.provider_options))] if options.provider_options else [wanted]
    if wanted != CPU_PROVIDER:
        providers.append(CPU_PROVIDER)  # for nodes the accelerator lacks; checked below
    kwargs: dict[str, Any] = {}
    if options.precision == "fp16":
        kwargs["disabled_optimizers"] = list(FP16_DISABLED_OPTIMIZERS)
    try:
        graph = path if isinstance(path, bytes) else str(path)
        session = rt.InferenceSession(graph, sess_options=so, providers=providers, **kwargs)
    except Exception as exc:
        raise ProviderUnavailableError(
            f"could not create a {wanted} session for {'an in-memory graph' if isinstance(path, bytes) else Path(path).name}: "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    active = session.get_providers()
    if not active or active[0] != wanted:
        raise ProviderUnavailableError(
            f"the requested provider was {wanted}, but onnxruntime fell back to {active[0] if active else 'nothing'}"
        )
    return session
