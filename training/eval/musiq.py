"""MUSIQ (Ke et al., ICCV 2021), a no-reference quality score, from a checkpoint the user keeps locally.

``omnilv eval --musiq PATH`` reads one of pyiqa's released MUSIQ state dicts, with pyiqa's key names
(``conv_root.weight``, ``transformer_encoder.transformer.encoderblock_0.attention.query.weight`` …):
``musiq_koniq_ckpt-e95806b9.pth``, ``musiq_spaq_ckpt-358bb6af.pth``, ``musiq_paq2piq_ckpt-364c0c84.pth`` (one
score, about 0–100) or ``musiq_ava_ckpt-e8d3f067.pth`` (a 10-bin distribution; the score is its mean, in [1, 10]).
``.pth``/``.pt`` go through ``torch.load(weights_only=True)``, which refuses pickled objects; ``.safetensors`` too.
Nothing is downloaded. Higher is better.

Score of an image in [0, 1]: scale it to [-1, 1]; three scales, bicubic resizes with the longer side 224 and
384 plus the original; each cut into 32×32 patches (zero-padded as TensorFlow's 'SAME' does); each patch
embedded by a ResNet root (weight-standardised 7×7/2 convolution, GroupNorm, 3×3/2 max-pool, one bottleneck)
and a linear layer; added: a hash-based spatial embedding (the patch grid of any size mapped onto a 10×10 grid)
and a scale embedding; a class token in front; pre-norm transformer blocks; a linear head on the class token.
pyiqa pads each resized scale to a fixed length and masks the padding out of attention; the padding tokens
are left out here instead, which gives the same score.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from omnilv.errors import OmniLVError
from training.eval.weights import load_tensors

PATCH = 32
LONGER_SIDES = (224, 384)  # the resized scales (ids 0, 1); the original resolution is the last scale (id 2)
GRID = 10  # hash-based spatial embedding: any patch grid maps onto GRID × GRID positions
STEM = 64  # ResNet root width; the bottleneck widens it 4×
MARKER = "transformer_encoder.posembed_input.position_emb"  # a key that marks a MUSIQ checkpoint
WRAPPERS = ("params", "state_dict")  # training checkpoints (BasicSR/pyiqa, Lightning) nest the weights here
CHECKPOINTS = ("musiq_koniq_ckpt-e95806b9.pth, musiq_spaq_ckpt-358bb6af.pth, musiq_paq2piq_ckpt-364c0c84.pth "
               "or musiq_ava_ckpt-e8d3f067.pth")


class MusiqError(OmniLVError, ValueError):
    """The MUSIQ checkpoint is missing or holds something else; the message names the file."""


def _same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow 'SAME' zero padding: ceil(size / stride) outputs, the odd pixel going to the bottom/right."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def _hash(count: int) -> torch.Tensor:
    """Grid row (or column) of each of ``count`` patches along one axis: 0..GRID-1 resized to ``count``, nearest.

    That is i·GRID // count, except where float32 rounding in torch's resize (which pyiqa uses) floors one lower,
    as it does from 205 patches on; torch's resize is used to match it.
    """
    return F.interpolate(torch.arange(GRID, dtype=torch.float32)[None, None], size=count, mode="nearest")[0, 0].long()


def multiscale_patches(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Patches (N, 3, 32, 32), spatial-hash index (N,) in [0, GRID²) and scale index (N,) of a (3, H, W) image.

    Scales run 224, 384, original; within a scale the patches run row by row.
    """
    h, w = img.shape[1:]
    patches, spatial, scales = [], [], []
    for scale, longer in enumerate((*LONGER_SIDES, None)):
        x = img[None]
        if longer is not None:
            ratio = longer / max(h, w)
            x = F.interpolate(x, (max(1, round(h * ratio)), max(1, round(w * ratio))), mode="bicubic",
                              align_corners=False)
        x = _same_pad(x, PATCH, PATCH)
        rows, cols = x.shape[2] // PATCH, x.shape[3] // PATCH
        patches.append(x.reshape(3, rows, PATCH, cols, PATCH).permute(1, 3, 0, 2, 4).reshape(-1, 3, PATCH, PATCH))
        spatial.append((_hash(rows)[:, None] * GRID + _hash(cols)).flatten())
        scales.append(torch.full((rows * cols,), scale))
    return torch.cat(patches), torch.cat(spatial), torch.cat(scales)


class _StdConv(nn.Conv2d):
    """Weight-standardised convolution (each filter to zero mean, unit std) with 'SAME' padding, no bias."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(_same_pad(x, self.kernel_size[0], self.stride[0]), w, None, self.stride)


class _Bottleneck(nn.Module):
    """1×1 → 3×3 → 1×1 residual block at ``width``, widened 4× with a projected shortcut."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1, self.gn1 = _StdConv(width, width, 1), nn.GroupNorm(32, width, eps=1e-4)
        self.conv2, self.gn2 = _StdConv(width, width, 3), nn.GroupNorm(32, width, eps=1e-4)
        self.conv3, self.gn3 = _StdConv(width, 4 * width, 1), nn.GroupNorm(32, 4 * width, eps=1e-4)
        self.conv_proj, self.gn_proj = _StdConv(width, 4 * width, 1), nn.GroupNorm(32, 4 * width, eps=1e-4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.gn1(self.conv1(x)))
        y = F.relu(self.gn2(self.conv2(y)))
        return F.relu(self.gn3(self.conv3(y)) + self.gn_proj(self.conv_proj(x)))


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (lin(x).view(b, n, self.heads, d // self.heads).transpose(1, 2)  # (B, heads, N, D / heads)
                   for lin in (self.query, self.key, self.value))
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class _Block(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + MLP(norm(x)) with exact GELU."""

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attention = _Attention(dim, heads)
        self.mlp = nn.ModuleDict({"fc1": nn.Linear(dim, mlp_dim), "fc2": nn.Linear(mlp_dim, dim)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


def _holding(name: str, *shape: int) -> nn.Module:
    """An empty module with one parameter: keeps pyiqa's key names (``posembed_input.position_emb``)."""
    module = nn.Module()
    module.register_parameter(name, nn.Parameter(torch.zeros(*shape)))
    return module


class _Encoder(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.posembed_input = _holding("position_emb", 1, GRID * GRID, dim)
        self.scaleembed_input = _holding("scale_emb", len(LONGER_SIDES) + 1, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.transformer = nn.ModuleDict({f"encoderblock_{i}": _Block(dim, heads, mlp_dim) for i in range(depth)})
        self.encoder_norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, tokens: torch.Tensor, spatial: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        x = tokens + self.posembed_input.position_emb[0, spatial] + self.scaleembed_input.scale_emb[scale]
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1)  # (B, 1 + N, D)
        for block in self.transformer.values():
            x = block(x)
        return self.encoder_norm(x)


class MUSIQ(nn.Module):
    """MUSIQ with pyiqa's module layout; ``num_classes`` 1 gives the score, 10 (AVA) a distribution over 1..10.

    Build with :meth:`from_folder` or :meth:`from_file`; score an image with :meth:`score`.
    """

    def __init__(self, num_classes: int = 1, dim: int = 384, depth: int = 14, heads: int = 6,
                 mlp_dim: int = 1152) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv_root = _StdConv(3, STEM, 7, 2)
        self.gn_root = nn.GroupNorm(32, STEM, eps=1e-6)
        self.block1 = _Bottleneck(STEM)
        self.embedding = nn.Linear(4 * STEM * (PATCH // 4) ** 2, dim)
        self.transformer_encoder = _Encoder(dim, depth, heads, mlp_dim)
        # pyiqa's keys: head.weight for one score, head.0.weight (Linear, then softmax) for a distribution
        self.head = nn.Linear(dim, 1) if num_classes == 1 else nn.Sequential(nn.Linear(dim, num_classes))

    @classmethod
    def from_path(cls, path: str | Path) -> MUSIQ:
        """A checkpoint file, or the folder holding one."""
        return cls.from_folder(path) if Path(path).is_dir() else cls.from_file(path)

    @classmethod
    def from_file(cls, path: str | Path) -> MUSIQ:
        path = Path(path)
        if not path.is_file():
            raise MusiqError(f"{path}: no such file (--musiq takes a pyiqa MUSIQ checkpoint, e.g. {CHECKPOINTS}, "
                             f"or the folder holding it)")
        state = _load(path)
        if MARKER not in state:
            raise MusiqError(f"{path}: not a MUSIQ checkpoint (no key {MARKER}); expected pyiqa's {CHECKPOINTS}")
        return cls._from_state(state, path)

    @classmethod
    def from_folder(cls, folder: str | Path) -> MUSIQ:
        """The one MUSIQ checkpoint among the folder's weight files, recognised by its keys."""
        folder = Path(folder)
        if not folder.is_dir():
            raise MusiqError(f"{folder}: not a folder (--musiq takes a pyiqa MUSIQ checkpoint or its folder)")
        found = [(p, state) for p in sorted(folder.iterdir()) if p.suffix in (".pth", ".pt", ".safetensors")
                 and MARKER in (state := _load(p))]
        if not found:
            raise MusiqError(f"{folder}: no MUSIQ checkpoint (a .pth/.pt/.safetensors with pyiqa's MUSIQ keys "
                             f"{MARKER} …, e.g. {CHECKPOINTS})")
        if len(found) > 1:
            raise MusiqError(f"{folder}: several MUSIQ checkpoints ({', '.join(p.name for p, _ in found)}); keep "
                             f"one there or pass the file itself to --musiq")
        return cls._from_state(found[0][1], found[0][0])

    @classmethod
    def _from_state(cls, state: dict[str, torch.Tensor], path: Path) -> MUSIQ:
        head = state.get("head.weight", state.get("head.0.weight"))
        if head is None or head.ndim != 2:
            raise MusiqError(f"{path}: no MUSIQ head (head.weight or head.0.weight, shape (classes, hidden))")
        model = cls(num_classes=head.shape[0])
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:  # missing, extra or misshapen keys: not pyiqa's MUSIQ layout
            raise MusiqError(f"{path}: does not fit pyiqa's MUSIQ layout: {' '.join(str(exc).split())[:600]}") from exc
        return model.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, patches: torch.Tensor, spatial: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Score of one image from its :func:`multiscale_patches`; a 0-d tensor."""
        x = F.relu(self.gn_root(self.conv_root(patches)))  # (N, 64, 16, 16)
        x = F.max_pool2d(_same_pad(x, 3, 2), 3, 2)  # (N, 64, 8, 8)
        x = self.block1(x).permute(0, 2, 3, 1).flatten(1)  # (N, 8·8·256), channels last as in the TF original
        x = self.transformer_encoder(self.embedding(x)[None], spatial, scale)  # (1, 1 + N, D)
        out = self.head(x[0, 0])  # (classes,)
        if self.num_classes == 1:
            return out[0]
        return out.softmax(-1) @ torch.arange(1, self.num_classes + 1, dtype=out.dtype)

    def score(self, img: np.ndarray) -> float:
        """Quality of an (H, W, 3) float image in [0, 1], at least 32 pixels on a side; higher is better."""
        if img.ndim != 3 or img.shape[2] != 3 or min(img.shape[:2]) < PATCH:
            raise ValueError(f"MUSIQ needs an (H, W, 3) image ≥ {PATCH}×{PATCH}, got {img.shape}")
        x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)
        return float(self(*multiscale_patches((x - 0.5) * 2)))


def _load(path: Path) -> dict[str, torch.Tensor]:
    state = load_tensors(path, MusiqError, WRAPPERS)
    return {k.removeprefix("module."): v for k, v in state.items()}  # as saved from DataParallel
