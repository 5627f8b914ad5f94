"""The embedded default dataset of Lumen: coloured shapes on the bundled photographs, as COCO json, no download.

Each scene is a square crop of one of scikit-image's sample photographs (``degradations.sample_paths``), resized
to ``size``, with 1..``max_shapes`` solid shapes (rectangle, circle, triangle, ellipse from ``skimage.draw``) painted
in colours of :data:`PALETTE`. Later shapes paint over earlier ones; every annotation is computed from the *visible*
pixels, so it is exact:

- ``segmentation``: compressed COCO RLE (``counts`` a str), ``area`` its pixel count, ``iscrowd`` 0;
- ``bbox``: the tight box ``[x, y, w, h]`` in whole pixels (``x + w`` is one past the last mask column);
- ``keypoints``: the extreme mask pixels top, right, bottom, left as ``[x, y, 2]`` (column, row of that pixel;
  ties broken by the middle pixel of the extreme row or column);
- a RefCOCO-style top-level ``refs`` list: colour and shape ("the red circle"), with position words ("on the
  left", "at the top", "in the top left") added until exactly one instance of the image matches; an instance no
  expression singles out gets none. Positions are thirds of the image, taken at the centre of the visible box.

A shape that would leave an earlier one with less than :data:`MIN_VISIBLE` of its pixels (or :data:`MIN_PIXELS`)
visible, or would touch a shape of its own colour, is not painted but tried elsewhere: every painted shape is
annotated, and no two read as one blob. Scene ``i`` is drawn from ``default_rng([seed, i])`` alone (its
expressions from ``[seed, i, 1]``); the files are the same bytes for the same arguments. Layout of ``out`` (a
local folder or ``s3://`` prefix)::

    images/000000.png …                  8-bit RGB, COCO ``file_name`` relative to images/
    annotations/instances_train.json     the first ``images - n_val`` scenes
    annotations/instances_val.json       the last ``n_val = round(images * val_fraction)``
    _scenes.json                         our state: the arguments and every name written (written first)

A non-empty ``out`` without our state is refused; ``overwrite=True`` deletes only the names our state lists.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from degradations import data_dir, load_rgb, sample_paths
from omnilv.errors import OmniLVError
from pipelines.schema import encode_png
from pipelines.storage import TEMP_RE, Store, is_remote, join, s3_options

VERSION = 1
STATE = "_scenes.json"
TRAIN, VAL = "annotations/instances_train.json", "annotations/instances_val.json"
#: The names a scenes build may write (an edited state widens nothing beyond these).
OUR_NAMES = re.compile(r"images/\d{6,}\.png|annotations/instances_(train|val)\.json")
SHAPES = ("rectangle", "circle", "triangle", "ellipse")  # category id = index + 1
KEYPOINTS = ("top", "right", "bottom", "left")
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 70, 220), "yellow": (245, 215, 30),
    "orange": (250, 135, 20), "purple": (140, 50, 180), "white": (250, 250, 250), "black": (15, 15, 15),
}
EXTENT_RANGE = (0.18, 0.42)  # a shape's extent as a fraction of the image side
MIN_PIXELS = 16
MIN_VISIBLE = 0.3
TRIES = 20
HORIZONTAL = {"left": "on the left", "centre": "in the centre", "right": "on the right"}
VERTICAL = {"top": "at the top", "middle": "in the middle", "bottom": "at the bottom"}


class ScenesError(OmniLVError):
    """Bad arguments, or an output folder the scene generator may not write into."""


@dataclass(frozen=True)
class ScenesResult:
    """What :func:`make_scenes` wrote: the root, image counts per split, instances and referring expressions."""

    root: str
    train: int
    val: int
    instances: int
    refs: int

    @property
    def train_json(self) -> str:
        return join(self.root, TRAIN)

    @property
    def val_json(self) -> str:
        return join(self.root, VAL)

    @property
    def image_dir(self) -> str:
        return join(self.root, "images")


@dataclass(frozen=True)
class Shape:
    """One painted shape: its name, colour and visible mask (H, W) bool."""

    name: str
    colour: str
    mask: np.ndarray


# -- drawing ---------------------------------------------------------------------------------------
def draw_shape(name: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """The full (unoccluded) mask (size, size) bool of a random ``name`` lying inside the image."""
    from skimage import draw

    d = rng.uniform(*EXTENT_RANGE) * size
    cy, cx = rng.uniform(d / 2, size - d / 2, 2)
    shape = (size, size)
    if name == "rectangle":
        h, w = d * rng.uniform(0.5, 1.0, 2)
        rr, cc = draw.rectangle((cy - h / 2, cx - w / 2), extent=(h, w), shape=shape)
    elif name == "circle":
        rr, cc = draw.disk((cy, cx), d / 2, shape=shape)
    elif name == "triangle":
        turn = rng.uniform(0, 2 * np.pi)
        angles = turn + np.array([-np.pi / 2, np.pi / 6, 5 * np.pi / 6])  # equilateral, inscribed in the circle
        rr, cc = draw.polygon(cy + d / 2 * np.sin(angles), cx + d / 2 * np.cos(angles), shape=shape)
    elif name == "ellipse":
        rr, cc = draw.ellipse(cy, cx, d / 2, d / 2 * rng.uniform(0.35, 0.75), shape=shape,
                              rotation=rng.uniform(-np.pi, np.pi))
    else:
        raise ValueError(f"unknown shape {name!r}")
    mask = np.zeros(shape, bool)
    mask[np.asarray(rr, int), np.asarray(cc, int)] = True
    return mask


def place_shapes(rng: np.random.Generator, size: int, count: int) -> list[Shape]:
    """Up to ``count`` shapes, each leaving every earlier one enough visible pixels and touching none of its own
    colour (two would read as one blob); the masks returned are the visible ones."""
    shapes: list[Shape] = []
    full: list[np.ndarray] = []
    for _ in range(count):
        name, colour = SHAPES[rng.integers(len(SHAPES))], list(PALETTE)[rng.integers(len(PALETTE))]
        for _ in range(TRIES):
            mask = draw_shape(name, rng, size)
            if fits(mask, colour, shapes, full):
                break
        else:
            continue  # nowhere left for it: the scene keeps fewer shapes
        shapes = [Shape(s.name, s.colour, s.mask & ~mask) for s in shapes] + [Shape(name, colour, mask)]
        full.append(mask)
    return shapes


def fits(mask: np.ndarray, colour: str, shapes: list[Shape], full: list[np.ndarray]) -> bool:
    """Whether ``mask`` may be painted over ``shapes`` (their visible masks; ``full``: as drawn)."""
    if mask.sum() < MIN_PIXELS:
        return False
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    return all((s.mask & ~mask).sum() >= _needed(f) and not (s.colour == colour and (s.mask & grown).any())
               for s, f in zip(shapes, full, strict=True))


def _needed(full: np.ndarray) -> int:
    return max(MIN_PIXELS, int(np.ceil(MIN_VISIBLE * full.sum())))


class Backgrounds:
    """Square crops of the bundled photographs, each photo decoded once (8-bit RGB)."""

    def __init__(self) -> None:
        self.paths = sample_paths()
        if not self.paths:
            raise ScenesError(f"no sample photographs under {data_dir()}; is scikit-image installed with its data?")
        self.cache: dict[Path, np.ndarray] = {}

    def __call__(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, str, list[int]]:
        """(image (size, size, 3) uint8, photo name, crop [x0, y0, x1, y1] in that photo)."""
        path = self.paths[rng.integers(len(self.paths))]
        if path not in self.cache:
            self.cache[path] = np.rint(load_rgb(path) * 255).astype(np.uint8)
        photo = self.cache[path]
        h, w = photo.shape[:2]
        side = int(rng.integers(max(1, min(h, w) // 2), min(h, w) + 1))
        y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = photo[y0:y0 + side, x0:x0 + side]
        how = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        return cv2.resize(crop, (size, size), interpolation=how), path.name, [x0, y0, x0 + side, y0 + side]


# -- annotations -----------------------------------------------------------------------------------
def annotation(shape: Shape, ann_id: int, image_id: int) -> dict[str, Any]:
    """The COCO annotation of one visible mask: RLE, tight box, area, the four extreme points."""
    from pycocotools import mask as mask_util

    ys, xs = np.nonzero(shape.mask)
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())

    def middle(sel: np.ndarray, along: np.ndarray) -> int:
        return int(np.sort(along[sel])[int(sel.sum()) // 2])

    points = [(middle(ys == y0, xs), y0), (x1, middle(xs == x1, ys)), (middle(ys == y1, xs), y1),
              (x0, middle(xs == x0, ys))]
    rle = mask_util.encode(np.asfortranarray(shape.mask.astype(np.uint8)))
    return {"id": ann_id, "image_id": image_id, "category_id": SHAPES.index(shape.name) + 1, "iscrowd": 0,
            "area": int(shape.mask.sum()), "bbox": [x0, y0, x1 - x0 + 1, y1 - y0 + 1],
            "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
            "keypoints": [v for x, y in points for v in (x, y, 2)], "num_keypoints": len(KEYPOINTS)}


def position(bbox: list[int], size: int) -> tuple[str, str]:
    """(horizontal, vertical) third of the image holding the box centre."""
    def third(c: float) -> int:
        return min(2, int(3 * c / size))

    return (("left", "centre", "right")[third(bbox[0] + bbox[2] / 2)],
            ("top", "middle", "bottom")[third(bbox[1] + bbox[3] / 2)])


def phrase(colour: str, shape: str, h: str | None, v: str | None) -> str:
    """'the red circle', '… on the left', '… at the top', '… in the top left' (one string per description)."""
    if h and v:
        where = "in the middle of the picture" if (v, h) == ("middle", "centre") else f"in the {v} {h}"
    else:
        where = HORIZONTAL[h] if h else VERTICAL[v] if v else ""
    return " ".join(filter(None, ("the", colour, shape, where)))


def expressions(shapes: list[Shape], anns: list[dict[str, Any]], size: int,
                rng: np.random.Generator) -> list[str | None]:
    """Per instance, an expression only it matches, or None: colour and shape, then position words until unique.

    Which position word comes first (horizontal or vertical), and whether the bare "the red circle" is tried at
    all, is drawn from ``rng``, so positions are part of most expressions, not only of the ambiguous ones."""
    facts = [(s.colour, s.name, *position(a["bbox"], size)) for s, a in zip(shapes, anns, strict=True)]
    out: list[str | None] = []
    for colour, name, h, v in facts:
        tries = [(h, None), (None, v)][:: 1 if rng.random() < 0.5 else -1] + [(h, v)]
        if rng.random() < 1 / 3:
            tries.insert(0, (None, None))
        found = None
        for hh, vv in tries:
            hits = [f for f in facts if f[:2] == (colour, name) and hh in (None, f[2]) and vv in (None, f[3])]
            if len(hits) == 1:
                found = phrase(colour, name, hh, vv)
                break
        out.append(found)
    return out


def scene(index: int, seed: int, size: int, max_shapes: int, backgrounds: Backgrounds,
          ) -> tuple[bytes, dict[str, Any], list[Shape]]:
    """Scene ``index``: (PNG bytes, COCO image entry, its shapes) from its own rng."""
    rng = np.random.default_rng([seed, index])
    img, photo, crop = backgrounds(rng, size)
    shapes = place_shapes(rng, size, int(rng.integers(1, max_shapes + 1)))
    full = img.copy()
    for s in shapes:  # the visible masks are disjoint: painting them in any order gives the occluded picture
        full[s.mask] = PALETTE[s.colour]
    image = {"id": index + 1, "file_name": f"{index:06d}.png", "width": size, "height": size, "photo": photo,
             "crop": crop}
    return encode_png(full.astype(np.float32) / 255), image, shapes


# -- the dataset -----------------------------------------------------------------------------------
def make_scenes(out: str | Path, *, images: int = 200, size: int = 256, seed: int = 0, val_fraction: float = 0.2,
                max_shapes: int = 4, progress: bool = True, overwrite: bool = False) -> ScenesResult:
    """Write ``images`` scenes and their COCO json (train/val) to ``out``; see the module docstring."""
    params = check_params(images=images, size=size, seed=seed, val_fraction=val_fraction, max_shapes=max_shapes)
    out = str(out)
    store = Store(out, s3_options() if is_remote(out) else None)
    store.refuse_unsafe([str(data_dir())])
    store.ensure_bucket()
    names = [f"images/{i:06d}.png" for i in range(images)] + [TRAIN, VAL]
    claim(store, params, names, overwrite)
    n_val = round(images * val_fraction)
    splits: dict[str, dict[str, list]] = {k: {"images": [], "annotations": [], "refs": []} for k in ("train", "val")}
    backgrounds, ann_id, ref_id = Backgrounds(), 1, 1
    with _progress(progress, images) as advance:
        for i in range(images):
            png, image, shapes = scene(i, seed, size, max_shapes, backgrounds)
            store.write(names[i], png)
            split = splits["val" if i >= images - n_val else "train"]
            split["images"].append(image)
            anns = [annotation(s, ann_id + k, image["id"]) for k, s in enumerate(shapes)]
            ann_id += len(anns)
            split["annotations"].extend(anns)
            sents = expressions(shapes, anns, size, np.random.default_rng([seed, i, 1]))
            for a, sent in zip(anns, sents, strict=True):
                if sent is not None:
                    split["refs"].append(ref(a, sent, ref_id, "val" if split is splits["val"] else "train"))
                    ref_id += 1
            advance()
    for name, key in ((TRAIN, "train"), (VAL, "val")):
        store.write(name, dumps(coco(splits[key], key, params)))
    store.write(STATE, dumps({**state(params, names), "complete": True}))
    return ScenesResult(store.root, images - n_val, n_val, ann_id - 1, ref_id - 1)


def ref(ann: dict[str, Any], sent: str, ref_id: int, split: str) -> dict[str, Any]:
    """A RefCOCO-style ref: one sentence for one annotation."""
    return {"ref_id": ref_id, "ann_id": ann["id"], "image_id": ann["image_id"], "category_id": ann["category_id"],
            "split": split, "sentences": [{"sent": sent, "raw": sent, "sent_id": ref_id, "tokens": sent.split()}]}


def check_params(**params: Any) -> dict[str, Any]:
    """The arguments, or a :class:`ScenesError` naming the first bad one."""
    rules = {"images": lambda v: isinstance(v, int) and v >= 1, "size": lambda v: isinstance(v, int) and v >= 32,
             "seed": lambda v: isinstance(v, int) and v >= 0,
             "val_fraction": lambda v: isinstance(v, int | float) and 0 <= v < 1,
             "max_shapes": lambda v: isinstance(v, int) and v >= 1}
    why = {"images": "an int >= 1", "size": "an int >= 32 (pixels)", "seed": "an int >= 0",
           "val_fraction": "a number in [0, 1)", "max_shapes": "an int >= 1"}
    for key, ok in rules.items():
        if isinstance(params[key], bool) or not ok(params[key]):
            raise ScenesError(f"make_scenes: {key}={params[key]!r}; it must be {why[key]}")
    return {**params, "val_fraction": float(params["val_fraction"])}


def state(params: dict[str, Any], names: list[str]) -> dict[str, Any]:
    return {"kind": "omnilv-scenes", "version": VERSION, "params": params, "writes": names, "complete": False}


def claim(store: Store, params: dict[str, Any], names: list[str], overwrite: bool) -> None:
    """Make ``store`` ours for this build: empty, or our own scenes (replaced only with ``overwrite``)."""
    present = store.list()
    if present:
        old = read_state(store) if STATE in present else None
        if old is None:
            raise ScenesError(f"{store.root} is not empty ({len(present)} file(s), e.g. {present[0]!r}) and holds no "
                              "omnilv scenes; make_scenes writes only into an empty folder or its own scenes. "
                              "Choose another output folder.")
        if not overwrite:
            raise ScenesError(f"{store.root} already holds omnilv scenes ({old.get('params')}); pass overwrite=True "
                              "to replace them, or choose another output folder.")
        mine = {n for n in map(str, old.get("writes", [])) if OUR_NAMES.fullmatch(n)} | {STATE}
        stale = [n for n in present if n in mine or ((m := TEMP_RE.match(n)) is not None and m.group(1) in mine)]
        store.remove(sorted(stale, key=lambda n: n == STATE))  # the state last: a crash still knows what to delete
    store.write(STATE, dumps(state(params, names)))  # before anything else: every later write is on record


def read_state(store: Store) -> dict[str, Any] | None:
    """Our state at ``store``, or None when the file there is not one (then the folder is not ours)."""
    try:
        found = json.loads(store.read(STATE))
    except (ValueError, UnicodeDecodeError):
        return None
    ok = isinstance(found, dict) and found.get("kind") == "omnilv-scenes" and isinstance(found.get("writes"), list)
    return found if ok else None


def coco(split: dict[str, list], name: str, params: dict[str, Any]) -> dict[str, Any]:
    """One split as a COCO dataset (plus RefCOCO-style ``refs``)."""
    categories = [{"id": i + 1, "name": s, "supercategory": "shape", "keypoints": list(KEYPOINTS), "skeleton": []}
                  for i, s in enumerate(SHAPES)]
    info = {"description": "omnilv scenes: solid shapes on scikit-image sample photographs", "version": str(VERSION),
            "contributor": "omnilv", "split": name, **params}
    return {"info": info, "licenses": [], "categories": categories, **split}


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Callable[[], None]]:
    """A rich bar over scenes; yields ``advance()``."""
    if not enabled:
        yield lambda: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("[bold]scenes"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("ETA"), TimeRemainingColumn()) as bar:
        task = bar.add_task("scenes", total=total)
        yield lambda: bar.update(task, advance=1)
