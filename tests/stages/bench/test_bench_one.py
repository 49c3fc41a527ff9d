from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from clip_export.core.artifact import ArtifactEntry
from clip_export.core.environment import current_environment
from clip_export.core.spec import CPU_PROVIDER, INT8_FAMILIES, int8_family_of
from clip_export.stages.bench import bench_one
from clip_export.stages.bench.bench import bench
from clip_export.stages.quantize8.quantize8 import quantize_int8


def test_int8_rows_get_their_streamed_limit_and_a_family_for_other_cpus_is_not_timed(
    tiny_vit_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """INT8 rows had no streamed-weights share (fp32 rows only), and bench timed the QInt8 file on a
    CPU without VNNI, where its results are wrong."""
    for family in INT8_FAMILIES.values():
        quantize_int8(tiny_vit_copy, scheme=family.scheme)
    without_vnni = dataclasses.replace(current_environment(CPU_PROVIDER), isa_flags=("avx", "avx2", "fma"))
    monkeypatch.setattr(bench_one, "current_environment", lambda provider: without_vnni)
    result = bench(tiny_vit_copy, batch_sizes=[1], budget_s=0.05, breakdown=False, write=False, precisions=["int8"])
    rows = [r for r in result.rows if r.kind == "artifact"]
    by_family = {(r.tower, r.name): r for r in rows}
    assert {r.precision for r in rows} == {"int8"} and len(by_family) == 4
    for r in rows:
        if ".int8." in r.name:  # the vnni family's file
            assert r.latency is None and r.status.startswith("not applicable on this CPU")
            assert "needs one of avx512_vnni" in r.status
        else:
            assert r.status == "ok" and r.streamed_ceiling_share is not None and r.streamed_ceiling_share > 0
    assert set(result.streamed_int8_ceilings_gops) == {"visual", "text"}
    assert min(result.streamed_int8_ceilings_gops.values()) > 0
    assert result.streamed_ceilings_gflops == {}  # no fp32 row was asked for, so no fp32 limit was measured


def test_every_int8_file_is_named_by_its_family() -> None:
    """The test above tells the families apart by file tag; this keeps that honest."""
    assert {f.file_tag for f in INT8_FAMILIES.values()} == {"int8", "uint8"}
    entry = ArtifactEntry(
        "v.int8.onnx", "0" * 64, 1, "visual", "int8", "onnx", details={"conversion": {"kernel_family": "vnni"}}
    )
    assert int8_family_of(entry) is INT8_FAMILIES["vnni"]
