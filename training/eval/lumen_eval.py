"""Score Lumen-style vision-centric predictions on a COCO-format val set, whatever model made them.

The model is a ``predict(image, instruction, task) -> dict`` function (image float32 ``(H, W, 3)`` in [0, 1]); it
returns ``boxes`` (M, 4) xyxy pixels, ``scores`` (M,), ``masks`` (M, H, W) bool or None, ``points`` (P, 2) xy or
None and ``point_scores`` (P,). For each val image and each category present it is asked to detect, to segment and
(for a category with ``keypoints``) to locate each keypoint; for each RefCOCO-style ref (``refs``: ``ann_id``,
``image_id``, ``sentences``) to ground and to segment each sentence. Instructions are the first template of
``degradations.VISION_INSTRUCTIONS[task]``, the same words the model was trained on.

Scores come from the standard evaluator, pycocotools: box AP and mask AP (COCO's AP, AP50, AP75), keypoint AP by
OKS; grounding accuracy (top box IoU >= 0.5) and cIoU (cumulative intersection over cumulative union) for referring
expressions. Only the categories present in an image are asked about, so a false positive of a category the image
lacks is never scored: read AP as "given what is there". ``baseline_predict`` is the floor a model must beat: one
centred box of the mean annotated size per query.

Writes ``lumen_eval.json`` (scores, counts, the run's config) and ``lumen_eval.png``: a few images, one row per
task, image | ground truth (green) | prediction (red) | both.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from omnilv.errors import OmniLVError

Predict = Callable[[np.ndarray, str, str], Mapping[str, Any]]
IOU_TYPES = ("bbox", "segm", "keypoints")
METRICS = ("AP", "AP50", "AP75")  # pycocotools' stats[0:3] for every iou type
#: OKS sigma of a keypoint whose category has no ``keypoint_sigmas``: COCO's person sigmas span 0.025 (eyes) to
#: 0.107 (hips); 0.05 sits between, so a point off by 10% of sqrt(area) keeps an OKS of exp(-1/2) ≈ 0.61.
DEFAULT_KEYPOINT_SIGMA = 0.05
GROUNDING_IOU = 0.5
SHEET_IMAGES = 2  # images shown on the sheet, one row per task each
SHEET_CELL = 160
SHEET_MIN_SCORE = 0.3  # predictions drawn on the sheet: those at least this confident (the decoders' threshold)
GREEN, RED = (0, 200, 0), (230, 0, 0)
TASKS = ("detection", "instance_segmentation", "pose", "grounding", "referring_segmentation")


class LumenEvalError(OmniLVError):
    """A val set or image the evaluator cannot use; the message names the file or field."""


# -- the evaluator's scores -------------------------------------------------------------------------
def coco_scores(gt: Mapping[str, Any], results: list[dict], iou_type: str) -> dict[str, float]:
    """COCO AP, AP50, AP75 of ``results`` (COCO result dicts) against the COCO dict ``gt``, by pycocotools.

    ``iou_type`` is ``bbox``, ``segm`` or ``keypoints``. No results score 0. For keypoints each category with
    ``keypoints`` is scored with its own OKS sigmas (its ``keypoint_sigmas``, else :data:`DEFAULT_KEYPOINT_SIGMA`
    for each) and the scores are averaged over the categories that have annotated keypoints, as COCO averages
    over categories. A value of -1 is pycocotools' "nothing annotated to score".
    """
    from pycocotools.cocoeval import COCOeval

    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type {iou_type!r}: expected one of {', '.join(IOU_TYPES)}")
    if not results:
        return dict.fromkeys(METRICS, 0.0)
    with _quiet():
        coco = _coco(_complete(gt))
        dets = coco.loadRes(copy.deepcopy(list(results)))  # loadRes writes ids and areas into the dicts
    if iou_type != "keypoints":
        return _summarize(COCOeval(coco, dets, iou_type))
    per_category = []
    for cat in coco.dataset["categories"]:
        names = cat.get("keypoints") or []
        annotated = any(a["category_id"] == cat["id"] and a.get("num_keypoints", 0) > 0
                        for a in coco.dataset["annotations"])
        if not names or not annotated:
            continue
        ev = COCOeval(coco, dets, "keypoints")
        ev.params.catIds = [cat["id"]]
        ev.params.kpt_oks_sigmas = keypoint_sigmas(cat)
        per_category.append(_summarize(ev))
    if not per_category:
        raise LumenEvalError("keypoint results given, but no category of the ground truth has annotated keypoints")
    return {m: float(np.mean([s[m] for s in per_category])) for m in METRICS}


def keypoint_sigmas(category: Mapping[str, Any]) -> np.ndarray:
    """The OKS sigma of each of ``category``'s keypoints: its ``keypoint_sigmas``, else the uniform default."""
    k = len(category.get("keypoints") or [])
    sigmas = category.get("keypoint_sigmas")
    if sigmas is None:
        return np.full(k, DEFAULT_KEYPOINT_SIGMA)
    if len(sigmas) != k:
        raise LumenEvalError(f"category {category.get('name')!r}: {len(sigmas)} keypoint_sigmas for {k} keypoints")
    return np.asarray(sigmas, dtype=np.float64)


def grounding_accuracy(pairs: Iterable[tuple[Sequence[float] | None, Sequence[float]]]) -> float:
    """Fraction of (predicted box or None, annotated box) pairs, xyxy, whose IoU is >= 0.5; 0 for no pairs."""
    hits = [p is not None and box_iou(np.asarray([p]), np.asarray([g]))[0, 0] >= GROUNDING_IOU for p, g in pairs]
    return float(np.mean(hits)) if hits else 0.0


def ciou(pairs: Iterable[tuple[np.ndarray | None, np.ndarray]]) -> float:
    """Cumulative IoU over (predicted mask or None, annotated mask) pairs: sum of intersections / sum of unions."""
    inter = union = 0
    for pred, truth in pairs:
        truth = np.asarray(truth, dtype=bool)
        pred = np.zeros_like(truth) if pred is None else np.asarray(pred, dtype=bool)
        inter += int(np.count_nonzero(pred & truth))
        union += int(np.count_nonzero(pred | truth))
    return inter / union if union else 0.0


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of xyxy boxes ``a`` (N, 4) and ``b`` (M, 4)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lo, hi = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=-1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of bool masks ``a`` (N, H, W) and ``b`` (M, H, W)."""
    pixels = int(np.prod(a.shape[1:] if len(a) else b.shape[1:]))  # an empty side still has the image's size
    fa, fb = a.reshape(len(a), pixels).astype(np.float64), b.reshape(len(b), pixels).astype(np.float64)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def group_keypoints(boxes: np.ndarray, scores: np.ndarray,
                    points_by_name: Mapping[str, tuple[np.ndarray, np.ndarray]],
                    names: Sequence[str]) -> list[dict[str, Any]]:
    """Per-keypoint peaks -> one instance per detected box, its keypoints in the order of ``names``.

    For each keypoint name, boxes in descending score order each take the best-scoring peak (points (P, 2) xy,
    scores (P,)) that lies inside them (edges included) and that no better box took. A keypoint with no peak in
    its box is put at the box centre with visibility 0 (OKS still counts it: a guess scores no worse than nothing).
    Returns ``{"box", "score", "keypoints": (K, 3) x, y, peak score}`` per box.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    kps = np.zeros((len(boxes), len(names), 3))
    kps[:, :, :2] = centres[:, None, :]
    for k, name in enumerate(names):
        pts, pscores = points_by_name.get(name, (np.zeros((0, 2)), np.zeros(0)))
        pts, pscores = np.asarray(pts, np.float64).reshape(-1, 2), np.asarray(pscores, np.float64).reshape(-1)
        free = np.ones(len(pts), bool)
        for i in order:
            x0, y0, x1, y1 = boxes[i]
            inside = free & (pts[:, 0] >= x0) & (pts[:, 0] <= x1) & (pts[:, 1] >= y0) & (pts[:, 1] <= y1)
            if inside.any():
                j = int(np.flatnonzero(inside)[np.argmax(pscores[inside])])
                free[j] = False
                kps[i, k] = (*pts[j], pscores[j])
    return [{"box": boxes[i].tolist(), "score": float(scores[i]), "keypoints": kps[i]} for i in range(len(boxes))]


# -- the trivial baseline ---------------------------------------------------------------------------
def baseline_predict(coco_json: Mapping[str, Any]) -> Predict:
    """The floor: one centred box per query, score 1, of the category's mean annotated size relative to the image.

    The category is the longest category name found in the instruction (whole words); a referring expression
    names none, and gets the mean over all annotations. Its mask is the box; its point the box centre.
    """
    sizes: dict[str, list[tuple[float, float]]] = defaultdict(list)
    images = {im["id"]: im for im in coco_json["images"]}
    names = {c["id"]: c["name"] for c in coco_json["categories"]}
    for a in coco_json["annotations"]:
        im = images[a["image_id"]]
        sizes[names[a["category_id"]]].append((a["bbox"][2] / im["width"], a["bbox"][3] / im["height"]))
    every = [s for v in sizes.values() for s in v]
    overall = np.mean(every, axis=0) if every else np.array([0.5, 0.5])
    mean = {n: np.mean(v, axis=0) for n, v in sizes.items()}
    by_length = sorted(mean, key=len, reverse=True)

    def predict(image: np.ndarray, instruction: str, task: str) -> dict[str, Any]:
        h, w = image.shape[:2]
        name = next((n for n in by_length if re.search(rf"\b{re.escape(n)}\b", instruction, re.IGNORECASE)), None)
        rw, rh = mean[name] if name is not None else overall
        cx, cy = w / 2, h / 2
        box = np.array([[cx - rw * w / 2, cy - rh * h / 2, cx + rw * w / 2, cy + rh * h / 2]])
        return {"boxes": box, "scores": np.ones(1), "masks": box_masks(box, (h, w)),
                "points": np.array([[cx, cy]]), "point_scores": np.ones(1)}

    return predict


def box_masks(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(M, H, W) bool: the pixels whose centres lie inside each xyxy box."""
    ys, xs = np.arange(shape[0]) + 0.5, np.arange(shape[1]) + 0.5
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    inx = (xs[None, :] >= b[:, 0:1]) & (xs[None, :] < b[:, 2:3])
    iny = (ys[None, :] >= b[:, 1:2]) & (ys[None, :] < b[:, 3:4])
    return iny[:, :, None] & inx[:, None, :]


# -- the run over a val set -------------------------------------------------------------------------
def evaluate_lumen(predict: Predict, coco_json: Mapping[str, Any], image_root: str | Path, out_dir: str | Path, *,
                   max_images: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Ask ``predict`` every query of the first ``max_images`` val images, score it, write the json and the sheet.

    ``image_root`` is a local folder or an ``s3://`` prefix holding each image's ``file_name``. Returns the dict
    written to ``out_dir/lumen_eval.json``: ``scores`` per task, ``counts``, ``skipped`` tasks and ``config``.
    """
    from pipelines import Store, is_remote, s3_options

    images = list(coco_json["images"])[:max_images]
    gt = _subset(coco_json, {im["id"] for im in images})
    with _quiet():
        coco = _coco(_complete(gt))
    queries = _Queries(predict, coco, gt)
    store = Store(str(image_root), s3_options() if is_remote(image_root) else None)
    with _progress(progress, len(images)) as advance:
        for n, im in enumerate(images):
            queries.ask_image(_read_image(store, im), im, on_sheet=n < SHEET_IMAGES)
            advance()
    report = {"scores": queries.scores(), "skipped": queries.skipped(),
              "counts": {"images": len(images), "annotations": len(gt["annotations"]),
                         "queries": dict(queries.calls), "results": {t: len(r) for t, r in queries.results.items()},
                         "expressions": len(queries.box_pairs)},
              "config": {"image_root": str(image_root), "max_images": max_images,
                         "predict": getattr(predict, "__qualname__", type(predict).__name__),
                         "instructions": {t: instruction_template(t) for t in TASKS},
                         "default_keypoint_sigma": DEFAULT_KEYPOINT_SIGMA, "grounding_iou": GROUNDING_IOU}}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lumen_eval.json").write_text(json.dumps(report, indent=1, sort_keys=True))
    if queries.tiles:
        cv2.imwrite(str(out / "lumen_eval.png"), sheet(queries.tiles)[..., ::-1])
    return report


def instruction_template(task: str) -> str:
    """The instruction the model is asked for ``task``: the first template the task plugin trains on."""
    from degradations import VISION_INSTRUCTIONS

    templates = VISION_INSTRUCTIONS.get(task)
    if not templates:
        raise LumenEvalError(f"degradations.VISION_INSTRUCTIONS has no template for task {task!r}")
    return templates[0]


class _Queries:
    """The queries of one run, their COCO results, referring pairs and the sheet's tiles."""

    def __init__(self, predict: Predict, coco: Any, gt: Mapping[str, Any]) -> None:
        self.predict, self.coco, self.gt = predict, coco, gt
        self.anns = {a["id"]: a for a in gt["annotations"]}  # original ids: refs point at them
        self.refs: dict[Any, list[dict]] = defaultdict(list)
        for ref in gt.get("refs", []):
            self.refs[ref["image_id"]].append(ref)
        self.masks = bool(gt["annotations"]) and all(a.get("segmentation") for a in gt["annotations"])
        self.results: dict[str, list[dict]] = {t: [] for t in IOU_TYPES}
        self.box_pairs: list[tuple] = []
        self.mask_pairs: list[tuple] = []
        self.calls: dict[str, int] = defaultdict(int)
        self.tiles: list[tuple[np.ndarray, dict, dict, str]] = []

    def ask(self, image: np.ndarray, task: str, **fields: str) -> tuple[str, dict[str, Any]]:
        instruction = instruction_template(task).format(**fields)
        self.calls[task] += 1
        return instruction, _prediction(self.predict(image, instruction, task), image.shape[:2], task)

    def ask_image(self, image: np.ndarray, im: Mapping[str, Any], on_sheet: bool) -> None:
        by_cat: dict[int, list[dict]] = defaultdict(list)
        for a in self.gt["annotations"]:
            if a["image_id"] == im["id"]:
                by_cat[a["category_id"]].append(a)
        for n, cid in enumerate(sorted(by_cat)):
            self.ask_category(image, im["id"], self.coco.cats[cid], by_cat[cid], on_sheet and n == 0)
        for n, ref in enumerate(self.refs.get(im["id"], [])):
            self.ask_ref(image, ref, on_sheet and n == 0)

    def ask_category(self, image: np.ndarray, image_id: Any, cat: Mapping[str, Any], anns: list[dict],
                     on_sheet: bool) -> None:
        truth = np.array([_xyxy(a["bbox"]) for a in anns])
        text, det = self.ask(image, "detection", category=cat["name"])
        self.results["bbox"] += [{"image_id": image_id, "category_id": cat["id"], "bbox": _xywh(b), "score": s}
                                 for b, s in zip(det["boxes"].tolist(), det["scores"].tolist(), strict=True)]
        if on_sheet:
            shown = _shown(det)
            self.tile(image, {"boxes": truth}, {"boxes": det["boxes"][shown]}, "detection", text,
                      _mean_best(box_iou(truth, det["boxes"][shown])))
        if self.masks:
            self.segment_category(image, image_id, cat, anns, on_sheet)
        if cat.get("keypoints"):
            self.pose_category(image, image_id, cat, anns, det, on_sheet)

    def segment_category(self, image: np.ndarray, image_id: Any, cat: Mapping[str, Any], anns: list[dict],
                         on_sheet: bool) -> None:
        from pycocotools import mask as mask_utils

        text, seg = self.ask(image, "instance_segmentation", category=cat["name"])
        for m, s in zip(seg["masks"], seg["scores"].tolist(), strict=True):
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            self.results["segm"].append({"image_id": image_id, "category_id": cat["id"], "score": s,
                                         "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
        if on_sheet:
            truth, shown = np.stack([self.coco.annToMask(a).astype(bool) for a in anns]), _shown(seg)
            self.tile(image, {"masks": truth}, {"masks": seg["masks"][shown]}, "instance_segmentation", text,
                      _mean_best(mask_iou(truth, seg["masks"][shown])))

    def pose_category(self, image: np.ndarray, image_id: Any, cat: Mapping[str, Any], anns: list[dict],
                      det: dict[str, Any], on_sheet: bool) -> None:
        names, found = list(cat["keypoints"]), {}
        for k, name in enumerate(names):
            text, out = self.ask(image, "pose", category=cat["name"], keypoint=name)
            found[name] = (out["points"], out["point_scores"])
            if on_sheet and k == 0:
                kp = np.array([a["keypoints"][:3] for a in anns if "keypoints" in a], np.float64).reshape(-1, 3)
                truth, pred = kp[kp[:, 2] > 0, :2], out["points"][out["point_scores"] >= SHEET_MIN_SCORE]
                error = (f"error {np.linalg.norm(truth[:, None] - pred[None], axis=-1).min(1).mean():.1f} px"
                         if len(truth) and len(pred) else "no points")
                self.tile(image, {"points": truth}, {"points": pred}, "pose", text, error)
        for inst in group_keypoints(det["boxes"], det["scores"], found, names):
            self.results["keypoints"].append({"image_id": image_id, "category_id": cat["id"],
                                              "keypoints": inst["keypoints"].reshape(-1).tolist(),
                                              "score": inst["score"]})

    def ask_ref(self, image: np.ndarray, ref: Mapping[str, Any], on_sheet: bool) -> None:
        ann = self.anns.get(ref.get("ann_id"))
        if ann is None:
            raise LumenEvalError(f"ref {ref.get('ref_id')!r}: ann_id {ref.get('ann_id')!r} is not an annotation")
        truth_box, truth_mask = np.array(_xyxy(ann["bbox"])), None
        if ann.get("segmentation"):
            truth_mask = self.coco.annToMask(ann).astype(bool)
        for n, expression in enumerate(_sentences(ref)):
            sheet_it = on_sheet and n == 0
            text, out = self.ask(image, "grounding", expression=expression)
            top = _top(out)
            box = None if top is None else out["boxes"][top]
            self.box_pairs.append((box, truth_box))
            if sheet_it:
                pred = {"boxes": out["boxes"][[top]] if top is not None else np.zeros((0, 4))}
                self.tile(image, {"boxes": truth_box[None]}, pred, "grounding", text,
                          0.0 if box is None else box_iou(box, truth_box)[0, 0])
            if truth_mask is None:
                continue
            text, out = self.ask(image, "referring_segmentation", expression=expression)
            top = _top(out)
            mask = None if top is None else out["masks"][top]
            self.mask_pairs.append((mask, truth_mask))
            if sheet_it:
                pred = {"masks": out["masks"][[top]] if top is not None else np.zeros((0, *image.shape[:2]), bool)}
                self.tile(image, {"masks": truth_mask[None]}, pred, "referring_segmentation", text,
                          ciou([(mask, truth_mask)]))

    def tile(self, image: np.ndarray, truth: dict, pred: dict, task: str, text: str, score: float | str) -> None:
        score = score if isinstance(score, str) else f"IoU {score:.2f}"
        self.tiles.append((image, truth, pred, f"{task} | {text} | {score}"))

    def scores(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {"detection": coco_scores(self.gt, self.results["bbox"], "bbox")}
        if self.masks:
            out["instance_segmentation"] = coco_scores(self.gt, self.results["segm"], "segm")
        if self.has_keypoints():
            out["pose"] = coco_scores(self.gt, self.results["keypoints"], "keypoints")
        if self.box_pairs:
            out["grounding"] = {"accuracy": grounding_accuracy(self.box_pairs)}
        if self.mask_pairs:
            out["referring_segmentation"] = {"cIoU": ciou(self.mask_pairs)}
        return out

    def has_keypoints(self) -> bool:
        return any(a.get("num_keypoints", sum(v > 0 for v in a.get("keypoints", [])[2::3])) > 0
                   for a in self.gt["annotations"] if self.coco.cats[a["category_id"]].get("keypoints"))

    def skipped(self) -> dict[str, str]:
        why = {}
        if not self.masks:
            why["instance_segmentation"] = "not every annotation has a segmentation"
        if not self.has_keypoints():
            why["pose"] = "no category with annotated keypoints"
        if not self.box_pairs:
            why["grounding"] = "no refs on the scored images"
        if not self.mask_pairs:
            why["referring_segmentation"] = "no refs with a segmentation on the scored images"
        return why


# -- the sheet --------------------------------------------------------------------------------------
def sheet(tiles: Sequence[tuple[np.ndarray, dict, dict, str]]) -> np.ndarray:
    """RGB uint8: per tile a row image | ground truth (green) | prediction (red) | both, captioned."""
    from pipelines import labelled_sheet

    rows = []
    for image, truth, pred, caption in tiles:
        u8 = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
        rows.append(([u8, draw(u8, truth, GREEN), draw(u8, pred, RED), draw(draw(u8, truth, GREEN), pred, RED)],
                     caption))
    return labelled_sheet(rows, ["image", "ground truth", "prediction", "both"], SHEET_CELL)


def draw(image: np.ndarray, spec: Mapping[str, np.ndarray], colour: tuple[int, int, int]) -> np.ndarray:
    """A copy of uint8 ``image`` with ``spec``'s masks (translucent), boxes (outlines) and points (dots)."""
    out = image.copy()
    h, w = out.shape[:2]
    thick = max(1, round(max(h, w) / SHEET_CELL))
    for m in spec.get("masks", ()):
        out[m] = (0.55 * out[m] + 0.45 * np.array(colour)).astype(np.uint8)
    for x0, y0, x1, y1 in np.asarray(spec.get("boxes", np.zeros((0, 4)))).reshape(-1, 4):
        cv2.rectangle(out, (round(x0), round(y0)), (round(x1) - 1, round(y1) - 1), colour, thick)
    for x, y in np.asarray(spec.get("points", np.zeros((0, 2)))).reshape(-1, 2):
        cv2.circle(out, (round(x), round(y)), 2 * thick + 1, colour, -1)
    return out


def draw_prediction(image: np.ndarray, out: Mapping[str, Any], instruction: str, path: str | Path) -> np.ndarray:
    """``omnilv lumen predict``'s picture: image | prediction (red: boxes with masks and points at least
    SHEET_MIN_SCORE confident, else the best one) | the heatmap, captioned with the routed task and the instruction.
    Written as a PNG at ``path``; returned as uint8 RGB."""
    from pipelines import encode_png, labelled_sheet

    task = str(out.get("task", "?"))
    pred = _prediction(out, image.shape[:2], task)
    keep = _shown(pred) if len(pred["scores"]) else np.zeros(0, int)
    spec = {"boxes": pred["boxes"][keep], "masks": pred["masks"][keep],
            "points": pred["points"][pred["point_scores"] >= SHEET_MIN_SCORE] if len(pred["points"]) else
            pred["points"]}
    u8 = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
    heat = out.get("heat")
    heat = np.zeros(image.shape[:2]) if heat is None else np.asarray(heat, np.float64)
    peak = float(heat.max(initial=0.0))
    shown = heat / peak if peak > 0 else heat  # stretched to its peak, which the caption gives
    heat_rgb = (cv2.applyColorMap(np.clip(np.rint(shown * 255), 0, 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
                [..., ::-1])
    if heat_rgb.shape[:2] != u8.shape[:2]:
        heat_rgb = cv2.resize(heat_rgb, (u8.shape[1], u8.shape[0]), interpolation=cv2.INTER_NEAREST)
    found = f"{len(spec['boxes'])} boxes" if task != "pose" else f"{len(spec['points'])} points"
    cell = max(SHEET_CELL, min(512, max(image.shape[:2])))
    picture = labelled_sheet([([u8, draw(u8, spec, RED), heat_rgb],
                               f"{task}: {instruction} ({found}; heat peak {peak:.2f})")],
                             ["image", "prediction", "heatmap / its peak"], cell)
    Path(path).write_bytes(encode_png(picture / 255.0))
    return picture


# -- helpers ----------------------------------------------------------------------------------------
def _prediction(out: Mapping[str, Any], shape: tuple[int, int], task: str) -> dict[str, Any]:
    """``predict``'s answer as arrays of checked shapes; a missing mask is its box, a missing point score 1."""
    boxes = np.asarray(out.get("boxes", np.zeros((0, 4))), np.float64).reshape(-1, 4)
    scores = np.asarray(out.get("scores", np.ones(len(boxes))), np.float64).reshape(-1)
    if len(scores) != len(boxes):
        raise ValueError(f"predict ({task}) returned {len(boxes)} boxes but {len(scores)} scores")
    masks = out.get("masks")
    if masks is not None and len(masks) == 0 and len(boxes):  # a task without masks (detection): its boxes'
        masks = None
    masks = box_masks(boxes, shape) if masks is None else np.asarray(masks, bool)
    if masks.shape != (len(boxes), *shape):
        raise ValueError(f"predict ({task}) returned masks of shape {masks.shape} for {len(boxes)} boxes on a "
                         f"{shape[1]}x{shape[0]} image; expected (M, H, W) at the image's size")
    points = out.get("points")
    points = np.zeros((0, 2)) if points is None else np.asarray(points, np.float64).reshape(-1, 2)
    pscores = out.get("point_scores")
    pscores = np.ones(len(points)) if pscores is None else np.asarray(pscores, np.float64).reshape(-1)
    if len(pscores) != len(points):
        raise ValueError(f"predict ({task}) returned {len(points)} points but {len(pscores)} point_scores")
    return {"boxes": boxes, "scores": scores, "masks": masks, "points": points, "point_scores": pscores}


def _top(out: Mapping[str, np.ndarray]) -> int | None:
    return int(np.argmax(out["scores"])) if len(out["scores"]) else None


def _shown(out: Mapping[str, np.ndarray]) -> np.ndarray:
    """Indices drawn on the sheet: predictions at least SHEET_MIN_SCORE confident, else the top one."""
    keep = np.flatnonzero(out["scores"] >= SHEET_MIN_SCORE)
    return keep if len(keep) or not len(out["scores"]) else np.array([_top(out)])


def _mean_best(iou: np.ndarray) -> float:
    """Mean over the ground truth (rows) of its best IoU with any prediction (columns)."""
    return float(iou.max(axis=1).mean()) if iou.size else 0.0


def _xyxy(b: Sequence[float]) -> list[float]:
    return [b[0], b[1], b[0] + b[2], b[1] + b[3]]


def _xywh(b: Sequence[float]) -> list[float]:
    return [b[0], b[1], b[2] - b[0], b[3] - b[1]]


def _sentences(ref: Mapping[str, Any]) -> list[str]:
    texts = [s["sent"] if isinstance(s, Mapping) else s for s in ref.get("sentences", [])]
    if not texts:
        raise LumenEvalError(f"ref {ref.get('ref_id')!r} has no sentences ([{{'sent': '...'}}, ...])")
    return texts


def _subset(gt: Mapping[str, Any], image_ids: set) -> dict[str, Any]:
    """``gt`` restricted to ``image_ids`` (images, annotations, refs), so unscored images count no misses."""
    keep = lambda items: [x for x in items if x["image_id"] in image_ids]  # noqa: E731
    return {**gt, "images": [im for im in gt["images"] if im["id"] in image_ids],
            "annotations": keep(gt["annotations"]), "refs": keep(gt.get("refs", []))}


def _complete(gt: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``gt`` with what pycocotools needs: ``info``, ids from 1 (id 0 would never match), ``iscrowd``,
    ``area`` (box area when absent), ``num_keypoints``."""
    anns = []
    for i, a in enumerate(gt["annotations"]):
        a = {"iscrowd": 0, "area": float(a["bbox"][2] * a["bbox"][3]), **a, "id": i + 1}
        if "keypoints" in a and "num_keypoints" not in a:
            a["num_keypoints"] = int(sum(v > 0 for v in a["keypoints"][2::3]))
        anns.append(a)
    return {"info": {}, "licenses": [], "images": list(gt["images"]), "categories": list(gt["categories"]),
            "annotations": anns}


def _coco(dataset: dict[str, Any]) -> Any:
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def _summarize(ev: Any) -> dict[str, float]:
    with _quiet():
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {m: float(v) for m, v in zip(METRICS, ev.stats[:3], strict=True)}


@contextlib.contextmanager
def _quiet() -> Any:
    """pycocotools prints its progress and tables; keep the console to ours."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


@contextlib.contextmanager
def _progress(show: bool, total: int) -> Any:
    if not show:
        yield lambda: None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("scoring images", total=total)
        yield lambda: bar.advance(task)


def _read_image(store: Any, im: Mapping[str, Any]) -> np.ndarray:
    """Image ``im`` as float32 RGB in [0, 1], checked against the size the json gives it."""
    from PIL import Image, UnidentifiedImageError

    where = store.path(im["file_name"])
    try:
        with Image.open(io.BytesIO(store.read(im["file_name"]))) as img:
            rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise LumenEvalError(f"{where}: image {im['id']!r} of the val json is not there") from None
    except UnidentifiedImageError:
        raise LumenEvalError(f"{where}: not an image PIL can read") from None
    if rgb.shape[:2] != (im["height"], im["width"]):
        raise LumenEvalError(f"{where}: {rgb.shape[1]}x{rgb.shape[0]} pixels, but the json says "
                             f"{im['width']}x{im['height']}")
    return rgb
