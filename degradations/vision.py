"""Vision-centric tasks (Lumen): an instruction about the image's annotations, answered by a target map.

input = the clean image, target = ``apply(clean)``: the maps of :mod:`degradations.heatmaps` for the image's
(H, W); the pixels are used only for their shape. ``sample_params(rng, ann=...)`` picks *what the instruction
asks about* (a category, a keypoint, an instance and its referring expression), uniformly among what the
annotations can answer; with nothing to ask about it raises :class:`PluginError`, which the corpus builder
counts as a skip. ``apply`` draws nothing from ``rng``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from degradations import heatmaps
from degradations.base import Annotations, Degradation, PluginError

#: Instruction templates per task, filled from the task's params; the evaluator uses the first.
INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "detection": ("Detect every {category}.", "Find all instances of {category} in the image.",
                  "Mark each {category} with its centre and size."),
    "instance_segmentation": ("Segment each {category}.", "Produce an instance mask for every {category}.",
                              "Outline every instance of {category} in the image."),
    "pose": ("Locate the {keypoint} of every {category}.", "Find the {keypoint} keypoint of each {category}.",
             "Mark where the {keypoint} of each {category} is."),
    "grounding": ("Find {expression}.", "Locate {expression} in the image.", "Mark the box of {expression}."),
    "referring_segmentation": ("Segment {expression}.", "Produce a mask of {expression}.",
                               "Outline {expression} in the image."),
}


def _phrase(text: str) -> str:
    """A referring expression as the instruction cites it: no surrounding blanks, no final full stop."""
    return text.strip().rstrip(".").strip()


@dataclass(frozen=True, kw_only=True)
class _VisionTask(Degradation):
    """Shared checks of the five tasks: the annotations are there and agree in length."""

    domain = "vision-centric"
    target_bits = 16
    parameterless = True

    def _annotations(self, ann: Annotations | None) -> Annotations:
        name = self.display_name()
        if ann is None:
            raise PluginError(f"{name}: needs annotations ({', '.join(self.requires)}); build it from a COCO-format "
                              "corpus source, it cannot run on a bare image")
        missing = [f for f in self.requires if not ann.has(f)]
        if missing:
            raise PluginError(f"{name}: nothing to ask about: the annotations have no {', '.join(missing)}")
        n = len(ann.boxes)
        for f in self.requires:
            if len(getattr(ann, f)) != n:
                raise PluginError(f"{name}: the annotations have {n} boxes but {len(getattr(ann, f))} {f}")
        return ann

    def _valid(self, ann: Annotations) -> np.ndarray:
        """Instances whose box has an area: the ones an instruction may ask about."""
        b = np.asarray(ann.boxes, np.float64).reshape(-1, 4)
        return (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])


@dataclass(frozen=True, kw_only=True)
class _CategoryTask(_VisionTask):
    """Asks about every instance of one category, drawn uniformly among the categories present."""

    requires = ("boxes", "labels")

    def sample_params(self, rng: np.random.Generator, *, ann: Annotations | None = None) -> dict[str, Any]:
        ann = self._annotations(ann)
        present = sorted({label for label, ok in zip(ann.labels, self._valid(ann), strict=True) if ok})
        if not present:
            raise PluginError(f"{self.display_name()}: nothing to ask about: no instance has a box with an area")
        return {"category": present[int(rng.integers(len(present)))]}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, category: str,
              ann: Annotations | None = None) -> np.ndarray:
        ann = self._annotations(ann)
        chosen = [i for i, label in enumerate(ann.labels) if label == category]
        return heatmaps.box_maps(img.shape, np.asarray(ann.boxes)[chosen])


@dataclass(frozen=True, kw_only=True)
class Detection(_CategoryTask):
    """Every instance of one category: a box peak at each centre, its size in channels 1-2."""

    instructions = INSTRUCTIONS["detection"]


@dataclass(frozen=True, kw_only=True)
class InstanceSegmentation(_CategoryTask):
    """As detection; the instance masks the decoder learns come from the sample's json, not the map."""

    requires = ("boxes", "masks", "labels")
    instructions = INSTRUCTIONS["instance_segmentation"]


@dataclass(frozen=True, kw_only=True)
class Pose(_VisionTask):
    """One named keypoint of every instance of one category, where it is labelled (visibility > 0)."""

    requires = ("boxes", "keypoints", "labels")
    instructions = INSTRUCTIONS["pose"]

    def _names(self, ann: Annotations) -> tuple[str, ...]:
        k = np.asarray(ann.keypoints).shape[1]
        if len(ann.keypoint_names) != k:
            raise PluginError(f"{self.display_name()}: the annotations have {k} keypoints per instance but "
                              f"{len(ann.keypoint_names)} keypoint_names; the instruction must name the keypoint")
        return ann.keypoint_names

    def sample_params(self, rng: np.random.Generator, *, ann: Annotations | None = None) -> dict[str, Any]:
        ann = self._annotations(ann)
        names = self._names(ann)
        seen = (np.asarray(ann.keypoints)[..., 2] > 0) & self._valid(ann)[:, None]  # (N, K)
        by_category: dict[str, set[int]] = {}
        for label, row in zip(ann.labels, seen, strict=True):
            by_category.setdefault(label, set()).update(np.flatnonzero(row).tolist())
        categories = sorted(c for c, ks in by_category.items() if ks)
        if not categories:
            raise PluginError(f"{self.display_name()}: nothing to ask about: no keypoint is labelled "
                              "(visibility > 0) on an instance with a box")
        category = categories[int(rng.integers(len(categories)))]
        ks = sorted(by_category[category])
        return {"category": category, "keypoint": names[ks[int(rng.integers(len(ks)))]]}

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, category: str, keypoint: str,
              ann: Annotations | None = None) -> np.ndarray:
        ann = self._annotations(ann)
        names = self._names(ann)
        if keypoint not in names:
            raise PluginError(f"{self.display_name()}: keypoint {keypoint!r} is not among the annotations' "
                              f"keypoint_names {list(names)}")
        k = names.index(keypoint)
        boxes, kps = np.asarray(ann.boxes, np.float64), np.asarray(ann.keypoints, np.float64)
        chosen = [i for i, label in enumerate(ann.labels) if label == category and kps[i, k, 2] > 0]
        radii = [heatmaps.gaussian_radius(boxes[i, 3] - boxes[i, 1], boxes[i, 2] - boxes[i, 0]) for i in chosen]
        return heatmaps.point_maps(img.shape, kps[chosen, k, :2], radii)


@dataclass(frozen=True, kw_only=True)
class _ReferringTask(_VisionTask):
    """Asks about one instance through its referring expression, drawn uniformly among those that have one."""

    def _candidates(self, ann: Annotations) -> np.ndarray:
        return self._valid(ann) & np.array([bool(_phrase(r)) for r in ann.referring], bool)

    def sample_params(self, rng: np.random.Generator, *, ann: Annotations | None = None) -> dict[str, Any]:
        ann = self._annotations(ann)
        candidates = np.flatnonzero(self._candidates(ann))
        if not len(candidates):
            raise PluginError(f"{self.display_name()}: nothing to ask about: no instance with a box has a "
                              "referring expression")
        i = int(candidates[int(rng.integers(len(candidates)))])
        return {"instance": i, "expression": _phrase(ann.referring[i])}

    def _instance(self, ann: Annotations, instance: int, expression: str) -> int:
        if not 0 <= instance < len(ann.boxes) or _phrase(ann.referring[instance]) != expression:
            found = _phrase(ann.referring[instance]) if 0 <= instance < len(ann.referring) else "(no such instance)"
            raise PluginError(f"{self.display_name()}: params ask for instance {instance} as {expression!r}, but the "
                              f"annotations say {found!r}; were they changed since the sample was made?")
        return instance


@dataclass(frozen=True, kw_only=True)
class Grounding(_ReferringTask):
    """The box of the one instance a referring expression names."""

    requires = ("boxes", "referring")
    instructions = INSTRUCTIONS["grounding"]

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, instance: int, expression: str,
              ann: Annotations | None = None) -> np.ndarray:
        i = self._instance(self._annotations(ann), instance, expression)
        return heatmaps.box_maps(img.shape, np.asarray(ann.boxes)[i:i + 1])


@dataclass(frozen=True, kw_only=True)
class ReferringSegmentation(_ReferringTask):
    """The mask of the one instance a referring expression names (heat = mask), its size at the box centre."""

    requires = ("boxes", "masks", "referring")
    instructions = INSTRUCTIONS["referring_segmentation"]

    def _candidates(self, ann: Annotations) -> np.ndarray:
        return super()._candidates(ann) & np.asarray(ann.masks).reshape(len(ann.masks), -1).any(axis=1)

    def apply(self, img: np.ndarray, rng: np.random.Generator, *, instance: int, expression: str,
              ann: Annotations | None = None) -> np.ndarray:
        i = self._instance(self._annotations(ann), instance, expression)
        return heatmaps.mask_maps(img.shape, np.asarray(ann.masks)[i], np.asarray(ann.boxes)[i])
