"""The plugin contract every degradation / task obeys.

Image convention at every plugin boundary: ``float32`` RGB, shape ``(H, W, 3)``,
values in ``[0, 1]``, C-contiguous. Plugins return the same convention; only a
plugin that declares ``changes_size = True`` may return another ``(H', W')``.

A plugin is a frozen dataclass whose fields are its *parameter ranges*:

* ``<name>_range: tuple[float, float]`` (or ints) — a closed interval, ``lo <= hi``;
* ``<name>_choices: tuple[str, ...]`` — a non-empty set of discrete options;
* ``<name>_probability: float`` — a probability in ``[0, 1]``.

All three are validated once, in ``__post_init__``, with errors naming the class
and field. ``sample_params(rng)`` draws concrete JSON-serialisable values from
them; ``apply(img, rng, **params)`` is pure: its output depends only on ``img``,
the generator state and ``params`` (never on the instance's fields), so a
recorded step can be replayed from the sample's json. Collapsing a range to one
point (``lo == hi``) and setting a probability to 0 or 1 is how the contract
check drives every extreme.

The plugin kit, for built-ins and third-party plugins alike: ``draw_float`` and
``draw_int`` draw from a range field (an integer range includes both ends),
``draw_bool`` decides an event of a ``*_probability`` field, ``limits`` and
``allowed`` declare hard bounds on a range or choices field.

Annotation-driven tasks (Lumen-style heatmaps) declare ``requires`` — the
annotation fields they need — and then receive ``ann=`` in ``sample_params``
and ``apply``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from omnilv.errors import OmniLVError

Domain = Literal["restoration", "enhancement", "dense", "stylization", "vision-centric"]
DOMAINS: tuple[str, ...] = ("restoration", "enhancement", "dense", "stylization", "vision-centric")
#: Domains whose sample is ``input = apply(clean), target = clean``; the others invert it.
DEGRADING_DOMAINS: frozenset[str] = frozenset({"restoration", "enhancement"})


class PluginError(OmniLVError, ValueError):
    """A plugin is declared or called wrongly; the message names the plugin and field."""


@dataclass(frozen=True)
class Annotations:
    """Per-image annotations for annotation-driven tasks (pixel coordinates of the image passed in).

    boxes: (N, 4) xyxy; keypoints: (N, K, 3) x, y, visibility; masks: (N, H, W) bool;
    labels: one class name per instance; referring: a referring expression per instance (``""`` when none);
    keypoint_names: one name per keypoint (K,).
    """

    boxes: np.ndarray | None = None
    keypoints: np.ndarray | None = None
    masks: np.ndarray | None = None
    labels: tuple[str, ...] = ()
    referring: tuple[str, ...] = ()
    keypoint_names: tuple[str, ...] = ()

    def has(self, name: str) -> bool:
        value = getattr(self, name)
        return value is not None and len(value) > 0


@dataclass(frozen=True, kw_only=True)
class Degradation:
    """Base class of every plugin. Subclasses are frozen, keyword-only dataclasses."""

    #: Registry name; filled from the entry-point name when loaded through the registry.
    name: ClassVar[str] = ""
    domain: ClassVar[str] = ""
    #: >= 3 templates; each may cite sampled params, e.g. ``"Denoise (sigma {sigma:.2f})."``
    instructions: ClassVar[tuple[str, ...]] = ()
    #: True when ``apply`` may return a different (H, W) (e.g. down-sampling for SR).
    changes_size: ClassVar[bool] = False
    #: True for a plugin with no ranges or choices at all (so the contract check knows it is on purpose).
    parameterless: ClassVar[bool] = False
    #: Bit depth the corpus should store the target with (16 for fine-grained dense maps).
    target_bits: ClassVar[int] = 8
    #: Annotation fields this plugin needs (e.g. ``("boxes",)``); empty for image-only plugins.
    requires: ClassVar[tuple[str, ...]] = ()
    #: Bump when the same params and seed start giving other pixels: recorded with every step, checked on
    #: replay, and a resumed corpus build refuses to mix versions.
    version: ClassVar[int] = 1

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_range"):
                _check_range(self, f.name, value)
            elif f.name.endswith("_choices"):
                _check_choices(self, f.name, value)
            elif f.name.endswith("_probability"):
                check_probability(f"{type(self).__name__}.{f.name}", value)

    # -- the two methods a plugin implements -------------------------------------------------
    def sample_params(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draw concrete parameter values (JSON-serialisable) from this plugin's ranges."""
        raise NotImplementedError

    def apply(self, img: np.ndarray, rng: np.random.Generator, **params: Any) -> np.ndarray:
        """Pure transform of ``img`` (float32 RGB in [0, 1]) under ``params``."""
        raise NotImplementedError

    # -- helpers shared by every plugin ---------------------------------------------------------
    @classmethod
    def display_name(cls) -> str:
        return cls.name or _snake(cls.__name__)

    def ranges(self) -> dict[str, tuple]:
        """The declared ``*_range`` and ``*_choices`` fields and their current values."""
        return {
            f.name: tuple(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.name.endswith(("_range", "_choices"))
        }

    def render_instruction(self, rng: np.random.Generator, params: dict[str, Any]) -> str:
        return render_instruction(self.display_name(), self.instructions, rng, params)


def render_instruction(owner: str, templates: tuple[str, ...], rng: np.random.Generator,
                       params: dict[str, Any]) -> str:
    """Pick one template with ``rng`` and fill it from ``params``."""
    if not templates:
        raise PluginError(f"{owner}: declares no instruction templates")
    template = templates[int(rng.integers(len(templates)))]
    try:
        return template.format(**params)
    except (KeyError, IndexError, ValueError) as exc:
        raise PluginError(f"{owner}: instruction template {template!r} cannot be filled "
                          f"from params {sorted(params)}: {exc}") from exc


def to_jsonable(value: Any) -> Any:
    """NumPy scalars/arrays to plain Python, so params survive a json round trip unchanged."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def check_image(img: np.ndarray, owner: str = "image") -> None:
    """Raise if ``img`` breaks the boundary convention."""
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
        shape = getattr(img, "shape", type(img).__name__)
        raise PluginError(f"{owner}: expected an (H, W, 3) array, got {shape}")
    if img.dtype != np.float32:
        raise PluginError(f"{owner}: expected float32, got {img.dtype}")


def _check_range(plugin: Degradation, fname: str, value: Any) -> None:
    where = f"{type(plugin).__name__}.{fname}"
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise PluginError(f"{where}: a range is a (low, high) pair, got {value!r}")
    lo, hi = value
    if not all(isinstance(v, (int, float, np.integer, np.floating)) for v in value):
        raise PluginError(f"{where}: range bounds must be numbers, got {value!r}")
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise PluginError(f"{where}: range bounds must be finite, got {value!r}")
    if lo > hi:
        raise PluginError(f"{where}: low {lo} is above high {hi}")
    limits = _field_limits(plugin, fname)
    if limits is not None:
        lower, upper = limits
        if (lower is not None and lo < lower) or (upper is not None and hi > upper):
            raise PluginError(f"{where}: {value!r} leaves the allowed interval [{lower}, {upper}]")


def check_probability(where: str, value: Any) -> None:
    """Raise unless ``value`` is a number in [0, 1]; ``where`` names the owner and field (``"Maybe.p"``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise PluginError(f"{where}: a probability is a number in [0, 1], got {value!r}")
    if not 0.0 <= value <= 1.0:  # also False for NaN
        raise PluginError(f"{where}: {value} is not a probability in [0, 1]")


def _check_choices(plugin: Degradation, fname: str, value: Any) -> None:
    where = f"{type(plugin).__name__}.{fname}"
    if not isinstance(value, (tuple, list)) or not value:
        raise PluginError(f"{where}: choices must be a non-empty tuple, got {value!r}")
    allowed = _field_limits(plugin, fname)
    if allowed is not None:
        bad = [v for v in value if v not in allowed]
        if bad:
            raise PluginError(f"{where}: {bad} not among the supported {tuple(allowed)}")


def _field_limits(plugin: Degradation, fname: str) -> Any:
    """Hard limits from ``field(metadata={"limits": (lo, hi)})`` or ``{"allowed": (...)}``."""
    f = next(f for f in dataclasses.fields(plugin) if f.name == fname)
    return f.metadata.get("limits", f.metadata.get("allowed"))


def limits(lo: float | None, hi: float | None, default: tuple) -> Any:
    """A range field with hard limits: ``sigma_range: tuple[float, float] = limits(0, 1, (0.01, 0.2))``."""
    return field(default=default, metadata={"limits": (lo, hi)})


def allowed(options: tuple[str, ...], default: tuple[str, ...] | None = None) -> Any:
    """A choices field restricted to ``options``; defaults to all of them."""
    return field(default=tuple(default or options), metadata={"allowed": tuple(options)})


def draw_float(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    """A float drawn uniformly from the range ``bounds`` (one ``rng.uniform`` call), as a plain ``float``."""
    return float(rng.uniform(bounds[0], bounds[1]))


def draw_int(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    """An integer drawn uniformly from ``bounds`` *including both ends* (one ``rng.integers`` call)."""
    return int(rng.integers(bounds[0], bounds[1] + 1))


def draw_bool(rng: np.random.Generator, probability: float) -> bool:
    """True with ``probability`` (one ``rng.random`` call, even when the probability is 0 or 1)."""
    return bool(rng.random() < probability)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
