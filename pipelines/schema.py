"""The corpus sample schema: the one contract between corpus writers and readers.

A corpus is a folder or S3 prefix of WebDataset tar shards plus ``manifest.json``.
One sample is one group of tar members sharing a key (``KEY.input.png`` …):

=================  ==================================================================
member             content
=================  ==================================================================
``input.png``      model input (degraded image, or the clean image for dense/stylization)
``target.png``     expected output (8-bit RGB; 16-bit RGB where the task needs it)
``txt``            the instruction, UTF-8
``json``           the record: task, domain, steps, seed, source, crop, sizes, version; for a vision-centric
                   task also ``annotations`` (the crop's boxes, masks, keypoints, expressions)
``ref_input.png``  optional exemplar input of the same task on other content (stage 2)
``ref_target.png`` optional exemplar target
=================  ==================================================================

Everything else in a shard is ignored by readers, and nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from degradations import bgr_to_rgb01
from omnilv.errors import OmniLVError

#: 2: exemplars replay the query's sampled parameters (1: they drew their own). 3: a sample of a task that needs
#: annotations (Lumen's vision-centric tasks) carries the crop's ``"annotations"`` in its json (docs/lumen.md; read
#: and written by ``pipelines.coco``), and ``target.png`` holds its 16-bit target maps; flat crops are redrawn
#: (``"crop_tries"`` when more than one was drawn).
SCHEMA_VERSION = 3
INPUT, TARGET, TXT, JSON = "input.png", "target.png", "txt", "json"
REF_INPUT, REF_TARGET = "ref_input.png", "ref_target.png"
REQUIRED_MEMBERS: tuple[str, ...] = (INPUT, TARGET, TXT, JSON)
OPTIONAL_MEMBERS: tuple[str, ...] = (REF_INPUT, REF_TARGET)
#: The whitelist readers decode; any other member (``.pyd``, ``.pickle``, …) is skipped, never decoded.
MEMBERS: tuple[str, ...] = REQUIRED_MEMBERS + OPTIONAL_MEMBERS
IMAGE_MEMBERS: tuple[str, ...] = (INPUT, TARGET, REF_INPUT, REF_TARGET)
MANIFEST = "manifest.json"
_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: The most pixels an image member may claim (4x the largest crop, 4096²): checked in the PNG header before
#: anything is decoded, so a 100-byte file claiming 2^31 pixels is a counted skip, not an OpenCV error.
MAX_IMAGE_PIXELS = 1 << 26


class SchemaError(OmniLVError, ValueError):
    """A sample or manifest does not follow the schema; the message says which member/field."""


def sample_key(source_id: str, variant: int) -> str:
    """Stable key of (source, variant): no dots, independent of shard layout or worker count."""
    digest = hashlib.sha1(source_id.encode("utf-8")).hexdigest()[:16]
    return f"{digest}_{variant:03d}"


def check_key(key: str) -> str:
    if not _KEY_RE.match(key):
        raise SchemaError(f"sample key {key!r} must match {_KEY_RE.pattern} (no dots: WebDataset splits on them)")
    return key


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


# -- images --------------------------------------------------------------------------------------
def encode_png(img: np.ndarray, bits: int = 8, level: int = 6) -> bytes:
    """float32 RGB [0, 1] -> PNG bytes (8- or 16-bit), deterministic for a given OpenCV build."""
    if img.ndim != 3 or img.shape[2] != 3:
        raise SchemaError(f"expected (H, W, 3) image, got {img.shape}")
    if bits not in (8, 16):
        raise SchemaError(f"PNG bit depth must be 8 or 16, got {bits}")
    peak = 255.0 if bits == 8 else 65535.0
    q = np.clip(np.rint(img.astype(np.float32) * peak), 0, peak).astype(np.uint8 if bits == 8 else np.uint16)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(q[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, int(level)])
    if not ok:
        raise SchemaError("PNG encoding failed")
    return buf.tobytes()


def png_size(data: bytes, member: str = "image") -> tuple[int, int]:
    """(width, height) from a PNG's header, or a :class:`SchemaError` for anything that is not a sane PNG."""
    if not data.startswith(_PNG_MAGIC):
        raise SchemaError(f"{member}: not a PNG")
    if len(data) < 33 or data[8:16] != b"\x00\x00\x00\x0dIHDR":
        raise SchemaError(f"{member}: corrupt PNG (no header chunk)")
    w, h = struct.unpack(">II", data[16:24])
    if not (w and h) or w * h > MAX_IMAGE_PIXELS:
        raise SchemaError(f"{member}: PNG header claims {w}x{h} pixels (at most {MAX_IMAGE_PIXELS} allowed)")
    return w, h


def decode_png(data: bytes, member: str = "image") -> np.ndarray:
    """PNG bytes -> float32 RGB [0, 1]. Only PNG is accepted for image members, its header size checked first;
    whatever is wrong with the bytes is a :class:`SchemaError` naming the member."""
    w, h = png_size(data, member)
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        rgb = None if arr is None else bgr_to_rgb01(arr)
    except cv2.error as exc:
        raise SchemaError(f"{member}: corrupt PNG ({str(exc).strip().splitlines()[-1]})") from None
    if rgb is None or rgb.shape != (h, w, 3):
        raise SchemaError(f"{member}: corrupt PNG")
    return rgb


def quantize(img: np.ndarray, bits: int = 8) -> np.ndarray:
    """What the image becomes after a PNG round trip (for comparing regenerated samples)."""
    peak = 255.0 if bits == 8 else 65535.0
    return (np.clip(np.rint(img * peak), 0, peak) / peak).astype(np.float32)


# -- one sample ----------------------------------------------------------------------------------
@dataclass
class Sample:
    """A decoded sample; ``meta`` is the json record."""

    key: str
    input: np.ndarray
    target: np.ndarray
    instruction: str
    meta: dict[str, Any]
    ref_input: np.ndarray | None = None
    ref_target: np.ndarray | None = None

    def to_members(self, level: int = 6) -> dict[str, bytes]:
        """The WebDataset dict (``__key__`` plus members), ready for a tar writer."""
        bits = int(self.meta.get("target_bits", 8))
        out: dict[str, Any] = {
            "__key__": check_key(self.key),
            INPUT: encode_png(self.input, 8, level),
            TARGET: encode_png(self.target, bits, level),
            TXT: self.instruction.encode("utf-8"),
            JSON: json.dumps(self.meta, sort_keys=True, separators=(",", ":")).encode("utf-8"),
        }
        if (self.ref_input is None) != (self.ref_target is None):
            raise SchemaError(f"{self.key}: exemplar needs both ref_input and ref_target")
        if self.ref_input is not None:
            out[REF_INPUT] = encode_png(self.ref_input, 8, level)
            out[REF_TARGET] = encode_png(self.ref_target, bits, level)
        return out

    @classmethod
    def from_members(cls, members: dict[str, Any]) -> Sample:
        """Decode a WebDataset dict of raw bytes; raises :class:`SchemaError` naming what is wrong."""
        key = str(members.get("__key__", "?"))
        missing = [m for m in REQUIRED_MEMBERS if m not in members]
        if missing:
            raise SchemaError(f"{key}: missing members {missing}")
        try:
            meta = json.loads(bytes(members[JSON]).decode("utf-8"))
            text = bytes(members[TXT]).decode("utf-8")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SchemaError(f"{key}: bad json/txt member: {exc}") from exc
        if not isinstance(meta, dict):
            raise SchemaError(f"{key}: json member is not an object")
        refs = [decode_png(bytes(members[m]), f"{key}.{m}") if m in members else None for m in OPTIONAL_MEMBERS]
        return cls(key, decode_png(bytes(members[INPUT]), f"{key}.{INPUT}"),
                   decode_png(bytes(members[TARGET]), f"{key}.{TARGET}"), text, meta, *refs)


# -- manifest ------------------------------------------------------------------------------------
@dataclass
class ShardRecord:
    """One committed shard, as the manifest lists it."""

    name: str
    samples: int
    bytes: int
    sha256: str
    tasks: dict[str, int] = field(default_factory=dict)
    rejects: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ShardRecord:
        """A record read from a manifest or commit record: data, so its name must stay inside the corpus."""
        from pipelines.storage import StorageError, inside

        try:
            rec = cls(str(d["name"]), int(d["samples"]), int(d["bytes"]), str(d["sha256"]),
                      {str(k): int(v) for k, v in d.get("tasks", {}).items()},
                      {str(k): int(v) for k, v in d.get("rejects", {}).items()})
            inside(rec.name, "shard name")
        except (KeyError, TypeError, ValueError, AttributeError, StorageError) as exc:
            raise SchemaError(f"bad shard record {str(d)[:200]}: {exc}") from None
        return rec


@dataclass
class Manifest:
    """``manifest.json``: written last; readers read only the shards it lists."""

    shards: list[ShardRecord]
    config_sha256: str = ""
    corpus_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    def to_json(self) -> str:
        body = {"corpus_version": self.corpus_version, "config_sha256": self.config_sha256,
                "shards": [vars(s) for s in self.shards], **self.extra}
        return json.dumps(body, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = MANIFEST) -> Manifest:
        try:
            d = json.loads(text)
            shards = [ShardRecord.from_json(s) for s in d["shards"]]
            version = int(d.get("corpus_version", SCHEMA_VERSION))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, SchemaError) as exc:
            raise SchemaError(f"{where}: not a valid manifest: {exc}") from None
        extra = {k: v for k, v in d.items() if k not in ("corpus_version", "config_sha256", "shards")}
        return cls(shards, str(d.get("config_sha256", "")), version, extra)
