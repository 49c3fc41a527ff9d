"""One error hierarchy: the CLI turns any of these into a single `Error: …` line and exit 1."""

from __future__ import annotations

import importlib
from types import ModuleType


class ClipExportError(Exception):
    """Base class: an expected failure whose message is meant for the user, not a traceback."""


class UnknownModelError(ClipExportError):
    pass


class WeightsError(ClipExportError):
    """Weights are missing, unreachable, or do not match the architecture."""


class UnsafeCheckpointError(WeightsError):
    pass


class OutputError(ClipExportError):
    """The output directory exists, is not writable, or is not an artifact directory."""


def write_failure(exc: OSError) -> str | None:
    """A failed write in words when it is the machine's state, not a bug: a full disk, a quota, a
    read-only file system, a permission; None otherwise."""
    import errno

    return {
        errno.ENOSPC: "the disk is full",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EDQUOT: "the disk quota is exceeded",
    }.get(exc.errno or 0)


class UnsupportedOpsetError(ClipExportError):
    pass


class ExportParityError(ClipExportError):
    pass


class ManifestError(ClipExportError):
    pass


class IntegrityError(ClipExportError):
    """A file does not match the sha256 or size that the manifest recorded."""


class ProviderUnavailableError(ClipExportError):
    pass


class ConversionError(ClipExportError):
    pass


class GateFailedError(ConversionError):
    """A converted artifact failed its gate and was not kept (INT8 then tries its fallbacks)."""

    def __init__(self, message: str, failures: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.failures = failures


class TensorRTError(ClipExportError):
    pass


class ReleaseError(ClipExportError):
    pass


class ServeCheckError(ClipExportError):
    """An artifact misses its precision's thresholds in the environment that is about to serve it."""


class MissingExtraError(ClipExportError):
    """An optional heavy dependency is absent; the message names the pip extra that installs it."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the '{package}' package, which is not installed; "
            f"install it with: pip install 'clip-export[{extra}]'"
        )
        self.package = package
        self.extra = extra


def import_optional(module: str, *, package: str, extra: str, purpose: str) -> ModuleType:
    """Import a heavy optional dependency where it is used; its absence names the pip extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(package, extra, purpose) from exc
