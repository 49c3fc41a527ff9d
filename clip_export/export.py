"""Export stage: open_clip towers → ONNX with a dynamic batch, checked against torch right away."""
from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import __version__
from . import attention
from .errors import ClipExportError, ExportParityError, OutputError, UnsupportedOpsetError
from .evalset import EvalSet, load_evalset
from .manifest import SCHEMA_VERSION, exclusive, file_record, now_iso, write_manifest
from .metrics import l2_normalize
from .models import LoadedModel, ModelSpec, load_model, preflight, resolve
from .preprocess import preprocess_batch
from .progress import Progress, silent
from .sessions import SessionOptions, create_session
from .tokenizer import TOKENIZER_NAME
from .spec import (
    BATCH_AXIS,
    DEFAULT_OPSET,
    EXPORT_EXAMPLE_BATCH,
    EXPORT_PARITY_TOLERANCE,
    EXTERNAL_DATA_THRESHOLD_BYTES,
    REFERENCE_NAME,
    SUPPORTED_OPSETS,
    TOWERS,
)


@dataclass(frozen=True)
class TowerResult:
    tower: str
    path: Path
    bytes: int
    external_data: tuple[str, ...]
    parity_mean_abs: float
    parity_max_abs: float
    seconds: float


@dataclass(frozen=True)
class ExportResult:
    model: str
    model_dir: Path
    manifest_path: Path
    towers: tuple[TowerResult, ...]
    seconds: float


def versions() -> dict[str, str]:
    found = {"clip_export": __version__}
    for module in ("torch", "open_clip", "onnx", "onnxruntime", "onnxscript"):
        try:
            found[module] = __import__(module).__version__
        except ImportError:
            continue
    return found


def tower_module(loaded: LoadedModel, tower: str, normalize: bool) -> Any:
    """A torch module whose forward is exactly encode_image or encode_text: what gets traced."""
    import torch

    class Tower(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: Any) -> Any:
            encode = self.model.encode_image if tower == "visual" else self.model.encode_text
            return encode(x, normalize=normalize)

    return Tower(loaded.model).eval()


def example_input(loaded: LoadedModel, tower: str, batch: int, seed: int = 0) -> np.ndarray:
    """Deterministic inputs; text rows get the start id (where the family has one), random ordinary
    tokens, the end id at varied positions, then the family's padding id."""
    rng = np.random.default_rng(seed)
    if tower == "visual":
        h, w = loaded.preprocess.image_size
        return rng.standard_normal((batch, 3, h, w)).astype(np.float32)
    settings = loaded.tokenizer
    ctx, sot, eot = settings.context_length, settings.sot_token_id, settings.eot_token_id
    specials = {i for i in (sot, eot, settings.pad_token_id) if i is not None}
    # CLIP's special ids close its vocabulary; elsewhere they are the first ids, ordinary ones follow.
    clip_like = sot is not None and eot is not None and min(sot, eot) > (settings.vocab_size or 0) // 2
    low, high = (1, min(sot, eot) - 1) if clip_like else (max(specials) + 1, settings.vocab_size or max(specials) + 2)
    ids = np.full((batch, ctx), settings.pad_token_id, dtype=np.int64)
    for row in range(batch):
        length = int(rng.integers(3, ctx + 1))
        ordinary = rng.integers(low, max(high, low + 1), size=length - (sot is not None) - (eot is not None)).tolist()
        ids[row, :length] = [*([sot] if sot is not None else []), *ordinary, *([eot] if eot is not None else [])]
    return ids


def torch_embed(loaded: LoadedModel, tower: str, inputs: np.ndarray, normalize: bool, batch: int = 8) -> np.ndarray:
    import torch

    encode = loaded.model.encode_image if tower == "visual" else loaded.model.encode_text
    outputs = []
    with torch.no_grad():
        for start in range(0, len(inputs), batch):
            outputs.append(encode(torch.from_numpy(inputs[start : start + batch]), normalize=normalize).float().numpy())
    return np.concatenate(outputs)


def tower_parameter_bytes(loaded: LoadedModel, tower: str) -> int:
    total = sum(p.numel() * 4 for p in loaded.model.parameters())
    visual = sum(p.numel() * 4 for p in loaded.model.visual.parameters()) if hasattr(loaded.model, "visual") else total // 2
    return visual if tower == "visual" else total - visual


def _metadata(loaded: LoadedModel, tower: str, opset: int, normalize: bool) -> dict[str, str]:
    spec = TOWERS[tower]
    return {
        "clip_export.version": __version__,
        "clip_export.model": json.dumps(loaded.manifest_section()),
        "clip_export.tower": tower,
        "clip_export.precision": "fp32",
        "clip_export.opset": str(opset),
        "clip_export.normalize": str(normalize).lower(),
        "clip_export.input": spec.input_name,
        "clip_export.output": spec.output_name,
        "clip_export.preprocess": json.dumps(loaded.preprocess.to_json()),
        "clip_export.tokenizer": json.dumps(loaded.tokenizer.to_json()),
        "clip_export.created": now_iso(),
    }


def external_data_files(onnx_path: Path) -> list[str]:
    """The external data files an ONNX model refers to, read without loading the weights."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    locations = set()
    for tensor in model.graph.initializer:
        for item in tensor.external_data:
            if item.key == "location":
                locations.add(item.value)
    return sorted(locations)


def _make_strided_initializers_lazy(model: Any) -> None:
    """Constant folding leaves transposed weights as strided numpy views, which numpy's tofile
    writes element by element (seconds per tower). A lazy tensor makes one contiguous copy of one
    weight at a time while saving, instead of all of them up front."""
    import onnx_ir as ir

    for value in model.graph.initializers.values():
        tensor = value.const_value
        raw = getattr(tensor, "raw", None)
        if isinstance(tensor, ir.Tensor) and isinstance(raw, np.ndarray) and not raw.flags.c_contiguous:
            value.const_value = ir.LazyTensor(
                lambda raw=raw: ir.Tensor(np.ascontiguousarray(raw)), dtype=tensor.dtype, shape=tensor.shape, name=tensor.name
            )


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


_GRAPH_FIELD = bytes([(7 << 3) | 2])  # ModelProto.graph
_INITIALIZER_FIELD = bytes([(5 << 3) | 2])  # GraphProto.initializer
_RAW_DATA_FIELD = bytes([(9 << 3) | 2])  # TensorProto.raw_data


def inline_external_data(onnx_path: Path, chunk: int = 1 << 24) -> None:
    """Rewrite a model whose initializers live in external files as one self-contained file.

    The protobuf is written field by field, streaming each tensor's bytes from its data file, so
    memory stays at one chunk instead of two full copies of the weights (a ModelProto and its
    serialised bytes). Repeated fields may appear in any order, so the initializers are appended
    after the rest of the graph.
    """
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(onnx_path), load_external_data=False)
    base = onnx_path.parent
    external = [t for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    if not external:
        return
    stubs = []
    for tensor in external:
        info = {e.key: e.value for e in tensor.external_data}
        stub = TensorProto()
        stub.CopyFrom(tensor)
        stub.ClearField("external_data")
        stub.ClearField("data_location")
        stub.ClearField("raw_data")
        length = int(info["length"]) if "length" in info else (base / info["location"]).stat().st_size - int(info.get("offset", 0))
        stubs.append((stub.SerializeToString(), base / info["location"], int(info.get("offset", 0)), length))
    kept = [t for t in model.graph.initializer if t.data_location != TensorProto.EXTERNAL]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    graph_head = model.graph.SerializeToString()
    model.ClearField("graph")
    model_head = model.SerializeToString()
    entries = []
    for stub, _, _, length in stubs:
        tensor_size = len(stub) + 1 + len(_varint(length)) + length
        entries.append(tensor_size)
    graph_size = len(graph_head) + sum(1 + len(_varint(size)) + size for size in entries)
    tmp = onnx_path.with_name(f".{onnx_path.name}.inline-{os.getpid()}")
    data_files = {source for _, source, _, _ in stubs}
    try:
        with open(tmp, "wb") as out:
            out.write(model_head + _GRAPH_FIELD + _varint(graph_size) + graph_head)
            for (stub, source, offset, length), size in zip(stubs, entries):
                out.write(_INITIALIZER_FIELD + _varint(size) + stub + _RAW_DATA_FIELD + _varint(length))
                with open(source, "rb") as data:
                    data.seek(offset)
                    remaining = length
                    while remaining:
                        block = data.read(min(chunk, remaining))
                        if not block:
                            raise ClipExportError(f"external data file {source.name} is shorter than its tensors say")
                        out.write(block)
                        remaining -= len(block)
        os.replace(tmp, onnx_path)
    finally:
        tmp.unlink(missing_ok=True)
    for source in data_files:
        source.unlink(missing_ok=True)


def _torch_export(module: Any, example: Any, tower: str, opset: int) -> Any:
    import torch

    spec = TOWERS[tower]
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            input_names=[spec.input_name],
            output_names=[spec.output_name],
            dynamic_shapes={"x": {0: torch.export.Dim(BATCH_AXIS)}},
            opset_version=opset,
            optimize=True,
            verbose=False,
        )


def export_tower(
    loaded: LoadedModel,
    tower: str,
    path: Path,
    *,
    opset: int = DEFAULT_OPSET,
    normalize: bool = False,
    external_data: bool | None = None,
    batch_first_attention: bool = True,
) -> tuple[tuple[str, ...], int]:
    """Write one tower to `path`; returns the external data files written beside it, and how many
    attention blocks were traced batch-first (clip_export.attention; False keeps torch's trace)."""
    import torch

    module = tower_module(loaded, tower, normalize)
    example = torch.from_numpy(example_input(loaded, tower, EXPORT_EXAMPLE_BATCH, seed=1))
    try:
        with attention.batch_first_attention(module) if batch_first_attention else contextlib.nullcontext(set()) as rewritten_blocks:
            program = _torch_export(module, example, tower, opset)
        rewritten = len(rewritten_blocks)
    except Exception as exc:
        raise ClipExportError(f"torch.onnx.export failed for the {tower} tower of {loaded.spec.arch}: {str(exc).splitlines()[0]}") from None
    program.model.metadata_props.update(_metadata(loaded, tower, opset, normalize))
    use_external = external_data if external_data is not None else tower_parameter_bytes(loaded, tower) > EXTERNAL_DATA_THRESHOLD_BYTES
    # Always stream the weights to a side file first: serialising a whole ModelProto in memory
    # costs two extra copies of the weights. Small towers are then stitched into one file.
    _make_strided_initializers_lazy(program.model)
    program.save(str(path), external_data=True)
    del program
    gc.collect()
    if not use_external:
        inline_external_data(path)
        return (), rewritten  # loading a >1 GB single-file model just to list nothing would double memory
    return tuple(external_data_files(path)), rewritten


def parity_check(loaded: LoadedModel, tower: str, path: Path, normalize: bool) -> tuple[float, float]:
    """Run the fresh ONNX tower next to torch on a batch of 3 (not the traced 2)."""
    inputs = example_input(loaded, tower, 3, seed=0)
    expected = torch_embed(loaded, tower, inputs, normalize)
    session = create_session(path, SessionOptions(prepacking=False))
    got = session.run(None, {TOWERS[tower].input_name: inputs})[0]
    del session
    delta = np.abs(l2_normalize(got) - l2_normalize(expected))
    return float(delta.mean()), float(delta.max())


def compute_reference(loaded: LoadedModel, evalset: EvalSet, towers: Sequence[str], normalize: bool) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    if "visual" in towers:
        visual = TOWERS["visual"]
        arrays[visual.input_name] = preprocess_batch(evalset.open_images(), loaded.preprocess)
        arrays[visual.output_name] = torch_embed(loaded, "visual", arrays[visual.input_name], normalize)
    if "text" in towers:
        ids = loaded.tokenize(list(evalset.captions))
        text = TOWERS["text"]
        arrays[text.input_name] = np.asarray(ids.numpy() if hasattr(ids, "numpy") else ids, dtype=np.int64)
        arrays[text.output_name] = torch_embed(loaded, "text", arrays[text.input_name], normalize)
    return arrays


def io_declaration(loaded: LoadedModel, tower: str, dtype_in: str | None = None) -> dict[str, Any]:
    spec = TOWERS[tower]
    return {
        "inputs": [{"name": spec.input_name, "dtype": dtype_in or spec.input_dtype, "shape": spec.input_shape(loaded.tokenizer.context_length, loaded.preprocess.image_size)}],
        "outputs": [{"name": spec.output_name, "dtype": "float32", "shape": spec.output_shape(loaded.embed_dim)}],
    }


def _check_output_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".clip-export-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"--out {out} is not writable: {exc.strerror or exc}") from None


def _remove_abandoned_staging(out: Path, slug: str) -> None:
    """A killed export leaves `.<slug>.partial-<pid>`; clear those whose process is gone."""
    for leftover in out.glob(f".{slug}.*-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(leftover, ignore_errors=True)
        except PermissionError:
            continue


def _swap_into_place(staging: Path, target: Path) -> None:
    """Replace the target directory in two renames, so a crash leaves either old or new, never a mix."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def export_onnx(
    model: ModelSpec | str,
    *,
    out: Path | str = "artifacts",
    towers: Sequence[str] = ("visual", "text"),
    opset: int = DEFAULT_OPSET,
    normalize: bool = False,
    force: bool = False,
    external_data: bool | None = None,
    evalset: EvalSet | None = None,
    progress: Progress = silent,
    loaded: LoadedModel | None = None,
    batch_first_attention: bool = True,
) -> ExportResult:
    """Export the requested towers of one model into OUT/<slug>/ with its manifest and reference."""
    started = time.perf_counter()
    spec = resolve(model) if isinstance(model, str) else model
    if opset not in SUPPORTED_OPSETS:
        raise UnsupportedOpsetError(f"opset {opset} is not supported; choose {SUPPORTED_OPSETS.start}-{SUPPORTED_OPSETS.stop - 1} (default {DEFAULT_OPSET})")
    unknown = [t for t in towers if t not in TOWERS]
    if unknown or not towers:
        raise ClipExportError(f"unknown tower(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(TOWERS)}")
    if spec.hf_dir is None and loaded is None:
        preflight(spec)  # a family rule we cannot follow is refused before OUT is touched
    out = Path(out)
    target = out / spec.slug
    results: list[TowerResult] = []
    created = not out.exists()
    _check_output_dir(out)
    try:
        with exclusive(target):  # a second export into the same place fails here, at once
            _export_locked(spec, out, target, towers, opset, normalize, force, external_data, evalset, progress, loaded, batch_first_attention, results)
    except BaseException:
        if created:  # bad input found while loading leaves no trace, not even an empty OUT
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    return ExportResult(spec.name, target, target / "manifest.json", tuple(results), time.perf_counter() - started)


def _has_content(target: Path) -> bool:
    return target.exists() and any(target.iterdir())


def _export_locked(
    spec: ModelSpec,
    out: Path,
    target: Path,
    towers: Sequence[str],
    opset: int,
    normalize: bool,
    force: bool,
    external_data: bool | None,
    evalset: EvalSet | None,
    progress: Progress,
    loaded: LoadedModel | None,
    batch_first_attention: bool,
    results: list[TowerResult],
) -> None:
    """The export proper, run while this process holds the lock of `target`."""
    existed = _has_content(target)
    if existed and not force:
        raise OutputError(f"{target} already exists; pass --force to replace it")
    evalset = evalset or load_evalset()

    progress(f"loading {spec.name} ({spec.source})")
    loaded = loaded or load_model(spec)
    _remove_abandoned_staging(out, spec.slug)
    staging = out / f".{spec.slug}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        manifest: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "model": loaded.manifest_section(),
            "preprocess": loaded.preprocess.to_json(),
            "tokenizer": loaded.tokenizer.to_json(),
            "normalize": normalize,
            "versions": versions(),
            "created": now_iso(),
            "artifacts": [],
        }
        for tower in towers:
            tower_started = time.perf_counter()
            path = staging / f"{tower}.onnx"
            progress(f"exporting the {tower} tower (torch.onnx, dynamo, opset {opset})")
            data_files, rewritten = export_tower(loaded, tower, path, opset=opset, normalize=normalize, external_data=external_data, batch_first_attention=batch_first_attention)
            progress(f"checking the {tower} tower against torch fp32 in onnxruntime")
            mean_abs, max_abs = parity_check(loaded, tower, path, normalize)
            if not mean_abs <= EXPORT_PARITY_TOLERANCE:
                raise ExportParityError(
                    f"the exported {tower} tower differs from torch fp32: mean |Δ| of normalised embeddings "
                    f"{mean_abs:.2e} > {EXPORT_PARITY_TOLERANCE:.0e}"
                )
            record = file_record(path, staging)
            manifest["artifacts"].append(
                {
                    **record,
                    "tower": tower,
                    "precision": "fp32",
                    "format": "onnx",
                    "opset": opset,
                    **io_declaration(loaded, tower),
                    "external_data": [file_record(staging / name, staging) for name in data_files],
                    "derived_from": None,
                    "export_parity": {"mean_abs_normalized": mean_abs, "max_abs_normalized": max_abs},
                    "batch_first_attention_blocks": rewritten,
                }
            )
            results.append(TowerResult(tower, target / path.name, record["bytes"], data_files, mean_abs, max_abs, time.perf_counter() - tower_started))
        progress(f"computing fp32 torch reference embeddings for {len(evalset.image_paths)} images and {len(evalset.captions)} captions")
        arrays = compute_reference(loaded, evalset, towers, normalize)
        np.savez(staging / REFERENCE_NAME, **arrays)
        manifest["reference"] = {
            **file_record(staging / REFERENCE_NAME, staging),
            "evalset": evalset.source,
            "images": evalset.image_names if "visual" in towers else [],
            "captions": list(evalset.captions) if "text" in towers else [],
            "computed_with": "torch fp32 (CPU)",
        }
        if "text" in towers and loaded.extra.get("text_tokenizer") is not None:  # checked id for id in load_model
            loaded.extra["text_tokenizer"].save(staging / TOKENIZER_NAME)
            manifest["tokenizer"]["file"] = file_record(staging / TOKENIZER_NAME, staging)
        write_manifest(staging, manifest)
        if not existed and not force and _has_content(target):  # written meanwhile by something that ignores the lock
            raise OutputError(f"{target} appeared while this export ran; pass --force to replace it")
        _swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
