"""Training ingest benchmark, one run: our Ray Data ingest vs a bare tarfile loop and webdataset's WebLoader.

    python bench/ingest.py [--samples 64] [--batch 8] [--out bench/results/ingest.json]

Same shards (built here from the bundled photos: a clean target and a noisy input, stored 1.25× the crop side,
PNG level 1), same crop, same batch size, same sample count and the same cores on all three sides, at 512² and
1024² crops. Every side ends with what a training worker takes: (B, 3, H, W) float tensors in [-1, 1].

  ours      ``read_corpus`` (read_webdataset -> DecodeCrop actors, one per core) -> ``iter_batches`` (one bucket)
            on a warm Ray: one untimed pass over the dataset first, then the timed pass
  bare      one process per core, each a ``tarfile`` loop over its shards: decode both PNGs, crop, send back;
            the parent stacks batches (the floor: no framework at all); target ours/bare ≥ 0.8
  webloader ``webdataset.WebDataset`` with the same decode + crop as a ``map``, ``batched``, in a ``WebLoader``
            with one worker per core, also after an untimed pass; target ours/webloader ≥ 1.0

Bare and WebLoader decode with the schema's own ``decode_png`` (OpenCV, one thread), as DecodeCrop does, so the
ratios measure the data path, not the decoder. Writes bench/results/ingest.json; ``omnilv cluster plan`` reads its
samples/s per core to say how many CPU cores per GPU the ingest needs at the training step rate.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import multiprocessing as mp
import os
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipelines import MANIFEST, Manifest, Sample, ShardRecord, crop_pair, decode_png, shard_name  # noqa: E402

SHARDS = 4  # ≥ cores on the machines this runs on, so every worker of every side has a shard


def build(root: Path, crop: int, samples: int) -> list[Path]:
    """``samples`` pairs over :data:`SHARDS` shards, images 1.25 × ``crop`` on a side; returns the shard paths."""
    from degradations import load_rgb, sample_paths

    side, rng = crop + crop // 4, np.random.default_rng(0)
    photos = []
    for p in sample_paths(min_side=300):
        img = load_rgb(p)
        s = min(img.shape[:2])
        img = img[:s, :s]
        photos.append(cv2.resize(img, (side, side), interpolation=cv2.INTER_CUBIC if s < side else cv2.INTER_AREA))
    root.mkdir(parents=True, exist_ok=True)
    records, paths = [], []
    for k in range(SHARDS):
        buf = io.BytesIO()
        n = len(range(k, samples, SHARDS))
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for i in range(k, samples, SHARDS):
                clean = np.clip(photos[i % len(photos)], 0, 1)
                noisy = np.clip(clean + rng.normal(0, 0.05, clean.shape), 0, 1).astype(np.float32)
                members = Sample(f"s{i:05d}", noisy, clean, "Remove the noise.", {"task": "denoise"}).to_members(1)
                for name, data in members.items():
                    if name != "__key__":
                        info = tarfile.TarInfo(f"s{i:05d}.{name}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
        path = root / shard_name(k)
        path.write_bytes(buf.getvalue())
        records.append(ShardRecord(shard_name(k), n, len(buf.getvalue()), "0" * 64))
        paths.append(path)
    (root / MANIFEST).write_text(Manifest(records).to_json())
    return paths


def decode_crop(members: dict, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """The peers' per-sample work: both PNGs decoded and cropped with one box (seeded by the key, as ours)."""
    rng = np.random.default_rng(zlib.crc32(str(members["__key__"]).encode()))
    return crop_pair(decode_png(members["input.png"]), decode_png(members["target.png"]), (crop, crop), rng)


def to_batch(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    from training.data.batches import to_tensor

    return {"input": to_tensor(np.stack([p[0] for p in pairs])), "target": to_tensor(np.stack([p[1] for p in pairs]))}


def _tar_worker(args: tuple[str, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    path, crop = args
    cv2.setNumThreads(1)
    out, members = [], {}
    with tarfile.open(path) as tar:
        for info in tar:
            key, _, ext = info.name.partition(".")
            if members and members["__key__"] != key:
                out.append(decode_crop(members, crop))
                members = {}
            members["__key__"] = key
            members[ext] = tar.extractfile(info).read()
    if members:
        out.append(decode_crop(members, crop))
    return out


def run_bare(pool, paths: list[Path], crop: int, batch: int) -> int:
    n, pending = 0, []
    for pairs in pool.imap_unordered(_tar_worker, [(str(p), crop) for p in paths]):
        pending.extend(pairs)
        while len(pending) >= batch:
            to_batch(pending[:batch])
            pending, n = pending[batch:], n + batch
    return n


def _wds_map(sample: dict, crop: int) -> tuple[np.ndarray, np.ndarray]:
    cv2.setNumThreads(1)
    return decode_crop(sample, crop)


def _collate(pairs: list) -> dict:
    return to_batch(list(pairs))


def make_webloader(paths: list[Path], crop: int, batch: int, workers: int):
    import webdataset as wds

    ds = (wds.WebDataset([str(p) for p in paths], shardshuffle=False, empty_check=False)
          .map(functools.partial(_wds_map, crop=crop)).batched(batch, collation_fn=_collate, partial=False))
    return wds.WebLoader(ds, batch_size=None, num_workers=workers, persistent_workers=True, prefetch_factor=2,
                         multiprocessing_context="spawn")  # never fork a process that runs Ray's threads


def run_loader(loader) -> int:
    return sum(int(b["input"].shape[0]) for b in loader)


def run_ours(ds, batch: int) -> int:
    from training.data.batches import iter_batches

    return sum(int(b["input"].shape[0]) for b in iter_batches(ds, batch, buckets=1))


def timed(fn) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = fn()
    return n, time.perf_counter() - t0


def bench_resolution(root: Path, crop: int, samples: int, batch: int, cores: int, pool) -> dict:
    from pipelines import read_corpus

    paths = build(root / f"c{crop}", crop, samples)
    ds = read_corpus(str(root / f"c{crop}"), [(crop, crop)], max_tasks=cores)
    loader = make_webloader(paths, crop, batch, cores)
    for warm in (lambda: run_ours(ds, batch), lambda: run_loader(loader), lambda: run_bare(pool, paths, crop, batch)):
        warm()  # untimed: a warm pass of every side first
    print(f"{crop}²: warm", flush=True)
    out: dict = {"crop": crop, "samples": samples}
    sides = {"bare": lambda: run_bare(pool, paths, crop, batch), "webloader": lambda: run_loader(loader),
             "ours": lambda: run_ours(ds, batch)}
    for name, fn in sides.items():
        n, dt = timed(fn)
        print(f"{crop}² {name}: {n} samples in {dt:.2f} s", flush=True)
        out[name] = {"samples": n, "seconds": dt, "samples_per_s": n / dt, "samples_per_s_per_core": n / dt / cores}
    out["ratio_vs_bare"] = out["ours"]["samples_per_s"] / out["bare"]["samples_per_s"]
    out["ratio_vs_webloader"] = out["ours"]["samples_per_s"] / out["webloader"]["samples_per_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=64, help="samples per resolution (1024² uses half)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "ingest.json"))
    args = ap.parse_args()
    if args.samples % (2 * SHARDS * args.batch):
        # Each WebLoader worker batches its own shards (no partial batches): whole batches per shard at both sizes.
        ap.error(f"--samples must be a multiple of 2 × {SHARDS} shards × --batch = {2 * SHARDS * args.batch}")
    from pipelines import ensure_ray

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    ensure_ray(num_cpus=cores)
    results = {}
    with tempfile.TemporaryDirectory() as tmp, mp.get_context("spawn").Pool(cores) as pool:
        for crop, n in ((512, args.samples), (1024, args.samples // 2)):
            results[str(crop)] = bench_resolution(Path(tmp), crop, n, args.batch, cores, pool)
    report = {"cores": cores, "batch_size": args.batch, "resolutions": results,
              "targets": {"ratio_vs_bare": 0.8, "ratio_vs_webloader": 1.0},
              "notes": "samples/s of (B,3,H,W) [-1,1] training batches; ours = read_corpus + iter_batches on a warm "
                       "Ray; bare = tarfile loop, one process per core; webloader = webdataset WebLoader, one worker "
                       "per core; same shards, crop, batch and decoder (decode_png)"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"{'crop':>5} {'side':>10} {'samples/s':>10} {'per core':>9}   ratio ours/side (target)")
    for crop, r in results.items():
        for side, target in (("ours", None), ("bare", 0.8), ("webloader", 1.0)):
            ratio = "" if target is None else f"{r[f'ratio_vs_{side}']:.3f} (≥ {target})"
            print(f"{crop:>5} {side:>10} {r[side]['samples_per_s']:>10.2f} {r[side]['samples_per_s_per_core']:>9.2f}"
                  f"   {ratio}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
