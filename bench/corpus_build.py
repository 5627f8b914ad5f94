"""Benchmark of `omnilv corpus build` against a bare floor and a BasicSR-style peer, in one run.

    python bench/corpus_build.py [--resolution 512] [--variants 1]

Same sources (the bundled photos, short side resized to the resolution), same cores, same sample count:
  builder  build_corpus with the Real-ESRGAN second-order chain (10x the base sample count) on a warm Ray
  floor    decode + crop + the same lossless PNG encodes + tar append, no degradation (process pool)
  peer     what a capable user of BasicSR-style code, torch and webdataset would write: a faithful BasicSR-style
           Real-ESRGAN degradation (global np.random) in a torch Dataset that also encodes its PNGs with OpenCV
           at the builder's level, a DataLoader with one worker per core (OpenCV one thread each), each worker
           keeping its last few decoded sources, feeding webdataset's ShardWriter (which then only writes
           bytes); its workers are started and warmed by an untimed epoch first, as the builder runs on a warm
           Ray after an untimed 1x build. Floor and peer each run just before and just after the builder,
           averaged. BasicSR itself does not import here.
  degradation only  the Real-ESRGAN chain alone, ours (``synthesize``, as the builder calls it) vs the peer's,
           on the same crops, one core, process CPU time, calls interleaved: the design-only comparison.
  RSS      peak RSS of the whole process tree (driver + Ray) at 1x and 10x the sample count
Writes bench/results/corpus_build.json (the cluster planner reads its per-core figures).
"""
# The peer reproduces BasicSR's global-RNG style on purpose (it is the counter-example being measured).
# ruff: noqa: NPY002

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelines.build import build_corpus, plan, tar_bytes  # noqa: E402
from pipelines.config import CorpusConfig, load_corpus_config  # noqa: E402


class PeakRSS:
    """Peak summed RSS (MB) of this process and all its descendants, sampled every 50 ms."""

    def __init__(self) -> None:
        import psutil

        self.proc, self.peak, self._stop = psutil.Process(), 0.0, threading.Event()

    def _total(self) -> float:
        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            with contextlib.suppress(Exception):  # a child may exit between listing and reading
                total += p.memory_info().rss
        return total / 2**20

    def __enter__(self) -> PeakRSS:
        def loop() -> None:
            while not self._stop.wait(0.05):
                self.peak = max(self.peak, self._total())
        self._t = threading.Thread(target=loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


def config(out: Path, resolution: int, variants: int) -> CorpusConfig:
    return load_corpus_config(None, [
        f"output.path={out}", f"geometry.crop_size={resolution}", f"geometry.resize_short={resolution}",
        f"variants_per_source={variants}", "mixture.tasks={realesrgan: 1.0}", "mixture.exemplar_probability=0",
        "output.samples_per_shard=16"])


def run_builder(cfg: CorpusConfig, workers: int) -> tuple[float, float, object]:
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        res = build_corpus(cfg, progress=False, workers=workers)
        dt = time.perf_counter() - t0
    return res.manifest.samples / dt, rss.peak, res


# -- the bare floor ----------------------------------------------------------------------------------
def _floor_shard(args: tuple) -> int:
    import cv2

    from pipelines.schema import encode_png
    from pipelines.sources import fetch
    from pipelines.synth import crop_box, cut, decode_image, sample_rng

    cv2.setNumThreads(1)
    cfg_data, job, out = args
    cfg = CorpusConfig.model_validate(cfg_data)
    samples = []
    for uri in job.sources:
        img, _ = decode_image(fetch(uri), cfg.geometry)
        for v in range(cfg.variants_per_source):
            crop = cut(img, crop_box(img.shape, cfg.geometry, sample_rng(0, uri, v)))
            png = encode_png(crop, 8, cfg.output.png_level)
            samples.append({"__key__": f"k{len(samples):06d}", "input.png": png,
                            "target.png": encode_png(crop, 8, cfg.output.png_level), "txt": b"restore",
                            "json": json.dumps({"source": uri, "variant": v}).encode()})
    Path(out, job.name).write_bytes(tar_bytes(samples))
    return len(samples)


def run_floor(cfg: CorpusConfig, workers: int, out: Path) -> float:
    from pipelines.sources import list_sources

    out.mkdir(parents=True, exist_ok=True)
    jobs = plan(list_sources(cfg), cfg)
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(workers) as pool:
        n = sum(pool.map(_floor_shard, [(cfg.model_dump(mode="json"), j, str(out)) for j in jobs], chunksize=1))
    return n / (time.perf_counter() - t0)


# -- the naive peer: BasicSR's Real-ESRGAN degradation as BasicSR writes it (global np.random) --------
def _mesh(k: int) -> tuple[np.ndarray, np.ndarray]:
    ax = np.arange(-(k // 2), k // 2 + 1, dtype=np.float64)
    return np.meshgrid(ax, ax)


def _bivariate(k: int, sx: float, sy: float, theta: float, kind: str, beta: float) -> np.ndarray:
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    inv = np.linalg.inv(rot @ np.diag([sx**2, sy**2]) @ rot.T)
    xx, yy = _mesh(k)
    xy = np.stack([xx, yy], -1)
    q = np.sum((xy @ inv) * xy, -1)
    kern = {"gauss": np.exp(-0.5 * q), "generalized": np.exp(-0.5 * q**beta), "plateau": 1 / (q**beta + 1)}[kind]
    return kern / kern.sum()


def _sinc(k: int) -> np.ndarray:
    from scipy import special

    omega = np.random.uniform(np.pi / 3 if k < 13 else np.pi / 5, np.pi)
    xx, yy = _mesh(k)
    r = np.sqrt(xx**2 + yy**2)
    with np.errstate(divide="ignore", invalid="ignore"):
        kern = omega * special.j1(omega * r) / (2 * np.pi * r)
    kern[k // 2, k // 2] = omega**2 / (4 * np.pi)
    return kern / kern.sum()


def _kernel(sigma_max: float) -> np.ndarray:
    k = int(np.random.choice(np.arange(7, 22, 2)))
    if np.random.uniform() < 0.1:
        return _sinc(k)
    kind = np.random.choice(["iso", "aniso", "generalized", "plateau"], p=[0.45, 0.25, 0.15, 0.15])
    sx = np.random.uniform(0.2, sigma_max)
    sy = sx if kind == "iso" else np.random.uniform(0.2, sigma_max)
    beta = np.random.uniform(0.5, 4) if kind == "generalized" else np.random.uniform(1, 2)
    return _bivariate(k, sx, sy, np.random.uniform(-np.pi, np.pi), "gauss" if kind in ("iso", "aniso") else kind,
                      beta)


def _noise(img: np.ndarray, sigma_max: float, poisson_max: float) -> np.ndarray:
    """BasicSR's random_add_gaussian_noise / random_add_poisson_noise (gray_prob 0.4) as written there: float32
    noise, and grey Poisson noise drawn on one channel (basicsr/data/degradations.py)."""
    import cv2

    gray = np.random.uniform() < 0.4
    if np.random.uniform() < 0.5:
        sigma = np.random.uniform(1, sigma_max)
        noise = np.float32(np.random.randn(*(img.shape[:2] if gray else img.shape))) * sigma / 255.0
    else:
        scale = np.random.uniform(0.05, poisson_max)
        src = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) if gray else img
        src = np.clip((src * 255.0).round(), 0, 255) / 255.0
        vals = 2 ** np.ceil(np.log2(len(np.unique(src))))
        noise = (np.float32(np.random.poisson(src * vals) / float(vals)) - src) * scale
    if gray:
        noise = np.repeat(noise[:, :, np.newaxis], 3, axis=2)
    return np.clip(img + noise, 0, 1)


def _resize(img: np.ndarray, up: float, down: float) -> np.ndarray:
    import cv2

    mode = np.random.choice(["up", "down", "keep"], p=[0.2, 0.7, 0.1])
    scale = np.random.uniform(1, up) if mode == "up" else np.random.uniform(down, 1) if mode == "down" else 1.0
    interp = int(np.random.choice([cv2.INTER_AREA, cv2.INTER_LINEAR, cv2.INTER_CUBIC]))
    h, w = img.shape[:2]
    return cv2.resize(img, (max(1, int(w * scale)), max(1, int(h * scale))), interpolation=interp)


def _jpeg(img: np.ndarray) -> np.ndarray:
    import cv2

    q = int(np.random.uniform(30, 95))
    u8 = np.clip(img * 255, 0, 255).round().astype(np.uint8)
    _, buf = cv2.imencode(".jpg", u8, [cv2.IMWRITE_JPEG_QUALITY, q])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR).astype(np.float32) / 255


def basicsr_degrade(gt: np.ndarray) -> np.ndarray:
    """Real-ESRGAN's second-order degradation, written the BasicSR way."""
    import cv2

    h, w = gt.shape[:2]
    img = cv2.filter2D(gt, -1, _kernel(3.0))
    img = _jpeg(_noise(_resize(img, 1.5, 0.15), 30, 3.0))
    if np.random.uniform() < 0.8:
        img = cv2.filter2D(img, -1, _kernel(1.5))
    img = _noise(_resize(img, 1.2, 0.3), 25, 2.5)
    final_resize = lambda x: cv2.resize(x, (w // 4, h // 4), interpolation=cv2.INTER_LINEAR)  # noqa: E731
    if np.random.uniform() < 0.5:
        img = _jpeg(cv2.filter2D(final_resize(img), -1, _sinc(int(np.random.choice(np.arange(7, 22, 2))))))
    else:
        img = cv2.filter2D(final_resize(_jpeg(img)), -1, _sinc(int(np.random.choice(np.arange(7, 22, 2)))))
    return np.clip(cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC), 0, 1)


class PeerDataset:
    """A BasicSR-style paired dataset: read, resize, random crop and degrade per item, global np.random; the
    PNG encodes are done here, in the workers, with OpenCV at ``png_level`` (the builder's encoder and level)."""

    def __init__(self, items: list[tuple[str, int]], resolution: int, png_level: int) -> None:
        self.items, self.res, self.level = items, resolution, png_level
        self._decoded: dict[str, np.ndarray] = {}  # per worker: the last few sources (variants come in runs)

    def __len__(self) -> int:
        return len(self.items)

    def _source(self, uri: str) -> np.ndarray:
        import cv2

        from degradations.samples import data_dir

        if uri not in self._decoded:
            img = cv2.imread(str(data_dir() / uri.removeprefix("samples://")), cv2.IMREAD_COLOR)
            s = self.res / min(img.shape[:2])
            size = (max(self.res, round(img.shape[1] * s)), max(self.res, round(img.shape[0] * s)))
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
            self._decoded[uri] = np.clip(img.astype(np.float32) / 255, 0, 1)
            while len(self._decoded) > 4:
                self._decoded.pop(next(iter(self._decoded)))
        return self._decoded[uri]

    def __getitem__(self, i: int) -> dict:
        import cv2

        uri, variant = self.items[i]
        img = self._source(uri)
        top = np.random.randint(0, img.shape[0] - self.res + 1)
        left = np.random.randint(0, img.shape[1] - self.res + 1)
        gt = img[top:top + self.res, left:left + self.res]
        lq = basicsr_degrade(gt)

        def png(x: np.ndarray) -> bytes:
            u8 = np.clip(x * 255, 0, 255).round().astype(np.uint8)  # BGR already: OpenCV's order
            return cv2.imencode(".png", u8, [cv2.IMWRITE_PNG_COMPRESSION, self.level])[1].tobytes()

        return {"__key__": f"s{i:06d}", "input.png": png(lq), "target.png": png(gt),
                "txt": "Restore this image.", "json": {"source": uri, "variant": variant}}


def _one_thread(_: int) -> None:
    import cv2

    cv2.setNumThreads(1)  # the builder's workers run OpenCV on one thread each, too


PEER = ("BasicSR-style numpy port (global np.random) in a torch Dataset encoding PNGs with OpenCV at the builder's "
        "level; DataLoader, workers = cores, warmed by an untimed epoch -> webdataset.ShardWriter")


def run_peer(cfg: CorpusConfig, workers: int, out: Path) -> tuple[float, str]:
    """Samples/s of the peer over the same samples as the builder, its DataLoader workers already warm."""
    import torch
    import webdataset as wds

    from pipelines.sources import list_sources

    try:
        import basicsr  # noqa: F401

        kind = "basicsr installed, but its Real-ESRGAN chain is GPU-only; " + PEER
    except ImportError:
        kind = PEER
    items = [(u, v) for u in list_sources(cfg) for v in range(cfg.variants_per_source)]
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    # The sampler is a list set per epoch: the persistent workers are started and warmed (imports, a first
    # call each) by an untimed epoch of one item per worker, then the timed epoch runs every item.
    order = list(range(min(workers, len(items))))
    loader = torch.utils.data.DataLoader(PeerDataset(items, cfg.geometry.crop_size, cfg.output.png_level),
                                         batch_size=None, sampler=order, num_workers=workers,
                                         persistent_workers=True, worker_init_fn=_one_thread)
    for _ in loader:
        pass
    order[:] = range(len(items))
    t0 = time.perf_counter()
    with wds.ShardWriter(str(out / "peer-%06d.tar"), maxcount=cfg.output.samples_per_shard, verbose=0) as sink:
        for sample in loader:
            sink.write(sample)
    rate = len(items) / (time.perf_counter() - t0)
    del loader  # stops the persistent workers
    return rate, kind


# -- degradation only: the two chains on the same crops, one core ---------------------------------------
def _degradation_only(args: tuple) -> dict:
    """ms per sample of our chain (``synthesize``, as the builder calls it) and the peer's, same crops."""
    import cv2

    from degradations.compose import synthesize
    from pipelines.sources import fetch, list_sources
    from pipelines.synth import crop_box, cut, decode_image, get_task, sample_rng

    cfg_data, core = args
    os.sched_setaffinity(0, {core})
    cv2.setNumThreads(1)
    cfg = CorpusConfig.model_validate(cfg_data)
    task = get_task("realesrgan")
    np.random.seed(0)
    warm = np.random.default_rng(1).random((cfg.geometry.crop_size,) * 2 + (3,), dtype=np.float32)
    for i in range(8):  # untimed: lazy imports, compiled kernels, tables, several branches of each chain
        synthesize(task, warm, np.random.default_rng(i))
        basicsr_degrade(warm)
    ours = peer = 0.0
    n = 0
    for uri in list_sources(cfg):
        img, _ = decode_image(fetch(uri), cfg.geometry)
        for v in range(cfg.variants_per_source):
            rng = sample_rng(cfg.output.seed, uri, v, "sample")  # what the builder's make_part draws from
            crop = cut(img, crop_box(img.shape, cfg.geometry, rng))
            bgr = np.ascontiguousarray(crop[..., ::-1])  # the peer's convention, made outside the timing
            t0 = time.process_time()
            synthesize(task, crop, rng)
            t1 = time.process_time()
            basicsr_degrade(bgr)
            t2 = time.process_time()
            ours, peer, n = ours + t1 - t0, peer + t2 - t1, n + 1
    return {"ours_ms": round(1e3 * ours / n, 2), "peer_ms": round(1e3 * peer / n, 2), "samples": n,
            "ratio": round(peer / ours, 3), "clock": "process CPU time, one core, one OpenCV thread"}


def run_degradation_only(cfg: CorpusConfig) -> dict:
    core = sorted(os.sched_getaffinity(0))[-1]
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_degradation_only, ((cfg.model_dump(mode="json"), core),))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--variants", type=int, default=1, help="variants per source at 1x (10x uses ten times)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "corpus_build.json"))
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    # A warm Ray, as on a cluster (`omnilv cluster submit` connects to a running one); its start-up
    # is reported separately. The RSS figures include every Ray process (children of this one).
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray_start = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg1, cfg10 = (config(tmp / f"b{k}", args.resolution, args.variants * k) for k in (1, 10))
        _, rss1, _ = run_builder(cfg1, cores)
        # The floor and the peer run just before and just after the builder and are averaged: on a shared
        # machine the load changes by the minute, and bracketing keeps the ratios about the code, not the
        # neighbours.
        floor_before = run_floor(cfg10, cores, tmp / "floor_a")
        peer_before, peer_kind = run_peer(cfg10, cores, tmp / "peer_a")
        rate, rss10, res = run_builder(cfg10, cores)
        peer = (peer_before + run_peer(cfg10, cores, tmp / "peer_b")[0]) / 2
        floor = (floor_before + run_floor(cfg10, cores, tmp / "floor_b")) / 2
        degr = run_degradation_only(cfg10)
        n_bytes = sum(s.bytes for s in res.manifest.shards)
    # Per core: samples per second of shard-task time (one core each), i.e. what each added core contributes;
    # samples_per_s is the whole build call (listing, tasks, manifest, report) on the warm Ray.
    per_core = res.stats["built_samples"] / res.stats["task_seconds"]
    result = {
        "samples_per_s": round(rate, 3), "samples_per_s_per_core": round(per_core, 3), "cores": cores,
        "bytes_per_sample": round(n_bytes / res.manifest.samples), "resolution": args.resolution,
        "chain": "realesrgan", "samples": res.manifest.samples, "ray_start_s": round(ray_start, 2),
        "floor_samples_per_s": round(floor, 3),
        # the 1-minute load average around the run: on a shared machine, figures scale with it
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "peer_samples_per_s": round(peer, 3), "peer": peer_kind, "peer_samples": res.manifest.samples,
        # Both sides warm, same samples, same PNG encoder and level, same cores: vs_peer is the whole build;
        # vs_peer_degradation_only is the chain alone on one core (design without I/O or encoding).
        "degradation_only": degr,
        "ratios": {"vs_floor": round(rate / floor, 3), "vs_peer": round(rate / peer, 3),
                   "vs_peer_degradation_only": degr["ratio"], "rss_10x_over_1x": round(rss10 / rss1, 3)},
        "targets": {"vs_floor": 0.6, "vs_peer": 2.0, "rss_10x_over_1x": 1.2},
        "rss_mb": {"1x": round(rss1, 1), "10x": round(rss10, 1), "samples_1x": cfg1.variants_per_source * 19,
                   "samples_10x": res.manifest.samples},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    r = result["ratios"]
    print(f"builder {rate:.2f} samples/s on a warm Ray (start-up {ray_start:.1f} s not counted); {per_core:.2f} "
          "samples/s per core in shard tasks "
          f"({cores} cores, {args.resolution}px, realesrgan, {n_bytes / res.manifest.samples / 1e6:.2f} MB/sample)")
    print(f"floor   {floor:.2f} samples/s   builder/floor = {r['vs_floor']:.2f}  (target >= 0.6)")
    print(f"peer    {peer:.2f} samples/s   builder/peer  = {r['vs_peer']:.2f}  (target >= 2; whole build, both warm, "
          f"{res.manifest.samples} samples each)  [{peer_kind}]")
    print(f"degradation only, one core: ours {degr['ours_ms']:.1f} ms, peer {degr['peer_ms']:.1f} ms per sample: "
          f"peer/ours = {degr['ratio']:.2f}  ({degr['samples']} samples, same crops)")
    print(f"peak RSS {rss1:.0f} MB at 1x, {rss10:.0f} MB at 10x: ratio {r['rss_10x_over_1x']:.2f} (target <= 1.2)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
