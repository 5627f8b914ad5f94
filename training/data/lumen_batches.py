"""Worker side of Lumen's data path: a :class:`Collate` batch -> the inputs :class:`training.model.Lumen` takes.

What the instruction asks about decides which instances' masks stage 2 learns: the task step's parameters in the
sample's json (``instance`` for grounding/referring, ``category`` for detection/segmentation), or, for a record
without them, the instances whose box centre is on the target heat's peak region (>= 0.5). Pose samples give none
(their heat marks keypoints, not the instances' centres). Masks are COCO compressed RLE (``pycocotools.mask``).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

import cv2
import numpy as np
import torch

from training.model import LUMEN_TASKS, Lumen, LumenError, LumenPrompt

#: Distinct instructions whose token ids are kept (least recently used dropped first).
CACHE_ROWS = 4096


class LumenPrepare:
    """``LumenPrepare(model, device)(batch) -> inputs`` for ``model(inputs) -> loss`` (keys: ``Lumen``'s docstring).

    Given a tokenizer instead of the model, it must already hold Lumen's tokens (``model.tokenizer`` does) and
    ``image_tokens`` says how many image placeholders the prompt has. ``instances`` decodes the instance masks stage
    2 trains on (default: when the model's part is ``decoders``; given a tokenizer, when the batch has ``json``).
    """

    def __init__(self, tokenizer_or_model: Any, device: torch.device | str, *, image_tokens: int | None = None,
                 instances: bool | None = None) -> None:
        if isinstance(tokenizer_or_model, Lumen):
            self.prompt = tokenizer_or_model.prompt
            if instances is None:
                instances = tokenizer_or_model.part == "decoders"
        else:
            if image_tokens is None:
                raise TypeError("LumenPrepare(tokenizer, device) needs image_tokens= (or pass the Lumen model)")
            self.prompt = LumenPrompt(tokenizer_or_model, image_tokens)
        self.device = torch.device(device)
        self.instances = instances
        self._ids: OrderedDict[str, list[int]] = OrderedDict()

    def __call__(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        dev = self.device
        tasks = [str(t) for t in batch.get("task", [""] * len(batch["txt"]))]
        maps = ((batch["target"].float() + 1) / 2).clamp(0, 1)  # (B, 3, H, W) in [0, 1]
        ids, mask = self.prompt.batch([self.ids(t) for t in batch["txt"]])
        out = {"image": batch["input"].to(dev), "maps": maps.to(dev), "input_ids": ids.to(dev),
               "attention_mask": mask.to(dev),
               "task": torch.tensor([LUMEN_TASKS.index(t) if t in LUMEN_TASKS else -1 for t in tasks], device=dev)}
        if self.instances or (self.instances is None and "json" in batch):
            if "json" not in batch:
                raise LumenError("stage 2 (the mask decoder) learns from the samples' annotations, but the batch has "
                                 "no json records: train with model.recipe: lumen on a corpus built with annotations")
            masks, boxes, valid = instance_tensors(list(batch["json"]), tasks, maps[:, 0].numpy())
            out.update(masks=masks.to(dev), boxes=boxes.to(dev), instances=valid.to(dev))
        return out

    def ids(self, text: str) -> list[int]:
        """Token ids of ``text``'s prompt; each distinct instruction is tokenized once (bounded cache)."""
        row = self._ids.get(text)
        if row is None:
            row = self._ids[text] = self.prompt.ids(text)
            if len(self._ids) > CACHE_ROWS:
                self._ids.popitem(last=False)
        else:
            self._ids.move_to_end(text)
        return row


def instance_tensors(records: list[str | None], tasks: list[str], heat: np.ndarray
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masks (B, N, H, W) bool, boxes (B, N, 4) xyxy pixels, valid (B, N) of the instances each sample asks about
    (N: the most in one sample, at least 1); ``heat`` (B, H, W) is the target heat at the image's size."""
    B, H, W = heat.shape
    rows = [asked(rec, task, heat[i]) if rec else [] for i, (rec, task) in enumerate(zip(records, tasks, strict=True))]
    n = max(1, *(len(r) for r in rows))
    masks = np.zeros((B, n, H, W), bool)
    boxes = np.zeros((B, n, 4), np.float32)
    valid = np.zeros((B, n), bool)
    for i, row in enumerate(rows):
        for j, (m, box, size) in enumerate(row):
            sy, sx = H / size[0], W / size[1]
            masks[i, j] = m if m.shape == (H, W) else cv2.resize(m.astype(np.uint8), (W, H),
                                                                  interpolation=cv2.INTER_NEAREST).astype(bool)
            boxes[i, j] = np.asarray(box, np.float32) * [sx, sy, sx, sy]
            valid[i, j] = True
    return torch.from_numpy(masks), torch.from_numpy(boxes), torch.from_numpy(valid)


def asked(record: str | dict, task: str, heat: np.ndarray) -> list[tuple[np.ndarray, list[float], list[int]]]:
    """(mask (h, w) bool, box xyxy, annotation size [h, w]) of each instance with a mask that ``record``'s
    instruction asks about (module docstring)."""
    from pycocotools import mask as rle

    rec = json.loads(record) if isinstance(record, str) else record
    ann = rec.get("annotations") or {}
    insts = ann.get("instances") or []
    if task == "pose" or not insts:
        return []
    size = [int(s) for s in ann.get("size") or heat.shape]
    params = next((s.get("params") or {} for s in rec.get("steps", []) if s.get("name") == task), {})
    if "instance" in params:
        picked = [int(params["instance"])] if 0 <= int(params["instance"]) < len(insts) else []
    elif "category" in params:
        picked = [i for i, inst in enumerate(insts) if inst.get("label") == params["category"]]
    else:
        picked = [i for i, inst in enumerate(insts) if _on_peak(inst["box"], size, heat)]
    out = []
    for i in picked:
        m = insts[i].get("mask")
        if m is None:
            continue
        counts = m["counts"].encode("ascii") if isinstance(m["counts"], str) else m["counts"]
        out.append((rle.decode({"size": list(m["size"]), "counts": counts}).astype(bool), insts[i]["box"], size))
    return out


def _on_peak(box: list[float], size: list[int], heat: np.ndarray) -> bool:
    h, w = heat.shape
    cx, cy = (box[0] + box[2]) / 2 * w / size[1], (box[1] + box[3]) / 2 * h / size[0]
    return 0 <= cx < w and 0 <= cy < h and heat[int(cy), int(cx)] >= 0.5
