"""Lumen through the same run code as OmniLV: scenes -> corpus build -> stage 1 (aligner) and stage 2 (mask decoder)
with 2 Ray Train workers under DeepSpeed ZeRO-2 on gloo, checkpoints and a resume, the export scored."""

from __future__ import annotations

import json

import numpy as np
import pytest

SIZE = 64


@pytest.fixture(scope="module")
def scene_corpus(ray_local, tmp_path_factory):
    from pipelines import build_corpus, load_corpus_config, make_scenes

    root = tmp_path_factory.mktemp("lumen")
    scenes = root / "scenes"
    make_scenes(scenes, images=24, size=SIZE, seed=0, max_shapes=3, progress=False)
    cfg = load_corpus_config("lumen_scenes", [
        f"sources.0.coco={scenes / 'annotations' / 'instances_train.json'}", f"sources.0.images={scenes / 'images'}",
        f"geometry.crop_size={SIZE}", f"output.path={root / 'corpus'}", "variants_per_source=3"])
    result = build_corpus(cfg, progress=False)
    return root, scenes, result.root


def _config(name: str, corpus: str, storage, steps: int, extra: tuple[str, ...] = ()):
    from training.config import load_train_config

    return load_train_config(name, [f"data.corpus={corpus}", f"data.resolution={SIZE}", "data.batch_size=4",
                                    f"run.storage_path={storage}", f"schedule.steps={steps}",
                                    f"schedule.checkpoint_every={max(1, steps // 2)}", "schedule.log_every=2",
                                    *extra])


@pytest.mark.slow
def test_both_lumen_stages_train_resume_and_export_under_ray_train_and_deepspeed(scene_corpus):
    from training.model import load_lumen
    from training.run import run_stage

    root, scenes, corpus = scene_corpus
    storage = root / "runs"
    first = run_stage(_config("tiny_lumen_stage1", corpus, storage, 4), progress=False)
    assert first.metrics["step"] == 4 and np.isfinite(first.metrics["loss"])
    assert first.metrics["world_size"] == 2
    again = run_stage(_config("tiny_lumen_stage1", corpus, storage, 8), progress=False)  # resumes at step 4
    assert again.metrics["resumed_from"] == 4 and again.metrics["step"] == 8
    stage1 = load_lumen(again.export)
    assert stage1.part == "aligner"

    second = run_stage(_config("tiny_lumen_stage2", corpus, storage, 4), progress=False)
    assert second.metrics["step"] == 4 and np.isfinite(second.metrics["loss"])
    stage2 = load_lumen(second.export)
    assert stage2.part == "decoders"
    # stage 2 trained the mask decoder only: the aligner it starts from is stage 1's, unchanged
    s1, s2 = stage1.state_dict(), stage2.state_dict()
    aligner = [k for k in s1 if k.startswith("aligner.")]
    assert aligner and all(np.array_equal(s1[k].numpy(), s2[k].numpy()) for k in aligner)
    decoder = [k for k in s1 if k.startswith("mask_decoder.")]
    assert decoder and any(not np.array_equal(s1[k].numpy(), s2[k].numpy()) for k in decoder)


@pytest.mark.slow
def test_the_lumen_export_is_scored_by_the_coco_evaluator_and_predict_draws_it(scene_corpus, tmp_path):
    from typer.testing import CliRunner

    from omnilv.cli import app
    from training.run import run_stage

    root, scenes, corpus = scene_corpus
    result = run_stage(_config("tiny_lumen_stage1", corpus, tmp_path / "runs", 2, ("run.name=scored",)),
                       progress=False)
    runner = CliRunner()
    out = runner.invoke(app, ["lumen", "eval", str(scenes / "annotations" / "instances_val.json"), "--images",
                              str(scenes / "images"), "--checkpoint", result.export, "--out", str(tmp_path / "ev"),
                              "--max-images", "2"])
    assert out.exit_code == 0, out.output
    report = json.loads((tmp_path / "ev" / "lumen" / "lumen_eval.json").read_text())
    assert set(report["scores"]) == {"detection", "instance_segmentation", "pose", "grounding",
                                     "referring_segmentation"}
    assert (tmp_path / "ev" / "lumen" / "lumen_eval.png").stat().st_size > 1000
    image = sorted((scenes / "images").glob("*.png"))[0]
    out = runner.invoke(app, ["lumen", "predict", "--checkpoint", result.export, "--instruction",
                              "Detect every circle.", str(image), "--out", str(tmp_path / "p.png")])
    assert out.exit_code == 0, out.output
    from PIL import Image

    with Image.open(tmp_path / "p.png") as im:
        assert im.width >= 3 * 160 and im.height > 160  # image | prediction | heatmap, captioned


@pytest.mark.slow
def test_the_lumen_quickstart_runs_end_to_end_and_reports_both_columns(ray_local, tmp_path, capsys):
    """The quickstart's plumbing on a handful of scenes and steps (its scores at full length are in the README)."""
    from training.lumen_quickstart import run_lumen_quickstart

    report = run_lumen_quickstart(tmp_path / "q", images=20, steps=(4, 2), progress=False)
    assert [t["steps"] for t in report["train"]] == [4, 2]
    saved = json.loads((tmp_path / "q" / "lumen_quickstart.json").read_text())
    assert saved["export"] == report["export"] and set(saved["scores"]) == {"lumen", "baseline"}
    for column in ("lumen", "baseline"):
        assert 0.0 <= saved["scores"][column]["scores"]["detection"]["AP50"] <= 1.0
        assert (tmp_path / "q" / "eval" / column / "lumen_eval.png").is_file()
    table = capsys.readouterr().out
    assert "trivial baseline" in table and "grounding accuracy" in table
    (tmp_path / "q" / "runs" / "mine.txt").write_text("a file of the user's")
    again = run_lumen_quickstart(tmp_path / "q", images=20, steps=(4, 2), progress=False)  # resumes, deletes nothing
    assert [t["steps"] for t in again["train"]] == [4, 2] and (tmp_path / "q" / "runs" / "mine.txt").is_file()
