"""Worker side of the data path: dataset-shard batches -> model inputs (latents + text features).

Rows arrive from :mod:`pipelines.ingest` as float32 (H, W, 3) images in [0, 1], or from a latent cache
(:mod:`training.data.latent_cache`) already encoded: ``x1``/``cond``/``ref_*`` latents and padded ``text`` +
``text_mask``.
With one resolution bucket they stack into fixed-shape batches inside ``iter_torch_batches`` (its ``collate_fn`` is
:class:`Collate`); with several, rows are regrouped here so that every batch has one shape (aspect-ratio bucketing).
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

IMAGES = ("input", "target", "ref_input", "ref_target")
LATENTS = ("x1", "cond", "ref_input", "ref_target")  # latent-cache rows: already in the codec's space


def to_tensor(images: np.ndarray | list) -> torch.Tensor:
    """(B, H, W, 3) pixels -> (B, 3, H, W) float32 in [-1, 1], the codec's input range. Pixels are uint8 or uint16
    (as rows travel: :func:`pipelines.ingest.to_pixels`) or floats in [0, 1]."""
    arr = np.stack(list(images)) if isinstance(images, list) or images.dtype == object else images
    t = torch.from_numpy(np.ascontiguousarray(arr))
    peak = {torch.uint8: 255.0, torch.uint16: 65535.0}.get(t.dtype)
    t = t.float() if peak is None else t.float().mul_(2.0 / peak)
    return t.permute(0, 3, 1, 2).sub_(1.0) if peak is not None else t.permute(0, 3, 1, 2) * 2.0 - 1.0


class Collate(NumpyBatchCollateFn):
    """numpy batch -> images as tensors, strings as lists. The ``collate_fn`` of ``iter_torch_batches`` (Ray takes a
    ``CollateFn`` there, a plain function is deprecated); :data:`collate` also collates regrouped rows."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        if "x1" in batch:
            out = collate_latents(batch)
        else:
            out = {k: to_tensor(batch[k]) for k in IMAGES if k in batch}
        out["ref_mask"] = torch.from_numpy(np.asarray(batch["ref_mask"], dtype=bool))
        out["txt"] = [str(s) for s in batch["txt"]]
        out["task"] = [str(s) for s in batch.get("task", [""] * len(out["txt"]))]
        if "json" in batch:  # annotation tasks (model.recipe: lumen)
            out["json"] = [str(s) for s in batch["json"]]
        return out


collate = Collate()  # stateless: one for every caller


def collate_latents(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """Cached latents as they are; text cut to the batch's longest instruction, as :meth:`Prepare.encode_text`."""
    stacked = {k: np.stack(list(batch[k])) if batch[k].dtype == object else batch[k] for k in LATENTS if k in batch}
    out: dict[str, Any] = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in stacked.items()}
    mask = np.asarray(batch["text_mask"], dtype=bool)  # (B, L)
    n = max(1, int(mask.sum(axis=1).max()))
    out["text"] = torch.from_numpy(np.ascontiguousarray(np.asarray(batch["text"], dtype=np.float32)[:, :n]))
    out["text_mask"] = torch.from_numpy(np.ascontiguousarray(mask[:, :n]))
    return out


def iter_batches(shard: Any, batch_size: int, buckets: int, prefetch: int = 2) -> Iterator[dict[str, Any]]:
    """Fixed-shape training batches from a Ray Data shard (one epoch)."""
    if buckets <= 1:
        yield from shard.iter_torch_batches(batch_size=batch_size, collate_fn=collate, drop_last=True,
                                            prefetch_batches=prefetch)
        return
    queues: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for batch in shard.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=prefetch):
        for i in range(len(batch["txt"])):
            row = {k: batch[k][i] for k in batch}
            q = queues[int(row["bucket"])]
            q.append(row)
            if len(q) == batch_size:
                yield collate({k: np.array([r[k] for r in q], dtype=object) if k in ("txt", "task", "json", "key")
                               else np.stack([r[k] for r in q]) for k in q[0]})
                q.clear()


class Prepare:
    """Encodes a pixel batch with the frozen codec and text encoder: the dict ``FlowMatching`` takes.

    A latent-cache batch (it carries ``x1``) is already encoded: it only moves to the device.
    """

    #: Bytes of encoded instructions kept on the device (least recently used dropped first): a few templates per
    #: task fit many times over, a corpus of unique instructions cannot grow it past this.
    TEXT_CACHE_BYTES = 256 * 2**20

    def __init__(self, codec: Any, text: Any, device: torch.device, use_exemplars: bool) -> None:
        self.codec, self.text, self.device, self.use_exemplars = codec, text, device, use_exemplars
        self._text_cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._cached_bytes = 0

    def __call__(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        to = self.to_device
        if "x1" in batch:
            keys = ("x1", "cond", "text", "text_mask") + (("ref_input", "ref_target", "ref_mask")
                                                         if self.use_exemplars else ())
            return {k: to(batch[k]) for k in keys}
        out = {"x1": self.codec.encode(to(batch["target"])), "cond": self.codec.encode(to(batch["input"]))}
        out["text"], out["text_mask"] = self.encode_text(batch["txt"])
        if self.use_exemplars:
            out["ref_input"], out["ref_target"] = self.encode_exemplars(batch, out["x1"])
            out["ref_mask"] = to(batch["ref_mask"])
        return out

    def encode_exemplars(self, batch: dict[str, Any], like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents of the rows that have an exemplar; zeros for the placeholders (the model multiplies the exemplar
        by ``ref_mask``, so their value never counts). The rows are chosen on the host: no device sync, and the
        placeholders are neither transferred nor encoded."""
        rows = batch["ref_mask"].cpu().nonzero().flatten()
        ref_in, ref_tgt = torch.zeros_like(like), torch.zeros_like(like)
        if len(rows) == len(batch["ref_mask"]):
            return self.codec.encode(self.to_device(batch["ref_input"])), \
                self.codec.encode(self.to_device(batch["ref_target"]))
        if len(rows):
            at = rows.to(like.device)
            ref_in[at] = self.codec.encode(self.to_device(batch["ref_input"][rows])).to(like.dtype)
            ref_tgt[at] = self.codec.encode(self.to_device(batch["ref_target"][rows])).to(like.dtype)
        return ref_in, ref_tgt

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        """To the worker's device; to a GPU from pinned memory, asynchronously (the copy overlaps the step
        before it: CUDA orders it before the kernels that read it)."""
        if self.device.type != "cuda":
            return t.to(self.device)
        return t.pin_memory().to(self.device, non_blocking=True)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Instructions repeat a lot (a few templates per task): encode each distinct one once."""
        todo = sorted({t for t in texts if t not in self._text_cache})
        if todo:
            emb, mask = self.text.encode(todo)
            for i, t in enumerate(todo):
                n = int(mask[i].sum())
                self._remember(t, (emb[i, :n].to(self.device), mask[i, :n].to(self.device)))
        for t in texts:
            if t in self._text_cache:
                self._text_cache.move_to_end(t)
        rows = [self._text_cache.get(t) or self._encode_one(t) for t in texts]
        L = max(r[0].shape[0] for r in rows)
        emb = torch.zeros(len(rows), L, rows[0][0].shape[-1], device=self.device)  # (B, L, T)
        mask = torch.zeros(len(rows), L, dtype=torch.bool, device=self.device)  # (B, L)
        for i, (e, m) in enumerate(rows):
            emb[i, : e.shape[0]], mask[i, : m.shape[0]] = e, m
        return emb, mask

    def _remember(self, text: str, row: tuple[torch.Tensor, torch.Tensor]) -> None:
        self._text_cache[text] = row
        self._cached_bytes += sum(x.nelement() * x.element_size() for x in row)
        while self._cached_bytes > self.TEXT_CACHE_BYTES and len(self._text_cache) > 1:
            _, old = self._text_cache.popitem(last=False)
            self._cached_bytes -= sum(x.nelement() * x.element_size() for x in old)

    def _encode_one(self, t: str) -> tuple[torch.Tensor, torch.Tensor]:
        emb, mask = self.text.encode([t])
        n = int(mask[0].sum())
        return emb[0, :n].to(self.device), mask[0, :n].to(self.device)
