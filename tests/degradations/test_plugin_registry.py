"""Registry: entry-point discovery, duplicate names naming both sources, close-match suggestions."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from degradations import registry
from degradations.base import PluginError


@pytest.fixture
def extra_distribution(tmp_path: Path):
    """Put a real (metadata-only) distribution on sys.path that declares ``omnilv.degradations`` entries."""

    def install(name: str, entries: dict[str, str]) -> None:
        info = tmp_path / f"{name}-9.9.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 9.9\n")
        lines = "\n".join(f"{k} = {v}" for k, v in entries.items())
        (info / "entry_points.txt").write_text(f"[omnilv.degradations]\n{lines}\n")
        sys.path.insert(0, str(tmp_path))
        registry.entries.cache_clear()
        registry.get.cache_clear()

    yield install
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))
    registry.entries.cache_clear()
    registry.get.cache_clear()


def test_duplicate_name_from_two_sources_names_both(extra_distribution):
    extra_distribution("rogue-plugins", {"jpeg": "rogue_plugins.codecs:Jpeg"})
    with pytest.raises(PluginError) as err:
        registry.entries()
    text = str(err.value)
    assert "'jpeg'" in text and "degradations.restoration:Jpeg (from omnilv" in text
    assert "rogue_plugins.codecs:Jpeg (from rogue-plugins 9.9)" in text


def test_new_name_from_another_distribution_is_found(extra_distribution, tmp_path):
    (tmp_path / "more_plugins_mod.py").write_text(
        "from dataclasses import dataclass\n"
        "from degradations.blur import GaussianBlur\n\n"
        "@dataclass(frozen=True, kw_only=True)\n"
        "class WideBlur(GaussianBlur):\n"
        "    sigma_range: tuple[float, float] = (3.0, 6.0)\n"
    )
    extra_distribution("more-plugins", {"wide_blur": "more_plugins_mod:WideBlur"})
    assert registry.entries()["wide_blur"].source == "more-plugins 9.9"
    cls = registry.get("wide_blur")
    assert cls.display_name() == "wide_blur" and cls().sigma_range == (3.0, 6.0)
    sys.modules.pop("more_plugins_mod", None)


def test_one_class_under_two_names_is_an_error(extra_distribution):
    registry.get("gaussian_blur")
    extra_distribution("alias-plugins", {"blur_alias": "degradations.blur:GaussianBlur"})
    with pytest.raises(PluginError, match="says name='gaussian_blur' but is registered as 'blur_alias'"):
        registry.get("blur_alias")


def test_unknown_name_suggests_close_matches():
    with pytest.raises(registry.UnknownPluginError) as err:
        registry.get("gausian_blurr")
    assert "did you mean 'gaussian_blur'" in str(err.value)
    with pytest.raises(registry.UnknownPluginError, match="no chain preset named 'realesrgn'.*'realesrgan'"):
        registry.get_chain("realesrgn")


def test_builtins_register_through_the_entry_point_group():
    entry = registry.entries()["gaussian_noise"]
    assert entry.target == "degradations.restoration:GaussianNoise" and entry.source.startswith("omnilv ")
    assert registry.get("gaussian_noise").display_name() == "gaussian_noise"
    assert "realesrgan" in registry.names(registry.CHAIN_GROUP)


def test_load_target_rejects_non_plugins():
    with pytest.raises(PluginError, match="not a subclass"):
        registry.load_target("degradations.kernels:clip01")
    with pytest.raises(PluginError, match="cannot import"):
        registry.load_target("no_such_module:Thing")


def test_an_uninstalled_module_says_how_to_make_it_importable():
    with pytest.raises(PluginError, match=r"not installed: install your package .*PYTHONPATH=\. omnilv degradations "
                                          r"check no_such_pkg\.plugins:P"):
        registry.load_target("no_such_pkg.plugins:P")
    with pytest.raises(PluginError) as exc:  # a missing dependency inside an importable module is not that case
        registry.load_target("degradations.no_such_module:P")
    assert "not installed" not in str(exc.value)
