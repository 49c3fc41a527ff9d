"""Reading checkpoints safely: tensors only, never pickled code, refused by name when they do not fit."""

from __future__ import annotations

import hashlib
import re
import zipfile
from pathlib import Path
from typing import Any

from clip_export.core.errors import UnsafeCheckpointError, WeightsError


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())


def read_state_dict(path: Path) -> tuple[dict[str, Any], bool]:
    """Load tensors without running pickled code; returns (state_dict, is_openai_jit)."""
    import torch

    try:
        size = path.stat().st_size
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise WeightsError(f"{path} cannot be read: {exc.strerror or exc}") from exc
    if size == 0:
        raise WeightsError(f"{path} is empty (0 bytes); expected a checkpoint (.pt, .bin or .safetensors)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path))), False
        except Exception as exc:
            raise WeightsError(f"{path} is not a readable safetensors file: {_reason(exc)}") from exc
    if _is_torchscript_archive(path):
        # TorchScript archives are read by TorchScript's own loader, which builds no Python objects.
        try:
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict()), True
        except Exception as exc:
            raise WeightsError(
                f"{path} looks like a TorchScript archive but could not be read: {_reason(exc)}"
            ) from exc
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        # A class or function to import and run: code, not tensors. torch words it "Unsupported global:
        # builtins.print" or, for a blocked module, "unsupported GLOBAL posix.system whose module … is blocked".
        if "unsupported global" in str(exc).lower():
            raise UnsafeCheckpointError(
                f"refusing to load {path}: it needs arbitrary pickle code execution to unpickle; "
                "save it as a plain state dict (torch.save(model.state_dict())) or as .safetensors"
            ) from exc
        raise WeightsError(f"{path} is not a readable checkpoint: {_reason(exc)}") from exc
    if isinstance(data, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in data and isinstance(data[key], dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not data:
        raise WeightsError(f"{path} does not hold a state dict")
    state = {k.removeprefix("module."): v for k, v in data.items()}
    return state, False


def _reason(exc: BaseException) -> str:
    """The exception's own words: for torch's weights-only unpickler the line that says what it
    met (not its advice to disable the check), else the first line, with the type when the words
    alone say nothing (an EOFError is blank, a KeyError only the key)."""
    text = str(exc)
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if detail:
        return f"not a torch checkpoint ({detail.group(1).strip()})"
    lines = text.strip().splitlines()
    if not lines or isinstance(exc, (KeyError, EOFError)):
        return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return lines[0]


def refuse_non_finite(state: dict[str, Any], where: Path) -> None:
    """NaN or Inf weights would only show up as a failed parity check after the whole export."""
    import torch

    bad = [
        k
        for k, v in state.items()
        if isinstance(v, torch.Tensor) and torch.is_floating_point(v) and not bool(torch.isfinite(v).all())
    ]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise WeightsError(f"the checkpoint {where} holds NaN or Inf values in {len(bad)} tensor(s): {shown}")


def apply_state_dict(model: Any, state: dict[str, Any], where: str, arch: str) -> None:
    import torch

    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            k = mismatched[0]
            parts.append(
                f"{len(mismatched)} shape mismatches (e.g. {k}: checkpoint {tuple(state[k].shape)}, model "
                f"{tuple(own[k].shape)})"
            )
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise WeightsError(f"the checkpoint {where} does not match the architecture {arch}: " + "; ".join(parts))
    with torch.no_grad():
        model.load_state_dict({k: v.to(own[k].dtype) if torch.is_floating_point(v) else v for k, v in state.items()})
