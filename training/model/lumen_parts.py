"""Lumen's own modules and losses: the prompt layout, the V-L dense aligner, the mask decoder, and the tiny
offline LLaVA (:func:`build_tiny_llava`, the tests' and the quickstart's multimodal model).

Shapes (B batch, L tokens, D the LMM's width, Dv the vision tower's width, A ``aligner_dim``, H×W the image,
h×w = H/4×W/4 the aligner's grid, N instances):

- the LMM's states at the special tokens: (B, 5, D) in :data:`SPECIAL_TOKENS` order;
- the vision tower's patch features: (B, g·g, Dv); the image itself (B, 3, H, W) in [-1, 1];
- the aligner gives map logits (B, 3, h, w): heat, height, width; and its pixel features (B, A, h, w).

**Stride 4.** The aligner predicts at stride 4. Training compares with the target maps max-pooled by 4 (a peak's
exact 1.0 survives, one positive cell per object, as CenterNet trains at its output stride); inference brings the
maps back to H×W with :func:`upsample4`, which puts cell i's value exactly on pixel 4i+2 and interpolates linearly
between, so a cell's peak stays one pixel (within 2 px of the annotated centre) for ``degradations.find_peaks``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from omnilv.errors import OmniLVError

#: The tasks, in the order of the task head's classes.
TASKS = ("detection", "instance_segmentation", "pose", "grounding", "referring_segmentation")
LUMEN_TASKS = TASKS  # the name outside this room
#: Appended after the instruction, teacher-forced: task, localisation, mask, box height, box width.
SPECIAL_TOKENS = ("[TASK]", "[LOC]", "[M]", "[H]", "[W]")
MASK_HEAT = TASKS.index("referring_segmentation")  # its heat is a mask: read by the [M] query, the rest by [LOC]
STRIDE = 4
HEAT_PRIOR = -math.log((1 - 0.1) / 0.1)  # CenterNet's heat bias at init: sigmoid = 0.1 everywhere


class LumenError(OmniLVError, ValueError):
    """A Lumen model, folder or input that cannot be used; the message says which and what to do."""


class LumenPrompt:
    """Token ids of ``USER: <image>×n\\n{instruction} ASSISTANT:`` followed by the special tokens (LLaVA-1.5's
    template; the image placeholder repeated once per image token, as ``LlavaProcessor`` expands it)."""

    def __init__(self, tokenizer, image_tokens: int) -> None:
        vocab = tokenizer.get_vocab()
        missing = [t for t in (*SPECIAL_TOKENS, "<image>") if t not in vocab]
        if missing:
            raise LumenError(f"the tokenizer lacks {missing}: pass the Lumen model (it adds its tokens) or its "
                             "``tokenizer``")
        self.tokenizer, self.image_tokens = tokenizer, int(image_tokens)
        self.image_id = vocab["<image>"]
        self.special_ids = [vocab[t] for t in SPECIAL_TOKENS]
        bos = getattr(tokenizer, "bos_token_id", None)
        self._head = ([bos] if bos is not None else []) + self._encode("USER: ") + [self.image_id] * self.image_tokens

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def ids(self, instruction: str) -> list[int]:
        return [*self._head, *self._encode(f"\n{instruction} ASSISTANT:"), *self.special_ids]

    def batch(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of ids -> ids (B, L) and a bool mask (B, L), padded on the right (a causal model never reads it)."""
        width = max(len(r) for r in rows)
        pad = getattr(self.tokenizer, "pad_token_id", None) or 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
            mask[i, : len(r)] = True
        return ids, mask


def build_tiny_llava(folder: str | Path, *, seed: int = 0, image_size: int = 64,
                     vocab_texts: Iterable[str] = ()) -> Path:
    """A tiny random LLaVA (CLIP vision 2 layers, Llama hidden 64, 2 layers) + a byte-level BPE tokenizer built
    here, deterministic from ``seed``: any text tokenizes (merges learnt from ``vocab_texts`` when given)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        PreTrainedTokenizerFast,
    )

    special = ["<pad>", "<s>", "</s>", "<image>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(special + alphabet)}, merges=[]))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    texts = list(vocab_texts)
    if texts:
        tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=len(special) + len(alphabet) + 256,
                                                            special_tokens=special, initial_alphabet=alphabet,
                                                            show_progress=False))
    tok.add_special_tokens(special)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    patch = 8
    vision = CLIPVisionConfig(image_size=image_size, patch_size=patch, hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=2, intermediate_size=64, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=4, intermediate_size=128, max_position_embeddings=1024,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids(
        "<image>"), image_seq_length=(image_size // patch) ** 2)
    with torch.random.fork_rng(devices=[]):  # the same weights every time; the caller's RNG untouched
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    # Not model.save_pretrained: under torch.distributed it writes on rank 0 only, and every Ray Train worker
    # builds its own copy. The same two files it would write: the config and the weights as safetensors.
    from safetensors.torch import save_model

    model.config.save_pretrained(out)
    save_model(model, str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(out)
    return out


def _mlp(d_in: int, dim: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, dim), nn.GELU(), nn.Linear(dim, d_out))


def fourier_positions(h: int, w: int, dim: int, device: torch.device) -> torch.Tensor:
    """Fixed 2D sin/cos features of the grid's normalised positions: (h·w, dim), for any resolution."""
    n = dim // 4
    freqs = 2.0 ** torch.arange(n, device=device, dtype=torch.float32) * math.pi
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    ay, ax = gy.reshape(-1, 1) * freqs, gx.reshape(-1, 1) * freqs  # (h·w, n)
    pe = torch.cat([ay.sin(), ay.cos(), ax.sin(), ax.cos()], dim=1)
    return F.pad(pe, (0, dim - pe.shape[1]))  # (h·w, dim)


class PixelFeatures(nn.Module):
    """High-resolution image features at stride 4: the vision tower's patch grid (1x1 projected, upsampled) fused
    with a light conv stem on the full-resolution image."""

    def __init__(self, vision_dim: int, dim: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dim // 2, 3, stride=2, padding=1), nn.GELU(),
                                  nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1))
        self.proj = nn.Conv2d(vision_dim, dim, 1)
        self.fuse = nn.Sequential(nn.GroupNorm(1, dim), nn.GELU(), nn.Conv2d(dim, dim, 3, padding=1))

    def forward(self, image: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        B, N, Dv = patches.shape
        g = math.isqrt(N)
        grid = patches.transpose(1, 2).reshape(B, Dv, g, g)  # (B, Dv, g, g)
        h, w = image.shape[-2] // STRIDE, image.shape[-1] // STRIDE
        low = F.interpolate(self.proj(grid), size=(h, w), mode="bilinear", align_corners=False)  # (B, A, h, w)
        return self.fuse(self.stem(image) + low)  # (B, A, h, w)


class AlignerLayer(nn.Module):
    """Two-way attention (as SAM's mask decoder): the tokens attend to each other and to the pixels, then the
    pixels attend to the tokens. Pixel queries only ever see the few tokens, so it scales with H·W, not (H·W)²."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.to_pixels = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.to_tokens = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = _mlp(dim, 2 * dim, dim)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(4))

    def forward(self, tokens: torch.Tensor, pixels: torch.Tensor, pe: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        n0, n1, n2, n3 = self.norms
        t = n0(tokens)
        tokens = tokens + self.self_attn(t, t, t, need_weights=False)[0]  # (B, 4, A)
        tokens = tokens + self.to_pixels(n1(tokens), pixels + pe, pixels, need_weights=False)[0]
        tokens = tokens + self.mlp(n2(tokens))
        t = n3(tokens)
        pixels = pixels + self.to_tokens(pixels + pe, t, t, need_weights=False)[0]  # (B, h·w, A)
        return tokens, pixels


class DenseAligner(nn.Module):
    """The V-L dense aligner: [LOC]/[M]/[H]/[W] states + pixel features -> map logits (B, 3, h, w).

    Heat: the query ([LOC], or [M] for mask-type heat) dotted with every pixel feature; height/width: the [H]/[W]
    embeddings likewise (a sigmoid makes them fractions of the image side, as the target's channels 1-2).
    """

    def __init__(self, lmm_dim: int, vision_dim: int, dim: int, layers: int, heads: int) -> None:
        super().__init__()
        self.pixel_features = PixelFeatures(vision_dim, dim)
        self.tokens = nn.Sequential(nn.LayerNorm(lmm_dim), nn.Linear(lmm_dim, dim))
        self.layers = nn.ModuleList(AlignerLayer(dim, heads) for _ in range(layers))
        self.out_norm = nn.LayerNorm(dim)
        self.queries = nn.ModuleList(_mlp(dim, dim, dim) for _ in range(3))  # heat, height, width
        self.bias = nn.Parameter(torch.tensor([HEAT_PRIOR, 0.0, 0.0]))

    def forward(self, image: torch.Tensor, patches: torch.Tensor, states: torch.Tensor, mask_heat: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``states`` (B, 4, D): [LOC], [M], [H], [W]; ``mask_heat`` (B,) bool: heat from [M] rather than [LOC]."""
        pix = self.pixel_features(image, patches)  # (B, A, h, w)
        B, A, h, w = pix.shape
        pixels = pix.flatten(2).transpose(1, 2)  # (B, h·w, A)
        pe = fourier_positions(h, w, A, pix.device).to(pixels.dtype)[None]  # (1, h·w, A)
        tokens = self.tokens(states)  # (B, 4, A)
        for layer in self.layers:
            tokens, pixels = layer(tokens, pixels, pe)
        pixels = self.out_norm(pixels)
        heat_token = torch.where(mask_heat.view(B, 1), tokens[:, 1], tokens[:, 0])  # (B, A)
        q = torch.stack([self.queries[0](heat_token), self.queries[1](tokens[:, 2]), self.queries[2](tokens[:, 3])],
                        dim=1)  # (B, 3, A)
        logits = torch.einsum("bca,bpa->bcp", q, pixels) / math.sqrt(A) + self.bias.view(1, 3, 1)  # (B, 3, h·w)
        return logits.view(B, 3, h, w), pixels.transpose(1, 2).reshape(B, A, h, w)


class MaskDecoder(nn.Module):
    """Stage 2: (pixel features, heat, a per-instance prompt) at stride 4 -> one mask's logits at stride 4.

    The prompt is a Gaussian at the instance's centre with σ = its box side / 6 (CenterNet's radius rule, roughly),
    so the decoder knows which object and about how big; dilated convs carry it across the object.
    """

    def __init__(self, dim: int, hidden: int = 32, dilations: Sequence[int] = (1, 2, 4, 8)) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(dim + 2, hidden, 1)]
        for d in dilations:
            layers += [nn.GELU(), nn.Conv2d(hidden, hidden, 3, padding=d, dilation=d)]
        layers += [nn.GELU(), nn.Conv2d(hidden, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, pixels: torch.Tensor, heat: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """``pixels`` (N, A, h, w), ``heat`` (N, 1, h, w) in [0, 1], ``prompts`` (N, 1, h, w) -> logits (N, h, w)."""
        return self.net(torch.cat([pixels, heat, prompts], dim=1))[:, 0]


def box_prompts(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Gaussians (N, 1, h, w) on the stride-4 grid: centre and σ (side / 6, at least 2 px) from boxes (N, 4) xyxy
    in image pixels."""
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    sx = ((boxes[:, 2] - boxes[:, 0]) / 6).clamp(min=2.0)
    sy = ((boxes[:, 3] - boxes[:, 1]) / 6).clamp(min=2.0)
    ys = (torch.arange(h, device=boxes.device, dtype=boxes.dtype) + 0.5) * STRIDE  # cell centres in pixels
    xs = (torch.arange(w, device=boxes.device, dtype=boxes.dtype) + 0.5) * STRIDE
    gy = ((ys[None] - cy[:, None]) / sy[:, None]) ** 2  # (N, h)
    gx = ((xs[None] - cx[:, None]) / sx[:, None]) ** 2  # (N, w)
    return torch.exp(-(gy[:, :, None] + gx[:, None, :]) / 2)[:, None]  # (N, 1, h, w)


def upsample4(maps: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, 4h, 4w): cell i's value exactly on pixel 4i+2, linear in between, edges held."""
    h, w = maps.shape[-2:]
    padded = F.pad(maps, (1, 1, 1, 1), mode="replicate")
    # align_corners over (h+2) cells onto 4(h+2)-3 points is exactly 4 points per cell: point 4(i+1) is cell i.
    fine = F.interpolate(padded, size=(4 * h + 5, 4 * w + 5), mode="bilinear", align_corners=True)
    return fine[..., 2:2 + 4 * h, 2:2 + 4 * w]


def cells(maps: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`upsample4`: (B, C, 4h, 4w) -> (B, C, h, w), the values at pixels 4i+2."""
    return maps[..., 2::STRIDE, 2::STRIDE]


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CenterNet's penalty-reduced pixel-wise focal loss: positives are the cells where the target is exactly 1;
    elsewhere the penalty is reduced by (1 - target)^beta near a peak; both weighted by the (1 - p)^alpha / p^alpha
    focal terms; summed and divided by the number of positives (at least 1)."""
    logits, target = logits.float(), target.float()
    pos = target >= 1.0 - 1e-6
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    p = log_p.exp()
    pos_loss = -((1 - p) ** alpha) * log_p
    neg_loss = -((1 - target) ** beta) * (p ** alpha) * log_not_p
    return torch.where(pos, pos_loss, neg_loss).sum() / pos.sum().clamp(min=1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - Dice per mask (N, H, W), averaged over masks (smoothed by 1 so that an empty pair scores 0)."""
    p, t = logits.float().sigmoid().flatten(1), target.float().flatten(1)
    return (1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).mean()
