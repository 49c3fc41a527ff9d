"""INT8 stage: dynamic INT8 MatMul/Gemm weights for CPU serving, one artifact per kernel family,
each gated by verify; a tower whose plain scheme fails its gate falls back (int8_fallbacks.py) to
blockwise 8-bit (the every-x86 family), then to its outlier channels split off in float, then to
mixed precision by measured sensitivity (docs/convert.md has the measurements)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from clip_export.core.conversion import ConvertedArtifact, ConvertResult
from clip_export.core.environment import current_environment
from clip_export.core.errors import ConversionError, GateFailedError
from clip_export.core.graph_surgery import require_nodes
from clip_export.core.manifest import exclusive, read_manifest, resolve_inside, write_manifest
from clip_export.core.progress import Progress, silent
from clip_export.core.spec import CPU_PROVIDER, INT8_FAMILIES, ONNX_FORMAT, Int8Scheme, int8_family_for_weight_type
from clip_export.stages.quantize8.int8_build import EVERY_X86, Build, quantize_family
from clip_export.stages.quantize8.int8_fallbacks import fallback


def quantize_int8(
    model_dir: Path,
    *,
    towers: Sequence[str] = ("visual", "text"),
    per_channel: bool | None = None,
    exclude_nodes: Sequence[str] = (),
    force: bool = False,
    scheme: Int8Scheme | None = None,
    progress: Progress = silent,
) -> ConvertResult:
    """Dynamic INT8 quantization of MatMul/Gemm weights for CPU serving. Without `scheme`, one
    artifact per kernel family (spec.INT8_FAMILIES): QInt8 for VNNI/AMX CPUs, QUInt8 for every x86
    tier; the VNNI one is skipped, with a note, on a CPU that cannot verify it. With `scheme`, that
    one scheme, named by its weight type's family. `per_channel`, when given, overrides the scheme's."""
    families = (
        [(family, family.scheme) for family in INT8_FAMILIES.values()]
        if scheme is None
        else [(int8_family_for_weight_type(scheme.weight_type), scheme)]
    )
    manifest = read_manifest(model_dir)
    sources = manifest.select(precision="fp32", format=ONNX_FORMAT, tower=tuple(towers))
    require_nodes([resolve_inside(Path(model_dir), s.path, "the source artifact") for s in sources], exclude_nodes)
    here = current_environment(CPU_PROVIDER)
    artifacts: list[ConvertedArtifact] = []
    notes: list[str] = []
    failed: dict[str, list[str]] = {}
    for family, chosen in families:
        if per_channel is not None:
            chosen = dataclasses.replace(chosen, per_channel=per_channel)
        if not family.applies_to(here.isa_flags):
            notes.append(
                f"{family.file_tag} ({chosen.label}, for {family.tiers}) not built: this CPU ({here.tier}) "
                "cannot verify it"
            )
            continue
        build = Build(Path(model_dir), family, chosen, tuple(exclude_nodes), force, progress)
        for tower in towers:  # a tower that fails one family's gate keeps the other family and the other tower
            try:
                result = quantize_family(build, [tower])
            except GateFailedError as exc:
                # in a default run the every-x86 file and its fallbacks serve every tier: a family with
                # CPU requirements tries only what keeps it fast (the outlier split), never mixed precision
                served_anyway = scheme is None and family is not EVERY_X86
                result, how = fallback(build, tower, str(exc), last_resort=not served_anyway)
                if result is None and served_anyway:
                    how += f"; not built: the {EVERY_X86.file_tag} file, with its fallbacks, serves {family.tiers} too"
                notes.append(f"{tower}: {family.file_tag} ({chosen.label}) {how}")
                if result is None:
                    failed.setdefault(tower, []).append(f"{family.file_tag} ({chosen.label}) {how}")
                    continue
            artifacts += result.artifacts
    built = {a.tower for a in artifacts}
    if failed and not built:
        raise ConversionError(
            "the int8 gate failed for every tower and scheme: " + " | ".join(sum(failed.values(), []))
        )
    _record_towers_without_int8(Path(model_dir), {t: "; ".join(w) for t, w in failed.items() if t not in built}, built)
    return ConvertResult(Path(model_dir), "int8", tuple(artifacts), tuple(notes))


def _record_towers_without_int8(model_dir: Path, why: dict[str, str], built: set[str]) -> None:
    """manifest["int8_not_built"]: tower → why no INT8 scheme held its gate (the model card says so);
    a tower that got an INT8 artifact now is taken off."""
    with exclusive(model_dir):
        manifest = read_manifest(model_dir)
        record = {t: w for t, w in (manifest.section("int8_not_built") or {}).items() if t not in built}
        record.update(why)
        if record == (manifest.section("int8_not_built") or {}):
            return
        if record:
            manifest.set_section("int8_not_built", record)
        else:
            manifest.drop_section("int8_not_built")
        write_manifest(model_dir, manifest)
