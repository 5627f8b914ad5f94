"""Composition: OneOf weights, Maybe probability, Shuffle order, record -> replay bit for bit."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from degradations import registry
from degradations.compose import Apply, Chain, Context, Maybe, OneOf, Shuffle, Task, replay, synthesize, task_for
from degradations.presets import realesrgan

TINY = np.full((8, 8, 3), 0.5, np.float32)


def _first_steps(node, n: int = 600) -> list[list[str]]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        ctx = Context(orig_size=TINY.shape[:2])
        node.run(TINY, rng, ctx)
        out.append([s.name for s in ctx.record])
    return out


def test_oneof_follows_its_weights():
    node = OneOf((Apply(registry.create("jpeg")), Apply(registry.create("posterize"))), (0.8, 0.2))
    runs = _first_steps(node)
    assert all(len(r) == 1 for r in runs)
    share = Counter(r[0] for r in runs)["jpeg"] / len(runs)
    assert 0.74 < share < 0.86, share


def test_maybe_applies_with_probability_p():
    runs = _first_steps(Maybe(Apply(registry.create("posterize")), 0.3))
    share = sum(bool(r) for r in runs) / len(runs)
    assert 0.24 < share < 0.36, share
    assert _first_steps(Maybe(Apply(registry.create("posterize")), 0.0), 50) == [[]] * 50


def test_shuffle_applies_every_node_in_both_orders():
    node = Shuffle((Apply(registry.create("jpeg")), Apply(registry.create("posterize"))))
    runs = _first_steps(node, 200)
    assert all(sorted(r) == ["jpeg", "posterize"] for r in runs)
    orders = Counter(tuple(r) for r in runs)
    assert len(orders) == 2 and min(orders.values()) > 60


def test_realesrgan_record_replays_bit_for_bit(small_image):
    task = realesrgan()
    for seed in range(3):
        s = synthesize(task, small_image, np.random.default_rng(seed))
        assert s.input.shape == small_image.shape and s.target is small_image
        names = [step.name for step in s.steps]
        assert "jpeg" in names and "resize" in names
        assert any(n.endswith("blur") or n == "sinc" for n in names)
        record = json.loads(json.dumps(s.record()))  # what the sample's json stores
        assert record == s.record()
        inp, tgt = replay(record, small_image)
        assert inp.tobytes() == s.input.tobytes() and tgt.tobytes() == small_image.tobytes()
        assert not np.array_equal(s.input, small_image)


def test_same_seed_same_sample_different_seed_different_sample(small_image):
    a, b = (synthesize(realesrgan(), small_image, np.random.default_rng(7)) for _ in range(2))
    c = synthesize(realesrgan(), small_image, np.random.default_rng(8))
    assert a.input.tobytes() == b.input.tobytes() and a.record() == b.record() and a.instruction == b.instruction
    assert a.record() != c.record()


def test_dense_task_keeps_clean_input_and_16_bit_target(small_image):
    s = synthesize(task_for("sobel"), small_image, np.random.default_rng(0))
    assert s.input is small_image and s.domain == "dense" and s.target_bits == 16
    inp, tgt = replay(s.record(), small_image)
    assert tgt.tobytes() == s.target.tobytes() and inp is small_image


def test_size_changing_task_is_fitted_back(small_image):
    s = synthesize(task_for("sr_x4"), small_image, np.random.default_rng(0))
    assert s.input.shape == small_image.shape
    assert s.steps[0].name == "sr_x4"


def test_task_without_unconditional_step_is_an_error(small_image):
    task = Task("never", "restoration", Chain((Maybe(Apply(registry.create("jpeg")), 0.0),)))
    with pytest.raises(Exception, match="applied no step"):
        synthesize(task, small_image, np.random.default_rng(0))


@pytest.mark.parametrize("name", registry.names(registry.CHAIN_GROUP), ids=registry.names(registry.CHAIN_GROUP))
def test_every_chain_preset_synthesizes_and_replays(name, small_image):
    task = task_for(name)
    for seed in range(4):
        s = synthesize(task, small_image, np.random.default_rng(seed))
        assert s.instruction and "{" not in s.instruction
        assert s.input.shape == small_image.shape and not np.array_equal(s.input, small_image)
        inp, _ = replay(json.loads(json.dumps(s.record())), small_image)
        assert inp.tobytes() == s.input.tobytes()


def test_lowres_preset_really_is_low_resolution(small_image):
    s = synthesize(task_for("lowres_jpeg_x4"), small_image, np.random.default_rng(0))
    assert [st.name for st in s.steps][0] == "sr_x4"
    # The fitted-back input lost the fine detail a 4x down-sampling removes.
    detail = np.abs(np.diff(small_image, axis=1)).mean()
    assert np.abs(np.diff(s.input, axis=1)).mean() < 0.7 * detail


def test_plugin_version_is_recorded_and_a_changed_kernel_refuses_to_replay(small_image):
    s = synthesize(task_for("gaussian_noise"), small_image, np.random.default_rng(0))
    record = json.loads(json.dumps(s.record()))
    step = record["steps"][0]
    installed = registry.get("gaussian_noise").version
    assert step["version"] == installed > 1
    assert "version" not in json.loads(json.dumps(synthesize(task_for("jpeg"), small_image,
                                                             np.random.default_rng(0)).record()))["steps"][0]
    step["version"] = 1  # a sample built by the kernel before this one
    with pytest.raises(ValueError, match=f"recorded by version 1 .* version {installed} is installed"):
        replay(record, small_image)
