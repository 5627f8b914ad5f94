"""COCO-format datasets, Lumen's annotated sources: read (local or ``s3://``), write, and the sample's annotations.

A dataset is one COCO json (``images``, ``annotations``, ``categories``) with optional RefCOCO-style referring
expressions: a top-level ``refs`` list of ``{ref_id, ann_id, image_id, category_id, split, sentences: [{sent}]}``,
or the same list in a separate json (a list, or ``{"refs": [...]}``). Per instance the reader keeps:

- ``bbox`` ``[x, y, w, h]`` -> ``Annotations.boxes`` xyxy; labels are the category names;
- ``segmentation`` (polygons, uncompressed or compressed RLE) -> masks, decoded with ``pycocotools.mask``; masks
  are given only when every instance of the image has one; a polygon of fewer than 3 points is dropped;
- ``keypoints`` with the category's ``keypoints`` names; an image's ``keypoint_names`` are those of its first
  category (by id) that names keypoints, and instances of a category with other names get visibility 0;
- ``referring``: the first sentence of the instance's first ref (by ``ref_id``), ``""`` when it has none (and no
  referring at all when the dataset has no refs).

Crowd regions (``iscrowd: 1``) are left out, as detectors do. A json is data (DESIGN.md, trust and safety): its
size, every image's size and its instances' mask bytes are checked before anything is decoded, RLE counts must
cover exactly the image, and every ``file_name`` must stay inside the image root. Errors name the file and field.

The sample's ``"annotations"`` (docs/lumen.md) have one converter each way, :func:`annotations_to_json` and
:func:`annotations_from_json`; :func:`resize_annotations` and :func:`crop_annotations` make them follow the image.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from degradations import Annotations
from omnilv.errors import OmniLVError
from pipelines.storage import StorageError, contains, inside, is_remote

VERSION = 1  # of the sample's "annotations" layout
#: The most bytes of a COCO or refs json read (COCO 2017 train instances: 0.45 GB).
MAX_JSON_BYTES = 4 * 2**30
#: The most pixels an image entry may claim, the most instances per image, the most decoded mask bytes per image.
MAX_PIXELS = 100_000_000
MAX_INSTANCES = 2000
MAX_MASK_BYTES = 2**30
#: An instance stays in a crop when at least this share of its box's area lies inside the crop.
MIN_VISIBLE = 0.25


class CocoError(OmniLVError, ValueError):
    """A COCO dataset that cannot be read as one; the message names the file and the field."""


# -- reading ------------------------------------------------------------------------------------------
def read_json(path: str, storage_options: dict[str, Any] | None = None) -> Any:
    """A json file, local or ``s3://`` (the storage options apply to s3 only), at most :data:`MAX_JSON_BYTES`."""
    import fsspec

    if is_remote(path) and not path.startswith("s3://"):
        raise CocoError(f"{path}: only local paths and s3:// are read")
    so = dict(storage_options or {}) if path.startswith("s3://") else {}
    try:
        with fsspec.open(path, "rb", **so) as f:
            data = f.read(MAX_JSON_BYTES + 1)
    except FileNotFoundError:
        raise CocoError(f"{path}: no such file") from None
    if len(data) > MAX_JSON_BYTES:
        raise CocoError(f"{path}: more than {MAX_JSON_BYTES} bytes; refusing to read it")
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CocoError(f"{path}: not JSON: {exc}") from None


class CocoSet:
    """A validated COCO dataset: per image, a compact record of its instances (:meth:`record`) that travels to
    a shard task and decodes there (:func:`annotations_from_record`)."""

    def __init__(self, data: Any, where: str, refs: list[Any] | None = None, refs_where: str = "",
                 refs_split: str | None = None) -> None:
        self.where = where
        if not isinstance(data, dict):
            raise CocoError(f"{where}: the top level must be an object with images, annotations, categories")
        self.images: dict[int, dict[str, Any]] = {}
        self.by_file: dict[str, int] = {}
        for i, im in enumerate(_list(data, "images", where)):
            self._image(im, f"{where}: images[{i}]")
        self.categories = {}
        for i, cat in enumerate(_list(data, "categories", where)):
            f = f"{where}: categories[{i}]"
            cid, name = _int(_get(cat, "id", f), f"{f}.id"), _get(cat, "name", f)
            names = cat.get("keypoints", [])
            if not isinstance(name, str) or not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise CocoError(f"{f}: name must be a string and keypoints a list of strings")
            self.categories[cid] = {"name": name, "keypoints": tuple(names)}
        self.anns: dict[int, list[dict[str, Any]]] = {}
        ann_image: dict[int, int] = {}
        for i, ann in enumerate(_list(data, "annotations", where)):
            a = self._annotation(ann, f"{where}: annotations[{i}]")
            if a is not None:
                self.anns.setdefault(a["image_id"], []).append(a)
                ann_image[a["id"]] = a["image_id"]
        for image_id, anns in self.anns.items():
            self._check_sizes(image_id, anns)
        if refs is None and "refs" in data:
            refs, refs_where = _list(data, "refs", where), f"{where}: refs"
        self.has_refs = refs is not None
        self.referring: dict[int, str] = {}
        for i, r in sorted(enumerate(refs or []), key=lambda p: _ref_id(p[1], f"{refs_where}[{p[0]}]")):
            f = f"{refs_where}[{i}]"
            if refs_split is not None and r.get("split") != refs_split:
                continue
            ann_id, sents = _int(_get(r, "ann_id", f), f"{f}.ann_id"), _get(r, "sentences", f)
            if not isinstance(sents, list) or not all(isinstance(s, dict) and isinstance(s.get("sent"), str)
                                                      for s in sents):
                raise CocoError(f"{f}.sentences: expected a list of {{\"sent\": text}}")
            if ann_id in ann_image and ann_id not in self.referring and sents:  # refs of other jsons: not ours
                self.referring[ann_id] = sents[0]["sent"]

    @classmethod
    def load(cls, path: str, refs: str | None = None, storage_options: dict[str, Any] | None = None,
             refs_split: str | None = None) -> CocoSet:
        """Read and validate ``path`` (and a separate refs json); local or ``s3://``."""
        ref_list = None
        if refs is not None:
            found = read_json(refs, storage_options)
            ref_list = found.get("refs") if isinstance(found, dict) else found
            if not isinstance(ref_list, list):
                raise CocoError(f"{refs}: expected a list of refs, or an object with a \"refs\" list")
        return cls(read_json(path, storage_options), path, ref_list, refs or path, refs_split)

    def _image(self, im: Any, f: str) -> None:
        iid = _int(_get(im, "id", f), f"{f}.id")
        name, h, w = _get(im, "file_name", f), _int(_get(im, "height", f), f"{f}.height"), _int(_get(im, "width", f),
                                                                                                  f"{f}.width")
        if not isinstance(name, str):
            raise CocoError(f"{f}.file_name: expected a string")
        try:
            inside(name, f"{f}.file_name")
        except StorageError as exc:
            raise CocoError(str(exc)) from None
        if h <= 0 or w <= 0 or h * w > MAX_PIXELS:
            raise CocoError(f"{f}: {w}x{h} pixels (1 to {MAX_PIXELS} allowed)")
        if iid in self.images or name in self.by_file:
            raise CocoError(f"{f}: image id {iid} or file_name {name!r} listed twice")
        self.images[iid] = {"file_name": name, "height": h, "width": w}
        self.by_file[name] = iid

    def _annotation(self, ann: Any, f: str) -> dict[str, Any] | None:
        aid, iid = _int(_get(ann, "id", f), f"{f}.id"), _int(_get(ann, "image_id", f), f"{f}.image_id")
        cid = _int(_get(ann, "category_id", f), f"{f}.category_id")
        if iid not in self.images or cid not in self.categories:
            raise CocoError(f"{f}: image_id {iid} or category_id {cid} is not listed")
        if ann.get("iscrowd", 0):
            return None
        im = self.images[iid]
        bbox = _numbers(_get(ann, "bbox", f), f"{f}.bbox", 4)
        if bbox[2] < 0 or bbox[3] < 0:
            raise CocoError(f"{f}.bbox: width and height must be >= 0, got {bbox}")
        out: dict[str, Any] = {"id": aid, "image_id": iid, "category_id": cid, "bbox": bbox}
        if ann.get("segmentation") is not None:
            out["segmentation"] = _segmentation(ann["segmentation"], f"{f}.segmentation", im["height"], im["width"])
        names = self.categories[cid]["keypoints"]
        if ann.get("keypoints") is not None and names:
            out["keypoints"] = _numbers(ann["keypoints"], f"{f}.keypoints", 3 * len(names))
        return out

    def _check_sizes(self, image_id: int, anns: list[dict[str, Any]]) -> None:
        im = self.images[image_id]
        where = f"{self.where}: image {im['file_name']!r}"
        if len(anns) > MAX_INSTANCES:
            raise CocoError(f"{where}: {len(anns)} instances (at most {MAX_INSTANCES})")
        if any("segmentation" in a for a in anns) and len(anns) * im["height"] * im["width"] > MAX_MASK_BYTES:
            raise CocoError(f"{where}: its {len(anns)} masks would take more than {MAX_MASK_BYTES} bytes")

    def files(self) -> list[str]:
        """Every image's ``file_name``, sorted."""
        return sorted(self.by_file)

    def record(self, image: int | str) -> dict[str, Any]:
        """The compact, JSON-able annotations of one image (by id or ``file_name``), validated already."""
        iid = self.by_file[image] if isinstance(image, str) else image
        if iid not in self.images:
            raise CocoError(f"{self.where}: no image {image!r}")
        anns = sorted(self.anns.get(iid, []), key=lambda a: a["id"])
        kp_cats = sorted({a["category_id"] for a in anns if "keypoints" in a})
        names = self.categories[kp_cats[0]]["keypoints"] if kp_cats else ()
        instances = []
        for a in anns:
            inst: dict[str, Any] = {"id": a["id"], "label": self.categories[a["category_id"]]["name"],
                                    "bbox": a["bbox"]}
            if "segmentation" in a:
                inst["segmentation"] = a["segmentation"]
            if names:
                same = "keypoints" in a and self.categories[a["category_id"]]["keypoints"] == names
                inst["keypoints"] = a["keypoints"] if same else [0.0] * (3 * len(names))
            if self.has_refs:
                inst["referring"] = self.referring.get(a["id"], "")
            instances.append(inst)
        return {**self.images[iid], "keypoint_names": list(names), "instances": instances}

    def annotations_for(self, image: int | str, height: int, width: int) -> Annotations:
        """The :class:`~degradations.Annotations` of one image (by id or ``file_name``) of ``height`` x ``width``."""
        return annotations_from_record(self.record(image), height, width, self.where)

    def image_uris(self, root: str) -> dict[str, str]:
        """``file_name`` -> the image's URI under ``root`` (a folder or ``s3://`` prefix), every one inside it."""
        if root.startswith("s3://"):
            return {n: root.rstrip("/") + "/" + n for n in self.files()}
        if is_remote(root):
            raise CocoError(f"{root}: the images of a COCO source are a local folder or an s3:// prefix")
        base = Path(root.removeprefix("file://")).resolve()
        out = {}
        for name in self.files():
            path = (base / name).resolve()
            if not contains(base, path):
                raise CocoError(f"{self.where}: image {name!r} resolves to {path}, outside the image root {base}")
            out[name] = str(path)
        return out


def merge_records(a: dict[str, Any], b: dict[str, Any], where: str = "") -> dict[str, Any]:
    """One image's records from two COCO jsons (COCO's instances and person_keypoints files share annotation ids):
    the instances of both by id, ``a``'s fields first, ``b`` adding what ``a`` lacks (keypoints, an expression)."""
    if (a["height"], a["width"]) != (b["height"], b["width"]):
        raise CocoError(f"{where}: image {a['file_name']!r} is {a['width']}x{a['height']} in one COCO source and "
                        f"{b['width']}x{b['height']} in another")
    names = a["keypoint_names"] or b["keypoint_names"]
    by_id = {i["id"]: dict(i) for i in a["instances"]}
    for inst in b["instances"]:
        mine = by_id.setdefault(inst["id"], dict(inst))
        if "segmentation" in inst and "segmentation" not in mine:
            mine["segmentation"] = inst["segmentation"]
        if inst.get("referring") and not mine.get("referring"):
            mine["referring"] = inst["referring"]
        if b["keypoint_names"] == names and any(inst.get("keypoints", ())) and not any(mine.get("keypoints", ())):
            mine["keypoints"] = inst["keypoints"]
    instances = [by_id[k] for k in sorted(by_id)]
    for inst in instances:
        if names and len(inst.get("keypoints", ())) != 3 * len(names):
            inst["keypoints"] = [0.0] * (3 * len(names))  # from a json with other (or no) keypoint names
        elif not names:
            inst.pop("keypoints", None)
        if any("referring" in i for i in instances):
            inst.setdefault("referring", "")
    return {**a, "keypoint_names": list(names), "instances": instances}


def annotations_from_record(record: dict[str, Any], height: int, width: int, where: str = "") -> Annotations:
    """Decode a :meth:`CocoSet.record` for the image as decoded (``height`` x ``width``, which must match)."""
    if (record["height"], record["width"]) != (height, width):
        raise CocoError(f"{where}: image {record['file_name']!r} is {width}x{height} but its annotations are for "
                        f"{record['width']}x{record['height']}")
    inst = record["instances"]
    names = tuple(record.get("keypoint_names", ()))
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (i["bbox"] for i in inst)], np.float64).reshape(-1, 4)
    masks = None
    if inst and all("segmentation" in i for i in inst):
        masks = np.stack([_decode(i["segmentation"], height, width) for i in inst])
    keypoints = None
    if names:
        keypoints = np.array([i["keypoints"] for i in inst], np.float64).reshape(len(inst), len(names), 3)
    referring = tuple(str(i.get("referring", "")) for i in inst) if any("referring" in i for i in inst) else ()
    return Annotations(boxes=boxes, keypoints=keypoints, masks=masks, labels=tuple(i["label"] for i in inst),
                       referring=referring, keypoint_names=names if keypoints is not None else ())


# -- validation helpers ---------------------------------------------------------------------------------
def _list(data: dict[str, Any], key: str, where: str) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise CocoError(f"{where}: {key} must be a list")
    return value


def _get(obj: Any, key: str, f: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise CocoError(f"{f}: missing field {key!r}")
    return obj[key]


def _int(value: Any, f: str) -> int:
    if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
            or value != int(value)):
        raise CocoError(f"{f}: expected an integer, got {value!r}")
    return int(value)


def _ref_id(r: Any, f: str) -> int:
    return _int(_get(r, "ref_id", f), f"{f}.ref_id")


def _numbers(value: Any, f: str, n: int | None = None) -> list[float]:
    if not isinstance(value, list) or (n is not None and len(value) != n) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise CocoError(f"{f}: expected {n if n is not None else 'a list of'} finite numbers, got {str(value)[:80]}")
    return [float(v) for v in value]


def _segmentation(seg: Any, f: str, h: int, w: int) -> Any:
    """Polygons (those of >= 3 points kept) or an RLE whose counts cover exactly ``h`` x ``w`` pixels."""
    if isinstance(seg, list):
        polys = [_numbers(p, f"{f}[{i}]") for i, p in enumerate(seg)]
        bound = 4 * max(h, w)
        if any(abs(v) > bound for p in polys for v in p):
            raise CocoError(f"{f}: polygon coordinates far outside the {w}x{h} image")
        return [p for p in polys if len(p) >= 6 and len(p) % 2 == 0]
    if not isinstance(seg, dict) or seg.get("size") != [h, w]:
        raise CocoError(f"{f}: expected polygons or an RLE {{size: [{h}, {w}], counts}}, got {str(seg)[:80]}")
    counts = seg.get("counts")
    if isinstance(counts, str):
        runs = rle_runs(counts, f)
    elif isinstance(counts, list) and all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
        runs = counts
    else:
        raise CocoError(f"{f}.counts: expected a compressed RLE string or a list of run lengths")
    if any(c < 0 for c in runs) or sum(runs) != h * w:
        raise CocoError(f"{f}.counts: the runs cover {sum(runs)} pixels, not the image's {h * w}")
    return {"size": [h, w], "counts": counts}


def rle_runs(counts: str, f: str = "counts") -> list[int]:
    """The run lengths of a COCO compressed RLE string (the LEB128-like code of ``maskApi.c``'s ``rleFrString``);
    checked here because pycocotools decodes without bounds checks."""
    runs: list[int] = []
    pos = 0
    while pos < len(counts):
        x, k, more = 0, 0, True
        while more:
            if pos >= len(counts):
                raise CocoError(f"{f}: truncated RLE string")
            c = ord(counts[pos]) - 48
            if not 0 <= c < 64:
                raise CocoError(f"{f}: {counts[pos]!r} is not an RLE character")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            pos, k = pos + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def _decode(seg: Any, h: int, w: int) -> np.ndarray:
    """One validated segmentation -> (h, w) bool through pycocotools."""
    if isinstance(seg, list):
        if not seg:
            return np.zeros((h, w), bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, h, w)
    else:
        rle = {"size": [h, w], "counts": seg["counts"].encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


# -- writing --------------------------------------------------------------------------------------------
def write_coco(path: str | Path, images: list[dict[str, Any]], annotations: list[dict[str, Any]],
               categories: list[dict[str, Any]], refs: list[dict[str, Any]] | None = None,
               storage_options: dict[str, Any] | None = None) -> str:
    """Write a COCO json (with a top-level ``refs`` list when given) locally or to ``s3://``; it is validated
    first, so what is written reads back. Returns the path."""
    data: dict[str, Any] = {"images": images, "annotations": annotations, "categories": categories}
    if refs is not None:
        data["refs"] = refs
    CocoSet(json.loads(json.dumps(data)), str(path))
    from pipelines.storage import Store

    parent, _, name = str(path).rpartition("/")
    store = Store(parent or ".", storage_options if str(path).startswith("s3://") else None)
    store.write(name, json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    return store.path(name)


# -- the sample's "annotations" -------------------------------------------------------------------------
def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """(H, W) bool -> COCO compressed RLE ``{"size": [H, W], "counts": str}``."""
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def annotations_to_json(ann: Annotations, size: tuple[int, int] | None = None) -> dict[str, Any]:
    """The versioned json of docs/lumen.md. ``size`` (H, W) is the image's; it defaults to the masks' size."""
    if size is None:
        if ann.masks is None:
            raise ValueError("annotations_to_json: give size=(H, W) for annotations without masks")
        size = ann.masks.shape[1:3]
    boxes = np.zeros((0, 4)) if ann.boxes is None else np.asarray(ann.boxes, np.float64).reshape(-1, 4)
    instances = []
    for i, label in enumerate(ann.labels):
        inst: dict[str, Any] = {"label": str(label), "box": [float(v) for v in boxes[i]]}
        if ann.masks is not None:
            inst["mask"] = encode_mask(ann.masks[i])
        if ann.keypoints is not None:
            inst["keypoints"] = [[float(v) for v in kp] for kp in np.asarray(ann.keypoints, np.float64)[i]]
        if ann.referring:
            inst["referring"] = str(ann.referring[i])
        instances.append(inst)
    out: dict[str, Any] = {"version": VERSION, "size": [int(size[0]), int(size[1])], "instances": instances}
    if ann.keypoints is not None:
        out["keypoint_names"] = [str(n) for n in ann.keypoint_names]
    return out


def annotations_from_json(d: Any, where: str = "annotations") -> Annotations:
    """The :class:`~degradations.Annotations` a sample's ``"annotations"`` hold; :class:`CocoError` naming the field
    for anything else (it is data read from a shard)."""
    if not isinstance(d, dict) or d.get("version") != VERSION:
        raise CocoError(f"{where}: expected an object with \"version\": {VERSION}")
    size = d.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)
            and size[0] * size[1] <= MAX_PIXELS):
        raise CocoError(f"{where}.size: expected [H, W], got {size!r}")
    h, w = size
    insts = d.get("instances")
    if not isinstance(insts, list) or len(insts) > MAX_INSTANCES:
        raise CocoError(f"{where}.instances: expected a list of at most {MAX_INSTANCES}")
    names = d.get("keypoint_names")
    has = {k: bool(insts) and all(isinstance(i, dict) and k in i for i in insts)
           for k in ("mask", "keypoints", "referring")}
    if any(has[k] != any(isinstance(i, dict) and k in i for i in insts) for k in has):
        raise CocoError(f"{where}.instances: mask, keypoints and referring are given for every instance or none")
    if has["mask"] and len(insts) * h * w > MAX_MASK_BYTES:
        raise CocoError(f"{where}: {len(insts)} masks of {w}x{h} would take more than {MAX_MASK_BYTES} bytes")
    labels, boxes, masks, kps, refs = [], [], [], [], []
    for n, inst in enumerate(insts):
        f = f"{where}.instances[{n}]"
        if not isinstance(inst, dict) or not isinstance(inst.get("label"), str):
            raise CocoError(f"{f}.label: expected a string")
        labels.append(inst["label"])
        boxes.append(_numbers(inst.get("box"), f"{f}.box", 4))
        if has["mask"]:
            masks.append(_decode(_segmentation(inst["mask"], f"{f}.mask", h, w), h, w))
        if has["keypoints"]:
            k = len(names) if isinstance(names, list) else -1
            rows = inst["keypoints"]
            if not isinstance(rows, list) or len(rows) != k:
                raise CocoError(f"{f}.keypoints: expected {k} [x, y, v] rows, one per keypoint_names")
            kps.append([_numbers(r, f"{f}.keypoints[{j}]", 3) for j, r in enumerate(rows)])
        if has["referring"]:
            if not isinstance(inst["referring"], str):
                raise CocoError(f"{f}.referring: expected a string")
            refs.append(inst["referring"])
    if has["keypoints"] and not all(isinstance(s, str) for s in names):
        raise CocoError(f"{where}.keypoint_names: expected a list of strings")
    n = len(insts)
    return Annotations(
        boxes=np.array(boxes, np.float64).reshape(n, 4),
        keypoints=np.array(kps, np.float64).reshape(n, len(names), 3) if has["keypoints"] else None,
        masks=np.stack(masks) if has["mask"] else None, labels=tuple(labels), referring=tuple(refs),
        keypoint_names=tuple(names) if has["keypoints"] else ())


# -- annotations follow the image ----------------------------------------------------------------------
def resize_annotations(ann: Annotations, src: tuple[int, int], dst: tuple[int, int]) -> Annotations:
    """``ann`` of an ``src`` (H, W) image, for the image resized to ``dst``: coordinates scaled, masks resized with
    nearest neighbours."""
    if tuple(src) == tuple(dst):
        return ann
    sy, sx = dst[0] / src[0], dst[1] / src[1]
    boxes = None if ann.boxes is None else np.asarray(ann.boxes, np.float64) * [sx, sy, sx, sy]
    kps = None
    if ann.keypoints is not None:
        kps = np.asarray(ann.keypoints, np.float64) * [sx, sy, 1.0]
    masks = None
    if ann.masks is not None:
        masks = np.zeros((len(ann.masks), *dst), bool)
        for i, m in enumerate(ann.masks):
            masks[i] = cv2.resize(m.view(np.uint8), (dst[1], dst[0]), interpolation=cv2.INTER_NEAREST) > 0
    return Annotations(boxes=boxes, keypoints=kps, masks=masks, labels=ann.labels, referring=ann.referring,
                       keypoint_names=ann.keypoint_names)


def crop_annotations(ann: Annotations, box: list[int], min_visible: float = MIN_VISIBLE) -> Annotations:
    """``ann`` seen through the crop ``box`` = [top, left, height, width]: boxes shifted and clipped to the crop,
    masks cut, keypoints shifted (outside the crop: ``[0, 0, 0]``, COCO's "not labelled"); an instance keeps only
    when at least ``min_visible`` of its box's area lies inside the crop (a box without area never does)."""
    top, left, h, w = box
    boxes = np.asarray(ann.boxes, np.float64).reshape(-1, 4)
    shifted = boxes - [left, top, left, top]
    clipped = np.clip(shifted, 0, [w, h, w, h])
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    seen = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    keep = np.flatnonzero((area > 0) & (seen >= min_visible * np.maximum(area, 1e-12)))
    kps = None
    if ann.keypoints is not None:
        kps = np.asarray(ann.keypoints, np.float64)[keep] - [left, top, 0.0]
        x, y, v = kps[..., 0], kps[..., 1], kps[..., 2]
        kps[~((v > 0) & (x >= 0) & (x < w) & (y >= 0) & (y < h))] = 0.0
    masks = None
    if ann.masks is not None:
        masks = np.ascontiguousarray(np.asarray(ann.masks)[keep, top:top + h, left:left + w])
    pick = [int(i) for i in keep]
    return Annotations(boxes=clipped[keep], keypoints=kps, masks=masks, labels=tuple(ann.labels[i] for i in pick),
                       referring=tuple(ann.referring[i] for i in pick) if ann.referring else (),
                       keypoint_names=ann.keypoint_names)
