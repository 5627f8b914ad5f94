"""The latent cache: a corpus VAE-encoded once into shards of latents + text features that training reads.

Build (``omnilv cache-latents``): :func:`pipelines.ingest.read_corpus` (manifest-listed shards, whitelisted
members, centre or seeded crops) -> :class:`EncodeLatents` on an actor pool (GPU actors when asked) ->
rows hashed by key into shards -> ``groupby(shard).map_groups(write_shard)``, each shard committed with
:class:`pipelines.storage.Store` -> ``latents.json`` -> ``manifest.json`` last, as a corpus build does.

One sample = ``target.npy``, ``input.npy`` (latents (C, h, w)), ``ref_input.npy``/``ref_target.npy`` (when
the sample has an exemplar), ``text.npy`` (instruction features (n, D), its n real tokens), ``txt``, ``json``.
Arrays are ``np.save(allow_pickle=False)`` float32; readers ``np.load(allow_pickle=False)`` only whitelisted
members, so nothing is ever unpickled. Images are encoded in zero-padded micro-batches of a fixed size and
each instruction alone, so a sample's bytes never depend on its neighbours: the same corpus and settings
give the same bytes on CPU.

The member format is :mod:`training.data.latent_format`; training reads a cache through
:mod:`training.data.latent_read`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import ray

from omnilv.errors import OmniLVError
from pipelines import (
    JSON,
    MANIFEST,
    TXT,
    Manifest,
    SchemaError,
    ShardRecord,
    SkipLedger,
    Store,
    ensure_ray,
    join,
    load_manifest,
    read_corpus,
    s3_options,
    shard_name,
    tar_bytes,
)
from training.data.latent_format import (
    ARRAYS,
    COLUMNS,
    KIND,
    LATENTS_JSON,
    LatentCacheError,
    canonical_spec,
    npy_bytes,
)

#: What a cache build writes (and so the only names a rebuild deletes): its shards, latents.json, the manifest and
#: ``_cache.json``, the mark written first that makes the folder ours.
CACHE_STATE = "_cache.json"
CACHE_NAMES = re.compile(r"shard-\d{6}\.tar|latents\.json|manifest\.json|_cache\.json")


# -- building ----------------------------------------------------------------------------------------
class EncodeLatents:
    """Pixel rows -> member bytes: frozen codec and text encoder (read at hidden state ``text_layer``), loaded once
    per actor."""

    def __init__(self, codec: str, text: str, *, micro_batch: int, shards: int, text_layer: int = -1,
                 use_gpu: bool = False, threads: int = 1) -> None:
        import torch

        from training.model import ImageCodec, TextEncoder

        torch.set_num_threads(max(1, threads))
        self.device = torch.device("cuda" if use_gpu else "cpu")  # Ray gave this actor one GPU when asked
        self.codec = ImageCodec.from_spec(codec).eval().to(self.device)
        self.text = TextEncoder.from_spec(text, layer=text_layer).eval().to(self.device)
        self.micro, self.shards = micro_batch, shards
        self._texts: dict[str, tuple[bytes, int, int]] = {}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["key"])
        jobs = [(i, col) for i in range(n) for col in ARRAYS[:4]
                if col in ("target", "input") or bool(batch["ref_mask"][i])]
        latents = self._encode_images([np.asarray(batch[col][i]) for i, col in jobs])
        out: dict[str, np.ndarray] = {c: np.full(n, b"", dtype=object) for c in ARRAYS}
        for (i, col), lat in zip(jobs, latents, strict=True):
            out[col][i] = npy_bytes(lat)
        texts = [self._encode_text(str(t)) for t in batch["txt"]]
        out["text"][:] = [t[0] for t in texts]
        keys = [str(k) for k in batch["key"]]
        meta = [{"task": str(batch["task"][i]), "bucket": int(batch["bucket"][i]),
                 "ref": bool(batch["ref_mask"][i])} for i in range(n)]
        return {**out, "key": np.array(keys, dtype=object), "txt": np.array(batch["txt"], dtype=object),
                "json": np.array([json.dumps(m, sort_keys=True).encode() for m in meta], dtype=object),
                "shard": np.array([shard_of(k, self.shards) for k in keys], dtype=np.int64),
                "text_len": np.array([t[1] for t in texts], dtype=np.int64),
                "text_dim": np.array([t[2] for t in texts], dtype=np.int64)}

    def _encode_images(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Same-shape images in zero-padded micro-batches of one fixed size (CPU kernels vary with batch size)."""
        from training.data.batches import to_tensor

        out: list[np.ndarray] = [np.empty(0)] * len(images)
        by_shape: dict[tuple, list[int]] = defaultdict(list)
        for j, img in enumerate(images):
            by_shape[(img.shape, img.dtype.str)].append(j)  # inputs travel as uint8, targets as uint16
        for (shape, _), idx in by_shape.items():
            for s in range(0, len(idx), self.micro):
                chunk = idx[s:s + self.micro]
                x = np.zeros((self.micro, *shape), dtype=images[chunk[0]].dtype)  # uint8 / uint16 rows
                x[:len(chunk)] = [images[j] for j in chunk]
                lat = self.codec.encode(to_tensor(x).to(self.device)).float().cpu().numpy()  # (micro, C, h, w)
                for k, j in enumerate(chunk):
                    out[j] = lat[k]
        return out

    def _encode_text(self, t: str) -> tuple[bytes, int, int]:
        """(features of the real tokens as .npy bytes, tokens, width); each distinct instruction encoded alone."""
        if t not in self._texts:
            if len(self._texts) > 4096:  # bounded: a corpus of unique instructions must not leak memory
                self._texts.clear()
            emb, mask = self.text.encode([t])
            n = int(mask[0].sum())
            self._texts[t] = (npy_bytes(emb[0, :n].float().cpu().numpy()), n, int(emb.shape[-1]))
        return self._texts[t]


def shard_of(key: str, shards: int) -> int:
    """Stable shard of a sample key: independent of read order, workers and batch boundaries."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:12], 16) % shards


def write_shard(group: dict[str, np.ndarray], *, out: str, options: dict[str, Any]) -> dict[str, np.ndarray]:
    """One shard's rows (sorted by key) -> a committed tar; returns its manifest record and text sizes."""
    samples, tasks = [], Counter()
    for i in np.argsort(group["key"].astype(str), kind="stable"):
        sample = {"__key__": str(group["key"][i]), TXT: str(group["txt"][i]).encode("utf-8"),
                  JSON: bytes(group["json"][i])}
        sample.update({m: bytes(group[c][i]) for m, c in COLUMNS.items() if c in ARRAYS and len(group[c][i])})
        tasks[json.loads(sample[JSON])["task"]] += 1
        samples.append(sample)
    data = tar_bytes(samples, tuple(COLUMNS))
    name = shard_name(int(group["shard"][0]))
    Store(out, options).write(name, data)
    record = {"name": name, "samples": len(samples), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
              "tasks": dict(sorted(tasks.items()))}
    return {"record": np.array([json.dumps(record, sort_keys=True)], dtype=object),
            "text_len": np.array([int(group["text_len"].max())]), "text_dim": np.array([int(group["text_dim"][0])])}


@dataclass
class CacheResult:
    """What a finished cache build leaves behind."""

    root: str
    samples: int
    shards: int
    meta: dict[str, Any]
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def cache_latents(corpus: str, out: str, codec: str, text: str, *, sizes: list[tuple[int, int]],
                  text_layer: int = -1, random_crop: bool = False, use_exemplars: bool = False, batch_size: int = 8,
                  num_gpus: float = 0.0, concurrency: int | None = None, num_cpus: float = 1.0,
                  shards: int | None = None, seed: int = 0, overwrite: bool = False,
                  progress: bool = False, address: str | None = None) -> CacheResult:
    """Encode ``corpus`` at ``sizes`` with ``codec``/``text`` (its hidden state ``text_layer``, as the training
    config's) into a latent cache at ``out``.

    One actor per GPU (``num_gpus=1``) or ``concurrency`` CPU actors; ``shards`` defaults to the corpus' count.
    Joins Ray at ``address`` (or ``$RAY_ADDRESS``, else a private local instance) unless it is already up.
    """
    from training.model import ImageCodec

    t0 = time.perf_counter()
    source = load_manifest(corpus)  # clear errors for a missing corpus or codec/text folder, before any Ray work
    codec_obj = ImageCodec.from_spec(codec)
    check_specs(text, codec_obj.downsample, sizes)
    store = Store(out, s3_options() if "://" in out else None)
    prepare_out(store, corpus, overwrite)
    ensure_ray(address)
    ray.data.DataContext.get_current().enable_progress_bars = progress
    n_shards = shards or max(1, len(source.shards))
    if concurrency is None:
        concurrency = max(1, int(ray.cluster_resources().get("GPU", 1))) if num_gpus else 1
    ledger = SkipLedger.remote()
    ds = read_corpus(corpus, sizes, random_crop=random_crop, use_exemplars=use_exemplars, seed=seed, ledger=ledger)
    encoder = dict(codec=codec, text=text, text_layer=text_layer, micro_batch=batch_size, shards=n_shards,
                   use_gpu=bool(num_gpus), threads=int(num_cpus))
    ds = ds.map_batches(EncodeLatents, fn_constructor_kwargs=encoder, batch_size=batch_size, batch_format="numpy",
                        num_cpus=num_cpus, num_gpus=num_gpus,
                        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=concurrency))
    writer = {"out": store.root, "options": store.options}
    rows = ds.groupby("shard", num_partitions=min(n_shards, 64)).map_groups(
        write_shard, fn_kwargs=writer, batch_format="numpy", num_cpus=0.25).take_all()
    if not rows:
        raise LatentCacheError(f"{corpus}: no readable sample; nothing to cache")
    meta = _meta(corpus, codec, text, text_layer, codec_obj, sizes, random_crop, use_exemplars, seed)
    meta.update(text_len=max(int(r["text_len"]) for r in rows), text_dim=int(rows[0]["text_dim"]))
    return _commit(store, rows, meta, dict(sorted(ray.get(ledger.totals.remote()).items())), t0)


def _commit(store: Store, rows: list[dict[str, Any]], meta: dict[str, Any], skipped: dict[str, int],
            t0: float) -> CacheResult:
    """``latents.json``, then ``manifest.json`` last: readers see the whole cache or none of it."""
    records = sorted((ShardRecord.from_json(json.loads(r["record"])) for r in rows), key=lambda s: s.name)
    meta["samples"] = sum(s.samples for s in records)
    store.write(LATENTS_JSON, json.dumps(meta, indent=1, sort_keys=True).encode())
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
    manifest = Manifest(records, digest, extra={"kind": KIND, "samples": meta["samples"], "skipped": skipped})
    store.write(MANIFEST, manifest.to_json().encode())
    return CacheResult(store.root, meta["samples"], len(records), meta, skipped, time.perf_counter() - t0)


def _meta(corpus: str, codec: str, text: str, text_layer: int, codec_obj: Any, sizes: list[tuple[int, int]],
          random_crop: bool, use_exemplars: bool, seed: int) -> dict[str, Any]:
    """``latents.json``: what the cache was built from and with; training refuses a cache that differs
    (:func:`training.data.latent_read.check_fits`)."""
    url = join(corpus, MANIFEST)
    with fsspec.open(url, "rb", **(s3_options() if url.startswith("s3://") else {})) as f:
        source_sha = hashlib.sha256(f.read()).hexdigest()
    vae = getattr(codec_obj.vae, "config", None)
    scaling = {"scaling_factor": float(vae.scaling_factor or 1.0) if vae else 1.0,
               "shift_factor": float(getattr(vae, "shift_factor", None) or 0.0) if vae else 0.0}
    ds_factor, ch = codec_obj.downsample, codec_obj.channels
    return {"kind": KIND, "version": 1, "codec": canonical_spec(codec), "text": canonical_spec(text),
            "text_layer": int(text_layer), "channels": ch, "downsample": ds_factor, "scaling": scaling,
            "sizes": [list(s) for s in sizes],
            "latent_shapes": [[ch, h // ds_factor, w // ds_factor] for h, w in sizes],
            "use_exemplars": use_exemplars, "random_crop": random_crop, "seed": seed,
            "corpus": corpus, "corpus_manifest_sha256": source_sha}


def check_specs(text: str, downsample: int, sizes: list[tuple[int, int]]) -> None:
    """Fail on the driver, not inside an actor: a missing text encoder folder, crops the codec cannot divide."""
    if text not in ("tiny", "minilm") and not (Path(text) / "config.json").is_file():
        raise LatentCacheError(f"text encoder {text!r}: {text} is not a Hugging Face model folder (no config.json); "
                               "use 'tiny', 'minilm' or a local folder")
    if any(h % downsample or w % downsample for h, w in sizes):
        raise LatentCacheError(f"crop sizes {sizes} must be multiples of the codec's downsampling {downsample}")


def prepare_out(store: Store, corpus: str, overwrite: bool) -> None:
    """Make ``store`` ready for a cache build, deleting only what a cache build wrote there.

    Refused: a corpus, an output overlapping the corpus, the filesystem root, the home folder or a bucket root,
    a folder holding files but no cache of ours (with or without ``overwrite``), and a finished cache without
    ``overwrite``. ``_cache.json``, written before anything else, marks the folder as ours; a rebuild then
    removes only :data:`CACHE_NAMES` (and their temps): a user's file beside the cache stays.
    """
    src = corpus.rstrip("/") if "://" in corpus else os.path.abspath(corpus.removeprefix("file://"))
    if store.root == src or store.holds_corpus():
        raise LatentCacheError(f"{store.root} holds a corpus; write the latent cache to its own folder (--out)")
    if store.exists(MANIFEST):
        try:
            kind = Manifest.from_json(store.read(MANIFEST).decode(), store.path(MANIFEST)).extra.get("kind")
        except (SchemaError, UnicodeDecodeError) as exc:
            raise LatentCacheError(f"{store.root}: unreadable manifest ({exc}); choose another --out") from None
        if kind != KIND:
            raise LatentCacheError(f"{store.root} holds a corpus; write the latent cache to its own folder (--out)")
        if not overwrite:
            raise LatentCacheError(f"{store.root} already holds a latent cache; pass --overwrite to rebuild it "
                                   "or choose another --out")
    elif not store.exists(CACHE_STATE) and (foreign := store.list()):
        raise LatentCacheError(f"{store.root} is not empty ({len(foreign)} file(s), e.g. {foreign[0]!r}) and holds no "
                               "latent cache; write the cache to an empty folder (--out)")
    try:
        store.refuse_unsafe([corpus])
    except OmniLVError as exc:
        raise LatentCacheError(str(exc)) from None
    mine = [n for n in store.list() if CACHE_NAMES.fullmatch(n) and n != CACHE_STATE]
    store.remove(sorted(mine, key=lambda n: n != MANIFEST))  # manifest first: readers stop at once
    store.clean_temps(lambda n: bool(CACHE_NAMES.fullmatch(n)))
    store.write(CACHE_STATE, json.dumps({"kind": KIND, "corpus": corpus}, sort_keys=True).encode())
