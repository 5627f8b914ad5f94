"""LPIPS (Zhang et al. 2018, v0.1, AlexNet trunk) from weights the user keeps locally; nothing is downloaded.

``omnilv eval --lpips DIR`` reads two state dicts from ``DIR`` (``.pth``/``.pt`` through
``torch.load(weights_only=True)``, which refuses pickled objects, or ``.safetensors``):

- the AlexNet trunk, with torchvision's key names (``features.0.weight`` …), e.g. torchvision's
  ``alexnet-owt-7be5be79.pth``; its classifier keys are ignored;
- the LPIPS linear heads, with the lpips package's key names (``lin0.model.1.weight`` …), e.g. its
  ``weights/v0.1/alex.pth``.

Distance: scale the [-1, 1] input, take the five ReLU outputs of the trunk, unit-normalise each feature
vector over channels, square the difference, weight channels with the linear head (1×1 conv, no bias),
average over space and sum over the five layers. 0 for identical images; larger is more different.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from omnilv.errors import OmniLVError
from training.eval.weights import load_tensors

CHANNELS = (64, 192, 384, 256, 256)
#: (in, out, kernel, stride, padding) of AlexNet's five convolutions, at torchvision's ``features`` indices.
CONVS = {0: (3, 64, 11, 4, 2), 3: (64, 192, 5, 1, 2), 6: (192, 384, 3, 1, 1), 8: (384, 256, 3, 1, 1),
         10: (256, 256, 3, 1, 1)}
POOL_BEFORE = (3, 6)  # a 3×3 stride-2 max-pool precedes these convolutions
SHIFT, SCALE = (-0.030, -0.088, -0.188), (0.458, 0.448, 0.450)


class LpipsError(OmniLVError, ValueError):
    """The LPIPS weights folder is missing a file or holds something else; the message names it."""


class LPIPS(nn.Module):
    """Learned perceptual distance between (B, 3, H, W) images in [-1, 1]; build with :meth:`from_folder`."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.ModuleDict({str(i): nn.Conv2d(cin, cout, k, s, p) for i, (cin, cout, k, s, p)
                                       in CONVS.items()})
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))

    @classmethod
    def from_folder(cls, folder: str | Path) -> LPIPS:
        trunk, lins = _find_state_dicts(Path(folder))
        model = cls()
        model.features.load_state_dict({k.removeprefix("features."): v for k, v in trunk.items()
                                        if k.startswith("features.")})
        model.lins.load_state_dict({f"{i}.weight": lins[f"lin{i}.model.1.weight"] for i in range(len(CHANNELS))})
        return model.eval().requires_grad_(False)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five ReLU activations, each unit-normalised over channels."""
        x = (x - self.shift) / self.scale
        out = []
        for i, conv in self.features.items():
            if int(i) in POOL_BEFORE:
                x = nn.functional.max_pool2d(x, 3, 2)
            x = torch.relu(conv(x))  # (B, C_l, H_l, W_l)
            out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(B,) distances."""
        return sum(lin((fa - fb) ** 2).mean((1, 2, 3)) for lin, fa, fb in zip(self.lins, self._taps(a),
                                                                             self._taps(b), strict=True))

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """Distance between two (H, W, 3) float images in [0, 1] (at least 32 pixels on a side)."""
        if a.shape != b.shape or min(a.shape[:2]) < 32:
            raise ValueError(f"LPIPS needs two same-size images ≥ 32×32, got {a.shape} and {b.shape}")

        def t(x: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).permute(2, 0, 1)[None] * 2 - 1

        return float(self(t(a), t(b))[0])


def _load(path: Path) -> dict[str, torch.Tensor]:
    return load_tensors(path, LpipsError)


def _find_state_dicts(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(AlexNet trunk, LPIPS heads) among the weight files of ``folder``, recognised by their keys."""
    if not folder.is_dir():
        raise LpipsError(f"{folder}: not a folder (--lpips takes the folder holding the AlexNet and LPIPS weights)")
    trunk = lins = None
    for path in sorted(p for p in folder.iterdir() if p.suffix in (".pth", ".pt", ".safetensors")):
        state = _load(path)
        if "features.0.weight" in state:
            trunk = state
        elif "lin0.model.1.weight" in state:
            lins = state
    missing = [what for what, got in (("the AlexNet trunk (torchvision keys features.0.weight …, e.g. "
                                       "alexnet-owt-7be5be79.pth)", trunk),
                                      ("the LPIPS linear heads (keys lin0.model.1.weight …, e.g. lpips' "
                                       "weights/v0.1/alex.pth)", lins)) if got is None]
    if missing:
        raise LpipsError(f"{folder}: no file with {' or '.join(missing)}")
    return trunk, lins
