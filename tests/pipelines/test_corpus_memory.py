"""Source decoding memory: bytes and pixels bounded before decoding, the measured peak per pixel within what a shard
task declares to Ray, and a build of 8 MB sources on a 200 MB object store (its own Ray, in a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from corpus_helpers import small_config

import pipelines.sources
from degradations.samples import sample_paths
from pipelines.build import ShardJob, fit_memory
from pipelines.config import GeometryConfig
from pipelines.sources import SourceTooLarge, fetch
from pipelines.synth import PEAK_BYTES_PER_PIXEL, generate_shard, resolve_mixture, task_memory

PROBE = """
import json, sys
import cv2
cv2.setNumThreads(1)  # as in a shard task
from pipelines.config import GeometryConfig
from pipelines.sources import fetch
from pipelines.synth import load_clean

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

path, short = sys.argv[1], int(sys.argv[2])
geo = GeometryConfig(crop_size=64, min_size=64, resize_short=short)
data = fetch(path)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak: what follows is the decode alone
base = status("VmRSS")
clean = load_clean(path, data, geo)
h, w = clean.orig_size
print(json.dumps({"peak": (status("VmHWM") - base) / (h * w), "held": (status("VmRSS") - base) / (h * w),
                  "source": len(data) / (h * w)}))
"""


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory) -> Path:
    """A 4000x3000 photo-like JPEG (12 Mpx; smooth gradients plus noise)."""
    h, w = 3000, 4000
    y, x = np.mgrid[0:h, 0:w]
    base = ((x * 255 // w + y * 255 // h) % 256).astype(np.uint8)
    img = np.dstack([base, base[::-1], base[:, ::-1]])
    img = cv2.add(img, np.random.default_rng(0).integers(0, 12, img.shape, dtype=np.uint8))
    path = tmp_path_factory.mktemp("big") / "big.jpg"
    assert cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return path


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak-RSS reset")
@pytest.mark.parametrize("short", [0, 512])
def test_decode_peak_per_pixel_stays_under_what_a_task_declares(big_jpeg, short):
    res = subprocess.run([sys.executable, "-c", PROBE, str(big_jpeg), str(short)], capture_output=True, text=True,
                         timeout=120)
    got = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"resize_short={short}: peak {got['peak']:.1f} B/px, held {got['held']:.1f} B/px (source file "
          f"{got['source']:.1f} B/px)")
    # before: 23 B/px at the decode (float32 copies of the whole photo), 12 held per cached source
    assert got["peak"] < PEAK_BYTES_PER_PIXEL, got
    if short == 0:  # the photo is kept as uint8 (3 B/px), crops converted on demand (was float32: 12 B/px)
        assert got["held"] < 6, got


def test_sources_are_bounded_in_bytes_before_they_are_read(tmp_path, monkeypatch, big_jpeg):
    with pytest.raises(SourceTooLarge):
        fetch(str(big_jpeg), max_bytes=1000)
    small = str(min(sample_paths(), key=lambda p: p.stat().st_size))
    cap = os.path.getsize(small)
    assert big_jpeg.stat().st_size > cap
    monkeypatch.setattr(pipelines.sources, "MAX_SOURCE_BYTES", cap)  # the small photo fits, the big one does not
    cfg = small_config(tmp_path, "variants_per_source=1", "mixture.exemplar_probability=0")
    _, record = generate_shard(cfg, ShardJob(0, (str(big_jpeg), small), ()), {}, resolve_mixture(cfg))
    assert record["rejected"] == [[str(big_jpeg), "too_large"]] and record["tasks"]


def test_task_memory_follows_the_pixel_cap_and_fits_a_node(ray_local):
    small, large = task_memory(GeometryConfig(max_pixels=10**6)), task_memory(GeometryConfig())
    assert large - small == (10**8 - 10**6) * PEAK_BYTES_PER_PIXEL
    assert fit_memory(large, 10**8) == large  # this machine's node holds one
    node = max(n["Resources"]["memory"] for n in ray_local.nodes() if n["Alive"])
    assert fit_memory(10**15, 10**13) == int(node)  # never a task no node could place


BUILD = """
import io, json, sys
import ray
ray.init(address="local", num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False,
         log_to_driver=False, configure_logging=False)
from pipelines.build import build_corpus
from pipelines.config import load_corpus_config
src, out = sys.argv[1], sys.argv[2]
cfg = load_corpus_config(None, [f"sources=[{{uri: '{src}'}}]", f"output.path={out}", "variants_per_source=1",
                                "output.samples_per_shard=4", "runtime.retries=0", "runtime.contact_sheet_rows=1",
                                "mixture.exemplar_probability=0.5"])
res = build_corpus(cfg, progress=False, workers=2)
print(json.dumps({"samples": res.manifest.samples, "rejects": res.manifest.extra["rejects"],
                  "store": ray.cluster_resources()["object_store_memory"]}))
"""


def test_8mb_sources_build_on_a_200mb_object_store(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):  # 1600x1700 noise: each PNG ~8 MB, incompressible
        ok, buf = cv2.imencode(".png", rng.integers(0, 256, (1600, 1700, 3), dtype=np.uint8))
        (src / f"{i}.png").write_bytes(buf.tobytes())
    assert min(p.stat().st_size for p in src.iterdir()) > 8_000_000
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    res = subprocess.run([sys.executable, "-c", BUILD, str(src), str(tmp_path / "out")], capture_output=True,
                         text=True, timeout=300, env={**env, "RAY_USAGE_STATS_ENABLED": "0"})
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    # runtime.retries=0: a task killed for memory (OOM) would have failed the build
    assert got == {"samples": 10, "rejects": {}, "store": 200 * 2**20}, got
