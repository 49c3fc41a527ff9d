from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from clip_export.cli import main
from clip_export.core.environment import current_environment
from clip_export.core.manifest import read_manifest, write_manifest
from clip_export.core.spec import CPU_PROVIDER
from clip_export.stages.bench import bench as bench_mod
from clip_export.stages.bench import timing
from clip_export.stages.bench.bench import bench
from clip_export.stages.bench.bench_one import bench_onnx
from clip_export.stages.bench.timing import latency_stats, time_calls


def test_percentiles_and_warmup_exclusion() -> None:
    samples = [10.0, 5.0] + [0.001 * i for i in range(1, 101)]  # two slow warm-up runs, then 1..100 ms
    stats = latency_stats(samples, warmup=2)
    assert stats.runs == 100 and stats.warmup_discarded == 2
    assert stats.p50_ms == pytest.approx(50.5)
    assert stats.p90_ms == pytest.approx(90.1)
    assert stats.p99_ms == pytest.approx(99.01)
    assert stats.mean_ms == pytest.approx(50.5)
    with pytest.raises(ValueError, match="no samples"):
        latency_stats([1.0], warmup=1)


def test_time_calls_discards_warmup_and_respects_minimum() -> None:
    calls = []
    stats = time_calls(lambda: calls.append(1), warmup=3, budget_s=0.0, min_runs=7)
    assert len(calls) == 10 and stats.runs == 7


def test_cuda_request_on_a_cpu_machine_is_a_row_without_numbers(tiny_vit_dir: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA is available here; this checks the CPU-only honesty rule")
    row = bench_onnx(
        tiny_vit_dir / "visual.onnx",
        "visual",
        "fp32",
        "cuda",
        1,
        np.zeros((1, 3, 64, 64), np.float32),
        threads=1,
        budget_s=0.01,
        name="visual.onnx",
    )
    assert row.status.startswith("unavailable: the requested provider was CUDAExecutionProvider")
    assert row.latency is None and row.provider_ran is None and row.p50_ms is None


def test_bench_end_to_end_through_the_cli(tiny_vit_copy: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "bench",
            str(tiny_vit_copy),
            "--batch-sizes",
            "1,2",
            "--budget",
            "0.05",
            "--providers",
            "cpu,cuda",
            "--json",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    (data,) = json.loads(result.stdout)
    rows = data["rows"]
    assert {r["batch"] for r in rows} == {1, 2}
    cpu_rows = [r for r in rows if r["provider_ran"] == "CPUExecutionProvider"]
    assert {r["name"] for r in cpu_rows} == {"visual.onnx", "text.onnx"}
    for r in cpu_rows:
        assert r["latency"]["p50_ms"] > 0 and r["latency"]["p50_ms"] <= r["latency"]["p99_ms"]
        assert r["throughput_per_s"] > 0 and r["speedup_vs_torch"] > 0 and r["session_create_ms"] >= 0
        assert r["threads"] >= 1 and 0 < r["ceiling_share"]
        assert (r["streamed_ceiling_share"] is not None) == (r["batch"] == 1)
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        cuda = [r for r in rows if r["provider_requested"] == "CUDAExecutionProvider"]
        assert cuda and all(r["status"].startswith("unavailable:") and r["latency"] is None for r in cuda)
    baselines = {r["name"] for r in rows if r["kind"] == "baseline"}
    assert {"torch eager-fp32", "torch bf16-autocast"} <= baselines
    eager = next(r for r in rows if r["name"] == "torch eager-fp32" and r["batch"] == 1 and r["tower"] == "visual")
    assert eager["speedup_vs_torch"] == pytest.approx(1.0)
    assert data["ceilings_gflops"]["fp32"] > 0 and data["flops_per_item"]["visual"] > 0
    # The text graph cuts trailing padding: its rows count the positions the bundled captions use,
    # torch eager's the whole context, so the two GFLOP/s figures come from different counts.
    flops = data["flops_per_item"]
    assert 0 < flops["text (padding cut, batch 1)"] < flops["text"]
    assert any("cut trailing padding" in note for note in data["notes"])
    for name, count in (("text.onnx", flops["text (padding cut, batch 1)"]), ("torch eager-fp32", flops["text"])):
        row = next(r for r in rows if r["name"] == name and r["batch"] == 1 and r["tower"] == "text")
        assert row["gflops_per_s"] == pytest.approx(count / (row["latency"]["p50_ms"] / 1000.0) / 1e9)
    # The cut text graph's limit comes from its own (shorter) products; torch's from the whole context's.
    assert (
        set(data["streamed_ceilings_gflops"]) == {"visual", "text", bench_mod.WHOLE_TEXT}
        and min(data["streamed_ceilings_gflops"].values()) > 0
    )
    assert data["machine"]["cores"] >= 1 and "onnxruntime" in data["versions"]
    assert {s["image"] for s in data["breakdown"]} == {"coffee-and-cat-wide-alpha.png", "rocket-small.jpg"}
    assert {s["engine"] for s in data["breakdown"]} == {
        "onnxruntime fp32 CPU (output is already numpy)",
        "onnxruntime fp32 CPU, ClipOnnx's default preprocessing (vectorised crop-resize)",
        "torch eager fp32 CPU",
    }
    assert all(s["load_ms"] > 0 and s["preprocess_ms"] > 0 and s["inference_ms"] > 0 for s in data["breakdown"])
    variants = {p["variant"]: p for p in data["preprocessing"]}
    assert (
        variants["reference-pil"]["pixel_max_abs"] == 0.0 and variants["reference-pil"]["within_fp32_tolerance"] is True
    )
    assert variants["opencv"]["pixel_max_abs"] > 0.1
    assert (tiny_vit_copy / "BENCH.md").read_text().count("| visual |") >= 2
    assert (tiny_vit_copy / "bench-batch1.png").read_bytes()[:4] == b"\x89PNG"
    assert read_manifest(tiny_vit_copy).section("benchmark")["rows"]


def test_bench_table_output(tiny_vit_copy: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "bench",
            str(tiny_vit_copy),
            "--batch-sizes",
            "1",
            "--budget",
            "0.02",
            "--no-breakdown",
            "--no-baselines",
            "--towers",
            "text",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "text.onnx" in result.stdout and "p50 ms" in result.stdout


def test_bench_reads_the_reference_the_manifest_records(tiny_vit_copy: Path) -> None:
    """release renames reference.npz to <slug>-reference.npz and records the new name; bench follows the record."""
    manifest = read_manifest(tiny_vit_copy)
    renamed = f"{tiny_vit_copy.name}-reference.npz"
    (tiny_vit_copy / manifest.section("reference")["path"]).rename(tiny_vit_copy / renamed)
    manifest.section("reference")["path"] = renamed
    write_manifest(tiny_vit_copy, manifest)
    result = bench(
        tiny_vit_copy, batch_sizes=[1], budget_s=0.02, breakdown=False, baselines=False, towers=["text"], write=False
    )
    assert [r.name for r in result.rows if r.latency is not None] == ["text.onnx"]


def test_bad_batch_sizes(tiny_vit_copy: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["bench", str(tiny_vit_copy), "--batch-sizes", "a"]).exit_code == 2
    zero = runner.invoke(main, ["bench", str(tiny_vit_copy), "--batch-sizes", "0", "-q"])
    assert zero.exit_code == 1 and "batch sizes must be >= 1" in zero.stderr
    with pytest.raises(Exception, match="unknown provider"):
        bench(tiny_vit_copy, providers=["tpu"], write=False)


def test_bench_refuses_to_time_an_emulated_cpu(tiny_vit_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under qemu's Haswell the figures would be the emulator's speed filed under Haswell's name."""
    here = current_environment(CPU_PROVIDER)
    emulated = dataclasses.replace(here, cpu_target="haswell (emulated)", emulated_on=f"{here.cpu}, by qemu-x86_64")
    monkeypatch.setattr(timing, "current_environment", lambda provider: emulated)
    result = CliRunner().invoke(main, ["bench", str(tiny_vit_copy), "-q"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: bench times this process, which runs haswell emulated on ")
    assert "run bench on the machine itself" in result.stderr and "Traceback" not in result.output
    assert not (tiny_vit_copy / "BENCH.md").exists()


def test_streamed_chain_adapts_widths_and_counts_its_flops() -> None:
    """The streamed-weights limit chains the tower's per-token products, each with its own weight,
    until the weights pass the size asked for; Slice and Pad bridge width changes."""
    import onnx
    import onnxruntime

    from clip_export.stages.bench.ceilings import _streamed_chain_model

    shapes = [(5, 8, 24), (5, 8, 8), (5, 8, 32), (5, 32, 4), (1, 8, 4)]
    model, m, k, flops = _streamed_chain_model(shapes, min_weight_bytes=10_000, max_nodes=50)
    graph = onnx.load_from_string(model).graph
    weights = {t.name: t.dims for t in graph.initializer}
    products = [n for n in graph.node if n.op_type == "MatMul"]
    weight_count = sum(weights[n.input[1]][0] * weights[n.input[1]][1] for n in products)
    assert len(products) == 16 and 10_000 <= 4 * weight_count < 10_000 + 4 * 8 * 32
    assert flops == 2 * 5 * weight_count
    assert {n.op_type for n in graph.node} == {"MatMul", "Slice", "Pad"}
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"a": np.ones((m, k), np.float32)})
    assert (m, k) == (5, 8) and out.shape == (5, 4)


def test_a_resnet_image_tower_gets_no_streamed_limit(tmp_path: Path) -> None:
    """A ResNet's weight products are a small share of its FLOPs, so the limit would mislead."""
    from clip_export import export_onnx, resolve
    from clip_export.stages.bench.bench import bench

    model_dir = export_onnx(resolve("tiny-rn", random_init=True), out=tmp_path, towers=["visual", "text"]).model_dir
    result = bench(model_dir, batch_sizes=[1], budget_s=0.02, breakdown=False, write=False)
    assert "visual" not in result.streamed_ceilings_gflops and result.streamed_ceilings_gflops["text"] > 0
    onnx_rows = [r for r in result.rows if r.kind == "artifact"]
    assert {r.tower: r.streamed_ceiling_share is None for r in onnx_rows} == {"visual": True, "text": False}


def test_time_interleaved_alternates_calls_and_drops_warmup_rounds() -> None:
    from clip_export.stages.bench.timing import time_interleaved

    order: list[str] = []
    result = time_interleaved([lambda: order.append("a"), lambda: order.append("b")], rounds=4, warmup=2)
    assert order == ["a", "b"] * 6 and len(result) == 2 and all(ms >= 0 for ms in result)


def test_interleaved_samples_shuffle_each_round_by_seed_and_keep_rounds_after_warmup() -> None:
    from clip_export.stages.bench.timing import interleaved_samples

    def rounds_run(seed: int) -> tuple[list[list[str]], dict[str, list[float]]]:
        order: list[str] = []
        calls = {key: (lambda key=key: order.append(key)) for key in "abcd"}
        samples = interleaved_samples(calls, rounds=6, warmup=2, order_seed=seed)
        return [order[i : i + 4] for i in range(0, len(order), 4)], samples

    rounds, samples = rounds_run(7)
    assert len(rounds) == 8 and all(sorted(r) == list("abcd") for r in rounds)  # every call once a round
    assert len({tuple(r) for r in rounds}) > 1  # a new order each round, not one shuffle kept
    assert rounds_run(7)[0] == rounds  # the seed fixes the orders: a run can be repeated
    assert {key: len(times) for key, times in samples.items()} == dict.fromkeys("abcd", 6)


def test_no_artifact_row_is_an_error_that_leaves_earlier_results(tiny_vit_copy: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA is available here; this checks what a CPU-only machine reports")
    (tiny_vit_copy / "BENCH.md").write_text("earlier results\n")
    before = read_manifest(tiny_vit_copy)
    result = CliRunner().invoke(
        main,
        [
            "bench",
            str(tiny_vit_copy),
            "--providers",
            "cuda",
            "--batch-sizes",
            "1",
            "--budget",
            "0.02",
            "--no-baselines",
            "--no-breakdown",
            "-q",
        ],
    )
    assert result.exit_code == 1
    assert (
        result.stderr.startswith("Error: no artifact row ran, so nothing was written")
        and "requested provider was CUDAExecutionProvider" in result.stderr
    )
    assert (tiny_vit_copy / "BENCH.md").read_text() == "earlier results\n" and read_manifest(tiny_vit_copy) == before
    result = CliRunner().invoke(main, ["bench", str(tiny_vit_copy), "--precision", "int4", "-q"])
    assert (
        result.exit_code == 1
        and "the requested precision(s) int4 match no artifact" in result.stderr
        and "it has fp32" in result.stderr
    )
    result = CliRunner().invoke(main, ["bench", str(tiny_vit_copy), "--max-time", "0"])
    assert result.exit_code == 2 and "--max-time" in result.stderr


def test_bf16_without_native_support_is_skipped_with_the_reason(
    tiny_vit_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clip_export.stages.bench import bench as bench_module

    monkeypatch.setattr(bench_module, "native_bf16", lambda: False)
    result = bench(tiny_vit_copy, batch_sizes=[1], budget_s=0.02, breakdown=False, towers=["text"], write=False)
    bf16 = [r for r in result.rows if r.name == "torch bf16-autocast"]
    assert (
        len(bf16) == 1
        and bf16[0].latency is None
        and bf16[0].status.startswith("skipped: no native bf16 on this CPU (no avx512_bf16 or AMX)")
    )
    assert any(n.startswith("no native bf16") for n in result.notes)
    assert [r.name for r in result.rows if r.latency is not None] == ["torch eager-fp32", "text.onnx"]


def test_the_plan_stops_at_the_deadline_and_counts_down() -> None:
    import time

    from clip_export.stages.bench.bench import BenchRow, _PlannedRow, _run_plan

    def row(name: str) -> BenchRow:
        return BenchRow(name, "artifact", "text", "fp32", "CPUExecutionProvider", None, 1, "")

    def slow(name: str):  # type: ignore[no-untyped-def]
        def measure(budget: float) -> BenchRow:
            time.sleep(0.2)
            return dataclasses.replace(row(name), status="ok")

        return measure

    plan = [_PlannedRow(f"row {i}", "text", 1, slow(f"r{i}"), row(f"r{i}")) for i in range(4)]
    messages: list[str] = []
    started = time.perf_counter()
    rows = _run_plan(plan, 1.0, started + 0.3, messages.append)
    assert [r.status for r in rows[:2]] == ["ok", "ok"]
    assert all(r.status.startswith("skipped: the total time budget") and "--max-time" in r.status for r in rows[2:])
    assert messages[0] == "[1/4] row 0" and messages[1].startswith("[2/4, ~") and messages[1].endswith("s left] row 1")


def test_a_share_above_the_ceiling_is_flagged() -> None:
    from clip_export.stages.bench.bench_report import share

    assert share(0.5) == "50" and share(None) == "-" and share(1.3) == "130 (>100%: noise)"


def test_baselines_never_read_the_checkpoint_a_manifest_names(tiny_vit_copy: Path) -> None:
    from clip_export.core.errors import WeightsError

    manifest = read_manifest(tiny_vit_copy)
    manifest.section("model").update(random_init=False, seed=None, checkpoint="/dev/zero", checkpoint_sha256="0" * 64)
    write_manifest(tiny_vit_copy, manifest)  # reading /dev/zero to hash it would never end
    with pytest.raises(WeightsError, match="never reads from a manifest; pass --weights PATH"):
        bench(tiny_vit_copy, batch_sizes=[1], budget_s=0.02, breakdown=False, write=False)
