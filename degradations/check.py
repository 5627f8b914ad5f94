"""The plugin contract, as executable checks (used by the test suite and ``omnilv degradations check``).

Every check runs on small crops of a real photograph so the whole contract takes well under a second
per plugin; ``sizes=(512, 1024)`` adds the optional full-size run.

A plugin that declares ``requires`` gets :func:`synthetic_annotations` for the crop in every check, and
:data:`ANNOTATION_CHECKS` besides: its annotation fields exist, it copes with objects at the crop's edges
(the annotation counterpart of range extremes), a crop with no object gives a ``PluginError`` or a valid
output, and its output changes when the annotations move.
"""

from __future__ import annotations

import dataclasses
import json
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from random import Random
from random import getstate as python_rng_state
from random import setstate as set_python_rng_state  # only in _planted_global_rngs, which restores the caller's
from typing import Any

import numpy as np

from degradations import registry
from degradations.base import Annotations, Degradation, PluginError, to_jsonable


@dataclass(frozen=True)
class Result:
    """The outcome of one check on one plugin."""

    plugin: str
    check: str
    ok: bool
    message: str = ""


@dataclass(frozen=True)
class Failure:
    """A failed check: which plugin, which check, what was wrong."""

    plugin: str
    check: str
    message: str

    def __str__(self) -> str:
        return f"{self.plugin}: {self.check}: {self.message}"


class CheckFailed(AssertionError):
    pass


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise CheckFailed(message)


@cache
def _photo() -> np.ndarray:
    from degradations.samples import default_image

    return default_image()


def probe_image(height: int = 61, width: int = 83) -> np.ndarray:
    """A non-square, odd-sized crop (resized if needed) of a real photograph."""
    import cv2

    img = _photo()
    crop = img[150:150 + height * 3, 170:170 + width * 3]
    return np.ascontiguousarray(cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA), dtype=np.float32)


#: The keypoints of :func:`synthetic_annotations`, one name each (an instruction cites the name).
KEYPOINT_NAMES = ("top", "middle", "bottom")


def synthetic_annotations(h: int, w: int) -> Annotations:
    """Three objects (two of one category) for an (h, w) image, every field filled and consistent.

    Each mask is an ellipse whose tight bounding box is the object's box (integer corners); the keypoints lie on
    the box's vertical axis, one of them labelled invisible (v = 0); the third object has no referring expression.
    """
    frac = np.array([[0.10, 0.10, 0.50, 0.60], [0.40, 0.30, 0.90, 0.90], [0.60, 0.05, 0.95, 0.35]])
    boxes = np.maximum(np.round(frac * [w, h, w, h]), [0, 0, 0, 0]).astype(np.float32)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 2)  # at least 2x2 on a tiny image
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    masks = np.zeros((len(boxes), h, w), bool)
    kps = np.zeros((len(boxes), len(KEYPOINT_NAMES), 3), np.float32)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        masks[i] = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
        masks[i, int(y0):int(y1), int(cx)] = True  # the axes reach the box's edges: its tight bounding box
        masks[i, int(cy), int(x0):int(x1)] = True
        kps[i, :, 0], kps[i, :, 1], kps[i, :, 2] = cx, np.linspace(y0, y1 - 1, len(KEYPOINT_NAMES)), 2.0
    kps[1, 2, 2] = 0.0
    return Annotations(boxes=boxes, keypoints=kps, masks=masks, labels=("person", "dog", "person"),
                       referring=("the person on the left", "the dog on the right", ""),
                       keypoint_names=KEYPOINT_NAMES)


def extreme_annotations(h: int, w: int) -> Iterator[tuple[str, Annotations]]:
    """One-object annotations at the edges of what a crop can hold, each with every field filled."""
    def one(box: list[float], mask: np.ndarray, points: list[tuple[float, float]]) -> Annotations:
        kps = np.array([[[x, y, 2.0] for x, y in points]], np.float32)
        return Annotations(boxes=np.array([box], np.float32), keypoints=kps, masks=mask[None],
                           labels=("thing",), referring=("the thing",), keypoint_names=KEYPOINT_NAMES)

    full = np.ones((h, w), bool)
    yield "one object filling the image", one([0, 0, w, h], full, [(0, 0), (w / 2, h / 2), (w - 1, h - 1)])
    corner = np.zeros((h, w), bool)
    corner[h - 1, w - 1] = True
    yield "a 1x1 object in the bottom-right corner", one([w - 1, h - 1, w, h], corner, [(w - 1, h - 1)] * 3)
    edge = np.zeros((h, w), bool)
    edge[:5, :7] = True
    yield "an object cut by the top-left border", one([-4.5, -3.0, 7.0, 5.0], edge, [(0, 0), (3.2, 2.7), (6.9, 4.9)])
    thin = np.zeros((h, w), bool)
    thin[2:h - 2, w // 2] = True
    yield "a one-pixel-wide object", one([w // 2, 2, w // 2 + 1, h - 2], thin, [(w // 2, 2), (w // 2, h // 2),
                                                                               (w // 2, h - 3)])


def empty_annotations(h: int, w: int) -> Annotations:
    """No instances at all (every array empty), as a crop with no object in it has."""
    return Annotations(boxes=np.zeros((0, 4), np.float32), keypoints=np.zeros((0, len(KEYPOINT_NAMES), 3),
                       np.float32), masks=np.zeros((0, h, w), bool), keypoint_names=KEYPOINT_NAMES)


class _Runner:
    """Shared state of one plugin's checks: the class, its name, the test image and annotations."""

    def __init__(self, cls: type[Degradation], name: str) -> None:
        self.cls, self.name = cls, name
        self.img = probe_image()
        self.ann = synthetic_annotations(*self.img.shape[:2]) if cls.requires else None

    def kw(self, ann: Annotations | None = None) -> dict[str, Any]:
        return {"ann": self.ann if ann is None else ann} if self.cls.requires else {}

    def sample(self, plugin: Degradation, seed: int = 0) -> dict[str, Any]:
        return plugin.sample_params(np.random.default_rng(seed), **self.kw())

    def apply(self, plugin: Degradation, params: dict[str, Any], img: np.ndarray | None = None,
              seed: int = 7, ann: Annotations | None = None) -> np.ndarray:
        return plugin.apply(self.img if img is None else img, np.random.default_rng(seed), **params, **self.kw(ann))

    def valid_output(self, out: Any, img: np.ndarray, what: str) -> None:
        _require(isinstance(out, np.ndarray), f"{what}: apply returned {type(out).__name__}, not an ndarray")
        _require(out.ndim == 3 and out.shape[2] == 3, f"{what}: output shape {out.shape} is not (H, W, 3)")
        _require(out.dtype == np.float32, f"{what}: output dtype {out.dtype} is not float32")
        if not self.cls.changes_size:
            _require(out.shape == img.shape, f"{what}: output {out.shape} != input {img.shape} "
                                             "(declare changes_size = True if that is intended)")
        _require(bool(np.isfinite(out).all()), f"{what}: output has NaN or inf")
        lo, hi = float(out.min()), float(out.max())
        _require(lo >= 0.0 and hi <= 1.0, f"{what}: output range [{lo:.4g}, {hi:.4g}] leaves [0, 1]")

    def variants(self) -> Iterator[tuple[str, Degradation]]:
        """Each range collapsed to either end, each single choice, and each probability at 0 and at 1."""
        base = self.cls()
        for fname, value in base.ranges().items():
            if fname.endswith("_range"):
                for end in (value[0], value[1]):
                    yield f"{fname}=({end}, {end})", dataclasses.replace(base, **{fname: (end, end)})
            else:
                for choice in value:
                    yield f"{fname}=({choice!r},)", dataclasses.replace(base, **{fname: (choice,)})
        for f in dataclasses.fields(base):
            if f.name.endswith("_probability"):
                for p in (0.0, 1.0):
                    yield f"{f.name}={p}", dataclasses.replace(base, **{f.name: p})


def _instantiable(r: _Runner) -> None:
    r.cls()


def _declares_parameters(r: _Runner) -> None:
    ranges = r.cls().ranges()
    if r.cls.parameterless:
        _require(not ranges, f"says parameterless but declares {sorted(ranges)}")
    else:
        _require(bool(ranges), "declares no *_range or *_choices field; give it test parameters "
                               "(ranges/choices) or set parameterless = True")


def _instructions(r: _Runner) -> None:
    templates = r.cls.instructions
    _require(len(templates) >= 3, f"has {len(templates)} instruction templates, needs >= 3")
    params = r.sample(r.cls())
    for t in templates:
        try:
            text = t.format(**params)
        except (KeyError, IndexError, ValueError) as exc:
            raise CheckFailed(f"template {t!r} cannot be filled from params {sorted(params)}: {exc}") from exc
        _require(bool(text.strip()), f"template {t!r} renders empty")


def _json_round_trip(r: _Runner) -> None:
    for seed in range(3):
        params = r.sample(r.cls(), seed)
        _require(isinstance(params, dict), f"sample_params returned {type(params).__name__}, not a dict")
        try:
            back = json.loads(json.dumps(params))
        except TypeError as exc:
            raise CheckFailed(f"params {params!r} are not JSON-serialisable: {exc}") from exc
        _require(back == params and to_jsonable(params) == params,
                 f"params change in a JSON round trip: {params!r} -> {back!r} (return plain Python values)")


def _determinism(r: _Runner) -> None:
    params = r.sample(r.cls())
    _require(r.sample(r.cls()) == params, "sample_params with the same seed drew different params")
    a, b = r.apply(r.cls(), params), r.apply(r.cls(), params)
    _require(a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes(),
             "same params + same seed on two fresh instances gave different bytes")


def _ignores_instance_ranges(r: _Runner) -> None:
    default = r.cls()
    for label, narrowed in r.variants():
        params = r.sample(narrowed)
        a, b = r.apply(narrowed, params), r.apply(default, params)
        _require(a.shape == b.shape and a.tobytes() == b.tobytes(),
                 f"apply depends on instance fields: params from the instance with {label} give other bytes "
                 "on a default instance (apply must use only its params)")


def _output_and_purity(r: _Runner) -> None:
    plugin = r.cls()
    before = r.img.copy()
    changed = False
    for seed in range(3):
        out = r.apply(plugin, r.sample(plugin, seed), seed=seed)
        r.valid_output(out, r.img, f"draw {seed}")
        _require(np.array_equal(r.img, before), "apply modified its input image in place")
        changed |= out.shape != r.img.shape or not np.array_equal(out, r.img)
    _require(changed, "three random draws all returned the input unchanged")


def _extremes(r: _Runner) -> None:
    for label, plugin in r.variants():
        for seed in (0, 1):
            r.valid_output(r.apply(plugin, r.sample(plugin, seed), seed=seed), r.img, label)


#: Seeds of the states planted in the global RNGs: two per RNG, so that a plugin reading one shows in its output.
_PLANTED = (20250501, 977)


@contextmanager
def _planted_global_rngs(np_seed: int, py_seed: int) -> Iterator[list[str]]:
    """Plant known states in numpy's and Python's global RNGs, list those changed on exit, restore the caller's.

    Each planted state sits a few draws into a seeded stream, and ``seed(...)`` always lands at the start of one,
    so a plugin that reseeds is caught even when every call reseeds to the same value (which leaves the state
    equal before and after every call but the first, and gives every sample the same noise field).
    """
    np_saved, py_saved = np.random.get_state(), python_rng_state()  # noqa: NPY002 (saved to be restored)
    legacy = np.random.RandomState(np_seed)  # noqa: NPY002 (a private instance, only to build the state)
    legacy.random_sample(3)
    np_planted = legacy.get_state()
    py_rng = Random(py_seed)
    py_rng.random()
    py_planted = py_rng.getstate()
    touched: list[str] = []
    np.random.set_state(np_planted)  # noqa: NPY002
    set_python_rng_state(py_planted)
    try:
        yield touched
        if not _same_numpy_state(np.random.get_state(), np_planted):  # noqa: NPY002
            touched.append("numpy")
        if python_rng_state() != py_planted:
            touched.append("python")
    finally:
        np.random.set_state(np_saved)  # noqa: NPY002
        set_python_rng_state(py_saved)


def _same_numpy_state(a: tuple, b: tuple) -> bool:
    return all(np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y for x, y in zip(a, b, strict=True))


_GLOBAL_RNG = {"numpy": ("numpy's global RNG (np.random.*)", "np.random.seed(0)"),
               "python": ("Python's global RNG (random.*)", "random.seed(0)")}


def _no_global_rng(r: _Runner) -> None:
    plugin = r.cls()
    outputs: dict[tuple[int, int], bytes] = {}
    a, b = _PLANTED
    for seeds in ((a, a), (b, a), (a, b)):  # the second varies only numpy's state, the third only Python's
        with _planted_global_rngs(*seeds) as touched:
            out = np.asarray(r.apply(plugin, r.sample(plugin)))
        if touched:
            what = " and ".join(_GLOBAL_RNG[name][0] for name in touched)
            calls = " or ".join(_GLOBAL_RNG[name][1] for name in touched)
            raise CheckFailed(f"drew from or reseeded {what} (a draw, or a call such as {calls}); "
                              "draw from the rng argument")
        outputs[seeds] = out.tobytes()
    for rng_name, other in (("numpy", (b, a)), ("python", (a, b))):
        _require(outputs[other] == outputs[(a, a)],
                 f"output depends on the state of {_GLOBAL_RNG[rng_name][0]} (read, then put back); "
                 "draw from the rng argument")


def _small_image(r: _Runner) -> None:
    plugin = r.cls()
    tiny = probe_image(33, 47)
    ann = synthetic_annotations(33, 47) if r.cls.requires else None
    params = plugin.sample_params(np.random.default_rng(0), **r.kw(ann))
    r.valid_output(plugin.apply(tiny, np.random.default_rng(0), **params, **r.kw(ann)), tiny, "33x47 image")


def _requires_known_fields(r: _Runner) -> None:
    known = {f.name for f in dataclasses.fields(Annotations)}
    unknown = [f for f in r.cls.requires if f not in known]
    _require(not unknown, f"requires {unknown}, which are not Annotations fields {sorted(known)}")


def _annotation_extremes(r: _Runner) -> None:
    """The annotation counterpart of range extremes: objects at the borders, 1 px, cut by the crop, whole."""
    plugin = r.cls()
    h, w = r.img.shape[:2]
    for label, ann in extreme_annotations(h, w):
        for seed in (0, 1):
            params = plugin.sample_params(np.random.default_rng(seed), **r.kw(ann))
            out = plugin.apply(r.img, np.random.default_rng(seed), **params, **r.kw(ann))
            r.valid_output(out, r.img, label)


def _no_instances(r: _Runner) -> None:
    """A crop with no object: a PluginError (the corpus builder skips the sample) or a valid output."""
    plugin = r.cls()
    ann = empty_annotations(*r.img.shape[:2])
    try:
        params = plugin.sample_params(np.random.default_rng(0), **r.kw(ann))
        out = plugin.apply(r.img, np.random.default_rng(0), **params, **r.kw(ann))
    except PluginError:
        return
    r.valid_output(out, r.img, "no instances")


def _follows_annotations(r: _Runner) -> None:
    """The target comes from the annotations: the same params on mirrored annotations give another output."""
    plugin, ann = r.cls(), r.ann
    assert ann is not None
    w = r.img.shape[1]
    mirrored = dataclasses.replace(
        ann, boxes=np.stack([w - ann.boxes[:, 2], ann.boxes[:, 1], w - ann.boxes[:, 0], ann.boxes[:, 3]], axis=1),
        keypoints=np.concatenate([w - 1 - ann.keypoints[..., :1], ann.keypoints[..., 1:]], axis=-1),
        masks=np.ascontiguousarray(ann.masks[:, :, ::-1]))
    for seed in range(3):
        params = r.sample(plugin, seed)
        a, b = r.apply(plugin, params), r.apply(plugin, params, ann=mirrored)
        _require(not np.array_equal(a, b), f"params {params!r} give the same output on mirrored annotations: "
                                           "apply ignores the annotations passed as ann=")


CHECKS: tuple[tuple[str, Callable[[_Runner], None]], ...] = (
    ("instantiable with defaults", _instantiable),
    ("declares ranges/choices", _declares_parameters),
    (">= 3 instructions render", _instructions),
    ("params JSON round trip", _json_round_trip),
    ("deterministic", _determinism),
    ("apply ignores instance ranges", _ignores_instance_ranges),
    ("output contract, pure", _output_and_purity),
    ("every range extreme and choice", _extremes),
    ("no global RNG", _no_global_rng),
    ("small odd image", _small_image),
)
#: Run after :data:`CHECKS` for plugins that declare ``requires`` (they have annotations as well as ranges).
ANNOTATION_CHECKS: tuple[tuple[str, Callable[[_Runner], None]], ...] = (
    ("requires names Annotations fields", _requires_known_fields),
    ("annotation extremes", _annotation_extremes),
    ("no instances: PluginError or valid", _no_instances),
    ("output follows the annotations", _follows_annotations),
)


def _resolve(target: type[Degradation] | str) -> tuple[type[Degradation], str]:
    if isinstance(target, str):
        cls = registry.load_target(target)
        return cls, (target if ":" not in target else cls.display_name())
    registry.validate_class(target, getattr(target, "__name__", str(target)), origin="check_plugin argument")
    return target, target.display_name()


def run_checks(target: type[Degradation] | str, sizes: tuple[int, ...] = ()) -> list[Result]:
    """Run every contract check; the first failing prerequisite (instantiation) stops the rest."""
    try:
        cls, name = _resolve(target)
    except PluginError as exc:
        return [Result(str(target), "loadable", False, str(exc))]
    runner = _Runner(cls, name)
    results: list[Result] = []
    checks = [*CHECKS, *(ANNOTATION_CHECKS if cls.requires else ()), *((f"runs at {s}x{s}", _sized(s)) for s in sizes)]
    for label, fn in checks:
        try:
            fn(runner)
            results.append(Result(name, label, True))
        except CheckFailed as exc:
            results.append(Result(name, label, False, str(exc)))
        except Exception as exc:  # a plugin crash is a failed check, reported with where it happened
            where = traceback.extract_tb(exc.__traceback__)[-1]
            results.append(Result(name, label, False, f"raised {type(exc).__name__}: {exc} "
                                                      f"({where.filename}:{where.lineno})"))
        if label == "instantiable with defaults" and not results[-1].ok:
            break
    return results


def _sized(size: int) -> Callable[[_Runner], None]:
    def check(r: _Runner) -> None:
        import cv2

        img = np.ascontiguousarray(cv2.resize(_photo(), (size, size), interpolation=cv2.INTER_AREA))
        ann = synthetic_annotations(size, size) if r.cls.requires else None
        plugin = r.cls()
        params = plugin.sample_params(np.random.default_rng(0), **r.kw(ann))
        r.valid_output(plugin.apply(img, np.random.default_rng(0), **params, **r.kw(ann)), img, f"{size}x{size}")

    return check


def check_plugin(target: type[Degradation] | str, sizes: tuple[int, ...] = ()) -> list[Failure]:
    """The contract failures of a plugin class, a registered name or ``module:Class`` (empty = passes)."""
    return [Failure(r.plugin, r.check, r.message) for r in run_checks(target, sizes) if not r.ok]
