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
from degradations.check import check_plugin, probe_image

ALL = registry.names()


def test_at_least_forty_builtins_over_all_domains():
    builtins = [n for n, e in registry.entries().items() if e.source.startswith("omnilv ")]
    assert len(builtins) >= 40, builtins
    domains = {registry.get(n).domain for n in builtins}
    assert domains == {"restoration", "enhancement", "dense", "stylization"}


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
            params = plugin.sample_params(np.random.default_rng(size))
            out = plugin.apply(img, np.random.default_rng(size), **params)
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


@dataclass(frozen=True, kw_only=True)
class GlobalRng(ReadsInstance):
    def apply(self, img, rng, *, gain):
        noise = np.random.normal() * 0.01 + random.random() * 0  # noqa: NPY002 (the breach under test)
        return np.clip(img + np.float32(noise), 0, 1).astype(np.float32)


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


def test_checker_catches_global_rng():
    state = np.random.get_state()  # noqa: NPY002 (the plugin under test breaks it on purpose)
    assert "no global RNG" in _checks(GlobalRng)
    np.random.set_state(state)  # noqa: NPY002


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
