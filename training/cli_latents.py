"""``omnilv cache-latents``: VAE-encode a corpus once into a latent cache (heavy imports stay inside)."""

from __future__ import annotations

from pathlib import Path

import typer

SET_HELP = "Override a config field, e.g. --set codec=/models/sdxl-vae --set data.resolution=512 (repeatable)."


def register(app: typer.Typer) -> None:
    """Add ``cache-latents`` to the root app."""
    app.command("cache-latents")(cache_latents)


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def cache_latents(
        config: Path = typer.Argument(..., help="Training config YAML: its codec, text, data.corpus, "
                                                "data.resolution/buckets, data.use_exemplars and run.seed are used."),
        set_: list[str] = typer.Option([], "--set", help=SET_HELP),
        out: str = typer.Option(None, "--out", help="Cache folder or s3:// prefix (default: data.latents, "
                                                    "else CORPUS-latents next to the corpus)."),
        address: str = typer.Option(None, "--address", help="Ray cluster address (default: $RAY_ADDRESS, else a "
                                                            "private local Ray)."),
        actors: int = typer.Option(None, "--actors", help="Encoder actors (default: one per GPU with "
                                                          "run.use_gpu, else 1)."),
        batch_size: int = typer.Option(16, "--batch-size", min=1, help="Images per VAE call."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Delete a cache already at --out and rebuild it."),
) -> None:
    """VAE-encode a corpus once into shards of latents + text features that training reads instead of pixels.

    Crops each sample like training would (centre, or seeded with data.random_crop), encodes input,
    target and exemplars with the config's codec and the instruction with its text encoder (frozen,
    one actor per GPU when run.use_gpu), and writes WebDataset shards of .npy arrays (never pickles),
    latents.json (codec, text encoder, shapes, scaling, source manifest sha256) and manifest.json last.
    Training refuses a cache built with another codec, text encoder or crop size than its config.
    The crops are fixed once cached: every epoch sees the same crop of a sample.

    \b
    Examples:
      omnilv cache-latents configs/train/tiny_stage1.yaml --set data.corpus=corpus/quickstart --out corpus/latents
      omnilv train configs/train/tiny_stage1.yaml --set data.latents=corpus/latents
      omnilv cache-latents configs/train/stage1_512.yaml --out s3://bucket/latents/stage1 --address ray://head:10001
    """
    from pipelines.configfile import ConfigError
    from pipelines.schema import SchemaError
    from training.config import load_train_config

    try:
        cfg = load_train_config(config, set_)
    except ConfigError as exc:
        _fail(exc)
    if not cfg.data.corpus:
        _fail(ValueError("data.corpus is empty: say which corpus to encode (--set data.corpus=…)"))
    target = out or cfg.data.latents or f"{cfg.data.corpus.rstrip('/')}-latents"
    from training.data.latent_cache import cache_latents as run_cache

    try:
        res = run_cache(cfg.data.corpus, target, cfg.codec, cfg.text, sizes=cfg.data.sizes,
                        random_crop=cfg.data.random_crop, use_exemplars=cfg.data.use_exemplars,
                        batch_size=batch_size, num_gpus=1 if cfg.run.use_gpu else 0, concurrency=actors,
                        seed=cfg.run.seed, overwrite=overwrite, progress=True, address=address)
    except (SchemaError, ValueError, FileNotFoundError) as exc:
        _fail(exc)
    typer.echo(f"done: {res.samples} samples in {res.shards} shards -> {res.root} in {res.seconds:.0f}s; "
               f"latents {res.meta['latent_shapes']}, text {res.meta['text_dim']}-d")
    if res.skipped:
        typer.echo(f"skipped while reading the corpus: {res.skipped}")
    typer.echo(f"train on it: omnilv train {config} --set data.latents={res.root}")
