"""The third-party plugin template is found through the entry point and passes the contract."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from degradations import registry
from degradations.check import check_plugin
from degradations.cli import app

TARGET = "omnilv_plugin_example.plugin:ChromaticAberration"


@pytest.fixture(scope="module")
def example_entry():
    entry = registry.entries().get("chromatic_aberration")
    assert entry is not None, "examples/plugin-template is not installed: pip install -e examples/plugin-template"
    return entry


def test_template_is_discovered_through_the_entry_point(example_entry):
    assert example_entry.target == TARGET
    assert example_entry.source == "omnilv-plugin-example 0.1.0"  # its own distribution, not omnilv
    assert registry.get("chromatic_aberration").__module__ == "omnilv_plugin_example.plugin"


def test_template_passes_the_contract(example_entry):
    assert check_plugin("chromatic_aberration") == []
    assert check_plugin(TARGET) == []


def test_template_plugin_shifts_red_and_blue_apart(example_entry, astronaut):
    plugin = registry.create("chromatic_aberration")
    out = plugin.apply(astronaut, np.random.default_rng(0), shift=0.01, dx=0.0, dy=0.0)
    assert np.array_equal(out[..., 1], astronaut[..., 1])  # green is the reference channel
    centre = (slice(240, 272), slice(240, 272))
    corner = (slice(0, 64), slice(0, 64))
    moved = np.abs(out[..., 0] - astronaut[..., 0])
    assert moved[corner].mean() > 2 * moved[centre].mean()  # lateral CA grows with the radius


def test_cli_check_on_the_template(example_entry):
    result = CliRunner().invoke(app, ["check", TARGET, "chromatic_aberration"])
    assert result.exit_code == 0, result.output
    assert "10/10 checks pass" in result.output
