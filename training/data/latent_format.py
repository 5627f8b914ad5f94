"""The latent cache's format, shared by its writer (:mod:`training.data.latent_cache`) and reader
(:mod:`training.data.latent_read`): member names, the ``latents.json`` description, ``.npy`` members.

Arrays are ``np.save(allow_pickle=False)`` float32 and are loaded with ``allow_pickle=False`` only: a member that is
not a float32 ``.npy`` array is refused, never deserialised.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from omnilv.errors import OmniLVError
from pipelines import JSON, TXT, SchemaError

LATENTS_JSON = "latents.json"
KIND = "omnilv-latents"
#: Whitelisted cache members -> row columns; the tar member order.
COLUMNS = {"target.npy": "target", "input.npy": "input", "ref_input.npy": "ref_input",
           "ref_target.npy": "ref_target", "text.npy": "text", TXT: "txt", JSON: "json"}
ARRAYS = ("target", "input", "ref_input", "ref_target", "text")
NPY_MAGIC = b"\x93NUMPY"


class LatentCacheError(OmniLVError):
    """A latent cache is missing, corrupt, or does not fit the training config; the message says what to do."""


class CorruptMember(SchemaError):
    def __init__(self, member: str, why: str) -> None:
        super().__init__(f"{member}: {why}")
        self.member = member


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def load_npy(data: bytes, member: str) -> np.ndarray:
    """A float32 ``.npy`` member; anything else (pickled objects, ``.npz``, other dtypes) is refused."""
    if bytes(data[:6]) != NPY_MAGIC:
        raise CorruptMember(member, "not a .npy array")
    try:
        arr = np.load(io.BytesIO(bytes(data)), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise CorruptMember(member, f"unreadable .npy ({exc})") from None
    if arr.dtype != np.float32:
        raise CorruptMember(member, f"dtype {arr.dtype}, expected float32")
    return arr


def canonical_spec(spec: str) -> str:
    """Named specs as they are; a local folder as its absolute path (so ``./vae`` and ``/abs/vae`` match)."""
    if spec in ("pixel", "tiny", "minilm") or "://" in spec:
        return spec
    return str(Path(spec).expanduser().resolve())
