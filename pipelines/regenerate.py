"""``omnilv corpus regenerate``: rebuild one sample from its json record and compare with the stored one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.read import iter_members, join, load_manifest
from pipelines.schema import Sample, SchemaError, decode_png, quantize


@dataclass
class Regeneration:
    key: str
    shard: str
    checks: dict[str, bool]  # member -> regenerated pixels equal the stored ones

    @property
    def ok(self) -> bool:
        return all(self.checks.values())


def find_sample(root: str, key: str, storage_options: dict | None = None) -> tuple[str, dict[str, bytes]]:
    """The raw members of ``key`` and the shard holding it (manifest-listed shards only)."""
    for rec in load_manifest(root, storage_options).shards:
        for members in iter_members(join(root, rec.name), storage_options=storage_options):
            if members["__key__"] == key:
                return rec.name, members
    raise SchemaError(f"{root}: no sample with key {key!r} in the manifest-listed shards")


def _clean(part: dict[str, Any], geometry: dict[str, Any], opts: dict | None) -> np.ndarray:
    """The decoded, resized source of a record, after checking it is the very file recorded."""
    import hashlib

    from pipelines.config import GeometryConfig
    from pipelines.sources import fetch
    from pipelines.synth import decode_image

    data = fetch(part["source"], opts)
    digest = hashlib.sha256(data).hexdigest()
    if digest != part["source_sha256"]:
        raise SchemaError(f"{part['source']}: the source changed since the build (sha256 {digest[:12]}… != "
                          f"recorded {part['source_sha256'][:12]}…)")
    img, _ = decode_image(data, GeometryConfig.model_validate(geometry))
    return img


def regenerate(root: str, key: str, storage_options: dict | None = None) -> Regeneration:
    """Replay the sample's recorded steps on its recorded source crop and compare every image member."""
    from pipelines.synth import rebuild

    shard, members = find_sample(root, key, storage_options)
    stored = Sample.from_members(members)
    meta = stored.meta
    bits = int(meta.get("target_bits", 8))
    inp, tgt = rebuild(meta, _clean(meta, meta["geometry"], storage_options))
    checks = {"input.png": _same(inp, stored.input, 8), "target.png": _same(tgt, stored.target, bits)}
    if "exemplar" in meta:
        ex = {**meta["exemplar"], "domain": meta["domain"]}
        r_in, r_tgt = rebuild(ex, _clean(ex, meta["geometry"], storage_options))
        checks["ref_input.png"] = _same(r_in, stored.ref_input, 8)
        checks["ref_target.png"] = _same(r_tgt, stored.ref_target, bits)
    return Regeneration(key, shard, checks)


def _same(regen: np.ndarray, stored: np.ndarray | None, bits: int) -> bool:
    return stored is not None and regen.shape == stored.shape and bool(np.array_equal(quantize(regen, bits),
                                                                                        stored))


__all__ = ["Regeneration", "decode_png", "find_sample", "regenerate"]
