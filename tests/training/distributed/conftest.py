"""A tiny corpus written at test time with the schema's own writer (no corpus build needed)."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from pipelines.schema import MANIFEST, Manifest, Sample, ShardRecord, shard_name

INSTR = {"denoise": "Remove the noise from this image.", "blur": "Sharpen this blurry photo."}


def make_samples(img: np.ndarray, n: int, size: int = 24, exemplars: bool = False) -> list[Sample]:
    """``n`` (noisy|blurred, clean) pairs cut from ``img``; deterministic."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        y, x = rng.integers(0, img.shape[0] - size), rng.integers(0, img.shape[1] - size)
        clean = np.ascontiguousarray(img[y:y + size, x:x + size], dtype=np.float32)
        task = "denoise" if i % 2 == 0 else "blur"
        noisy = np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1).astype(np.float32) if task == "denoise" \
            else (clean + np.roll(clean, 1, 0) + np.roll(clean, 1, 1)) / 3
        ref = (np.clip(clean[::-1] + 0.05, 0, 1), clean[::-1]) if exemplars else (None, None)
        out.append(Sample(f"k{i:04d}", noisy, clean, INSTR[task], {"task": task, "domain": "restoration"}, *ref))
    return out


def tar_of(members: list[dict[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for m in members:
            key = m["__key__"]
            for name, data in m.items():
                if name == "__key__":
                    continue
                info = tarfile.TarInfo(f"{key}.{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_corpus(root: Path, groups: list[list[dict[str, bytes]]]) -> Path:
    """Shards of member dicts + a manifest listing them."""
    root.mkdir(parents=True, exist_ok=True)
    records = []
    for i, members in enumerate(groups):
        data = tar_of(members)
        (root / shard_name(i)).write_bytes(data)
        records.append(ShardRecord(shard_name(i), len(members), len(data), "0" * 64))
    (root / MANIFEST).write_text(Manifest(records).to_json())
    return root


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory, small_image) -> Path:
    """32 samples (24×24, denoise/blur) with exemplars, in 2 shards."""
    samples = [s.to_members(level=1) for s in make_samples(small_image, 32, exemplars=True)]
    return write_corpus(tmp_path_factory.mktemp("corpus"), [samples[:16], samples[16:]])


class Boom:
    """Unpickling this creates a file: proof that a reader deserialised a pickle member."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "unpickled!"))


@pytest.fixture()
def hostile_corpus(tmp_path, small_image) -> tuple[Path, Path]:
    """8 good samples; one sample also carries .pyd and .pickle members, one has a corrupt input.png."""
    canary = tmp_path / "canary.txt"
    members = [s.to_members(level=1) for s in make_samples(small_image, 9)]
    payload = pickle.dumps(Boom(str(canary)))
    members[0]["pyd"] = payload
    members[0]["pickle"] = payload
    members[1]["input.png"] = members[1]["input.png"][:40]  # truncated PNG
    root = write_corpus(tmp_path / "hostile", [members])
    json.loads((root / MANIFEST).read_text())
    return root, canary
