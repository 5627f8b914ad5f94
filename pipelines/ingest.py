"""Training ingest: manifest-listed shards -> Ray Data rows of aligned, cropped float32 images.

``ray.data.read_webdataset`` reads the shards the manifest lists (never a glob of the prefix), after
:func:`intact_shards` has left out any whose size differs from the manifest's (a tar cut short would fail the whole
Ray read) and counted it in the :class:`SkipLedger`.
Its built-in decoder is switched off: our :class:`WhitelistDecoder` receives each sample's raw
bytes, keeps only the members of :data:`pipelines.schema.MEMBERS` and names the others in a
``skipped`` column, so a ``.pyd``/``.pickle`` member is never deserialised. :class:`DecodeCrop`
then decodes PNGs with the schema's own decoder, drops corrupt samples, crops input and target
with one box (seeded per key), and counts every skip in a :class:`SkipLedger` actor.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from typing import Any

import cv2
import numpy as np
import ray

from pipelines.read import load_manifest, skip_reason
from pipelines.schema import INPUT, JSON, REF_INPUT, REF_TARGET, TARGET, TXT, Manifest, Sample, SchemaError
from pipelines.storage import Store, arrow_filesystem, arrow_path, is_remote, join, s3_options, with_retries

log = logging.getLogger(__name__)

#: Row columns: the whitelisted members under plain names (no dots), raw bytes until DecodeCrop.
COLUMNS = {INPUT: "input", TARGET: "target", TXT: "txt", JSON: "json", REF_INPUT: "ref_input",
           REF_TARGET: "ref_target"}


@ray.remote(num_cpus=0)
class SkipLedger:
    """The ingest's shared state: counts of skipped members and samples, by reason, summed over every ingest
    task; and the epoch the training loop is reading, which seeds :class:`DecodeCrop`'s crops."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self._epoch = 0

    def add(self, counts: dict[str, int]) -> None:
        self.counts.update(counts)

    def totals(self) -> dict[str, int]:
        return dict(self.counts)

    def set_epoch(self, epoch: int) -> None:
        """Called by every training worker before it starts a pass (they agree on the number)."""
        self._epoch = int(epoch)

    def epoch(self) -> int:
        return self._epoch


class WhitelistDecoder:
    """The ``decoder=`` of ``read_webdataset``: raw member bytes in, whitelisted raw bytes out.

    ``columns`` maps whitelisted member names to row columns (the corpus schema's by default).
    """

    def __init__(self, columns: dict[str, str] | None = None) -> None:
        self.columns = dict(columns or COLUMNS)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        row: dict[str, Any] = {"key": str(sample.get("__key__", "?"))}
        skipped = []
        for name, value in sample.items():
            if name.startswith("__"):
                continue
            if name in self.columns:
                row[self.columns[name]] = bytes(value)
            else:  # never decoded: only its extension is recorded, for the count
                skipped.append(name.rsplit(".", 1)[-1] or name)
        for col in self.columns.values():
            row.setdefault(col, b"")
        row["skipped"] = ",".join(skipped)
        return row


def choose_bucket(h: int, w: int, sizes: list[tuple[int, int]]) -> int:
    """Index of the bucket whose aspect ratio is nearest the image's (log scale: 2:1 and 1:2 are equally far)."""
    ratio = np.log(h / w)
    return int(np.argmin([abs(ratio - np.log(bh / bw)) for bh, bw in sizes]))


def _cover(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Resize (keeping aspect) so the image covers h×w; images already large enough are untouched."""
    ih, iw = img.shape[:2]
    scale = max(h / ih, w / iw)
    if scale <= 1.0:
        return img
    size = (max(w, round(iw * scale)), max(h, round(ih * scale)))
    return cv2.resize(img, size, interpolation=cv2.INTER_CUBIC)


def crop_pair(a: np.ndarray, b: np.ndarray, size: tuple[int, int], rng: np.random.Generator | None) -> tuple:
    """Crop ``a`` and ``b`` (aligned: b's size wins) with one box; random if ``rng`` else centred."""
    h, w = size
    if a.shape[:2] != b.shape[:2]:
        a = cv2.resize(a, (b.shape[1], b.shape[0]), interpolation=cv2.INTER_CUBIC)
    a, b = _cover(a, h, w), _cover(b, h, w)
    ih, iw = b.shape[:2]
    y = int(rng.integers(0, ih - h + 1)) if rng is not None else (ih - h) // 2
    x = int(rng.integers(0, iw - w + 1)) if rng is not None else (iw - w) // 2
    return a[y:y + h, x:x + w], b[y:y + h, x:x + w]


def _rng(seed: int, key: str, epoch: int = 0) -> np.random.Generator:
    """The crop generator of one sample in one epoch (epoch 0 keeps the stream it had before epochs counted)."""
    words = [seed, int(hashlib.sha1(key.encode()).hexdigest()[:12], 16)]
    return np.random.default_rng(words + [epoch] if epoch else words)


class RowDecoder:
    """A ``map_batches`` stage that decodes rows one by one: members the whitelist dropped and rows whose
    decoding raises one of :attr:`errors` are counted by reason in the :class:`SkipLedger`, never fatal."""

    errors: tuple[type[Exception], ...] = (SchemaError,)
    ledger: Any = None

    def reason(self, exc: Exception) -> str:
        return skip_reason(exc)

    def _one(self, row: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        counts: Counter = Counter()
        rows = []
        for i in range(len(batch["key"])):
            for ext in filter(None, str(batch["skipped"][i]).split(",")):
                counts[f"member:{ext}"] += 1
            try:
                rows.append(self._one({c: batch[c][i] for c in batch}))
            except self.errors as exc:
                counts[f"corrupt:{self.reason(exc)}"] += 1
        if self.ledger is not None and counts:
            self.ledger.add.remote(dict(counts))
        return stack_rows(rows)


class DecodeCrop(RowDecoder):
    """Raw rows -> (H, W, 3) crops, one crop box per (input, target) pair: inputs uint8, targets uint16
    (:func:`to_pixels`).

    Random crops are seeded by (seed, sample key, epoch): the same in every rerun, new in every epoch. Ray Data
    starts new decoders for each pass over the dataset; each reads the epoch from the ledger when it starts.
    """

    def __init__(self, sizes: list[tuple[int, int]], random_crop: bool, use_exemplars: bool, seed: int,
                 ledger: Any = None, keep_json: bool = False) -> None:
        cv2.setNumThreads(1)  # one thread per task: the train workers own the cores
        self.sizes, self.random_crop, self.use_exemplars = [tuple(s) for s in sizes], random_crop, use_exemplars
        self.seed, self.ledger, self.keep_json = seed, ledger, keep_json
        self.epoch = ray.get(ledger.epoch.remote()) if ledger is not None and random_crop else 0

    def _one(self, row: dict[str, Any]) -> dict[str, Any]:
        members = {"__key__": row["key"]}
        for member, col in COLUMNS.items():
            if len(row[col]):
                members[member] = bytes(row[col])
        sample = Sample.from_members(members)
        rng = _rng(self.seed, sample.key, self.epoch) if self.random_crop else None
        bucket = choose_bucket(*sample.target.shape[:2], self.sizes)
        size = self.sizes[bucket]
        inp, tgt = crop_pair(sample.input, sample.target, size, rng)
        has_ref = self.use_exemplars and sample.ref_input is not None
        if has_ref:
            ref_in, ref_tgt = crop_pair(sample.ref_input, sample.ref_target, size, rng)
        else:
            ref_in = ref_tgt = np.zeros_like(tgt)
        inp, ref_in = to_pixels(inp, np.uint8), to_pixels(ref_in, np.uint8)
        tgt, ref_tgt = to_pixels(tgt, np.uint16), to_pixels(ref_tgt, np.uint16)
        row = {"key": sample.key, "txt": sample.instruction, "task": str(sample.meta.get("task", "")),
               "input": inp, "target": tgt, "ref_input": ref_in, "ref_target": ref_tgt,
               "ref_mask": np.bool_(has_ref), "bucket": np.int32(bucket)}
        if self.keep_json:  # the record as stored (annotation tasks read their instances from it)
            if inp.shape[:2] != sample.target.shape[:2]:
                raise SchemaError(f"sample {sample.key}: stored at {sample.target.shape[1]}x{sample.target.shape[0]}, "
                                  f"read at {size[1]}x{size[0]}: its annotations would not fit the crop")
            row["json"] = json.dumps(sample.meta, sort_keys=True)
        return row


def to_pixels(img: np.ndarray, dtype: type) -> np.ndarray:
    """A float [0, 1] crop as the integers rows travel in: inputs are 8-bit PNGs (uint8, exact), targets 8- or 16-bit
    (uint16, exact for both: k/255 is 257k/65535). A quarter and a half of float32's bytes through the object store
    and into the trainer; :func:`training.data.to_tensor` turns them back into floats."""
    peak = float(np.iinfo(dtype).max)
    return np.rint(np.clip(img, 0.0, 1.0) * peak).astype(dtype)


def stack_rows(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Decoded rows -> a numpy batch (images stacked, ragged ones as object arrays, strings as objects)."""
    if not rows:
        return {"key": np.array([], dtype=object), "txt": np.array([], dtype=object)}
    out: dict[str, np.ndarray] = {}
    for col in rows[0]:
        vals = [r[col] for r in rows]
        if isinstance(vals[0], np.ndarray) and vals[0].ndim == 3:
            same = all(v.shape == vals[0].shape for v in vals)
            out[col] = np.stack(vals) if same else _ragged(vals)
        elif isinstance(vals[0], str):
            out[col] = np.array(vals, dtype=object)
        else:
            out[col] = np.array(vals)
    return out


def _ragged(vals: list[np.ndarray]) -> np.ndarray:
    arr = np.empty(len(vals), dtype=object)
    arr[:] = [np.ascontiguousarray(v) for v in vals]
    return arr


def read_corpus(corpus: str, sizes: list[tuple[int, int]], *, random_crop: bool = True, use_exemplars: bool = False,
                seed: int = 0, read_cpus: float = 0.25, max_tasks: int = 2, ledger: Any = None,
                skip_shards: int = 0, keep_json: bool = False) -> ray.data.Dataset:
    """The training dataset of ``corpus``: rows {key, txt, task, input, target, ref_*, ref_mask, bucket[, json]}.

    ``keep_json`` adds each sample's json record (annotation tasks need their instances); the samples must then
    be read at their stored size (no crop), or they are counted as corrupt.

    ``skip_shards`` leaves out the manifest's first shards (a resumed run's rest of an epoch); shards whose size
    differs from the manifest's are left out and counted (:func:`intact_shards`).
    """
    urls = intact_shards(corpus, skip_shards=skip_shards, ledger=ledger)
    return read_shards(urls, COLUMNS, read_cpus=read_cpus, max_tasks=max_tasks).map_batches(
        DecodeCrop, fn_constructor_kwargs=dict(
            sizes=sizes, random_crop=random_crop, use_exemplars=use_exemplars, seed=seed, ledger=ledger,
            keep_json=keep_json),
        batch_size=16, batch_format="numpy", num_cpus=read_cpus,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max_tasks))


def read_shards(urls: list[str], columns: dict[str, str], *, read_cpus: float = 0.25,
                max_tasks: int = 2) -> ray.data.Dataset:
    """Raw rows of the shards at ``urls`` (one block each): ``key``, the ``columns`` as bytes, ``skipped``."""
    fs = arrow_filesystem(urls[0])
    paths = [arrow_path(u) for u in urls]
    return ray.data.read_webdataset(paths, filesystem=fs, decoder=WhitelistDecoder(columns), num_cpus=read_cpus,
                                    concurrency=min(max_tasks, len(paths)), override_num_blocks=len(paths),
                                    file_extensions=None)


def intact_shards(root: str, manifest: Manifest | None = None, *, skip_shards: int = 0,
                  ledger: Any = None) -> list[str]:
    """URLs of the manifest's shards (after the first ``skip_shards``) whose size is the manifest's ``bytes``.

    ``ray.data.read_webdataset`` fails the whole read on a tar cut inside a member, so every listed shard's size is
    checked first and one that is shorter (``shard:truncated``), longer (``shard:size``) or gone
    (``shard:missing``) is left out, counted in ``ledger`` and logged. A shard of the right size is read whole.
    A :class:`SchemaError` when the manifest lists none, or every one is left out.
    """
    manifest = manifest or load_manifest(root)
    records = manifest.shards[skip_shards:]
    after = f" after the first {skip_shards}" if skip_shards else ""
    if not records:
        raise SchemaError(f"{root}: the manifest lists no shards{after}")
    found = stored_sizes(root)
    urls, counts, bad = [], Counter(), []
    for rec in records:
        got = found.get(rec.name)
        if got == rec.bytes:
            urls.append(join(root, rec.name))
            continue
        counts["shard:missing" if got is None else "shard:truncated" if got < rec.bytes else "shard:size"] += 1
        bad.append(f"{rec.name} ({'missing' if got is None else f'{got} bytes'}, the manifest says {rec.bytes})")
    if bad:
        log.warning("%s: %d of %d shards left out, their size is not the manifest's: %s", root, len(bad),
                    len(records), "; ".join(bad[:5]) + (" …" if len(bad) > 5 else ""))
        if ledger is not None:
            ledger.add.remote(dict(counts))
    if not urls:
        raise SchemaError(f"{root}: every shard the manifest lists{after} is missing or not the size it lists "
                          f"(e.g. {bad[0]}); they were cut or changed after they were written: rebuild it or "
                          "restore its shards")
    return urls


def stored_sizes(root: str) -> dict[str, int]:
    """Size of every file under ``root`` (local folder or ``s3://`` prefix) by its name relative to ``root``.

    One listing, not a stat per shard: on S3 a request per 1,000 objects, where a 40M-sample corpus has ~156k shards.
    """
    store = Store(root, s3_options() if is_remote(root) else None)  # no listing cache: the sizes as they are now
    base = store.root.removeprefix("s3://")
    try:
        found = with_retries(lambda: store.fs.find(base, detail=True), f"list {store.root}")
    except FileNotFoundError:
        return {}
    return {p[len(base) + 1:]: int(info["size"]) for p, info in found.items() if p.startswith(base + "/")}
