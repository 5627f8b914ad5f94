"""Restore one image with an exported OmniLV: pad to the patch grid, sample, crop back.

Images are float32 RGB (H, W, 3) in [0, 1] at this boundary (the corpus convention); the model
sees [-1, 1] tensors through the image codec.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from omnilv.errors import OmniLVError
from training.model import FlowMatching, ImageCodec, TextEncoder, load_exported

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: The formats a user's image may be (PIL knows many more, some of which run external programs, e.g. EPS).
FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
MAX_PIXELS = 100_000_000  # PIL's decompression-bomb cap is ~179 Mpx; this is ours, checked before decoding


class ImageFileError(OmniLVError, ValueError):
    """An image file is missing or unreadable; the message names it."""


class DeviceError(OmniLVError, ValueError):
    """The device asked for is not one this machine can run the model on; the message says which ones it has."""


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """``name`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``) checked against this machine; None: CUDA when present."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise DeviceError(f"{name!r} is not a device name; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise DeviceError(f"{name}: this machine has no CUDA device that torch can use "
                              f"(torch {torch.__version__}); use --device cpu")
        if (device.index or 0) >= count:
            raise DeviceError(f"{name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
        return device
    backend = getattr(torch.backends, device.type, None) or getattr(torch, device.type, None)
    if device.type != "meta" and backend is not None and getattr(backend, "is_available", lambda: False)():
        return device
    raise DeviceError(f"{name}: not a device this machine can restore images on; use cpu or cuda")


def load_image(path: str | Path) -> np.ndarray:
    """An image file -> float32 RGB (H, W, 3) in [0, 1] (16-bit PNGs keep their precision)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageFileError(f"{path}: no such image file")
    try:
        with Image.open(path, formats=FORMATS) as im:
            if im.width * im.height > MAX_PIXELS:
                raise ImageFileError(f"{path}: {im.width}x{im.height} is over {MAX_PIXELS:,} pixels; resize it first")
            im.load()
            if im.mode in ("I;16", "I;16B", "I"):
                arr = np.asarray(im, dtype=np.float32) / 65535.0
                return np.repeat(arr[..., None], 3, axis=2)
            return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ImageFileError(f"{path}: not a readable {'/'.join(FORMATS)} image ({exc})") from None


def save_image(img: np.ndarray, path: str | Path) -> Path:
    """float RGB [0, 1] -> 8-bit image file (format from the suffix)."""
    from PIL import Image

    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ImageFileError(f"{path}: output must end in one of {', '.join(IMAGE_SUFFIXES)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)).save(path)
    return path


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """(H, W, 3) [0, 1] -> (1, 3, H, W) [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)[None] * 2 - 1


def to_image(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) [-1, 1] -> (H, W, 3) [0, 1]."""
    return ((x[0].permute(1, 2, 0).float().cpu().numpy() + 1) / 2).clip(0, 1)


@dataclass
class Restorer:
    """An exported model ready to restore images; build with :meth:`from_export`."""

    flow: FlowMatching
    text: TextEncoder
    codec: ImageCodec
    meta: dict[str, Any]

    @classmethod
    def from_export(cls, folder: str | Path, device: str | torch.device | None = None) -> Restorer:
        """Load an export onto ``device`` (default: CUDA when present, else CPU), checked before anything loads."""
        return cls(*load_exported(folder, resolve_device(device)))

    @property
    def device(self) -> torch.device:
        return next(self.flow.parameters()).device

    @property
    def multiple(self) -> int:
        """Pixel sides are padded to a multiple of this: codec downsampling × patch size."""
        return self.codec.downsample * self.flow.net.multiple

    @torch.no_grad()
    def restore(self, img: np.ndarray, instruction: str, ref_input: np.ndarray | None = None,
                ref_target: np.ndarray | None = None, *, steps: int | None = None, guidance: float | None = None,
                method: str | None = None, seed: int = 0) -> np.ndarray:
        """Restored (H, W, 3) image in [0, 1], the same size as ``img``."""
        if (ref_input is None) != (ref_target is None):
            raise ValueError("a visual prompt needs both ref_input and ref_target")
        defaults, device = self.meta.get("sampler", {}), self.device
        H, W = img.shape[:2]
        m = self.multiple
        pad = (0, (-W) % m, 0, (-H) % m)  # right/bottom, so cropping back is a slice
        x = F.pad(to_tensor(img).to(device), pad, mode="replicate")  # (1, 3, H', W')
        cond = self.codec.encode(x)  # (1, C, h, w)
        text, mask = self.text.encode([instruction])  # (1, L, T), (1, L)
        refs: dict[str, torch.Tensor] = {}
        if ref_input is not None:
            size = tuple(x.shape[-2:])
            for name, ref in (("ref_input", ref_input), ("ref_target", ref_target)):
                r = F.interpolate(to_tensor(ref).to(device), size=size, mode="bilinear", align_corners=False)
                refs[name] = self.codec.encode(r.clamp(-1, 1))
            refs["ref_mask"] = torch.ones(1, dtype=torch.bool, device=device)
        gen = torch.Generator(device=device).manual_seed(seed)
        lat = self.flow.sample(cond, text.to(device), mask.to(device), **refs,
                               steps=int(steps or defaults.get("steps", 20)),
                               method=method or defaults.get("method", "euler"),
                               guidance=float(guidance if guidance is not None else defaults.get("guidance", 1.0)),
                               generator=gen)
        return to_image(self.codec.decode(lat)[..., :H, :W])
