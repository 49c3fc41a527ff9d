"""Export benchmark: wall time, peak RSS and fp32 parity of real architectures with random weights.

    python benchmarks/export_models.py                 # ViT-B/32, ViT-L/14, ViT-H-14
    python benchmarks/export_models.py ViT-B/32        # just one

Each export runs in a fresh child process so that its peak RSS is its own. Results go to
benchmarks/results/export.json and a Markdown table on stdout for docs/benchmarks.md.
"""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

MODELS = ["ViT-B/32", "ViT-L/14", "ViT-H-14"]
RESULTS = Path(__file__).parent / "results"


def child(model: str, out: str) -> None:
    """Runs inside the child: export and report its own numbers as one JSON line."""
    from clip_export import export_onnx, load_model, resolve

    started = time.perf_counter()
    spec = resolve(model, random_init=True, seed=0)
    loaded = load_model(spec)
    weight_bytes = sum(p.numel() * 4 for p in loaded.model.parameters())
    marks: dict[str, float] = {}

    def progress(message: str) -> None:
        if message.startswith("computing fp32 torch reference"):
            marks["reference_started"] = time.perf_counter()

    result = export_onnx(spec, out=out, loaded=loaded, force=True, progress=progress)
    wall = time.perf_counter() - started
    reference_s = time.perf_counter() - marks["reference_started"]
    print(
        json.dumps(
            {
                "model": model,
                "wall_s": wall,
                "export_and_gate_s": wall - reference_s,
                "reference_s": reference_s,
                "export_s": result.seconds,
                "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "fp32_weight_bytes": weight_bytes,
                "towers": [
                    {
                        "tower": t.tower,
                        "bytes": t.bytes,
                        "external_data": list(t.external_data),
                        "parity_mean_abs_normalized": t.parity_mean_abs,
                        "parity_max_abs_normalized": t.parity_max_abs,
                        "seconds": t.seconds,
                    }
                    for t in result.towers
                ],
            }
        )
    )


def main(models: list[str]) -> None:
    RESULTS.mkdir(exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="clip-export-bench-") as out:
        for model in models:
            done = subprocess.run([sys.executable, __file__, "--child", model, out], capture_output=True, text=True)
            if done.returncode != 0:
                print(
                    f"{model}: export failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}",
                    file=sys.stderr,
                )
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{model}: done in {rows[-1]['wall_s']:.1f}s", file=sys.stderr)
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": _machine(), "results": rows}
    (RESULTS / "export.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"Measured {report['date']} on {report['machine']}.\n")
    print(
        "| model | towers | wall s, all | of which load + export + parity gate | of which reference embeddings | peak RSS | fp32 weights | RSS / weights | visual parity (mean / max, norm.) | text parity (mean / max, norm.) | external data |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        towers = {t["tower"]: t for t in r["towers"]}
        ext = (
            ", ".join(f"{t['tower']}: {len(t['external_data'])} file(s)" for t in r["towers"] if t["external_data"])
            or "none"
        )
        print(
            f"| {r['model']} | visual+text | {r['wall_s']:.1f} | {r['export_and_gate_s']:.1f} | {r['reference_s']:.1f} | {r['peak_rss_bytes'] / 2**30:.2f} GiB | {r['fp32_weight_bytes'] / 2**30:.2f} GiB | {r['peak_rss_bytes'] / r['fp32_weight_bytes']:.2f}× | "
            f"{towers['visual']['parity_mean_abs_normalized']:.1e} / {towers['visual']['parity_max_abs_normalized']:.1e} | {towers['text']['parity_mean_abs_normalized']:.1e} / {towers['text']['parity_max_abs_normalized']:.1e} | {ext} |"
        )


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    import os

    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        main(sys.argv[1:] or MODELS)
