"""Training ingest: manifest-listed shards -> Ray Data rows of aligned, cropped float32 images.

``ray.data.read_webdataset`` reads the shards the manifest lists (never a glob of the prefix).
Its built-in decoder is switched off: our :class:`WhitelistDecoder` receives each sample's raw
bytes, keeps only the members of :data:`pipelines.schema.MEMBERS` and names the others in a
``skipped`` column, so a ``.pyd``/``.pickle`` member is never deserialised. :class:`DecodeCrop`
then decodes PNGs with the schema's own decoder, drops corrupt samples, crops input and target
with one box (seeded per key), and counts every skip in a :class:`SkipLedger` actor.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

import cv2
import numpy as np
import ray

from pipelines.read import shard_urls, skip_reason
from pipelines.schema import INPUT, JSON, REF_INPUT, REF_TARGET, TARGET, TXT, Sample, SchemaError
from pipelines.storage import arrow_filesystem, arrow_path

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
    """Raw rows -> float32 (H, W, 3) images in [0, 1], one crop box per (input, target) pair.

    Random crops are seeded by (seed, sample key, epoch): the same in every rerun, new in every epoch. Ray Data
    starts new decoders for each pass over the dataset; each reads the epoch from the ledger when it starts.
    """

    def __init__(self, sizes: list[tuple[int, int]], random_crop: bool, use_exemplars: bool, seed: int,
                 ledger: Any = None) -> None:
        cv2.setNumThreads(1)  # one thread per task: the train workers own the cores
        self.sizes, self.random_crop, self.use_exemplars = [tuple(s) for s in sizes], random_crop, use_exemplars
        self.seed, self.ledger = seed, ledger
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
        return {"key": sample.key, "txt": sample.instruction, "task": str(sample.meta.get("task", "")),
                "input": inp, "target": tgt, "ref_input": ref_in, "ref_target": ref_tgt,
                "ref_mask": np.bool_(has_ref), "bucket": np.int32(bucket)}


def stack_rows(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Decoded rows -> a numpy batch (images stacked, ragged ones as object arrays, strings as objects)."""
    if not rows:
        return {"key": np.array([], dtype=object), "txt": np.array([], dtype=object)}
    out: dict[str, np.ndarray] = {}
    for col in rows[0]:
        vals = [r[col] for r in rows]
        if isinstance(vals[0], np.ndarray) and vals[0].ndim == 3:
            same = all(v.shape == vals[0].shape for v in vals)
            out[col] = np.stack(vals).astype(np.float32) if same else _ragged(vals)
        elif isinstance(vals[0], str):
            out[col] = np.array(vals, dtype=object)
        else:
            out[col] = np.array(vals)
    return out


def _ragged(vals: list[np.ndarray]) -> np.ndarray:
    arr = np.empty(len(vals), dtype=object)
    arr[:] = [np.ascontiguousarray(v, dtype=np.float32) for v in vals]
    return arr


def read_corpus(corpus: str, sizes: list[tuple[int, int]], *, random_crop: bool = True, use_exemplars: bool = False,
                seed: int = 0, read_cpus: float = 0.25, max_tasks: int = 2, ledger: Any = None,
                skip_shards: int = 0) -> ray.data.Dataset:
    """The training dataset of ``corpus``: rows {key, txt, task, input, target, ref_*, ref_mask, bucket}.

    ``skip_shards`` leaves out the manifest's first shards (a resumed run's rest of an epoch).
    """
    urls = shard_urls(corpus)[skip_shards:]
    if not urls:
        raise SchemaError(f"{corpus}: the manifest lists no shards" + (f" after the first {skip_shards}"
                                                                     if skip_shards else ""))
    fs = arrow_filesystem(urls[0])
    urls = [arrow_path(u) for u in urls]
    ds = ray.data.read_webdataset(urls, filesystem=fs, decoder=WhitelistDecoder(), num_cpus=read_cpus,
                                  concurrency=min(max_tasks, len(urls)), override_num_blocks=len(urls),
                                  file_extensions=None)
    return ds.map_batches(DecodeCrop, fn_constructor_kwargs=dict(
        sizes=sizes, random_crop=random_crop, use_exemplars=use_exemplars, seed=seed, ledger=ledger),
        batch_size=16, batch_format="numpy", num_cpus=read_cpus,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max_tasks))
