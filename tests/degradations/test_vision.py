"""The five vision-centric (Lumen) tasks: what each asks about, the maps it draws, replay, and when it skips."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import numpy as np
import pytest
from typer.testing import CliRunner

from degradations import (
    VISION_INSTRUCTIONS,
    Annotations,
    PluginError,
    box_maps,
    decode_boxes,
    decode_mask,
    decode_points,
    gaussian_radius,
    registry,
    replay,
    synthesize,
    task_for,
)
from degradations.check import synthetic_annotations
from omnilv.cli import app

TASKS = ("detection", "instance_segmentation", "pose", "grounding", "referring_segmentation")
H, W = 96, 128


@pytest.fixture
def image(small_image) -> np.ndarray:
    return small_image  # 96x128


@pytest.fixture
def ann() -> Annotations:
    return synthetic_annotations(H, W)  # person, dog, person; keypoints top/middle/bottom; dog's bottom invisible


def draw(name: str, image: np.ndarray, ann: Annotations, seed: int = 0):
    return synthesize(task_for(name), image, np.random.default_rng(seed), ann)


def test_the_five_tasks_are_registered_as_declared():
    requires = {"detection": ("boxes", "labels"), "instance_segmentation": ("boxes", "masks", "labels"),
                "pose": ("boxes", "keypoints", "labels"), "grounding": ("boxes", "referring"),
                "referring_segmentation": ("boxes", "masks", "referring")}
    assert set(VISION_INSTRUCTIONS) == set(TASKS)
    for name in TASKS:
        cls = registry.get(name)
        assert (cls.domain, cls.target_bits, cls.requires) == ("vision-centric", 16, requires[name])
        assert cls.instructions == VISION_INSTRUCTIONS[name] and len(cls.instructions) >= 3


@pytest.mark.parametrize(("name", "cited"), [("detection", "category"), ("instance_segmentation", "category"),
                                             ("pose", "keypoint"), ("pose", "category"),
                                             ("grounding", "expression"), ("referring_segmentation", "expression")])
def test_the_instruction_names_what_it_asks_about(name, cited, image, ann):
    for seed in range(6):
        s = draw(name, image, ann, seed)
        value = s.steps[0].params[cited]
        assert value and value in s.instruction, (s.instruction, s.steps[0].params)
        assert np.array_equal(s.input, image) and s.domain == "vision-centric" and s.target_bits == 16


def test_sample_params_is_deterministic_and_reaches_every_choice(ann):
    plugin = registry.create("detection")
    assert plugin.sample_params(np.random.default_rng(4), ann=ann) == plugin.sample_params(np.random.default_rng(4),
                                                                                            ann=ann)
    categories = Counter(plugin.sample_params(np.random.default_rng(s), ann=ann)["category"] for s in range(200))
    assert set(categories) == {"person", "dog"} and min(categories.values()) > 60  # per category, not per instance
    pose = registry.create("pose")
    asked = {tuple(pose.sample_params(np.random.default_rng(s), ann=ann).values()) for s in range(200)}
    assert asked == {("person", k) for k in ("top", "middle", "bottom")} | {("dog", "top"), ("dog", "middle")}
    grounding = registry.create("grounding")
    instances = {grounding.sample_params(np.random.default_rng(s), ann=ann)["instance"] for s in range(100)}
    assert instances == {0, 1}  # the third has no referring expression


@pytest.mark.parametrize("name", ["detection", "instance_segmentation"])
def test_category_tasks_draw_every_instance_of_the_category(name, image, ann):
    plugin = registry.create(name)
    maps = plugin.apply(image, np.random.default_rng(0), category="person", ann=ann)
    persons = ann.boxes[[0, 2]]
    assert np.array_equal(maps, box_maps((H, W), persons))
    found, _ = decode_boxes(maps)
    assert len(found) == 2 and all(np.abs(found - b).max(axis=1).min() <= 0.5 for b in persons)
    dog = plugin.apply(image, np.random.default_rng(0), category="dog", ann=ann)
    assert len(decode_boxes(dog)[0]) == 1 and not np.array_equal(dog, maps)


def test_pose_marks_the_visible_keypoint_of_each_instance_with_its_box_radius(image, ann):
    plugin = registry.create("pose")
    maps = plugin.apply(image, np.random.default_rng(0), category="person", keypoint="middle", ann=ann)
    points, scores = decode_points(maps[..., 0])
    expected = ann.keypoints[[0, 2], 1, :2]
    assert len(points) == 2 and (scores == 1.0).all() and not maps[..., 1:].any()
    assert all(np.linalg.norm(points - p, axis=1).min() < 1.0 for p in expected)
    x, y = (int(v) for v in ann.keypoints[0, 1, :2])
    b = ann.boxes[0]
    r = gaussian_radius(b[3] - b[1], b[2] - b[0])
    assert maps[y, x + r, 0] > 0 and maps[y, x + r + 1, 0] == 0  # the window of this instance's own radius
    invisible = plugin.apply(image, np.random.default_rng(0), category="dog", keypoint="bottom", ann=ann)
    assert not invisible.any()  # labelled v = 0: not drawn
    with pytest.raises(PluginError, match="'elbow' is not among"):
        plugin.apply(image, np.random.default_rng(0), category="dog", keypoint="elbow", ann=ann)


def test_grounding_draws_the_one_box_the_expression_names(image, ann):
    maps = registry.create("grounding").apply(image, np.random.default_rng(0), instance=1,
                                              expression="the dog on the right", ann=ann)
    (box,), _ = decode_boxes(maps)
    assert np.abs(box - ann.boxes[1]).max() <= 0.5


def test_referring_segmentation_heat_is_the_mask_with_the_size_at_the_box_centre(image, ann):
    maps = registry.create("referring_segmentation").apply(image, np.random.default_rng(0), instance=0,
                                                           expression="the person on the left", ann=ann)
    assert np.array_equal(decode_mask(maps[..., 0]), ann.masks[0]) and set(np.unique(maps[..., 0])) == {0.0, 1.0}
    assert np.array_equal(maps[..., 1:], box_maps((H, W), ann.boxes[:1])[..., 1:])


@pytest.mark.parametrize("name", TASKS)
def test_params_survive_json_and_replay_reproduces_the_target(name, image, ann):
    s = draw(name, image, ann, seed=11)
    record = json.loads(json.dumps(s.record()))
    inp, target = replay(record, image, ann)
    assert np.array_equal(inp, image) and target.tobytes() == s.target.tobytes() and target.any()


def test_replay_with_changed_annotations_names_the_mismatch(image, ann):
    s = draw("grounding", image, ann, seed=0)
    swapped = dataclasses.replace(ann, referring=(ann.referring[1], ann.referring[0], ""))
    with pytest.raises(PluginError, match="were they changed"):
        replay(s.record(), image, swapped)


def _without(ann: Annotations, **changes) -> Annotations:
    return dataclasses.replace(ann, **changes)


@pytest.mark.parametrize(("name", "change", "message"), [
    ("detection", {"boxes": np.zeros((0, 4)), "labels": ()}, "no boxes, labels"),
    ("detection", {"boxes": np.zeros((3, 4))}, "no instance has a box with an area"),
    ("instance_segmentation", {"masks": None}, "no masks"),
    ("pose", {"keypoints": np.zeros((3, 3, 3))}, r"no keypoint is labelled \(visibility > 0\)"),
    ("pose", {"keypoint_names": ()}, "0 keypoint_names"),
    ("grounding", {"referring": ("", " ", "")}, "no instance with a box has a referring expression"),
    ("grounding", {"referring": ()}, "no referring"),
    ("referring_segmentation", {"masks": np.zeros((3, H, W), bool)}, "no instance with a box has a referring"),
    ("detection", {"labels": ("person",)}, "3 boxes but 1 labels"),
])
def test_nothing_to_ask_about_is_a_plugin_error(name, change, message, ann):
    with pytest.raises(PluginError, match=message):
        registry.create(name).sample_params(np.random.default_rng(0), ann=_without(ann, **change))


@pytest.mark.parametrize("name", TASKS)
def test_without_annotations_the_task_says_what_it_needs(name, image):
    with pytest.raises(PluginError, match=rf"{name}: needs annotations \(boxes"):
        synthesize(task_for(name), image, np.random.default_rng(0))


def test_preview_and_list_handle_annotation_tasks(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["degradations", "preview", "detection", "--out", str(tmp_path / "s.png"),
                                 "--draws", "1", "--cell", "64"])
    assert result.exit_code == 2 and not (tmp_path / "s.png").exists()
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "detection: needs annotations (boxes, labels)" in lines[0], result.output
    listed = runner.invoke(app, ["degradations", "list", "--json"])
    plugins = {p["name"]: p for p in json.loads(listed.output)["plugins"]}
    assert plugins["pose"]["requires"] == ["boxes", "keypoints", "labels"]
    assert plugins["pose"]["domain"] == "vision-centric" and plugins["pose"]["params"] == {}


def test_default_weight_leaves_annotation_tasks_out_of_the_mixture():
    from pipelines import load_corpus_config
    from pipelines.synth import resolve_mixture

    mixture = dict(resolve_mixture(load_corpus_config("quickstart", ["mixture.default_weight=1"])))
    assert "gaussian_noise" in mixture and not set(TASKS) & set(mixture)
