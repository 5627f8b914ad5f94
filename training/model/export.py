"""Export a trained OmniLV to a diffusers-style folder, and load it back (safetensors only, no pickle).

Layout::

    OUT/
      backbone/            LuminaNextDiT2DModel.save_pretrained (config.json + safetensors)
      omnilv_modules.safetensors   our adapter (``adapter.*``) and visual-prompt projector (``prompt.*``)
      omnilv_config.json   OmniLVConfig (the network's constructor arguments)
      omnilv.json          text encoder spec, codec spec, preset, flow settings (ObjectiveConfig), sampler defaults,
                           and every other file's size and sha256 (written last: its presence means complete)

A re-export never mixes two models: the new one is written beside the old (``.OUT.tmp-…``) and swapped in only when
complete, and the loader checks each file against ``omnilv.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from omnilv.errors import OmniLVError
from pipelines import local_copy
from training.config import ObjectiveConfig
from training.model.encoders import ImageCodec, TextEncoder
from training.model.flow import FlowMatching
from training.model.omnilv import OmniLV, OmniLVConfig

FORMAT_VERSION = 1
META, CONFIG, MODULES, BACKBONE = "omnilv.json", "omnilv_config.json", "omnilv_modules.safetensors", "backbone"
DEFAULT_SAMPLER = {"steps": 20, "method": "euler", "guidance": 1.0}


class ExportError(OmniLVError, ValueError):
    """An exported folder is missing a file or does not match its config; the message names the file."""


def _unwrap(model: OmniLV | FlowMatching) -> OmniLV:
    return model.net if isinstance(model, FlowMatching) else model


def export_model(model: OmniLV | FlowMatching, text_spec: str, codec_spec: str, out_dir: str | Path, *,
                 sampler: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (an OmniLV or the FlowMatching around it) to ``out_dir``; returns the folder.

    Pass full (gathered, e.g. EMA) weights: under ZeRO-3 call this on rank 0 after consolidating.
    """
    net = _unwrap(model)
    out = Path(out_dir).absolute()
    if out.exists() and any(out.iterdir()) and not (out / META).is_file():
        raise ExportError(f"{out}: holds files that are not an omnilv export; export somewhere else")
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        net.backbone.save_pretrained(tmp / BACKBONE, safe_serialization=True)
        ours = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()
                if not k.startswith("backbone.")}
        save_file(ours, str(tmp / MODULES))
        (tmp / CONFIG).write_text(net.config.model_dump_json(indent=1))
        meta = {"format": FORMAT_VERSION, "text_encoder": text_spec, "codec": codec_spec,
                "preset": net.config.preset, "sampler": {**DEFAULT_SAMPLER, **(sampler or {})}, **(extra or {}),
                "files": {name: describe_file(tmp / name) for name in _files(tmp)}}
        if isinstance(model, FlowMatching):
            meta["flow"] = model.objective.model_dump(mode="json")
        (tmp / META).write_text(json.dumps(meta, indent=1, sort_keys=True))
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != META)


def describe_file(path: Path) -> dict[str, Any]:
    """``{"bytes", "sha256"}`` of a file an export lists (its record checks them on load)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


def _swap_in(new: Path, out: Path) -> None:
    """Replace the export at ``out`` by the complete one at ``new``: two renames, then the old files go (only
    those its ``omnilv.json`` names; a folder left with anything else is kept beside, as ``.OUT.old-…``)."""
    if not out.exists():
        os.rename(new, out)
        return
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(out, old)
    os.rename(new, out)
    listed = json.loads((old / META).read_text()).get("files") if (old / META).is_file() else None
    names = list(listed) if isinstance(listed, dict) else _files(old)  # older exports: the whole layout
    for name in [*names, META]:
        (old / name).unlink(missing_ok=True)
    for d in sorted((p for p in old.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()
    if not any(old.iterdir()):
        old.rmdir()


def check_files(folder: Path, meta: dict[str, Any], *, hashes: bool) -> None:
    """Every file ``omnilv.json`` lists is there with its size (and sha256): never a mix of two exports."""
    for name, want in (meta.get("files") or {}).items():
        path = folder / name
        if not path.is_file():
            raise ExportError(f"{folder}: missing {name}; the export is incomplete")
        got = describe_file(path) if hashes else {"bytes": path.stat().st_size}
        if any(got[k] != want.get(k) for k in got):
            raise ExportError(f"{path}: does not match {META} (a file of another export, or a broken copy); "
                              "export again")


def read_meta(folder: str | Path) -> dict[str, Any]:
    """``omnilv.json`` of an exported folder, with errors that name the file."""
    return read_record(Path(folder) / META, FORMAT_VERSION, ExportError,
                       "not an exported OmniLV folder (no omnilv.json); export a checkpoint first")


def read_record(path: Path, fmt: Any, error: type[Exception], missing: str) -> dict[str, Any]:
    """The json record of an export (OmniLV's ``omnilv.json``, Lumen's ``lumen.json``) if its ``format`` is ``fmt``;
    ``error`` names the file otherwise (``missing`` says what to do when there is none)."""
    if not path.is_file():
        raise error(f"{path.parent}: {missing}")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise error(f"{path}: invalid json: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise error(f"{path}: unsupported format {meta.get('format') if isinstance(meta, dict) else meta!r}")
    return meta


def load_network(folder: str | Path) -> OmniLV:
    """The OmniLV network of an exported folder, local or ``s3://`` (downloaded first)."""
    with local_copy(folder) as local:
        check_files(local, read_meta(local), hashes=local != Path(str(folder)))
        return _load_network(local)


def _load_network(folder: Path) -> OmniLV:
    """Backbone via ``from_pretrained``, ours via safetensors (no pickle anywhere)."""
    from diffusers import LuminaNextDiT2DModel

    for name in (CONFIG, MODULES, f"{BACKBONE}/config.json"):
        if not (folder / name).is_file():
            raise ExportError(f"{folder}: missing {name}; the export is incomplete")
    try:
        config = OmniLVConfig.model_validate_json((folder / CONFIG).read_text())
    except ValueError as exc:
        raise ExportError(f"{folder / CONFIG}: {exc}") from exc
    net = OmniLV(config)
    net.backbone = LuminaNextDiT2DModel.from_pretrained(str(folder / BACKBONE), local_files_only=True)
    net.backbone.pad_token.requires_grad_(False)
    ours = load_file(str(folder / MODULES))
    missing, unexpected = net.load_state_dict(ours, strict=False)
    missing = [k for k in missing if not k.startswith("backbone.")]
    if missing or unexpected:
        raise ExportError(f"{folder / MODULES} does not match {CONFIG}: missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}")
    with torch.no_grad():  # own, contiguous storage: from_pretrained's (mapped) tensors take other kernel paths
        for p in net.parameters():
            p.data = p.data.clone(memory_format=torch.contiguous_format)
    return net.eval()


def load_exported(folder: str | Path, device: str | torch.device = "cpu"
                  ) -> tuple[FlowMatching, TextEncoder, ImageCodec, dict[str, Any]]:
    """(flow, text encoder, codec, meta) of an exported folder (local or ``s3://``), ready for sampling."""
    with local_copy(folder) as local:
        meta = read_meta(local)
        check_files(local, meta, hashes=local != Path(str(folder)))  # a download is checked byte for byte
        net = _load_network(local)
    try:  # older exports stored only some of the settings: the rest take their defaults
        objective = ObjectiveConfig.model_validate(meta.get("flow", {}))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ExportError(f"{Path(folder) / META}: flow: {problems}") from None
    flow = FlowMatching(net, objective).eval().to(device)
    text = TextEncoder.from_spec(meta["text_encoder"], layer=int(meta.get("text_layer", -1))).to(device)
    codec = ImageCodec.from_spec(meta["codec"]).to(device)
    if text.dim != flow.net.config.cross_attention_dim:
        raise ExportError(f"{folder}: text encoder {meta['text_encoder']!r} gives {text.dim}-d features but the "
                          f"network expects cross_attention_dim={flow.net.config.cross_attention_dim}")
    if codec.channels != flow.net.config.in_channels:
        raise ExportError(f"{folder}: codec {meta['codec']!r} has {codec.channels} channels but the network "
                          f"expects in_channels={flow.net.config.in_channels}")
    return flow, text, codec, meta
