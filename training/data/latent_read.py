"""Reading a latent cache (:mod:`training.data.latent_cache`) for training: checked against the config, never unpickled.

``ray.data.read_webdataset`` reads the shards the cache's manifest lists (those whose size is the manifest's: one
cut short is left out and counted, as in the corpus reader), with its decoder switched off: the
corpus reader's :class:`pipelines.ingest.WhitelistDecoder` keeps only the cache's members (``.pyd``,
``.pickle`` and any other member is named in ``skipped`` and counted, never deserialised);
:class:`DecodeLatents` then loads each ``.npy`` with ``allow_pickle=False`` and drops corrupt samples.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
import ray

from pipelines import JSON, RowDecoder, intact_shards, join, load_manifest, read_shards, s3_options
from training.data.latent_format import (
    ARRAYS,
    COLUMNS,
    KIND,
    LATENTS_JSON,
    CorruptMember,
    LatentCacheError,
    canonical_spec,
    load_npy,
)

if TYPE_CHECKING:
    from training.config import TrainConfig


def load_meta(root: str) -> dict[str, Any]:
    """``latents.json`` of the cache at ``root``."""
    url = join(root, LATENTS_JSON)
    try:
        with fsspec.open(url, "rt", encoding="utf-8", **(s3_options() if url.startswith("s3://") else {})) as f:
            meta = json.loads(f.read())
    except FileNotFoundError:
        raise LatentCacheError(f"{url}: no latents.json; is {root!r} a finished latent cache? "
                               "(build one with `omnilv cache-latents CONFIG --out …`)") from None
    except json.JSONDecodeError as exc:
        raise LatentCacheError(f"{url}: not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        raise LatentCacheError(f"{url}: not an omnilv latent cache description")
    return meta


def check_fits(meta: dict[str, Any], root: str, *, codec: str, text: str, text_layer: int,
               sizes: list[tuple[int, int]], use_exemplars: bool) -> None:
    """Refuse a cache built with another codec, text encoder or text layer, crop sizes, or without the exemplars
    needed. A cache from before the text layer was recorded holds the last layer's features (-1)."""
    wrong = [f"{name}: config {canonical_spec(want)!r}, cache {meta.get(name)!r}"
             for name, want in (("codec", codec), ("text", text)) if canonical_spec(want) != meta.get(name)]
    if int(meta.get("text_layer", -1)) != text_layer:
        wrong.append(f"text_layer: config {text_layer}, cache {int(meta.get('text_layer', -1))}")
    if [list(s) for s in sizes] != meta.get("sizes"):
        wrong.append(f"crop sizes (data.resolution/buckets): config {[list(s) for s in sizes]}, "
                     f"cache {meta['sizes']}")
    if use_exemplars and not meta.get("use_exemplars"):
        wrong.append("data.use_exemplars: the config wants exemplars, the cache was built without them")
    if wrong:
        raise LatentCacheError(f"latent cache {root} does not fit this training config: " + "; ".join(wrong)
                               + ". Rebuild it with `omnilv cache-latents` from this config, or change the config.")


class DecodeLatents(RowDecoder):
    """Raw cache rows -> float32 arrays: x1, cond, ref_*, text padded to the cache's ``text_len`` + mask."""

    errors = (CorruptMember,)

    def __init__(self, text_len: int, ledger: Any = None) -> None:
        self.text_len, self.ledger = text_len, ledger

    def reason(self, exc: Exception) -> str:
        return str(exc.member) if isinstance(exc, CorruptMember) else type(exc).__name__

    def _one(self, row: dict[str, Any]) -> dict[str, Any]:
        for m, c in COLUMNS.items():
            if c in ("target", "input", "text", "txt", "json") and not len(row[c]):
                raise CorruptMember(m, "missing")
        arr = {c: load_npy(row[c], m) for m, c in COLUMNS.items() if c in ARRAYS and len(row[c])}
        try:
            meta = json.loads(bytes(row["json"]))
            txt = bytes(row["txt"]).decode("utf-8")
        except (UnicodeDecodeError, json.JSONDecodeError):
            meta = None
        if not isinstance(meta, dict):
            raise CorruptMember(JSON, "not a JSON object (or txt not UTF-8)")
        emb = arr["text"][: self.text_len]  # (n, D)
        text = np.zeros((self.text_len, emb.shape[-1]), np.float32)
        text[: len(emb)] = emb
        has_ref = "ref_input" in arr and "ref_target" in arr
        zeros = np.zeros_like(arr["target"])
        return {"key": str(row["key"]), "txt": txt, "task": str(meta.get("task", "")), "x1": arr["target"],
                "cond": arr["input"], "ref_input": arr["ref_input"] if has_ref else zeros,
                "ref_target": arr["ref_target"] if has_ref else zeros, "ref_mask": np.bool_(has_ref),
                "text": text, "text_mask": np.arange(self.text_len) < len(emb),
                "bucket": np.int32(meta.get("bucket", 0))}


def read_latents(root: str, *, read_cpus: float = 0.25, max_tasks: int = 2, ledger: Any = None,
                 meta: dict[str, Any] | None = None, skip_shards: int = 0) -> ray.data.Dataset:
    """The cache's rows {key, txt, task, x1, cond, ref_input, ref_target, ref_mask, text, text_mask, bucket};
    ``skip_shards`` leaves out the manifest's first shards (a resumed run's rest of an epoch)."""
    meta = meta or load_meta(root)
    manifest = load_manifest(root)
    if manifest.extra.get("kind") != KIND:
        raise LatentCacheError(f"{root}: manifest.json is not a latent cache's (is this a corpus? use data.corpus)")
    if not manifest.shards[skip_shards:]:
        raise LatentCacheError(f"{root}: the manifest lists no shards")
    ds = read_shards(intact_shards(root, manifest, skip_shards=skip_shards, ledger=ledger), COLUMNS,
                     read_cpus=read_cpus, max_tasks=max_tasks)
    return ds.map_batches(DecodeLatents, fn_constructor_kwargs=dict(text_len=int(meta["text_len"]), ledger=ledger),
                          batch_size=16, batch_format="numpy", num_cpus=read_cpus,
                          compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max_tasks))


def training_dataset(cfg: TrainConfig, ledger: Any = None, skip_shards: int = 0) -> ray.data.Dataset:
    """``cfg.data.latents`` checked against the config (codec, text and its layer, sizes, exemplars), then read."""
    d = cfg.data
    meta = load_meta(d.latents)
    check_fits(meta, d.latents, codec=cfg.codec, text=cfg.text, text_layer=cfg.text_layer, sizes=d.sizes,
               use_exemplars=d.use_exemplars)
    return read_latents(d.latents, read_cpus=d.read_cpus, max_tasks=d.max_read_tasks, ledger=ledger, meta=meta,
                        skip_shards=skip_shards)
