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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clip_export import __version__
from clip_export.core import attention, patch_embedding, reference
from clip_export.core.artifact import ArtifactEntry, Manifest, declared_io
from clip_export.core.environment import versions
from clip_export.core.errors import (
    ClipExportError,
    ExportParityError,
    OutputError,
    UnsupportedOpsetError,
    write_failure,
)
from clip_export.core.evalset import EvalSet, load_evalset
from clip_export.core.manifest import SCHEMA_VERSION, exclusive, file_record, now_iso, write_manifest
from clip_export.core.metrics import l2_normalize
from clip_export.core.models import LoadedModel, ModelSpec, load_model, preflight, resolve
from clip_export.core.onnx_files import external_data_files, inline_external_data, make_strided_initializers_lazy
from clip_export.core.progress import Progress, silent
from clip_export.core.reference import compute_reference, example_input, torch_embed, tower_module, trims_text_padding
from clip_export.core.runner import open_graph
from clip_export.core.sessions import SessionOptions
from clip_export.core.spec import (
    BATCH_AXIS,
    DEFAULT_OPSET,
    EXPORT_EXAMPLE_BATCH,
    EXPORT_PARITY_TOLERANCE,
    EXTERNAL_DATA_THRESHOLD_BYTES,
    ONNX_FORMAT,
    REFERENCE_NAME,
    SUPPORTED_OPSETS,
    TOWERS,
    WIDEST_ACTIVATION_DETAIL,
)
from clip_export.core.tokenizer import TOKENIZER_NAME


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
        "clip_export.core.preprocess": json.dumps(loaded.preprocess.to_json()),
        "clip_export.core.tokenizer": json.dumps(loaded.tokenizer.to_json()),
        "clip_export.created": now_iso(),
    }


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
    matmul_patch_embedding: bool = True,
    trim_padding: bool = True,
) -> tuple[tuple[str, ...], int, int, bool]:
    """Write one tower to `path`; returns the external data files written beside it, how many
    attention blocks were traced batch-first (clip_export.core.attention; False keeps torch's trace),
    how many patch-embedding convolutions became a MatMul (clip_export.core.patch_embedding) and
    whether the text graph cuts trailing padding (core.reference.trims_text_padding; False keeps the
    whole context)."""
    import torch

    trimmed = trim_padding and tower == "text" and trims_text_padding(loaded)
    module = tower_module(loaded, tower, normalize, trim_padding=trimmed)
    example = torch.from_numpy(example_input(loaded, tower, EXPORT_EXAMPLE_BATCH, seed=1))
    try:
        with (
            attention.batch_first_attention(module)
            if batch_first_attention
            else contextlib.nullcontext(set()) as rewritten_blocks,
            patch_embedding.matmul_patch_embedding(module)
            if matmul_patch_embedding
            else contextlib.nullcontext(set()) as patch_convs,
        ):
            program = _torch_export(module, example, tower, opset)
        rewritten = len(rewritten_blocks)
    except Exception as exc:
        raise ClipExportError(
            f"torch.onnx.export failed for the {tower} tower of {loaded.spec.arch}: {str(exc).splitlines()[0]}"
        ) from exc
    program.model.metadata_props.update(_metadata(loaded, tower, opset, normalize))
    use_external = (
        external_data
        if external_data is not None
        else reference.tower_parameter_bytes(loaded, tower) > EXTERNAL_DATA_THRESHOLD_BYTES
    )
    # Always stream the weights to a side file first: serialising a whole ModelProto in memory
    # costs two extra copies of the weights. Small towers are then stitched into one file.
    make_strided_initializers_lazy(program.model)
    program.save(str(path), external_data=True)
    del program
    gc.collect()
    if not use_external:
        inline_external_data(path)
        # Loading a >1 GB single-file model just to list nothing would double memory.
        return (), rewritten, len(patch_convs), trimmed
    return tuple(external_data_files(path)), rewritten, len(patch_convs), trimmed


def parity_check(loaded: LoadedModel, tower: str, path: Path, normalize: bool) -> tuple[float, float]:
    """Run the fresh ONNX tower next to torch on a batch of 3 (not the traced 2); text also on 3
    short captions and on short ones beside one that fills the context, so a graph that cuts
    trailing padding is checked where it cuts and where it cannot."""
    batches = [example_input(loaded, tower, 3, seed=0)]
    if tower == "text":
        short = example_input(loaded, tower, 3, seed=2, max_length=8)
        context = loaded.tokenizer.context_length
        full = example_input(loaded, tower, 1, seed=4, min_length=context)
        batches += [short, np.concatenate([short[:2], full])]
    runner = open_graph(path, SessionOptions(prepacking=False))
    deltas = [
        np.abs(l2_normalize(runner.run(inputs)) - l2_normalize(torch_embed(loaded, tower, inputs, normalize)))
        for inputs in batches
    ]
    del runner
    delta = np.concatenate(deltas)
    return float(delta.mean()), float(delta.max())


def io_declaration(loaded: LoadedModel, tower: str, dtype_in: str | None = None) -> dict[str, Any]:
    spec = TOWERS[tower]
    return {
        "inputs": [
            {
                "name": spec.input_name,
                "dtype": dtype_in or spec.input_dtype,
                "shape": spec.input_shape(loaded.tokenizer.context_length, loaded.preprocess.image_size),
            }
        ],
        "outputs": [{"name": spec.output_name, "dtype": "float32", "shape": spec.output_shape(loaded.embed_dim)}],
    }


def _check_output_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".clip-export-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"--out {out} is not writable: {exc.strerror or exc}") from exc


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
        raise UnsupportedOpsetError(
            f"opset {opset} is not supported; choose {SUPPORTED_OPSETS.start}-{SUPPORTED_OPSETS.stop - 1} "
            f"(default {DEFAULT_OPSET})"
        )
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
            _export_locked(
                spec,
                out,
                target,
                towers,
                opset,
                normalize,
                force,
                external_data,
                evalset,
                progress,
                loaded,
                batch_first_attention,
                results,
            )
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
        entries: list[ArtifactEntry] = []
        sections: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "model": loaded.manifest_section(),
            "preprocess": loaded.preprocess.to_json(),
            "tokenizer": loaded.tokenizer.to_json(),
            "normalize": normalize,
            "versions": versions(),
            "created": now_iso(),
            "artifacts": None,  # its slot in the file: Manifest writes the typed entries there
        }
        for tower in towers:
            tower_started = time.perf_counter()
            path = staging / f"{tower}.onnx"
            progress(f"exporting the {tower} tower (torch.onnx, dynamo, opset {opset})")
            data_files, rewritten, patch_convs, trimmed = export_tower(
                loaded,
                tower,
                path,
                opset=opset,
                normalize=normalize,
                external_data=external_data,
                batch_first_attention=batch_first_attention,
            )
            progress(f"checking the {tower} tower against torch fp32 in onnxruntime")
            mean_abs, max_abs = parity_check(loaded, tower, path, normalize)
            if not mean_abs <= EXPORT_PARITY_TOLERANCE:
                raise ExportParityError(
                    f"the exported {tower} tower differs from torch fp32: mean |Δ| of normalised embeddings "
                    f"{mean_abs:.2e} > {EXPORT_PARITY_TOLERANCE:.0e}"
                )
            inputs, outputs = declared_io(io_declaration(loaded, tower), tower)
            entry = ArtifactEntry.of_file(
                file_record(path, staging),
                tower=tower,
                precision="fp32",
                format=ONNX_FORMAT,
                opset=opset,
                inputs=inputs,
                outputs=outputs,
                external_data=tuple(file_record(staging / name, staging) for name in data_files),
                details={
                    "export_parity": {"mean_abs_normalized": mean_abs, "max_abs_normalized": max_abs},
                    "batch_first_attention_blocks": rewritten,
                    "matmul_patch_embeddings": patch_convs,
                    WIDEST_ACTIVATION_DETAIL: reference.widest_activation_per_row(loaded, tower),
                    **({"trims_trailing_padding": True} if trimmed else {}),
                },
            )
            entries.append(entry)
            results.append(
                TowerResult(
                    tower,
                    target / path.name,
                    entry.bytes,
                    data_files,
                    mean_abs,
                    max_abs,
                    time.perf_counter() - tower_started,
                )
            )
        progress(
            f"computing fp32 torch reference embeddings for {len(evalset.image_paths)} images and {len(evalset.captions)} "
            "captions"
        )
        arrays = compute_reference(loaded, evalset, towers, normalize)
        np.savez(staging / REFERENCE_NAME, **arrays)
        sections["reference"] = {
            **file_record(staging / REFERENCE_NAME, staging).to_json(),
            "evalset": evalset.source,
            "images": evalset.image_names if "visual" in towers else [],
            "captions": list(evalset.captions) if "text" in towers else [],
            "computed_with": "torch fp32 (CPU)",
        }
        if "text" in towers and loaded.extra.get("text_tokenizer") is not None:  # checked id for id in load_model
            loaded.extra["text_tokenizer"].save(staging / TOKENIZER_NAME)
            sections["tokenizer"]["file"] = file_record(staging / TOKENIZER_NAME, staging).to_json()
        write_manifest(staging, Manifest(entries, sections))
        if not existed and not force and _has_content(target):  # written meanwhile by something that ignores the lock
            raise OutputError(f"{target} appeared while this export ran; pass --force to replace it")
        _swap_into_place(staging, target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        reason = write_failure(exc)
        if reason is None:
            raise
        kept = "the export already there is unchanged" if existed else "nothing was kept"
        raise OutputError(f"could not write the export of {spec.name} into {out}: {reason}; {kept}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
