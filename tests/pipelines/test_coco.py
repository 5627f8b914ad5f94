"""pipelines.coco: COCO json (polygon / RLE masks, keypoints, RefCOCO refs) read and written, locally and on S3;
the sample's annotations json both ways; annotations following a resize and a crop; hostile files refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from degradations import Annotations
from pipelines.coco import (
    CocoError,
    CocoSet,
    annotations_from_json,
    annotations_to_json,
    crop_annotations,
    merge_records,
    resize_annotations,
    rle_runs,
    write_coco,
)

H, W = 40, 60
KP_NAMES = ["nose", "tail"]


def blob(top: int, left: int, h: int, w: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[top:top + h, left:left + w] = True
    m[top, left] = False  # not a plain rectangle, so a mix-up of rows and columns shows
    return m


def rle_str(m: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [H, W], "counts": r["counts"].decode("ascii")}


def rle_list(m: np.ndarray) -> dict:
    """COCO's uncompressed RLE: column-major runs, starting with zeros."""
    flat = m.T.reshape(-1).astype(np.uint8)
    runs, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            runs.append(n)
            cur, n = v, 0
        n += 1
    runs.append(n)
    return {"size": [H, W], "counts": runs}


MASK_A, MASK_B = blob(5, 6, 10, 12), blob(20, 30, 15, 20)


def dataset() -> dict:
    images = [{"id": 1, "file_name": "a.png", "height": H, "width": W},
              {"id": 2, "file_name": "sub/b.png", "height": H, "width": W}]
    categories = [{"id": 1, "name": "ball"}, {"id": 3, "name": "dog", "keypoints": KP_NAMES, "skeleton": [[1, 2]]}]
    anns = [
        {"id": 10, "image_id": 1, "category_id": 3, "bbox": [6, 5, 12, 10], "iscrowd": 0,
         "segmentation": rle_str(MASK_A), "keypoints": [8, 7, 2, 17, 14, 1]},
        {"id": 11, "image_id": 1, "category_id": 1, "bbox": [30, 20, 20, 15], "iscrowd": 0,
         "segmentation": rle_list(MASK_B)},
        {"id": 12, "image_id": 1, "category_id": 1, "bbox": [0, 0, 60, 40], "iscrowd": 1,
         "segmentation": rle_list(np.ones((H, W), bool))},  # a crowd region: left out
        {"id": 20, "image_id": 2, "category_id": 1, "bbox": [10, 10, 20, 10], "iscrowd": 0,
         "segmentation": [[10, 10, 30, 10, 30, 20, 10, 20]]},
    ]
    refs = [{"ref_id": 2, "ann_id": 10, "image_id": 1, "category_id": 3, "split": "train",
             "sentences": [{"sent": "the dog on the left"}, {"sent": "a small dog"}]},
            {"ref_id": 7, "ann_id": 10, "image_id": 1, "category_id": 3, "split": "val",
             "sentences": [{"sent": "later ref"}]},
            {"ref_id": 5, "ann_id": 20, "image_id": 2, "category_id": 1, "split": "val",
             "sentences": [{"sent": "the ball"}]},
            {"ref_id": 9, "ann_id": 999, "image_id": 7, "category_id": 1, "split": "train",
             "sentences": [{"sent": "an image of another json"}]}]
    return {"images": images, "annotations": anns, "categories": categories, "refs": refs}


def write(tmp_path: Path, data: dict, name: str = "instances.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_round_trip_polygon_and_rle_masks_keypoints_refs(tmp_path):
    d = dataset()
    path = write_coco(tmp_path / "ann" / "instances.json", d["images"], d["annotations"], d["categories"], d["refs"])
    coco = CocoSet.load(path)
    assert coco.files() == ["a.png", "sub/b.png"]
    a = coco.annotations_for("a.png", H, W)
    assert a.labels == ("dog", "ball")  # by annotation id; the crowd region left out
    np.testing.assert_array_equal(a.boxes, [[6, 5, 18, 15], [30, 20, 50, 35]])
    np.testing.assert_array_equal(a.masks, [MASK_A, MASK_B])  # compressed and uncompressed RLE, exact
    assert a.keypoint_names == tuple(KP_NAMES)
    np.testing.assert_array_equal(a.keypoints, [[[8, 7, 2], [17, 14, 1]], [[0, 0, 0], [0, 0, 0]]])  # a ball: none
    assert a.referring == ("the dog on the left", "")  # first sentence of the first ref; none -> ""
    b = coco.annotations_for(2, H, W)
    assert b.labels == ("ball",) and b.referring == ("the ball",) and b.keypoints is None and b.keypoint_names == ()
    poly = b.masks[0]  # the rectangle polygon [10, 30] x [10, 20], rasterised by pycocotools
    assert poly[11:19, 11:29].all() and not poly[:9].any() and not poly[:, :9].any() and 150 <= poly.sum() <= 260
    with pytest.raises(CocoError, match="is 60x30 but its annotations are for 60x40"):
        coco.annotations_for("a.png", 30, 60)
    # refs from a separate json, one split only
    no_refs = {k: v for k, v in d.items() if k != "refs"}
    plain = CocoSet.load(write(tmp_path, no_refs, "plain.json"))
    assert plain.annotations_for(1, H, W).referring == ()  # a dataset without refs: no referring at all
    refs_path = write(tmp_path, {"refs": d["refs"]}, "refs.json")
    val = CocoSet.load(write(tmp_path, no_refs, "plain.json"), refs=refs_path, refs_split="val")
    assert val.annotations_for(1, H, W).referring == ("later ref", "")
    assert val.annotations_for(2, H, W).referring == ("the ball",)


def test_annotations_json_round_trip_is_exact():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 17, 23)) > 0.6
    ann = Annotations(boxes=rng.uniform(0, 17, (3, 4)), keypoints=np.concatenate(
        [rng.uniform(0, 17, (3, 2, 2)), rng.integers(0, 3, (3, 2, 1))], axis=2), masks=masks,
        labels=("a", "b", "a"), referring=("the first", "", "the 3rd"), keypoint_names=("x", "y"))
    d = annotations_to_json(ann)
    text = json.dumps(d)
    assert d["version"] == 1 and d["size"] == [17, 23] and d["keypoint_names"] == ["x", "y"]
    assert all(isinstance(i["mask"]["counts"], str) and i["mask"]["size"] == [17, 23] for i in d["instances"])
    back = annotations_from_json(json.loads(text))
    for f in ("boxes", "keypoints", "masks"):
        assert np.array_equal(getattr(back, f), getattr(ann, f)), f
    assert (back.labels, back.referring, back.keypoint_names) == (ann.labels, ann.referring, ann.keypoint_names)
    assert annotations_to_json(back) == d
    boxes_only = Annotations(boxes=np.array([[1.5, 2.0, 3.25, 4.0]]), labels=("c",))
    d2 = annotations_to_json(boxes_only, (8, 9))
    assert d2 == {"version": 1, "size": [8, 9], "instances": [{"label": "c", "box": [1.5, 2.0, 3.25, 4.0]}]}
    again = annotations_from_json(d2)
    assert again.masks is None and again.keypoints is None and again.referring == () and again.labels == ("c",)
    with pytest.raises(ValueError, match="size"):
        annotations_to_json(boxes_only)
    for bad, field in (({**d2, "version": 2}, "version"), ({**d2, "size": [8]}, "size"),
                       ({**d, "instances": [d["instances"][0], {k: v for k, v in d["instances"][1].items()
                                                                 if k != "mask"}, d["instances"][2]]}, "every"),
                       ({**d2, "instances": [{"label": "c", "box": [1, 2, 3]}]}, "instances\\[0\\].box")):
        with pytest.raises(CocoError, match=field):
            annotations_from_json(bad)


def test_rle_strings_decode_like_pycocotools():
    rng = np.random.default_rng(1)
    for _ in range(20):
        m = rng.random((31, 29)) > rng.uniform(0.05, 0.95)
        enc = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        runs = rle_runs(enc["counts"].decode("ascii"))
        assert sum(runs) == m.size and np.array_equal(
            np.repeat(np.arange(len(runs)) % 2, runs).astype(bool).reshape(29, 31).T, m)


@pytest.mark.parametrize("name", ["../evil.png", "/etc/passwd", "a/../../x.png", "s3://other/x.png", "a\\..\\b.png",
                                  "", "./a.png"])
def test_file_names_that_leave_the_image_root_are_refused(tmp_path, name):
    d = dataset()
    d["images"][1]["file_name"] = name
    with pytest.raises(CocoError, match=r"images\[1\].file_name"):
        CocoSet.load(write(tmp_path, d))


def test_a_symlink_out_of_the_image_root_is_refused(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"x")
    os.symlink(outside, root / "sub" / "b.png")
    coco = CocoSet.load(write(tmp_path, dataset()))
    with pytest.raises(CocoError, match="outside the image root"):
        coco.image_uris(str(root))
    assert coco.image_uris("s3://bucket/images/")["sub/b.png"] == "s3://bucket/images/sub/b.png"


def hostile(case: str) -> dict:
    d = dataset()
    a0, a1 = d["annotations"][0], d["annotations"][1]
    if case == "huge image":
        d["images"][0].update(height=10**6, width=10**6)
    elif case == "short runs":
        a1["segmentation"]["counts"] = a1["segmentation"]["counts"][:-1]
    elif case == "long runs":
        a1["segmentation"]["counts"] = [*a1["segmentation"]["counts"], 5]
    elif case == "rle string overflow":
        a0["segmentation"]["counts"] = "o" * 8 + "1"  # runs far past the image: pycocotools would write out of bounds
    elif case == "rle bad char":
        a0["segmentation"]["counts"] = "\x00abc"
    elif case == "rle size":
        a0["segmentation"]["size"] = [H + 1, W]
    elif case == "negative bbox":
        a0["bbox"] = [0, 0, -3, 4]
    elif case == "nan keypoint":
        a0["keypoints"] = [1, 2, 2, float("nan"), 3, 2]
    elif case == "keypoint count":
        a0["keypoints"] = [1, 2, 2]
    elif case == "unknown image":
        a0["image_id"] = 77
    elif case == "many masks":
        d["images"][0].update(height=8000, width=8000)
        d["annotations"] = [{**a1, "id": 100 + i, "segmentation": [[0, 0, 5, 0, 5, 5]]} for i in range(20)]
    elif case == "far polygon":
        a1["segmentation"] = [[0, 0, 1e9, 0, 5, 5]]
    return d


@pytest.mark.parametrize("case,field", [
    ("huge image", r"images\[0\]"), ("short runs", r"annotations\[1\].segmentation.counts"),
    ("long runs", r"annotations\[1\].segmentation.counts"), ("rle string overflow", r"annotations\[0\].segmentation"),
    ("rle bad char", r"annotations\[0\].segmentation"), ("rle size", r"annotations\[0\].segmentation"),
    ("negative bbox", r"annotations\[0\].bbox"), ("nan keypoint", r"annotations\[0\].keypoints"),
    ("keypoint count", r"annotations\[0\].keypoints"), ("unknown image", r"annotations\[0\]"),
    ("many masks", "masks would take"), ("far polygon", r"annotations\[1\].segmentation")])
def test_hostile_or_broken_files_are_refused_before_decoding(tmp_path, case, field):
    path = write(tmp_path, hostile(case))
    with pytest.raises(CocoError, match=field) as err:
        CocoSet.load(path)
    assert path in str(err.value)


def test_unreadable_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CocoError, match="bad.json: not JSON"):
        CocoSet.load(str(bad))
    with pytest.raises(CocoError, match="no such file"):
        CocoSet.load(str(tmp_path / "missing.json"))
    with pytest.raises(CocoError, match="only local paths and s3://"):
        CocoSet.load("https://example.com/instances.json")


def test_annotations_follow_a_resize_and_a_crop():
    ann = CocoSet(dataset(), "mem").annotations_for("a.png", H, W)
    big = resize_annotations(ann, (H, W), (2 * H, 2 * W))
    np.testing.assert_array_equal(big.boxes, ann.boxes * 2)
    np.testing.assert_array_equal(big.keypoints[..., :2], ann.keypoints[..., :2] * 2)
    np.testing.assert_array_equal(big.keypoints[..., 2], ann.keypoints[..., 2])
    np.testing.assert_array_equal(big.masks, ann.masks.repeat(2, axis=1).repeat(2, axis=2))
    # crop rows 8..32, cols 10..50: the dog (box 6..18 x 5..15) keeps 8x7 of its 12x10 box, the ball 20x12 of 20x15
    c = crop_annotations(ann, [8, 10, 24, 40])
    assert c.labels == ("dog", "ball") and c.referring == ("the dog on the left", "")
    np.testing.assert_array_equal(c.boxes, [[0, 0, 8, 7], [20, 12, 40, 24]])
    np.testing.assert_array_equal(c.masks, ann.masks[:, 8:32, 10:50])
    np.testing.assert_array_equal(c.keypoints[0], [[0, 0, 0], [7, 6, 1]])  # the nose (8, 7) left the crop
    # a crop showing under a quarter of the dog's box drops it
    d = crop_annotations(ann, [12, 15, 24, 40], min_visible=0.25)  # dog: 3x3 of 12x10 visible
    assert d.labels == ("ball",) and d.masks.shape == (1, 24, 40) and d.keypoints.shape == (1, 2, 3)
    assert crop_annotations(ann, [0, 0, 4, 4]).labels == ()


def test_records_of_two_jsons_merge_by_annotation_id():
    d = dataset()
    instances = CocoSet(d, "instances")
    people = {**d, "annotations": [{**d["annotations"][0], "keypoints": [1, 1, 2, 3, 3, 2]}],
              "refs": []}
    instances_only = {**d, "categories": [{"id": 1, "name": "ball"}, {"id": 3, "name": "dog"}]}
    merged = merge_records(CocoSet(instances_only, "i").record("a.png"), CocoSet(people, "p").record("a.png"))
    assert [i["id"] for i in merged["instances"]] == [10, 11] and merged["keypoint_names"] == KP_NAMES
    ann = instances.annotations_for("a.png", H, W)
    from pipelines.coco import annotations_from_record

    got = annotations_from_record(merged, H, W)
    np.testing.assert_array_equal(got.keypoints, [[[1, 1, 2], [3, 3, 2]], [[0, 0, 0], [0, 0, 0]]])
    np.testing.assert_array_equal(got.masks, ann.masks)
    assert got.referring == ("the dog on the left", "")


def test_reads_from_s3(s3_server, tmp_path):
    import fsspec

    from pipelines.storage import Store, s3_options

    opts = s3_options()
    Store("s3://coco-test", opts).ensure_bucket()
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **opts)
    d = dataset()
    path = write_coco("s3://coco-test/ann/instances.json", d["images"], d["annotations"], d["categories"],
                      storage_options=opts)
    fs.pipe_file("coco-test/ann/refs.json", json.dumps(d["refs"]).encode())
    coco = CocoSet.load(path, refs="s3://coco-test/ann/refs.json", storage_options=opts)
    a = coco.annotations_for("a.png", H, W)
    np.testing.assert_array_equal(a.masks, [MASK_A, MASK_B])
    assert a.referring == ("the dog on the left", "")
    assert coco.image_uris("s3://coco-test/images")["sub/b.png"] == "s3://coco-test/images/sub/b.png"
