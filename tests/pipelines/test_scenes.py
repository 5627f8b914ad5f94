"""The scene generator: COCO json that pycocotools reads, masks that are the painted visible pixels, exact boxes and
extreme points, unique referring expressions, a disjoint split, the same bytes twice, local and on S3."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import fsspec
import numpy as np
import pytest
from pycocotools.coco import COCO

from degradations import data_dir, load_rgb
from pipelines import ScenesResult, make_scenes, s3_options
from pipelines.scenes import PALETTE, SHAPES, STATE, ScenesError

ARGS = {"images": 12, "size": 64, "seed": 3, "val_fraction": 0.25, "max_shapes": 4, "progress": False}
#: position phrase -> (horizontal third, vertical third); None: not said
WHERE = {"": (None, None), "on the left": ("left", None), "in the centre": ("centre", None),
         "on the right": ("right", None), "at the top": (None, "top"), "in the middle": (None, "middle"),
         "at the bottom": (None, "bottom"), "in the middle of the picture": ("centre", "middle"),
         **{f"in the {v} {h}": (h, v) for v in ("top", "middle", "bottom") for h in ("left", "centre", "right")
            if (v, h) != ("middle", "centre")}}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> ScenesResult:
    return make_scenes(tmp_path_factory.mktemp("scenes") / "ds", **ARGS)


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def loaded(scenes: ScenesResult) -> dict[str, COCO]:
    return {"train": COCO(scenes.train_json), "val": COCO(scenes.val_json)}


def picture(scenes: ScenesResult, entry: dict) -> np.ndarray:
    bgr = cv2.imread(str(Path(scenes.image_dir) / entry["file_name"]), cv2.IMREAD_UNCHANGED)
    return bgr[..., ::-1]


def background(entry: dict) -> np.ndarray:
    """The photo crop the image records, resized as the generator does: the picture before any shape."""
    photo = np.rint(load_rgb(data_dir() / entry["photo"]) * 255).astype(np.uint8)
    x0, y0, x1, y1 = entry["crop"]
    how = cv2.INTER_AREA if x1 - x0 > entry["width"] else cv2.INTER_LINEAR
    return cv2.resize(photo[y0:y1, x0:x1], (entry["width"], entry["height"]), interpolation=how)


def colour_of(img: np.ndarray, mask: np.ndarray) -> str:
    """The one palette colour every pixel of ``mask`` has (fails otherwise)."""
    found = {tuple(int(c) for c in px) for px in img[mask]}
    assert len(found) == 1, f"a mask covers {len(found)} colours"
    rgb = found.pop()
    names = [n for n, c in PALETTE.items() if c == rgb]
    assert names, "a mask covers a colour outside the palette"
    return names[0]


def third(c: float, size: int, words: tuple[str, str, str]) -> str:
    return words[min(2, int(3 * c / size))]


def test_masks_are_the_painted_visible_pixels(scenes):
    touching = 0
    for coco in loaded(scenes).values():
        for entry in coco.dataset["images"]:
            img, before = picture(scenes, entry), background(entry)
            masks = [coco.annToMask(a).astype(bool) for a in coco.loadAnns(coco.getAnnIds(imgIds=entry["id"]))]
            assert masks and img.shape == (64, 64, 3)
            union = np.zeros(img.shape[:2], int)
            for m in masks:
                colour_of(img, m)  # one solid palette colour: no background, no other shape inside the mask
                union += m
                grown = cv2.dilate(m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
                touching += sum(bool((grown & o).any()) for o in masks if o is not m)
            assert union.max() == 1, "two instances claim one pixel: occluded pixels were left in a mask"
            changed = (img != before).any(axis=2)
            assert not (changed & (union == 0)).any(), "a painted pixel belongs to no instance"
    assert touching, "no shape overlaps another: occlusion was not exercised"


def test_boxes_are_tight_and_keypoints_are_the_extremes(scenes):
    for coco in loaded(scenes).values():
        cats = coco.loadCats(coco.getCatIds())
        assert [c["name"] for c in cats] == list(SHAPES)
        assert all(c["keypoints"] == ["top", "right", "bottom", "left"] and c["skeleton"] == [] for c in cats)
        for a in coco.dataset["annotations"]:
            m = coco.annToMask(a).astype(bool)
            ys, xs = np.nonzero(m)
            assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert a["area"] == m.sum() >= 16 and a["iscrowd"] == 0 and a["num_keypoints"] == 4
            assert isinstance(a["segmentation"]["counts"], str)
            (tx, ty, tv), (rx, ry, rv), (bx, by, bv), (lx, ly, lv) = np.reshape(a["keypoints"], (4, 3))
            assert (tv, rv, bv, lv) == (2, 2, 2, 2)
            assert m[ty, tx] and m[ry, rx] and m[by, bx] and m[ly, lx]
            assert (ty, rx, by, lx) == (ys.min(), xs.max(), ys.max(), xs.min())


def test_referring_expressions_are_true_and_unique(scenes):
    with_position = 0
    for split, coco in loaded(scenes).items():
        refs = coco.dataset["refs"]
        assert refs and all(r["split"] == split for r in refs)
        for entry in coco.dataset["images"]:
            img, size = picture(scenes, entry), entry["width"]
            anns = coco.loadAnns(coco.getAnnIds(imgIds=entry["id"]))
            facts = {}
            for a in anns:
                x, y, w, h = a["bbox"]
                facts[a["id"]] = (colour_of(img, coco.annToMask(a).astype(bool)),
                                  coco.loadCats(a["category_id"])[0]["name"],
                                  third(x + w / 2, size, ("left", "centre", "right")),
                                  third(y + h / 2, size, ("top", "middle", "bottom")))
            mine = [r for r in refs if r["image_id"] == entry["id"]]
            sents = [r["sentences"][0]["sent"] for r in mine]
            assert len(set(sents)) == len(sents)
            for r, sent in zip(mine, sents, strict=True):
                the, colour, shape, *rest = sent.split()
                hh, vv = WHERE[" ".join(rest)]
                with_position += bool(rest)
                hits = [i for i, f in facts.items()
                        if f[:2] == (colour, shape) and hh in (None, f[2]) and vv in (None, f[3])]
                assert the == "the" and hits == [r["ann_id"]], f"{sent!r} matches {hits}, not {r['ann_id']}"
                assert r["category_id"] == coco.anns[r["ann_id"]]["category_id"]
    assert with_position


def test_split_is_disjoint_and_sized_as_asked(scenes):
    cocos = loaded(scenes)
    ids = {k: {e["id"] for e in c.dataset["images"]} for k, c in cocos.items()}
    assert (len(ids["train"]), len(ids["val"])) == (9, 3) == (scenes.train, scenes.val)
    assert not ids["train"] & ids["val"]
    anns = {k: [a["id"] for a in c.dataset["annotations"]] for k, c in cocos.items()}
    assert not set(anns["train"]) & set(anns["val"]) and len(anns["train"]) + len(anns["val"]) == scenes.instances
    for k, c in cocos.items():
        assert {a["image_id"] for a in c.dataset["annotations"]} <= ids[k]
    names = sorted(e["file_name"] for c in cocos.values() for e in c.dataset["images"])
    assert names == sorted(p.name for p in Path(scenes.image_dir).iterdir())


def test_same_arguments_same_bytes(scenes, tmp_path):
    again = make_scenes(tmp_path / "again", **ARGS)
    first = files(Path(scenes.root))
    assert first == files(Path(again.root)) and len(first) == 12 + 3
    other = make_scenes(tmp_path / "other", **{**ARGS, "seed": 4})
    assert files(Path(other.root))["images/000000.png"] != first["images/000000.png"]


def test_a_foreign_folder_is_refused_and_overwrite_deletes_only_ours(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(ScenesError, match="holds no omnilv scenes"):
            make_scenes(foreign, images=2, size=32, progress=False, overwrite=overwrite)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    ours = tmp_path / "ours"
    make_scenes(ours, images=4, size=32, progress=False)
    with pytest.raises(ScenesError, match="already holds omnilv scenes"):
        make_scenes(ours, images=2, size=32, progress=False)
    (ours / "images" / "notes.txt").write_text("a user's file in our folder")
    state = json.loads((ours / STATE).read_text())
    state["writes"] += ["images/notes.txt", "../foreign/notes.txt"]  # an edited state widens nothing
    (ours / STATE).write_text(json.dumps(state))
    result = make_scenes(ours, images=2, size=32, progress=True, overwrite=True)
    assert sorted(p.name for p in (ours / "images").iterdir()) == ["000000.png", "000001.png", "notes.txt"]
    assert (result.train, result.val) == (2, 0) and (foreign / "notes.txt").read_text() == "mine"
    assert len(COCO(result.val_json).dataset["images"]) == 0


def test_bad_arguments_are_refused(tmp_path):
    for bad in ({"size": 16}, {"images": 0}, {"val_fraction": 1.0}, {"max_shapes": 0}, {"seed": -1}):
        with pytest.raises(ScenesError, match=next(iter(bad))):
            make_scenes(tmp_path / "x", progress=False, **bad)
    assert not (tmp_path / "x").exists()


def test_writing_to_s3_gives_the_local_bytes(s3_server, tmp_path):
    args = {**ARGS, "images": 3}
    remote = make_scenes("s3://scenes/ds", **args)
    local = files(Path(make_scenes(tmp_path / "ds", **args).root))
    fs = fsspec.filesystem("s3", **s3_options(), skip_instance_cache=True)
    found = {f.removeprefix("scenes/ds/"): fs.cat_file(f) for f in fs.find("scenes/ds")}
    assert found == local and remote.root == "s3://scenes/ds"
    (tmp_path / "val.json").write_bytes(found["annotations/instances_val.json"])
    assert len(COCO(str(tmp_path / "val.json")).getImgIds()) == round(3 * 0.25)
    with pytest.raises(ScenesError, match="already holds"):
        make_scenes("s3://scenes/ds", **args)
