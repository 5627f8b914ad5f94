"""Lumen's scores: pycocotools AP on hand-made cases with derived values, grounding accuracy, cIoU, keypoint
grouping, the trivial baseline, and ``evaluate_lumen`` end to end with a perfect oracle and with the baseline."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from degradations import VISION_INSTRUCTIONS as INSTRUCTIONS
from training.eval import baseline_predict, ciou, coco_scores, evaluate_lumen, grounding_accuracy
from training.eval.lumen_eval import LumenEvalError, group_keypoints

KEYPOINTS = ["top", "right", "bottom", "left"]
SIZE = 64
FILLS = {1: 0.2, 2: 0.6}  # background grey of each image: how the oracle knows which image it is shown
#: 101 recall thresholds; with TP, TP, FP over 3 objects the precision is 1 up to recall 2/3 and 0 after:
#: thresholds 0.00 … 0.66 (67 of them) count 1.
TWO_OF_THREE = 67 / 101


def rect(x: float, y: float, w: float, h: float) -> list[list[float]]:
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def circle(ann_id: int, image_id: int, x: float, y: float, hidden: tuple[int, ...] = ()) -> dict:
    """A 20x20 'circle' whose keypoints sit on the middles of its box's sides."""
    pts = [(x + 10, y), (x + 20, y + 10), (x + 10, y + 20), (x, y + 10)]
    kps = [v for k, (px, py) in enumerate(pts) for v in ((0, 0, 0) if k in hidden else (px, py, 2))]
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": [x, y, 20, 20], "area": 400,
            "segmentation": rect(x, y, 20, 20), "keypoints": kps, "num_keypoints": 4 - len(hidden), "iscrowd": 0}


def val_json() -> dict:
    """2 images: (1) two circles, (2) a circle (its 'left' hidden) and a square; a ref on each image."""
    anns = [circle(1, 1, 8, 8), circle(2, 1, 36, 30), circle(3, 2, 10, 34, hidden=(3,)),
            {"id": 4, "image_id": 2, "category_id": 2, "bbox": [40, 6, 16, 16], "area": 256,
             "segmentation": rect(40, 6, 16, 16), "iscrowd": 0}]
    return {"images": [{"id": i, "file_name": f"im{i}.png", "height": SIZE, "width": SIZE} for i in (1, 2)],
            "categories": [{"id": 1, "name": "circle", "keypoints": KEYPOINTS}, {"id": 2, "name": "square"}],
            "annotations": anns,
            "refs": [{"ref_id": 1, "image_id": 1, "ann_id": 1, "category_id": 1,
                      "sentences": [{"sent": "the upper circle"}]},
                     {"ref_id": 2, "image_id": 2, "ann_id": 4, "category_id": 2,
                      "sentences": [{"sent": "the small square"}]}]}


def only_circles() -> dict:
    gt = val_json()
    gt["annotations"] = [a for a in gt["annotations"] if a["category_id"] == 1]
    gt["categories"] = gt["categories"][:1]
    return gt


def write_images(gt: dict, folder) -> None:
    for im in gt["images"]:
        pixels = np.full((SIZE, SIZE, 3), FILLS[im["id"]])
        for a in gt["annotations"]:
            if a["image_id"] == im["id"]:
                x, y, w, h = a["bbox"]
                pixels[y:y + h, x:x + w] = (0.9, 0.3, 0.1) if a["category_id"] == 1 else (0.1, 0.3, 0.9)
        Image.fromarray((pixels * 255).round().astype(np.uint8)).save(folder / im["file_name"])


def direct_stats(gt: dict, results: list[dict], iou_type: str, sigmas: np.ndarray | None = None) -> np.ndarray:
    """pycocotools as its README uses it: a json file, loadRes, COCOeval."""
    import tempfile

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with tempfile.NamedTemporaryFile("w", suffix=".json") as f, contextlib.redirect_stdout(io.StringIO()):
        json.dump({**gt, "info": {}}, f)
        f.flush()
        coco = COCO(f.name)
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), iou_type)
        if sigmas is not None:
            ev.params.kpt_oks_sigmas = sigmas
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[:3]


def gt_masks(gt: dict) -> dict[int, np.ndarray]:
    from pycocotools import mask as mask_utils

    return {a["id"]: mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], SIZE, SIZE)))
            .astype(bool) for a in gt["annotations"]}


def box_result(image_id: int, bbox: list[float], score: float, category_id: int = 1) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


# -- coco_scores ------------------------------------------------------------------------------------
def test_perfect_boxes_masks_and_keypoints_score_one():
    from pycocotools import mask as mask_utils

    gt = val_json()
    masks = gt_masks(gt)
    boxes = [box_result(a["image_id"], a["bbox"], 1.0, a["category_id"]) for a in gt["annotations"]]
    segm = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
             "segmentation": mask_utils.encode(np.asfortranarray(masks[a["id"]].astype(np.uint8)))}
            for a in gt["annotations"]]
    kps = [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
           for a in gt["annotations"] if "keypoints" in a]
    for results, kind in ((boxes, "bbox"), (segm, "segm"), (kps, "keypoints")):
        assert coco_scores(gt, results, kind) == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0}), kind


def test_a_miss_and_a_lower_false_positive_give_the_derived_ap():
    gt = only_circles()
    results = [box_result(1, [8, 8, 20, 20], 0.9), box_result(2, [10, 34, 20, 20], 0.8),
               box_result(1, [2, 40, 10, 10], 0.5)]  # circle 2 missed; the false positive overlaps nothing
    scores = coco_scores(gt, results, "bbox")
    assert scores == pytest.approx({"AP": TWO_OF_THREE, "AP50": TWO_OF_THREE, "AP75": TWO_OF_THREE})
    assert list(scores.values()) == pytest.approx(direct_stats(gt, results, "bbox"))


def test_a_loose_box_counts_at_low_iou_thresholds_only():
    gt = only_circles()
    # circle 2 is [36, 30, 20, 20]; this box overlaps it 16x20: IoU 320 / 480 = 2/3, a hit at 0.50 … 0.65 only
    results = [box_result(1, [8, 8, 20, 20], 0.9), box_result(2, [10, 34, 20, 20], 0.8),
               box_result(1, [40, 30, 20, 20], 0.5)]
    scores = coco_scores(gt, results, "bbox")
    assert scores == pytest.approx({"AP": (4 * 1.0 + 6 * TWO_OF_THREE) / 10, "AP50": 1.0, "AP75": TWO_OF_THREE})
    assert list(scores.values()) == pytest.approx(direct_stats(gt, results, "bbox"))


def test_a_missed_mask_gives_the_derived_mask_ap():
    from pycocotools import mask as mask_utils

    gt = only_circles()
    masks = gt_masks(gt)
    stray = np.zeros((SIZE, SIZE), bool)
    stray[40:50, 2:12] = True
    results = [{"image_id": i, "category_id": 1, "score": s,
                "segmentation": mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))}
               for i, m, s in ((1, masks[1], 0.9), (2, masks[3], 0.8), (1, stray, 0.5))]
    assert coco_scores(gt, results, "segm") == pytest.approx(dict.fromkeys(("AP", "AP50", "AP75"), TWO_OF_THREE))


@pytest.mark.parametrize(("sigmas", "expected"), [
    # area 400, every point 2 px off: e = 4 / (2σ)² / 400 / 2. σ 0.05: OKS exp(-0.5) = 0.61, a hit at 0.50-0.60
    (None, {"AP": 0.3, "AP50": 1.0, "AP75": 0.0}),
    # σ 0.1: OKS exp(-0.125) = 0.88, a hit at 0.50 … 0.85
    ([0.1] * 4, {"AP": 0.8, "AP50": 1.0, "AP75": 1.0})])
def test_keypoint_ap_uses_the_category_sigmas(sigmas, expected):
    gt = only_circles()
    gt["annotations"] = gt["annotations"][:1]
    if sigmas is not None:
        gt["categories"][0]["keypoint_sigmas"] = sigmas
    kps = np.array(gt["annotations"][0]["keypoints"], float).reshape(-1, 3)
    kps[:, 0] += 2
    results = [{"image_id": 1, "category_id": 1, "keypoints": kps.reshape(-1).tolist(), "score": 1.0}]
    scores = coco_scores(gt, results, "keypoints")
    assert scores == pytest.approx(expected)
    direct = direct_stats(gt, results, "keypoints", np.full(4, sigmas[0] if sigmas else 0.05))
    assert list(scores.values()) == pytest.approx(direct)


def test_no_results_score_zero_and_a_bad_iou_type_is_named():
    assert coco_scores(val_json(), [], "segm") == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    with pytest.raises(ValueError, match="iou_type 'mask'"):
        coco_scores(val_json(), [box_result(1, [0, 0, 1, 1], 1.0)], "mask")


def test_annotation_id_zero_still_matches():
    """pycocotools treats a gt id of 0 as 'unmatched'; ids are renumbered before it sees them."""
    gt = only_circles()
    for i, a in enumerate(gt["annotations"]):
        a["id"] = i
    results = [box_result(a["image_id"], a["bbox"], 1.0) for a in gt["annotations"]]
    assert coco_scores(gt, results, "bbox")["AP"] == pytest.approx(1.0)


# -- referring expressions --------------------------------------------------------------------------
def test_grounding_accuracy_counts_iou_at_least_one_half():
    truth = [0, 0, 10, 10]
    pairs = [([0, 0, 10, 10], truth),  # IoU 1
             ([0, 0, 10, 5], truth),  # IoU 50/100 = 0.5: counts
             ([5, 0, 15, 10], truth),  # IoU 50/150 = 1/3
             (None, truth)]  # nothing predicted
    assert grounding_accuracy(pairs) == 0.5
    assert grounding_accuracy([]) == 0.0


def test_ciou_is_cumulative_not_a_mean():
    truth_a, pred_a = np.zeros((4, 5), bool), np.zeros((4, 5), bool)
    truth_a[0, :] = True
    truth_a[1, :] = True  # 10 px
    pred_a[1, :] = True
    pred_a[2, :] = True  # 10 px, 5 shared: I 5, U 15
    truth_b = np.zeros((4, 5), bool)
    truth_b[3, :] = True  # 5 px, nothing predicted: I 0, U 5
    assert ciou([(pred_a, truth_a), (None, truth_b)]) == pytest.approx(5 / 20)  # a mean of IoUs would be 1/6
    assert ciou([]) == 0.0


# -- keypoint grouping ------------------------------------------------------------------------------
def test_group_keypoints_gives_each_box_its_best_free_peak():
    boxes = np.array([[0, 0, 10, 10], [5, 0, 20, 10]], float)
    found = {"top": (np.array([[7, 1], [12, 1], [50, 50]]), np.array([0.8, 0.6, 0.99])),
             "left": (np.array([[6, 5]]), np.array([0.9]))}
    first, second = group_keypoints(boxes, np.array([0.9, 0.5]), found, ["top", "left"])
    assert first["score"] == 0.9 and first["box"] == [0, 0, 10, 10]
    np.testing.assert_allclose(first["keypoints"], [[7, 1, 0.8], [6, 5, 0.9]])
    # (7, 1) is inside both boxes but the better box took it; (50, 50) is in neither; 'left' was taken too
    np.testing.assert_allclose(second["keypoints"], [[12, 1, 0.6], [12.5, 5, 0]])
    assert group_keypoints(np.zeros((0, 4)), np.zeros(0), found, ["top"]) == []


# -- the baseline -----------------------------------------------------------------------------------
def test_baseline_is_a_centred_box_of_the_category_mean_size():
    predict = baseline_predict(val_json())
    image = np.zeros((SIZE, SIZE, 3), np.float32)
    circle_out = predict(image, INSTRUCTIONS["detection"][0].format(category="circle"), "detection")
    np.testing.assert_allclose(circle_out["boxes"], [[22, 22, 42, 42]])
    assert circle_out["masks"].shape == (1, SIZE, SIZE) and circle_out["masks"].sum() == 400
    np.testing.assert_allclose(circle_out["points"], [[32, 32]])
    square = predict(image, INSTRUCTIONS["detection"][0].format(category="square"), "detection")
    np.testing.assert_allclose(square["boxes"], [[24, 24, 40, 40]])
    anything = predict(image, INSTRUCTIONS["grounding"][0].format(expression="the thing"), "grounding")
    np.testing.assert_allclose(anything["boxes"], [[22.5, 22.5, 41.5, 41.5]])  # mean side (3·20 + 16) / 4 = 19


# -- evaluate_lumen end to end ----------------------------------------------------------------------
def oracle(gt: dict, calls: list[tuple[str, str]]):
    """A predict that answers from the ground truth (and records what it was asked)."""
    masks, cats = gt_masks(gt), {c["name"]: c["id"] for c in gt["categories"]}
    sentences = {r["sentences"][0]["sent"]: r["ann_id"] for r in gt["refs"]}
    anns = {a["id"]: a for a in gt["annotations"]}

    def predict(image: np.ndarray, instruction: str, task: str) -> dict:
        calls.append((task, instruction))
        image_id = min(FILLS, key=lambda i: abs(FILLS[i] - image[0, 0, 0]))
        if task in ("grounding", "referring_segmentation"):
            chosen = [anns[next(a for s, a in sentences.items() if s in instruction)]]
        else:
            cid = next(i for n, i in cats.items() if re.search(rf"\b{n}\b", instruction))
            chosen = [a for a in gt["annotations"] if a["image_id"] == image_id and a["category_id"] == cid]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in chosen)], float)
        out = {"boxes": boxes, "scores": np.ones(len(chosen)), "masks": np.stack([masks[a["id"]] for a in chosen]),
               "points": None, "point_scores": None}
        if task == "pose":
            k = next(k for k, n in enumerate(KEYPOINTS) if re.search(rf"\b{n}\b", instruction))
            pts = [a["keypoints"][3 * k:3 * k + 3] for a in chosen]
            out["points"] = np.array([p[:2] for p in pts if p[2] > 0], float).reshape(-1, 2)
            out["point_scores"] = np.ones(len(out["points"]))
        return out

    return predict


def test_evaluate_lumen_oracle_scores_one_and_writes_the_report(tmp_path):
    from pipelines.sheets import CAPTION, HEADER

    gt = val_json()
    write_images(gt, tmp_path)
    calls: list[tuple[str, str]] = []
    report = evaluate_lumen(oracle(gt, calls), gt, tmp_path, tmp_path / "out", progress=False)

    flat = {f"{task}.{m}": v for task, ms in report["scores"].items() for m, v in ms.items()}
    assert flat == pytest.approx({f"{t}.{m}": 1.0 for t in ("detection", "instance_segmentation", "pose")
                                  for m in ("AP", "AP50", "AP75")} |
                                 {"grounding.accuracy": 1.0, "referring_segmentation.cIoU": 1.0})
    # 3 (image, category) pairs: 3 detection and 3 segmentation queries; 2 circles pairs x 4 keypoints; 2 refs
    assert report["counts"]["queries"] == {"detection": 3, "instance_segmentation": 3, "pose": 8,
                                           "grounding": 2, "referring_segmentation": 2}
    assert ("detection", INSTRUCTIONS["detection"][0].format(category="circle")) in calls
    assert ("pose", INSTRUCTIONS["pose"][0].format(category="circle", keypoint="left")) in calls
    assert ("referring_segmentation",
            INSTRUCTIONS["referring_segmentation"][0].format(expression="the small square")) in calls
    assert json.loads((tmp_path / "out" / "lumen_eval.json").read_text()) == report
    assert report["skipped"] == {} and report["config"]["default_keypoint_sigma"] == 0.05

    # one row per task for each of the 2 images: detection, segmentation, pose (first category), grounding,
    # referring segmentation (first ref); 4 cells per row
    sheet = np.asarray(Image.open(tmp_path / "out" / "lumen_eval.png"))
    assert sheet.shape == (HEADER + 10 * (1 + CAPTION + 160), 4 * 160, 3)
    both = sheet[HEADER + 1 + CAPTION:HEADER + 1 + CAPTION + 160, 3 * 160:]
    assert (both == (230, 0, 0)).all(-1).any()  # the prediction drawn in red over the green truth


def test_baseline_scores_below_the_oracle(tmp_path):
    gt = val_json()
    write_images(gt, tmp_path)
    report = evaluate_lumen(baseline_predict(gt), gt, tmp_path, tmp_path / "base", progress=False)
    scores = report["scores"]
    # every object is off-centre: the centred box overlaps each by less than IoU 0.5
    assert scores["detection"]["AP50"] == 0.0 and scores["grounding"]["accuracy"] == 0.0
    assert 0.0 <= scores["referring_segmentation"]["cIoU"] < 0.2
    assert scores["pose"]["AP"] < 1.0 and scores["instance_segmentation"]["AP"] < 1.0
    assert (tmp_path / "base" / "lumen_eval.png").stat().st_size > 0


def test_max_images_scores_only_those_images(tmp_path):
    gt = val_json()
    write_images(gt, tmp_path)
    report = evaluate_lumen(oracle(gt, []), gt, tmp_path, tmp_path / "one", max_images=1, progress=False)
    assert report["counts"]["images"] == 1 and report["counts"]["annotations"] == 2
    assert report["scores"]["detection"]["AP"] == pytest.approx(1.0)  # image 2's objects are not misses


def test_a_missing_or_resized_image_is_named(tmp_path):
    gt = val_json()
    with pytest.raises(LumenEvalError, match="im1.png: image 1 of the val json is not there"):
        evaluate_lumen(baseline_predict(gt), gt, tmp_path, tmp_path / "x", progress=False)
    write_images(gt, tmp_path)
    Image.new("RGB", (32, SIZE)).save(tmp_path / "im1.png")
    with pytest.raises(LumenEvalError, match="32x64 pixels, but the json says 64x64"):
        evaluate_lumen(baseline_predict(gt), gt, tmp_path, tmp_path / "x", progress=False)


def test_a_prediction_of_the_wrong_shape_is_named(tmp_path):
    gt = val_json()
    write_images(gt, tmp_path)

    def half_size(image, instruction, task):
        return {"boxes": np.array([[0, 0, 8, 8]]), "scores": np.ones(1), "masks": np.ones((1, 32, 32), bool)}

    with pytest.raises(ValueError, match=r"masks of shape \(1, 32, 32\) for 1 boxes on a 64x64 image"):
        evaluate_lumen(half_size, gt, tmp_path, tmp_path / "x", progress=False)


def test_images_are_read_from_s3(s3_server, tmp_path):
    from pipelines import Store, s3_options

    gt = val_json()
    write_images(gt, tmp_path)
    store = Store("s3://lumen-eval/val", s3_options())
    store.ensure_bucket()
    for im in gt["images"]:
        store.write(im["file_name"], (tmp_path / im["file_name"]).read_bytes())
    report = evaluate_lumen(oracle(gt, []), gt, "s3://lumen-eval/val", tmp_path / "s3", progress=False)
    assert report["scores"]["grounding"]["accuracy"] == 1.0


def test_mask_iou_of_no_prediction_is_an_empty_row_not_an_error():
    from training.eval.lumen_eval import mask_iou

    truth = np.zeros((2, 5, 7), bool)
    assert mask_iou(truth, np.zeros((0, 5, 7), bool)).shape == (2, 0)
    assert mask_iou(np.zeros((0, 5, 7), bool), truth).shape == (0, 2)
