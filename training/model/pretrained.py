"""Start from Lumina-Next: a diffusers ``LuminaNextDiT2DModel`` checkpoint loaded into OmniLV's backbone.

``model.pretrained`` names a folder (or an ``s3://`` prefix, fetched with :func:`pipelines.local_copy`) laid out as
the diffusers releases of Lumina-Next (``transformer/config.json`` + ``diffusion_pytorch_model*.safetensors``), or
that transformer folder itself. Its config.json decides the backbone's shape (:func:`backbone_fields`; preset values
it replaces are noted, overrides and encoder widths that contradict it are errors: :func:`check_fit`). Its tensors
are copied into ``net.backbone`` by :func:`load_backbone`, which returns one :class:`TensorNote` for every tensor
not copied as it is. The adapter and the prompt projection keep their zero init, so at step 0 OmniLV predicts what
the pretrained transformer predicts (for a ``learn_sigma`` checkpoint: its first ``in_channels`` output channels, the
half ``LuminaText2ImgPipeline`` reads).

Torch and safetensors load inside :func:`load_backbone` only: the config checks run before Ray starts without them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnilv.errors import OmniLVError
from pipelines import inside, is_remote
from training.model.presets import OmniLVConfig

CLASS = "LuminaNextDiT2DModel"
WEIGHTS = "diffusion_pytorch_model.safetensors"
INDEX = WEIGHTS + ".index.json"
#: The OmniLVConfig fields a LuminaNextDiT2DModel config.json decides (the same names in both).
BACKBONE_FIELDS = ("patch_size", "in_channels", "hidden_size", "num_layers", "num_attention_heads", "num_kv_heads",
                   "multiple_of", "ffn_dim_multiplier", "norm_eps", "qk_norm", "cross_attention_dim")
#: The run's encoders fix these two widths; a checkpoint that disagrees cannot be fed.
ENCODER_WIDTHS = {"cross_attention_dim": "caption width", "in_channels": "latent channels"}


class PretrainedError(OmniLVError, ValueError):
    """A pretrained backbone that is missing, is not a Lumina-Next transformer, or does not fit the run."""


@dataclass(frozen=True)
class TensorNote:
    """A checkpoint or backbone tensor that was not copied as it is, and what was done instead."""

    name: str
    checkpoint: tuple[int, ...] | None
    model: tuple[int, ...] | None
    action: str


def transformer_dir(root: Path) -> Path:
    """``root/transformer`` (a diffusers pipeline release) or ``root`` itself (the transformer folder)."""
    for folder in (root / "transformer", root):
        if (folder / "config.json").is_file():
            return folder
    raise PretrainedError(f"model.pretrained {root}: no transformer/config.json nor config.json there; name a "
                          "diffusers Lumina-Next release (transformer/config.json + safetensors) or its transformer "
                          "folder")


def backbone_config(folder: Path) -> dict[str, Any]:
    """The transformer's config.json, checked to describe a ``LuminaNextDiT2DModel``."""
    path = folder / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except ValueError as exc:
        raise PretrainedError(f"model.pretrained {path}: not a JSON config ({exc})") from None
    name = cfg.get("_class_name") if isinstance(cfg, dict) else None
    if name != CLASS:
        raise PretrainedError(f"model.pretrained {path}: describes a {name or 'model of no _class_name'}, not a "
                              f"{CLASS} (the Lumina-Next transformer)")
    return cfg


def peek_backbone_config(path: str) -> dict[str, Any] | None:
    """The config of a ``model.pretrained`` that is a folder on this machine (checked before Ray starts); None for
    none, an ``s3://`` prefix or a folder that is not here (the workers check those when they load them)."""
    if not path or is_remote(path) or not Path(path.removeprefix("file://")).exists():
        return None
    return backbone_config(transformer_dir(Path(path.removeprefix("file://"))))


def backbone_fields(config: dict[str, Any]) -> dict[str, Any]:
    """The OmniLVConfig fields a checkpoint's config.json sets."""
    return {k: config[k] for k in BACKBONE_FIELDS if k in config}


def check_fit(config: dict[str, Any], *, preset: dict[str, Any], overrides: dict[str, Any],
              encoders: dict[str, tuple[str, int | None]], where: str) -> list[str]:
    """Raise a :class:`PretrainedError` naming every way the run contradicts the checkpoint ``config``: an
    encoder width (``encoders``: field -> (what gives it, width or None when unknown)) or a ``model.overrides``
    field. Returns one note per preset field the checkpoint replaces."""
    fields, errors = backbone_fields(config), []
    for key, (source, width) in encoders.items():
        if width is not None and key in fields and fields[key] != width:
            errors.append(f"its {ENCODER_WIDTHS[key]} {key}={fields[key]} does not match {source} ({width}); use the "
                          "encoder the backbone was trained with (Lumina-Next: Gemma-2B features, 2048-d, at "
                          "text_layer -2, and a 4-channel SDXL VAE)")
    errors += [f"model.overrides.{k}={v!r} contradicts its {k}={fields[k]!r} (drop the override)"
               for k, v in overrides.items() if k in fields and fields[k] != v]
    if errors:
        raise PretrainedError(f"model.pretrained {where}: " + "; ".join(errors))
    base = OmniLVConfig(**preset).model_dump()  # the preset with OmniLVConfig's defaults for what it leaves out
    return [f"{k}: {v!r} from the checkpoint (preset {base['preset']!r}: {base[k]!r})" for k, v in fields.items()
            if k not in encoders and base[k] != v]


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a diffusers transformer folder (one file, or the shards its index lists)."""
    index = folder / INDEX
    if index.is_file():
        names = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        return [folder / inside(n, f"{index}: shard") for n in names]
    if (folder / WEIGHTS).is_file():
        return [folder / WEIGHTS]
    raise PretrainedError(f"model.pretrained {folder}: no {WEIGHTS} (nor a sharded {INDEX}); only safetensors are "
                          "read, a .bin checkpoint is a pickle: convert it with diffusers' save_pretrained")


def load_backbone(net: Any, folder: Path) -> list[TensorNote]:
    """Copy the checkpoint in ``folder`` into ``net.backbone`` (an :class:`OmniLV`); the adapter and prompt
    projection are untouched. Returns a note for every tensor not copied as it is."""
    import torch
    from safetensors import safe_open

    own = net.backbone.state_dict()  # detached views of the live parameters: copy_ writes the model
    p, notes, seen = net.config.patch_size, [], set()
    with torch.no_grad():
        for file in weight_files(folder):
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                    seen.add(key)
                    note = _copy(own, key, f.get_tensor(key), p)
                    if note is not None:
                        notes.append(note)
    notes += [TensorNote(k, None, tuple(own[k].shape), "kept this model's initialisation: not in the checkpoint")
              for k in sorted(own.keys() - seen)]
    return notes


def _copy(own: dict[str, Any], key: str, src: Any, p: int) -> TensorNote | None:
    shape = tuple(src.shape)
    if key not in own:
        return TensorNote(key, shape, None, "ignored: this backbone has no such tensor")
    dst = own[key]
    if key == "pad_token":  # torch.empty in diffusers, never read by the forward: OmniLV keeps it at zero
        return TensorNote(key, shape, tuple(dst.shape), "not loaded: unused by the forward, kept at zero")
    if src.shape == dst.shape:
        dst.copy_(src)
        return None
    if key.startswith("norm_out.linear_2.") and src.shape[0] == 2 * dst.shape[0] and src.shape[1:] == dst.shape[1:]:
        # learn_sigma: rows are (p, p, 2C) with the channel fastest; the pipeline keeps channels [0, C).
        c = dst.shape[0] // (p * p)
        dst.copy_(src.reshape(p * p, 2 * c, *src.shape[1:])[:, :c].reshape(dst.shape))
        return TensorNote(key, shape, tuple(dst.shape), f"sliced: kept output channels 0..{c - 1} of {2 * c} at each "
                          "patch position (learn_sigma checkpoint: the prediction the pipeline reads; sigma dropped)")
    return TensorNote(key, shape, tuple(dst.shape), "kept this model's initialisation: shapes differ")


def save_release(root: Path, fields: dict[str, Any], *, learn_sigma: bool = True, seed: int = 0) -> Path:
    """A randomly initialised stand-in for a Lumina-Next release, written by diffusers' ``save_pretrained`` to
    ``root/transformer`` with the backbone ``fields`` (OmniLVConfig names): what a rehearsal or a test starts
    from where the real checkpoint is not at hand. Returns ``root``."""
    import torch
    from diffusers import LuminaNextDiT2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LuminaNextDiT2DModel(**backbone_fields(fields), learn_sigma=learn_sigma)
    model.save_pretrained(Path(root) / "transformer", safe_serialization=True)
    return Path(root)


def format_notes(notes: list[TensorNote], config_notes: list[str] = ()) -> str:
    """The notes as a table a person reads: one line per tensor (name, checkpoint shape, model shape, action)."""
    def dims(s: tuple[int, ...] | None) -> str:
        return "-" if s is None else "×".join(map(str, s)) or "scalar"

    lines = [f"  config  {n}" for n in config_notes]
    width = max((len(n.name) for n in notes), default=0)
    lines += [f"  {n.name:<{width}}  checkpoint {dims(n.checkpoint):>14}  model {dims(n.model):>14}  {n.action}"
              for n in notes]
    return "\n".join(lines) if lines else "  every tensor loaded as it is"
