"""``omnilv lumen``: the Lumen recipe's commands (scenes, predict, eval, quickstart); training is ``omnilv train``
with a Lumen config (``tiny_lumen_stage1``, ``lumen_stage1``, …).

Only typer is imported at module level; Ray, torch and transformers load inside the commands.
"""

from __future__ import annotations

from pathlib import Path

import typer

from omnilv.options import Overrides, RayAddress

LUMEN_CHECKPOINT_HELP = "A Lumen export (lumen.json + weights + the LLaVA folder), e.g. runs/tiny_lumen_stage2/export."

app = typer.Typer(
    help="Lumen: detection, instance segmentation, pose, grounding and referring segmentation as one "
         "instruction-aligned heatmap plus light decoders (NeurIPS 2024).\n\n"
         "Train with `omnilv train tiny_lumen_stage1` then `tiny_lumen_stage2` (or lumen_stage1/2 on a cluster); "
         "`omnilv lumen quickstart` runs the whole loop offline on CPU.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)


@app.command("scenes")
def scenes_command(
    out: str = typer.Argument(..., metavar="OUT", help="Folder or s3:// prefix for images/ and annotations/."),
    images: int = typer.Option(200, "--images", min=2, help="Scenes to generate (train + val)."),
    size: int = typer.Option(128, "--size", min=32, help="Side of each square scene in pixels (the lumen_scenes "
                                                         "corpus preset and the tiny Lumen configs read 128²)."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same bytes."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", min=0.0, max=0.9, help="Share of scenes in val."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier scenes folder of ours."),
) -> None:
    """Generate the offline scenes dataset: shapes painted on the bundled photos with exact boxes, masks,
    keypoints (top, right, bottom, left) and referring expressions, as COCO json with a train/val split.

    ```
    omnilv lumen scenes scenes/
    omnilv corpus build lumen_scenes
    ```
    """
    from pipelines import make_scenes

    r = make_scenes(out, images=images, size=size, seed=seed, val_fraction=val_fraction, overwrite=overwrite)
    typer.echo(f"wrote {r.train} train and {r.val} val scenes ({r.instances} instances) to {r.root}")


@app.command("predict")
def predict_command(
    image: Path = typer.Argument(..., metavar="IMAGE", exists=True, dir_okay=False, help="An image file."),
    checkpoint: str = typer.Option(..., "--checkpoint", help=LUMEN_CHECKPOINT_HELP),
    instruction: str = typer.Option(..., "--instruction", help='e.g. "Detect every circle." or "Find the red '
                                                               'square on the left."'),
    out: Path = typer.Option(Path("prediction.png"), "--out", help="Where the drawn prediction goes (PNG)."),
    threshold: float = typer.Option(0.05, "--threshold", min=0.0, max=1.0, help="Heat peaks kept as detections; "
                                    "the picture draws those scoring >= 0.3, else the best one."),
) -> None:
    """Run a Lumen export on one image and draw what it finds (boxes with scores, masks, keypoints) and its
    heatmap beside it.

    ```
    omnilv lumen predict --checkpoint runs/tiny_lumen_stage2/export --instruction "Detect every circle." scene.png
    ```
    """
    from training.eval import draw_prediction, load_image
    from training.model import load_lumen, predict_image

    model = load_lumen(checkpoint)
    img = load_image(image)
    pred = predict_image(model, img, instruction, threshold=threshold)
    out.parent.mkdir(parents=True, exist_ok=True)
    draw_prediction(img, pred, instruction, out)
    best = f", best score {float(pred['scores'].max()):.2f}" if len(pred["scores"]) else ""
    typer.echo(f"{pred['task']}: {len(pred['boxes'])} boxes, {len(pred['points'])} points{best}; "
               f"drawn to {out.absolute()}")


@app.command("eval")
def eval_command(
    annotations: str = typer.Argument(..., metavar="COCO_JSON", help="A COCO json (e.g. the scenes' "
                                                                     "annotations/instances_val.json)."),
    images: str = typer.Option(..., "--images", help="The folder (or s3:// prefix) its file names are under."),
    checkpoint: str = typer.Option("", "--checkpoint", help=LUMEN_CHECKPOINT_HELP + " Empty: the trivial "
                                                            "baseline only."),
    out: Path = typer.Option(Path("lumen-eval"), "--out", help="Folder for lumen_eval.json and lumen_eval.png."),
    max_images: int = typer.Option(0, "--max-images", min=0, help="Score only the first N images (0: all)."),
) -> None:
    """Score a Lumen export with the standard COCO evaluator (pycocotools: box and mask AP/AP50/AP75, keypoint OKS
    AP), grounding accuracy (IoU >= 0.5) and referring-segmentation cIoU, next to the trivial baseline (one
    centred box of the mean size per query; its mask is the box).

    ```
    omnilv lumen eval scenes/annotations/instances_val.json --images scenes/images \\
        --checkpoint runs/tiny_lumen_stage2/export
    ```
    """
    import json

    from pipelines import read_text
    from training.eval import baseline_predict, evaluate_lumen
    from training.lumen_quickstart import model_predict, print_table

    coco = json.loads(read_text(annotations) or "null") if annotations else None
    if not isinstance(coco, dict):
        from pipelines import ConfigError

        raise ConfigError(f"{annotations}: not found, or not a COCO json object")
    limit = max_images or None
    scores = {"baseline": evaluate_lumen(baseline_predict(coco), coco, images, out / "baseline",
                                         max_images=limit)}
    if checkpoint:
        scores["lumen"] = evaluate_lumen(model_predict(checkpoint), coco, images, out / "lumen", max_images=limit)
    else:
        scores["lumen"] = {}
    print_table(scores)
    typer.echo(f"scores and sheets in {out.absolute()}")


@app.command("quickstart")
def quickstart_command(
    out: Path = typer.Option(Path("lumen-quickstart"), "--out", help="Folder for the scenes, corpus, runs and "
                                                                    "scores."),
    set_: Overrides = None,
    address: RayAddress = None,
    images: int = typer.Option(160, "--images", min=10, help="Scenes to generate (a fifth are held out)."),
) -> None:
    """Lumen end to end on CPU, no downloads: scenes -> corpus -> stage 1 (aligner) -> stage 2 (mask decoder) ->
    scores on the held-out scenes next to the trivial baseline. --set overrides fields of both stage configs.
    """
    from training.lumen_quickstart import run_lumen_quickstart

    report = run_lumen_quickstart(out, set_ or [], address=address, images=images)
    typer.echo(f"model exported to {report['export']}; scores in {out.absolute() / 'lumen_quickstart.json'}")
