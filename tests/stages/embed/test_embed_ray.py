"""The Ray engine on a real two-node cluster on this machine (ray.cluster_utils.Cluster: a head and a
second node, each its own raylet process with 1 CPU): the same rows as the local engine, and a
worker process killed by pid mid-job loses nothing. The actor (EmbedMapper) is also tested alone,
without Ray."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from clip_export.core.evalset import BUNDLED_DIR
from clip_export.core.manifest import read_manifest
from clip_export.core.spec import EMBED_DATA_DIR
from clip_export.stages.embed.embed import embed
from clip_export.stages.embed.embed_inputs import part_rows_by_kind
from clip_export.stages.embed.embed_store import read_embeddings


def require_ray() -> Any:
    """Ray itself, for the cluster tests; the actor's own tests (EmbedMapper) run without it."""
    ray = pytest.importorskip(
        "ray", reason="ray[data] is not installed (pip install 'clip-export[ray]'; .ci/run installs it)"
    )
    pytest.importorskip("ray.data", reason="ray is installed without ray[data]")
    return ray


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    ray = require_ray()
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    nodes.add_node(num_cpus=1)
    ray.init(address=nodes.address, log_to_driver=False)
    try:
        nodes.wait_for_nodes()
        yield nodes
    finally:
        ray.shutdown()
        nodes.shutdown()


def rows(out: Path) -> dict[str, tuple[str, np.ndarray]]:
    return {
        r["id"]: (r["sha256"], np.asarray(r["embedding"], dtype=np.float32)) for r in read_embeddings(out).to_pylist()
    }


def mapper_workers() -> list[psutil.Process]:
    """The actor processes of this test's cluster (descendants of this process) holding EmbedMapper."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if "EmbedMapper" in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_ray_on_two_nodes_writes_the_local_engines_rows_and_survives_a_killed_worker(
    cluster: Any, tiny_vit_int8_dir: Path, tmp_path: Path
) -> None:
    assert len([n for n in require_ray().nodes() if n["Alive"]]) == 2
    folder = tmp_path / "corpus"
    folder.mkdir()
    for copy in range(8):
        for path in sorted((BUNDLED_DIR / "images").iterdir()):
            shutil.copy(path, folder / f"{copy}-{path.name}")
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(f"photo number {n} of a cat" for n in range(100)) + "\n")
    inputs = [folder, captions]
    local = embed(tiny_vit_int8_dir, inputs, tmp_path / "local", precision="fp32", batch_size=8)
    assert local.embedded >= 300 and local.failed == 0

    result: dict[str, Any] = {}
    job = threading.Thread(
        target=lambda: result.update(
            r=embed(
                tiny_vit_int8_dir, inputs, tmp_path / "ray", precision="fp32", batch_size=8, chunk_rows=16, use_ray=True
            )
        )
    )
    job.start()
    killed = None
    deadline = time.monotonic() + 300
    while job.is_alive() and time.monotonic() < deadline and killed is None:
        workers = mapper_workers()
        if workers and list((tmp_path / "ray" / EMBED_DATA_DIR).glob("part-*.parquet")):
            killed = workers[0].pid
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    job.join(timeout=600)
    assert killed is not None, "no EmbedMapper worker was seen running mid-job"
    done = result["r"]
    assert (done.engine, done.embedded, done.failed) == ("ray", local.embedded, 0)
    got, expected = rows(tmp_path / "ray"), rows(tmp_path / "local")
    assert set(got) == set(expected)
    for key, (sha, vector) in expected.items():
        assert got[key][0] == sha
        np.testing.assert_allclose(got[key][1], vector, atol=1e-5)  # fp32: batch-mates do not matter
    manifest_local = (tmp_path / "local" / "dataset.json").read_text()
    manifest_ray = (tmp_path / "ray" / "dataset.json").read_text()
    assert '"engine": "ray"' in manifest_ray and '"engine": "local"' in manifest_local
    again = embed(tiny_vit_int8_dir, inputs, tmp_path / "ray", precision="fp32", batch_size=8, use_ray=True)
    assert (again.embedded, again.unchanged) == (0, local.embedded)


def test_an_actor_runs_its_batch_in_parts_of_at_most_the_part_rows(tiny_vit_int8_dir: Path, tmp_path: Path) -> None:
    from clip_export.runtime import ClipOnnx
    from clip_export.stages.embed.embed_ray import FIELDS, ActorJob, EmbedMapper

    photos = sorted((BUNDLED_DIR / "images").iterdir())[:17]
    # by default the release's own caps (the tiny towers' are larger than 17 rows); here parts of at most 8
    job = ActorJob(str(tiny_vit_int8_dir), "int8", towers=("visual",))
    assert EmbedMapper(job).part_rows == part_rows_by_kind(read_manifest(tiny_vit_int8_dir))
    mapper = EmbedMapper(dataclasses.replace(job, part_rows={"image": 8, "text": 8}))
    original, parts = mapper.model.embed_pixels, []

    def recording(pixels: np.ndarray) -> np.ndarray:
        parts.append(len(pixels))
        return original(pixels)

    mapper.model.embed_pixels = recording  # type: ignore[method-assign]
    paths = [str(p) for p in photos]  # as run_ray's rows: "" and b"" stand for no value
    values = {"id": paths, "kind": ["image"] * len(photos), "path": paths, "data": [b""] * len(photos)}
    batch = {field: np.array(values.get(field, [""] * len(photos)), dtype=object) for field in FIELDS}
    out = mapper(batch)
    assert parts == [6, 6, 5]  # 17 rows: ceil(17 / 8) parts, sizes within one
    model = ClipOnnx.from_release(tiny_vit_int8_dir, precision="int8", towers=["visual"])
    for start, size in ((0, 6), (6, 6), (12, 5)):  # INT8 rows are those of the same parts run alone
        np.testing.assert_allclose(
            out["embedding"][start : start + size], model.embed_images(photos[start : start + size]), atol=1e-6
        )


def test_actors_take_the_drivers_serve_check_instead_of_running_it_again(
    tiny_vit_int8_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each actor used to run again the serve-time check its driver had just passed on the same bytes
    here; it now takes the driver's pass where its environment is the driver's, and checks for itself
    elsewhere (tests/runtime/test_serve_check.py)."""
    from clip_export.runtime import ClipOnnx
    from clip_export.runtime.serve_check import PASSED_ELSEWHERE
    from clip_export.stages.embed import embed_ray
    from clip_export.stages.embed.embed_ray import ActorJob, EmbedMapper

    handed: dict[str, Any] = {}
    monkeypatch.setattr(embed_ray, "run_ray", lambda **job: handed.update(job))
    embed(tiny_vit_int8_dir, [sorted((BUNDLED_DIR / "images").iterdir())[0]], tmp_path / "index", use_ray=True)
    sha256 = {e.path: e.sha256 for e in read_manifest(tiny_vit_int8_dir).select()}
    served = ClipOnnx.from_release(tiny_vit_int8_dir, precision="int8", towers=["visual"], check="off").artifacts
    job = handed["job"]
    assert job.precision == "int8"  # the default: the fastest that holds here, checked by the driver
    (covers,) = job.passed_checks
    assert covers.startswith(sha256[served["visual"].path.relative_to(tiny_vit_int8_dir).as_posix()] + "|")
    assert Path(job.source).is_absolute() and job.towers == ("visual",)
    actor = EmbedMapper(job)  # the actor run_ray would build
    assert actor.model.serve_checks["visual"].status == PASSED_ELSEWHERE
    expected_rows = part_rows_by_kind(read_manifest(tiny_vit_int8_dir))  # each tower's, as the local engine's
    assert (actor.model.artifacts["visual"].precision, actor.part_rows) == ("int8", expected_rows)
    own = EmbedMapper(ActorJob(str(tiny_vit_int8_dir), "int8", towers=("visual",)))  # no driver's pass
    assert own.model.serve_checks["visual"].status == "pass"
