"""Annotated builds (docs/lumen.md): a COCO dataset made here -> ``omnilv corpus build`` on the real builder and a
local Ray -> samples whose json holds the crop's annotations, agreeing with the target maps; byte-identical on any
number of workers; every sample regenerates from its json; what cannot be asked is a counted skip."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from corpus_helpers import corpus_files
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from degradations import box_maps, decode_boxes
from pipelines.coco import annotations_from_json, write_coco
from pipelines.read import iter_samples
from pipelines.regenerate import regenerate
from pipelines.schema import quantize

SIDE, CROP, VARIANTS = 96, 64, 16  # 16 draws per source: every task is drawn whatever the (tmp) paths are
VISION = ("detection", "instance_segmentation", "pose", "grounding", "referring_segmentation")
#: Per image: (category, colour, x0, y0, x1, y1, expression or None) of its rectangles.
SCENES = [
    [("square", (220, 30, 30), 10, 12, 40, 42, "the red square"), ("bar", (30, 60, 220), 50, 20, 90, 34, None)],
    [("square", (30, 170, 60), 40, 40, 70, 70, "the green square"), ("bar", (30, 60, 220), 5, 70, 60, 84, "the bar")],
    [("bar", (240, 200, 30), 20, 30, 80, 44, "the yellow bar"), ("square", (220, 30, 30), 60, 60, 88, 88, None)],
    [("square", (140, 50, 180), 30, 30, 62, 62, "the purple square")],
]


def picture(i: int, scene: list) -> np.ndarray:
    rng = np.random.default_rng(i)
    img = rng.integers(70, 190, (SIDE, SIDE, 3)).astype(np.uint8)  # textured: never a flat crop
    for _, colour, x0, y0, x1, y1, _ in scene:
        img[y0:y1, x0:x1] = colour
    return img


def rle(x0: int, y0: int, x1: int, y1: int) -> dict:
    m = np.zeros((SIDE, SIDE), np.uint8)
    m[y0:y1, x0:x1] = 1
    r = mask_utils.encode(np.asfortranarray(m))
    return {"size": [SIDE, SIDE], "counts": r["counts"].decode("ascii")}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """images/scene{i}.png + empty.png (no instance) + wrong.png (its json says another size) + instances.json;
    plain/photo.png: a source without annotations."""
    root = tmp_path_factory.mktemp("coco")
    (root / "images").mkdir()
    images, anns, refs = [], [], []
    cats = [{"id": 1, "name": "square", "keypoints": ["top left", "bottom right"]}, {"id": 2, "name": "bar"}]
    for i, scene in enumerate(SCENES):
        cv2.imwrite(str(root / "images" / f"scene{i}.png"), picture(i, scene)[..., ::-1])
        images.append({"id": i + 1, "file_name": f"scene{i}.png", "height": SIDE, "width": SIDE})
        for k, (cat, _, x0, y0, x1, y1, sent) in enumerate(scene):
            aid = 100 * (i + 1) + k
            ann = {"id": aid, "image_id": i + 1, "category_id": 1 if cat == "square" else 2, "iscrowd": 0,
                   "bbox": [x0, y0, x1 - x0, y1 - y0], "segmentation": rle(x0, y0, x1, y1), "area": 1}
            if cat == "square":
                ann["keypoints"] = [x0, y0, 2, x1 - 1, y1 - 1, 2]
            anns.append(ann)
            if sent:
                refs.append({"ref_id": aid, "ann_id": aid, "image_id": i + 1, "category_id": ann["category_id"],
                             "split": "train", "sentences": [{"sent": sent}]})
    cv2.imwrite(str(root / "images" / "empty.png"), picture(9, [])[..., ::-1])
    images.append({"id": 10, "file_name": "empty.png", "height": SIDE, "width": SIDE})
    cv2.imwrite(str(root / "images" / "wrong.png"), picture(8, [])[:80, :90, ::-1])
    images.append({"id": 11, "file_name": "wrong.png", "height": SIDE, "width": SIDE})
    anns.append({"id": 1100, "image_id": 11, "category_id": 2, "bbox": [1, 1, 70, 70], "iscrowd": 0,
                 "segmentation": rle(1, 1, 71, 71)})
    write_coco(root / "instances.json", images, anns, cats, refs)
    (root / "plain").mkdir()
    cv2.imwrite(str(root / "plain" / "photo.png"), picture(7, [])[..., ::-1])
    return root


def config(root: Path, out: Path) -> Path:
    cfg = {"name": "annotated", "variants_per_source": VARIANTS,
           "sources": [{"coco": str(root / "instances.json"), "images": str(root / "images")},
                       {"uri": str(root / "plain")}],
           "geometry": {"crop_size": CROP, "crop": "random"},
           "mixture": {"tasks": {**dict.fromkeys(VISION, 1.0), "gaussian_noise": 1.0}, "exemplar_probability": 0.5},
           "output": {"path": str(out), "samples_per_shard": 8}, "runtime": {"contact_sheet_rows": 2}}
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def build(root: Path, out: Path, workers: int) -> None:
    from omnilv.cli import app

    res = CliRunner().invoke(app, ["corpus", "build", str(config(root, out)), "--workers", str(workers), "--quiet"])
    assert res.exit_code == 0, res.output


@pytest.fixture(scope="module")
def corpus(dataset, tmp_path_factory, ray_local):
    out = tmp_path_factory.mktemp("annotated") / "corpus"
    build(dataset, out, workers=2)
    return out


def expected(scene: list, crop: list[int]) -> list[tuple]:
    """(label, box in the crop, mask box) of the instances at least a quarter visible: written out plainly here."""
    top, left, h, w = crop
    out = []
    for cat, _, x0, y0, x1, y1, sent in scene:
        cx0, cy0, cx1, cy1 = max(x0 - left, 0), max(y0 - top, 0), min(x1 - left, w), min(y1 - top, h)
        seen = max(cx1 - cx0, 0) * max(cy1 - cy0, 0)
        if seen >= 0.25 * (x1 - x0) * (y1 - y0):
            out.append((cat, [float(cx0), float(cy0), float(cx1), float(cy1)], sent or ""))
    return out


def test_samples_carry_the_crops_annotations_and_agree_with_their_targets(corpus, dataset):
    samples = list(iter_samples(str(corpus)))
    vision = [s for s in samples if s.meta["task"] in VISION]
    assert {s.meta["task"] for s in vision} == set(VISION) and len(vision) >= 8
    for s in vision:
        name = Path(s.meta["source"]).name
        assert name.startswith("scene") and s.meta["corpus_version"] == 3 and s.ref_input is None
        scene = SCENES[int(name[5])]
        top, left, h, w = s.meta["crop"]
        assert np.array_equal(s.input, quantize(picture(int(name[5]), scene)[top:top + h, left:left + w] / 255))
        ann = annotations_from_json(s.meta["annotations"])
        assert s.meta["annotations"]["size"] == [CROP, CROP]
        want = expected(scene, s.meta["crop"])
        assert [(lab, b.tolist(), r) for lab, b, r in zip(ann.labels, ann.boxes, ann.referring, strict=True)] == want
        for m, b in zip(ann.masks, ann.boxes.astype(int), strict=True):  # each mask is its clipped rectangle
            assert m.sum() == (b[2] - b[0]) * (b[3] - b[1]) and m[b[1]:b[3], b[0]:b[2]].all()
        params = s.meta["steps"][0]["params"]
        heat = s.target[..., 0]
        if s.meta["task"] in ("detection", "instance_segmentation"):
            mine = ann.boxes[[lab == params["category"] for lab in ann.labels]]
            assert params["category"] in s.instruction
            assert np.array_equal(s.target, quantize(box_maps((CROP, CROP), mine), 16))
            found, _ = decode_boxes(s.target)
            assert len(found) == len(mine) and np.abs(np.sort(found, 0) - np.sort(mine, 0)).max() <= 1.5
        elif s.meta["task"] == "referring_segmentation":
            i = params["instance"]
            assert ann.referring[i] and ann.referring[i] in s.instruction
            assert np.array_equal(heat > 0.5, ann.masks[i])
        elif s.meta["task"] == "grounding":
            i = params["instance"]
            b = ann.boxes[i]
            assert ann.referring[i] in s.instruction and heat[int((b[1] + b[3]) / 2), int((b[0] + b[2]) / 2)] == 1.0
        else:  # pose: a peak of 1 at every visible chosen keypoint, named in the instruction
            k = list(ann.keypoint_names).index(params["keypoint"])
            pts = [kp[k] for lab, kp in zip(ann.labels, ann.keypoints, strict=True)
                   if lab == params["category"] and kp[k][2] > 0]
            assert pts and params["keypoint"] in s.instruction
            assert all(heat[int(y), int(x)] == 1.0 for x, y, _ in pts)
    noise = [s for s in samples if s.meta["task"] == "gaussian_noise"]
    assert noise and all("annotations" not in s.meta for s in noise)


def test_what_cannot_be_asked_is_a_counted_skip(corpus, dataset):
    report = json.loads((corpus / "report.json").read_text())
    why = {}
    for uri, reason in report["rejected"]:
        why.setdefault(Path(uri.rpartition("#")[0]).name, set()).add(reason)
    assert why.get("photo.png") == {"no_annotations"}  # a plain photo asked a vision-centric question
    assert why.get("empty.png") == {"no_annotations"}  # an image with nothing in it
    assert why.get("wrong.png") == {"bad_annotations"}  # its json is for another size
    assert set(report["rejects"]) <= {"no_annotations", "bad_annotations"}
    assert report["rejects"] == json.loads((corpus / "manifest.json").read_text())["rejects"]
    samples = list(iter_samples(str(corpus)))
    assert len(samples) + sum(report["rejects"].values()) == 7 * VARIANTS
    assert {Path(s.meta["source"]).name for s in samples if s.meta["task"] == "gaussian_noise"} & {
        "photo.png", "empty.png", "wrong.png"}  # the same sources still serve image-only tasks
    assert "vision-centric" in report["domains"] and (corpus / "contact_vision-centric.png").is_file()


def test_annotated_builds_are_deterministic_and_regenerate(corpus, dataset, tmp_path):
    build(dataset, tmp_path / "again", workers=1)
    assert corpus_files(tmp_path / "again") == corpus_files(corpus)
    keys = [s.key for s in iter_samples(str(corpus))]
    results = [regenerate(str(corpus), k) for k in keys]
    assert all(r.ok for r in results), [(r.key, r.checks) for r in results if not r.ok]


def test_an_edited_coco_json_is_not_resumed_into_the_same_corpus(corpus, dataset, tmp_path):
    import shutil

    from pipelines.build import BuildError, build_corpus
    from pipelines.config import load_corpus_config

    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    build(copy, tmp_path / "out", workers=2)
    data = json.loads((copy / "instances.json").read_text())
    data["annotations"][0]["bbox"] = [11, 12, 29, 30]
    (copy / "instances.json").write_text(json.dumps(data))
    with pytest.raises(BuildError, match="source listing"):
        build_corpus(load_corpus_config(config(copy, tmp_path / "out")), progress=False)
