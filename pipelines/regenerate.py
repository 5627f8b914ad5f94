"""``omnilv corpus regenerate``: rebuild one sample from its json record and compare with the stored one.

A sample's json is data: the source it names is read only if the corpus' own config (recorded in its manifest)
could have listed it, or it is a bundled photo (see :func:`pipelines.sources.check_recorded`). A vision-centric
sample replays from its json alone: its ``"annotations"`` (the crop's, validated as data) are the ``ann=`` of the
replay, so the COCO json it was built from is not read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.config import SourceSpec
from pipelines.read import iter_members, join, load_manifest
from pipelines.schema import Manifest, Sample, SchemaError, decode_png, quantize

if TYPE_CHECKING:
    from pipelines.synth import Pixels


@dataclass
class Regeneration:
    key: str
    shard: str
    checks: dict[str, bool]  # member -> regenerated pixels equal the stored ones

    @property
    def ok(self) -> bool:
        return all(self.checks.values())


def find_sample(root: str, key: str, storage_options: dict | None = None,
                manifest: Manifest | None = None) -> tuple[str, dict[str, bytes]]:
    """The raw members of ``key`` and the shard holding it (manifest-listed shards only)."""
    for rec in (manifest or load_manifest(root, storage_options)).shards:
        for members in iter_members(join(root, rec.name), storage_options=storage_options):
            if members["__key__"] == key:
                return rec.name, members
    raise SchemaError(f"{root}: no sample with key {key!r} in the manifest-listed shards")


def configured_sources(manifest: Manifest) -> list[SourceSpec]:
    """The source specs the corpus was built from (its manifest records the config); none if unreadable."""
    from pydantic import ValidationError

    config = manifest.extra.get("config")
    specs = config.get("sources") if isinstance(config, dict) else None
    try:
        return [SourceSpec.model_validate(s) for s in specs or []]
    except ValidationError:
        return []


def _clean(part: dict[str, Any], geometry: dict[str, Any], opts: dict | None, specs: list[SourceSpec]) -> Pixels:
    """The decoded, resized source of a record, after checking it may be read and is the very file recorded."""
    import hashlib

    from pipelines.config import GeometryConfig
    from pipelines.sources import check_recorded, fetch
    from pipelines.synth import Reject, decode_pixels

    source = str(part["source"])
    check_recorded(source, specs, opts)
    data = fetch(source, opts)
    digest = hashlib.sha256(data).hexdigest()
    if digest != part["source_sha256"]:
        raise SchemaError(f"{source}: the source changed since the build (sha256 {digest[:12]}… != "
                          f"recorded {str(part['source_sha256'])[:12]}…)")
    try:
        img, _ = decode_pixels(data, GeometryConfig.model_validate(geometry))
    except Reject as exc:
        raise SchemaError(f"{source}: {exc}") from None
    return img


def regenerate(root: str, key: str, storage_options: dict | None = None) -> Regeneration:
    """Replay the sample's recorded steps on its recorded source crop and compare every image member."""
    from pipelines.synth import rebuild

    manifest = load_manifest(root, storage_options)
    specs = configured_sources(manifest)
    shard, members = find_sample(root, key, storage_options, manifest)
    stored = Sample.from_members(members)
    meta = stored.meta
    bits = int(meta.get("target_bits", 8))
    inp, tgt = rebuild(meta, _clean(meta, meta["geometry"], storage_options, specs))
    checks = {"input.png": _same(inp, stored.input, 8), "target.png": _same(tgt, stored.target, bits)}
    if "exemplar" in meta:
        ex = {**meta["exemplar"], "domain": meta["domain"]}
        r_in, r_tgt = rebuild(ex, _clean(ex, meta["geometry"], storage_options, specs))
        checks["ref_input.png"] = _same(r_in, stored.ref_input, 8)
        checks["ref_target.png"] = _same(r_tgt, stored.ref_target, bits)
    return Regeneration(key, shard, checks)


def _same(regen: np.ndarray, stored: np.ndarray | None, bits: int) -> bool:
    return stored is not None and regen.shape == stored.shape and bool(np.array_equal(quantize(regen, bits),
                                                                                        stored))


__all__ = ["Regeneration", "decode_png", "find_sample", "regenerate"]
