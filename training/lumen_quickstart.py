"""``omnilv lumen quickstart``: Lumen end to end on one CPU machine, no downloads.

1. generates the scenes dataset (``pipelines.make_scenes``: shapes on the bundled photos, exact COCO annotations,
   referring expressions, a train/val split by scene);
2. builds the corpus of the five vision-centric tasks from its train split (``configs/corpus/lumen_scenes.yaml``);
3. trains stage 1 (the aligner and heads, ``tiny_lumen_stage1``) and stage 2 (the mask decoder,
   ``tiny_lumen_stage2``, from stage 1) with Ray Train + DeepSpeed ZeRO-2 on 2 CPU workers, the tiny offline LLaVA;
4. scores the stage-2 export on the val split with pycocotools and prints it next to the trivial baseline (one
   centred box of the mean size per query; its mask is the box).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: The quickstart's scenes: small enough for 2 CPU workers, big enough for the aligner's stride.
SCENE_SIZE = 128
#: Optimizer steps of stage 1 and stage 2: the tiny configs run a few dozen (to see the loop), the quickstart longer.
STEPS = (400, 150)
#: Peaks kept when scoring: AP ranks every detection by its score, so a low threshold costs nothing.
EVAL_THRESHOLD, EVAL_PEAKS = 0.05, 20
METRICS = (("detection AP50", "detection", "AP50"), ("detection AP", "detection", "AP"),
           ("mask AP", "instance_segmentation", "AP"), ("mask AP50", "instance_segmentation", "AP50"),
           ("keypoint AP", "pose", "AP"), ("grounding accuracy", "grounding", "accuracy"),
           ("referring cIoU", "referring_segmentation", "cIoU"))


def build_scene_corpus(out: Path, images: int, progress: bool = True) -> tuple[Path, str]:
    """(scenes folder, corpus root): the scenes under ``out/scenes``, their train split's corpus under
    ``out/corpus``."""
    from pipelines import build_corpus, load_corpus_config, make_scenes

    scenes = out / "scenes"
    make_scenes(scenes, images=images, size=SCENE_SIZE, seed=0, progress=progress, overwrite=True)
    cfg = load_corpus_config("lumen_scenes", [f"sources.0.coco={scenes / 'annotations' / 'instances_train.json'}",
                                              f"sources.0.images={scenes / 'images'}",
                                              f"geometry.crop_size={SCENE_SIZE}", f"output.path={out / 'corpus'}"])
    return scenes, build_corpus(cfg, overwrite=True, progress=progress).root


def stage_configs(corpus: str, out: Path, overrides: list[str], steps: tuple[int, int] = STEPS) -> list[Any]:
    """The two tiny stage configs, on ``corpus``, storing under ``out/runs``, for ``steps`` each."""
    from training.config import load_train_config

    common = [f"data.corpus={corpus}", f"data.resolution={SCENE_SIZE}", f"run.storage_path={out / 'runs'}"]
    return [load_train_config(name, [*common, f"schedule.steps={n}", f"schedule.checkpoint_every={max(1, n // 2)}",
                                     *overrides])
            for name, n in zip(("tiny_lumen_stage1", "tiny_lumen_stage2"), steps, strict=True)]


def model_predict(export: str) -> Any:
    """``predict(image, instruction, task)`` of an exported Lumen model, as the evaluator calls it."""
    from training.model import load_lumen, predict_image

    model = load_lumen(export)

    def predict(image: Any, instruction: str, task: str) -> dict[str, Any]:
        return predict_image(model, image, instruction, task=task, threshold=EVAL_THRESHOLD, k=EVAL_PEAKS)

    return predict


def score(export: str, scenes: Path, out: Path, progress: bool = True) -> dict[str, dict[str, Any]]:
    """{"lumen": scores, "baseline": scores} on the val split (json + PNG sheets under ``out``)."""
    from training.eval import baseline_predict, evaluate_lumen

    val = json.loads((scenes / "annotations" / "instances_val.json").read_text())
    train = json.loads((scenes / "annotations" / "instances_train.json").read_text())
    return {"lumen": evaluate_lumen(model_predict(export), val, scenes / "images", out / "lumen", progress=progress),
            "baseline": evaluate_lumen(baseline_predict(train), val, scenes / "images", out / "baseline",
                                       progress=progress)}


def pick(report: dict[str, Any], group: str, key: str) -> float | None:
    value = ((report.get("scores") or {}).get(group) or {}).get(key)
    return None if value is None else float(value)


def print_table(scores: dict[str, dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="Lumen on the held-out scenes (val split; never seen in training)")
    for col in ("metric", "trivial baseline", "lumen"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    for label, group, key in METRICS:
        base, ours = pick(scores["baseline"], group, key), pick(scores["lumen"], group, key)
        t.add_row(label, "-" if base is None else f"{base:.3f}", "-" if ours is None else f"{ours:.3f}")
    Console().print(t)


def run_lumen_quickstart(out: Path, overrides: list[str] = (), address: str | None = None, progress: bool = True,
                         images: int = 160, steps: tuple[int, int] = STEPS) -> dict[str, Any]:
    """The whole Lumen quickstart; returns the scores (also written to ``out/lumen_quickstart.json``)."""
    from pipelines import ensure_ray
    from training.run import run_stage

    out = Path(out).resolve()
    ensure_ray(address)
    scenes, corpus = build_scene_corpus(out, images, progress)
    results = []
    # Nothing is deleted: a rerun with the same settings resumes its finished runs (re-exported, scored again); one
    # with other settings is refused by the run record, naming the fields.
    for cfg in stage_configs(corpus, out, list(overrides), steps):
        results.append(run_stage(cfg, progress=progress))
    scores = score(results[-1].export, scenes, out / "eval", progress)
    report = {"scores": scores, "export": results[-1].export,
              "train": [{"stage": i + 1, "steps": r.metrics.get("step"),
                         "loss_first": r.metrics.get("loss_first"), "loss": r.metrics.get("loss"),
                         "seconds": r.seconds, "skipped": r.skipped} for i, r in enumerate(results)]}
    report["eval"] = {"threshold": EVAL_THRESHOLD, "peaks": EVAL_PEAKS, "scenes": str(scenes)}
    (out / "lumen_quickstart.json").write_text(json.dumps(report, indent=1))
    print_table(scores)
    return report
