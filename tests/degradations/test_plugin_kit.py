"""The plugin kit in ``degradations.base``: range draws, probability fields, range validation."""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import degradations
from degradations import Degradation, Maybe, PluginError, draw_bool, draw_float, draw_int, limits, registry
from degradations.compose import Apply


@dataclass(frozen=True, kw_only=True)
class Kit(Degradation):
    domain = "restoration"
    instructions = ("a", "b", "c")
    count_range: tuple[int, int] = limits(1, 10, (2, 5))
    gain_range: tuple[float, float] = (0.2, 0.8)
    flip_probability: float = 0.5

    def sample_params(self, rng):
        return {"count": draw_int(rng, self.count_range), "gain": draw_float(rng, self.gain_range),
                "flip": draw_bool(rng, self.flip_probability)}

    def apply(self, img, rng, *, count, gain, flip):
        return img[:, ::-1] * np.float32(gain) if flip else img * np.float32(gain)


def test_kit_is_exported_from_the_package_door():
    for name in ("Degradation", "draw_bool", "draw_float", "draw_int", "limits", "allowed"):
        assert name in degradations.__all__, name


def test_draw_int_includes_both_ends_and_returns_python_ints():
    rng = np.random.default_rng(0)
    drawn = [draw_int(rng, (3, 5)) for _ in range(300)]
    assert set(drawn) == {3, 4, 5}
    assert all(type(v) is int for v in drawn)
    assert {draw_int(rng, (7, 7)) for _ in range(20)} == {7}


def test_draw_int_keeps_the_stream_of_the_inline_draw_it_replaced():
    """Corpora built before the kit must regenerate bit for bit: the same one ``integers(lo, hi + 1)`` call."""
    a, b = np.random.default_rng(42), np.random.default_rng(42)
    assert [draw_int(a, (30, 95)) for _ in range(50)] == [int(b.integers(30, 96)) for _ in range(50)]
    assert a.random() == b.random()


def test_draw_float_stays_in_range_and_matches_one_uniform_call():
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    drawn = [draw_float(a, (-1.5, 2.0)) for _ in range(200)]
    assert all(type(v) is float and -1.5 <= v <= 2.0 for v in drawn)
    assert drawn == [float(b.uniform(-1.5, 2.0)) for _ in range(200)]
    assert draw_float(a, (0.25, 0.25)) == 0.25


@pytest.mark.parametrize(("p", "expected"), [(0.0, {False}), (1.0, {True}), (0.5, {False, True})])
def test_draw_bool_honours_its_probability_with_one_draw_each(p, expected):
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    drawn = [draw_bool(a, p) for _ in range(100)]
    assert set(drawn) == expected and all(type(v) is bool for v in drawn)
    b.random(100)
    assert a.random() == b.random()  # even p = 0 or 1 consumes its draw, so later draws do not shift


def test_probability_field_accepts_its_bounds():
    assert Kit(flip_probability=0).flip_probability == 0
    assert Kit(flip_probability=1.0).flip_probability == 1.0


@pytest.mark.parametrize("bad", [1.5, -0.01, math.nan, math.inf])
def test_probability_field_out_of_bounds_names_class_and_field(bad):
    with pytest.raises(PluginError, match=r"^Kit\.flip_probability: .* is not a probability in \[0, 1\]"):
        Kit(flip_probability=bad)


@pytest.mark.parametrize("bad", ["0.5", None, True, (0.1, 0.2)])
def test_probability_field_must_be_a_number(bad):
    with pytest.raises(PluginError, match=r"^Kit\.flip_probability: a probability is a number in \[0, 1\]"):
        Kit(flip_probability=bad)


def test_builtin_probability_fields_and_maybe_use_the_same_check():
    with pytest.raises(PluginError, match=r"GaussianNoise\.gray_probability: 1\.2 is not a probability"):
        registry.create("gaussian_noise", gray_probability=1.2)
    with pytest.raises(PluginError, match=r"PoissonNoise\.gray_probability: -0\.5 is not a probability"):
        registry.create("poisson_noise", gray_probability=-0.5)
    with pytest.raises(PluginError, match=r"Maybe\.p: 1\.5 is not a probability"):
        Maybe(Apply(registry.create("jpeg")), 1.5)


@pytest.mark.parametrize(("value", "message"), [
    ((5, 2), r"Kit\.count_range: low 5 is above high 2"),
    ((0, 3), r"Kit\.count_range: \(0, 3\) leaves the allowed interval \[1, 10\]"),
    ((2, 11), r"Kit\.count_range: \(2, 11\) leaves the allowed interval \[1, 10\]"),
    ((2,), r"Kit\.count_range: a range is a \(low, high\) pair"),
    (("2", 5), r"Kit\.count_range: range bounds must be numbers"),
    ((1, math.inf), r"Kit\.count_range: range bounds must be finite"),
])
def test_range_fields_are_validated_once_with_class_and_field(value, message):
    with pytest.raises(PluginError, match=message):
        Kit(count_range=value)


def test_kit_plugin_passes_the_contract():
    from degradations.check import check_plugin

    assert check_plugin(Kit) == []


def test_builtins_take_their_helpers_from_the_kit_not_from_each_other():
    """No built-in plugin module imports from another plugin module (the old sideways ``blur.uniform``)."""
    modules = {e.target.partition(":")[0] for e in registry.entries().values() if e.source.startswith("omnilv ")}
    root = Path(degradations.__file__).parent
    for module in sorted(modules):
        tree = ast.parse((root / f"{module.rpartition('.')[2]}.py").read_text())
        sideways = [n.module for n in ast.walk(tree)
                    if isinstance(n, ast.ImportFrom) and n.module in modules and n.module != module]
        assert not sideways, f"{module} imports from plugin module(s) {sideways}; use degradations.base"
