"""Every registered plugin passes the contract; the checker itself catches each kind of breach."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import cv2
import numpy as np
import pytest

from degradations import registry
from degradations.base import Degradation, PluginError, limits
from degradations.check import ANNOTATION_CHECKS, check_plugin, probe_image, run_checks, synthetic_annotations

ALL = registry.names()


def test_at_least_forty_builtins_over_all_domains():
    builtins = [n for n, e in registry.entries().items() if e.source.startswith("omnilv ")]
    assert len(builtins) >= 40, builtins
    domains = {registry.get(n).domain for n in builtins}
    assert domains == {"restoration", "enhancement", "dense", "stylization", "vision-centric"}


@pytest.mark.parametrize("name", ALL, ids=ALL)
def test_registered_plugin_obeys_contract(name):
    failures = check_plugin(name)
    assert not failures, "\n".join(map(str, failures))


def test_every_plugin_runs_at_512_and_1024(astronaut):
    """One full-size run per plugin and size: shape kept (or resized for SR), values valid."""
    big = {512: astronaut, 1024: cv2.resize(astronaut, (1024, 1024), interpolation=cv2.INTER_CUBIC).clip(0, 1)}
    slow = []
    for name in ALL:
        plugin = registry.create(name)
        for size, img in big.items():
            t0 = time.perf_counter()
            kw = {"ann": synthetic_annotations(size, size)} if plugin.requires else {}
            params = plugin.sample_params(np.random.default_rng(size), **kw)
            out = plugin.apply(img, np.random.default_rng(size), **params, **kw)
            slow.append((time.perf_counter() - t0, name, size))
            assert out.dtype == np.float32 and out.ndim == 3 and out.shape[2] == 3, (name, size)
            assert plugin.changes_size or out.shape == img.shape, (name, size, out.shape)
            assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1, (name, size)
    print("slowest:", sorted(slow, reverse=True)[:5])


# -- the checker catches each breach -----------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class NoRanges(Degradation):
    domain = "restoration"
    instructions = ("a", "b", "c")

    def sample_params(self, rng):
        return {}

    def apply(self, img, rng):
        return img * np.float32(0.5)


@dataclass(frozen=True, kw_only=True)
class ReadsInstance(Degradation):
    domain = "restoration"
    instructions = ("Fix {gain:.2f}", "b", "c")
    gain_range: tuple[float, float] = limits(0.0, 1.0, (0.2, 0.8))

    def sample_params(self, rng):
        return {"gain": float(rng.uniform(*self.gain_range))}

    def apply(self, img, rng, *, gain):
        return img * np.float32(self.gain_range[1])  # wrong: ignores its param


# Each breaks exactly one half of the global-RNG check (numpy's or Python's), in one way.
@dataclass(frozen=True, kw_only=True)
class Params(ReadsInstance):
    def apply(self, img, rng, *, gain):
        return np.clip(img + np.float32(self.noise() * 0.01), 0, 1).astype(np.float32)

    def noise(self) -> float:
        return 0.0


@dataclass(frozen=True, kw_only=True)
class NumpyDraws(Params):
    def noise(self):
        return np.random.normal()  # noqa: NPY002 (the breach under test)


@dataclass(frozen=True, kw_only=True)
class NumpyReseeds(Params):
    def noise(self):
        np.random.seed(0)  # noqa: NPY002 (the breach: state equal before and after every call but the first)
        return np.random.normal()  # noqa: NPY002


@dataclass(frozen=True, kw_only=True)
class NumpyPeeks(Params):
    def noise(self):
        state = np.random.get_state()  # noqa: NPY002 (the breach: reads the global RNG, then puts it back)
        value = np.random.normal()  # noqa: NPY002
        np.random.set_state(state)  # noqa: NPY002
        return value


@dataclass(frozen=True, kw_only=True)
class PythonDraws(Params):
    def noise(self):
        return random.random()


@dataclass(frozen=True, kw_only=True)
class PythonReseeds(Params):
    def noise(self):
        random.seed(0)
        return random.random()


@dataclass(frozen=True, kw_only=True)
class PythonPeeks(Params):
    def noise(self):
        state = random.getstate()
        value = random.random()
        random.setstate(state)
        return value


@dataclass(frozen=True, kw_only=True)
class GrayOnlyCrashes(ReadsInstance):
    """Crashes only when its probability field fires, which its default (0) never does."""

    flip_probability: float = 0.0

    def sample_params(self, rng):
        return {**super().sample_params(rng), "flip": bool(rng.random() < self.flip_probability)}

    def apply(self, img, rng, *, gain, flip):
        if flip:
            raise RuntimeError("flipped")
        return img * np.float32(gain)


@dataclass(frozen=True, kw_only=True)
class NumpyParams(ReadsInstance):
    def sample_params(self, rng):
        return {"gain": rng.uniform(*self.gain_range, size=1)}  # an array: not JSON

    def apply(self, img, rng, *, gain):
        return img * np.float32(np.asarray(gain).item())


@dataclass(frozen=True, kw_only=True)
class Overshoots(ReadsInstance):
    instructions = ("a", "b")  # too few as well

    def apply(self, img, rng, *, gain):
        return img + np.float32(1 + gain)  # leaves [0, 1]


@dataclass(frozen=True, kw_only=True)
class Crashes(ReadsInstance):
    def apply(self, img, rng, *, gain):
        if gain == self.gain_range[0] == self.gain_range[1] == 0.0:
            raise ZeroDivisionError("extreme")
        return img * np.float32(gain)


@dataclass(frozen=True, kw_only=True)
class Wider(ReadsInstance):
    gain_range: tuple[float, float] = limits(0.0, 1.0, (0.0, 0.8))


@dataclass(frozen=True, kw_only=True)
class CrashesAtZero(Wider, Crashes):
    pass


def _checks(cls) -> dict[str, str]:
    return {f.check: f.message for f in check_plugin(cls)}


def test_plugin_without_ranges_fails_unless_parameterless():
    assert "declares ranges/choices" in _checks(NoRanges)
    ok = type("Ok", (NoRanges,), {"parameterless": True})
    assert "declares ranges/choices" not in _checks(dataclass(frozen=True, kw_only=True)(ok))


def test_checker_catches_apply_reading_instance_fields():
    assert "apply ignores instance ranges" in _checks(ReadsInstance)


@pytest.fixture
def global_rngs_restored():
    """The breaches under test change the global RNGs in the checks that run before the RNG check."""
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    yield
    np.random.set_state(np_state)  # noqa: NPY002
    random.setstate(py_state)


NUMPY, PYTHON = "numpy's global RNG (np.random.*)", "Python's global RNG (random.*)"


@pytest.mark.usefixtures("global_rngs_restored")
@pytest.mark.parametrize("cls", [NumpyDraws, NumpyReseeds], ids=["draws", "reseeds"])
def test_checker_catches_numpy_global_rng(cls):
    message = _checks(cls).get("no global RNG", "")
    assert "drew from or reseeded " + NUMPY in message and PYTHON not in message


@pytest.mark.usefixtures("global_rngs_restored")
@pytest.mark.parametrize("cls", [PythonDraws, PythonReseeds], ids=["draws", "reseeds"])
def test_checker_catches_python_global_rng(cls):
    message = _checks(cls).get("no global RNG", "")
    assert "drew from or reseeded " + PYTHON in message and NUMPY not in message


@pytest.mark.usefixtures("global_rngs_restored")
@pytest.mark.parametrize(("cls", "rng"), [(NumpyPeeks, NUMPY), (PythonPeeks, PYTHON)], ids=["numpy", "python"])
def test_checker_catches_output_read_from_a_global_rng_put_back(cls, rng):
    message = _checks(cls).get("no global RNG", "")
    assert message.startswith("output depends on the state of " + rng)


def test_global_rng_check_passes_a_clean_plugin_and_leaves_the_callers_state():
    random.seed(1234)
    np.random.seed(1234)  # noqa: NPY002 (the caller's state, which the check must hand back)
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    assert "no global RNG" not in _checks(Params)
    assert random.getstate() == py_state
    after = np.random.get_state()  # noqa: NPY002
    assert after[2:] == np_state[2:] and np.array_equal(after[1], np_state[1])


def test_checker_drives_probability_fields_to_both_ends():
    assert "flipped" in _checks(GrayOnlyCrashes)["every range extreme and choice"]


def test_checker_catches_non_json_params():
    assert "params JSON round trip" in _checks(NumpyParams)


def test_checker_catches_bad_output_and_templates():
    found = _checks(Overshoots)
    assert "[0, 1]" in found["output contract, pure"]
    assert ">= 3 instructions render" in found


def test_checker_drives_range_extremes():
    found = _checks(CrashesAtZero)
    assert "ZeroDivisionError" in found["every range extreme and choice"]
    assert "every range extreme and choice" not in _checks(ReadsInstance)


def test_bad_ranges_are_rejected_naming_plugin_and_field():
    with pytest.raises(PluginError, match=r"GaussianBlur.sigma_range: low 3.0 is above high 1.0"):
        registry.create("gaussian_blur", sigma_range=(3.0, 1.0))
    with pytest.raises(PluginError, match=r"kernel_size_range: bounds must be odd"):
        registry.create("gaussian_blur", kernel_size_range=(4, 8))
    with pytest.raises(PluginError, match=r"interpolation_choices"):
        registry.create("sr_x4", interpolation_choices=("magic",))
    with pytest.raises(PluginError, match=r"quality_range.*allowed interval"):
        registry.create("jpeg", quality_range=(0, 120))


def test_probe_image_is_a_real_non_square_odd_crop():
    img = probe_image()
    assert img.shape == (61, 83, 3) and img.dtype == np.float32 and img.std() > 0.05



@dataclass(frozen=True, kw_only=True)
class BoxHeatmap(Degradation):
    """A Lumen-style annotation task: Gaussian blobs at the box centres."""

    domain = "dense"
    requires = ("boxes",)
    instructions = ("Mark every {label}.", "Find the objects.", "Heatmap of {count} boxes.")
    spread_range: tuple[float, float] = limits(0.05, 1.0, (0.1, 0.3))

    def sample_params(self, rng, *, ann):
        if not len(ann.boxes):
            raise PluginError("box_heatmap: no boxes to mark")
        return {"spread": float(rng.uniform(*self.spread_range)), "count": len(ann.boxes), "label": ann.labels[0]}

    def apply(self, img, rng, *, spread, count, label, ann):
        h, w = img.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        heat = np.zeros((h, w), np.float32)
        for x0, y0, x1, y1 in ann.boxes[:count]:
            s2 = (spread * max(x1 - x0, y1 - y0)) ** 2 + 1e-6
            heat = np.maximum(heat, np.exp(-((xx - (x0 + x1) / 2) ** 2 + (yy - (y0 + y1) / 2) ** 2) / (2 * s2)))
        return np.repeat(heat[..., None], 3, axis=2)


def test_annotation_plugins_receive_synthetic_annotations():
    assert check_plugin(BoxHeatmap) == []


@dataclass(frozen=True, kw_only=True)
class CrashesWithoutBoxes(BoxHeatmap):
    def sample_params(self, rng, *, ann):
        return {"spread": 0.2, "count": len(ann.boxes), "label": ann.labels[0]}  # IndexError on a crop with none


@dataclass(frozen=True, kw_only=True)
class IgnoresAnnotations(BoxHeatmap):
    def apply(self, img, rng, *, spread, count, label, ann):
        return super().apply(img, rng, spread=spread, count=count, label=label, ann=synthetic_annotations(61, 83))


@dataclass(frozen=True, kw_only=True)
class FailsAtTheBorder(BoxHeatmap):
    def apply(self, img, rng, *, spread, count, label, ann):
        return super().apply(img, rng, spread=spread, count=count, label=label, ann=ann) * np.float32(
            1 + (ann.boxes[:, 2] >= img.shape[1]).any())  # leaves [0, 1] for a box touching the right edge


def test_checker_adapts_to_annotation_plugins():
    """Annotation plugins get annotation checks in place of the range extremes they do not have."""
    assert "no instances: PluginError or valid" in _checks(CrashesWithoutBoxes)
    assert "output follows the annotations" in _checks(IgnoresAnnotations)
    assert "[0, 1]" in _checks(FailsAtTheBorder)["annotation extremes"]
    extra = {label for label, _ in ANNOTATION_CHECKS}
    assert extra <= {r.check for r in run_checks(BoxHeatmap)}
    assert extra.isdisjoint(r.check for r in run_checks(ReadsInstance))  # image-only plugins: as before
