"""OmniLV: diffusers' Lumina-Next DiT + our condition adapter + our visual-prompt projector.

Shapes (B batch, C latent channels, H×W latent size, p patch, N = (H/p)·(W/p) tokens, D hidden,
L text tokens, T text dim):

- ``x_t``, ``cond``, ``ref_input``, ``ref_target``: (B, C, H, W) latents in one space (VAE or pixels).
- ``t``: (B,) in [0, 1], Lumina-Next convention: t = 0 is noise, t = 1 is data.
- ``text``: (B, L, T) frozen encoder features, ``text_mask``: (B, L) bool.
- returns the velocity (B, C, H, W).

Only the adapter and the projector are ours; the backbone's layers are the unmodified
``LuminaNextDiT2DModel`` modules, driven here in the same order as its own ``forward`` so that
condition features can be added to the residual stream between layers:

- condition adapter: conv stem + patchify on ``cond`` -> (B, N, A) tokens -> residual MLPs ->
  one zero-initialised ``Linear(A, D)`` per injected layer, added to that layer's input
  (``adapter_layers`` = first_half | second_half | all; the paper injects into the first half);
- visual prompt: (ref_input ‖ ref_target) patchified -> (B, N, D) -> zero-initialised ``Linear``,
  ADDED to the input tokens (projection-addition), times the per-sample ``ref_mask``.

Both zero-inits make a fresh OmniLV compute exactly what the bare backbone computes.

Attention runs through :class:`LuminaSDPA`, diffusers' ``LuminaAttnProcessor2_0`` minus its dense mask: every image
token is real, so self-attention gets no mask at all (SDPA may then pick its flash kernel) and cross-attention a
(B, 1, 1, L) key mask, never the (B, H, N, N) / (B, H, N, L) tensors diffusers' processor expands to.
``activation_checkpointing`` (set by the training config) recomputes each DiT block in the backward pass.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import LuminaNextDiT2DModel
from diffusers.models.attention_processor import Attention, LuminaAttnProcessor2_0
from diffusers.models.embeddings import apply_rotary_emb, get_2d_rotary_pos_embed_lumina
from torch import nn
from torch.utils.checkpoint import checkpoint

from training.model.presets import OmniLVConfig
from training.model.presets import preset as _preset


def patchify_conv(channels: int, dim: int, patch: int) -> nn.Conv2d:
    """A stride-``patch`` conv: same token order (row-major over patches) as ``LuminaPatchEmbed``."""
    return nn.Conv2d(channels, dim, kernel_size=patch, stride=patch)


def zero_linear(d_in: int, d_out: int) -> nn.Linear:
    layer = nn.Linear(d_in, d_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class _MLPBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class ConditionAdapter(nn.Module):
    """Condition latent -> one (B, N, D) feature per injected layer (``self.layers``; zero at init)."""

    def __init__(self, cfg: OmniLVConfig) -> None:
        super().__init__()
        a = cfg.adapter_dim
        # A 3x3 conv before patchify gives each token context across patch borders.
        self.stem = nn.Conv2d(cfg.in_channels, a, kernel_size=3, padding=1)
        self.patch = patchify_conv(a, a, cfg.patch_size)
        self.blocks = nn.ModuleList(_MLPBlock(a) for _ in range(cfg.adapter_depth))
        self.layers = cfg.injected_layers()
        self.proj = nn.ModuleList(zero_linear(a, cfg.hidden_size) for _ in self.layers)

    def forward(self, cond: torch.Tensor) -> list[torch.Tensor]:
        h = self.patch(F.silu(self.stem(cond)))  # (B, A, H/p, W/p)
        h = h.flatten(2).transpose(1, 2)  # (B, N, A)
        for block in self.blocks:
            h = block(h)
        # A list, not a dict keyed by layer: ZeRO-3's forward hooks only understand str-keyed dicts.
        return [proj(h) for proj in self.proj]  # per injected layer: (B, N, D)


class PromptProjector(nn.Module):
    """Exemplar pair (ref_input, ref_target) -> (B, N, D) addition to the input tokens (zero at init)."""

    def __init__(self, cfg: OmniLVConfig) -> None:
        super().__init__()
        self.patch = patchify_conv(2 * cfg.in_channels, cfg.hidden_size, cfg.patch_size)
        self.out = zero_linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, ref_input: torch.Tensor, ref_target: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        pair = torch.cat([ref_input, ref_target], dim=1)  # (B, 2C, h, w)
        if pair.shape[-2:] != size:
            # Exemplars show the task on other content, possibly at another size: resampling keeps one token grid.
            pair = F.interpolate(pair, size=size, mode="bilinear", align_corners=False)
        h = self.patch(pair).flatten(2).transpose(1, 2)  # (B, N, D)
        return self.out(F.silu(h))  # (B, N, D)


class LuminaSDPA:
    """diffusers' ``LuminaAttnProcessor2_0`` (same projections, QK-norm, RoPE, scale) without its dense mask.

    ``attention_mask=None`` means every key is real: SDPA gets no mask, so it can use its flash kernel, whose
    grouped-query attention reads the ``kv_heads`` key/value heads as they are (CUDA, half precision). A key mask
    (B, L) is passed as a broadcast (B, 1, 1, L) view, with key/value heads repeated for the kernels that take a mask.
    """

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor | None = None, query_rotary_emb: torch.Tensor | None = None,
                 key_rotary_emb: torch.Tensor | None = None, base_sequence_length: int | None = None) -> torch.Tensor:
        B, N, _ = hidden_states.shape
        q, k, v = attn.to_q(hidden_states), attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        dtype, head_dim = q.dtype, q.shape[-1] // attn.heads
        kv_heads = k.shape[-1] // head_dim
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        q = q.view(B, -1, attn.heads, head_dim)  # (B, N, H, hd)
        k, v = k.view(B, -1, kv_heads, head_dim), v.view(B, -1, kv_heads, head_dim)  # (B, L, Hkv, hd)
        if query_rotary_emb is not None:
            q = apply_rotary_emb(q, query_rotary_emb, use_real=False)
        if key_rotary_emb is not None:
            k = apply_rotary_emb(k, key_rotary_emb, use_real=False)
        q, k = q.to(dtype), k.to(dtype)
        scale = None  # SDPA's default, 1/sqrt(hd) = attn.scale; proportional attention as diffusers does it
        if key_rotary_emb is not None and base_sequence_length is not None:
            scale = math.sqrt(math.log(N, base_sequence_length)) * attn.scale
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, N, hd), (B, Hkv, L, hd)
        rep = attn.heads // kv_heads
        native_gqa = rep > 1 and attention_mask is None and q.is_cuda and dtype in (torch.float16, torch.bfloat16)
        if rep > 1 and not native_gqa:  # query head h reads key/value head h // rep, as diffusers' repeat does
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        mask = None if attention_mask is None else attention_mask.bool().view(B, 1, 1, -1)  # (B, 1, 1, L)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=native_gqa)
        return out.transpose(1, 2).to(dtype)  # (B, N, H, hd)


def use_lumina_sdpa(backbone: nn.Module) -> None:
    """Give every attention of ``backbone`` a :class:`LuminaSDPA` (what OmniLV's forward runs with)."""
    for module in backbone.modules():
        if isinstance(module, Attention):
            module.set_processor(LuminaSDPA())


class OmniLV(nn.Module):
    """Backbone + condition adapter + visual-prompt projector; predicts the flow velocity."""

    activation_checkpointing: bool = False
    """Recompute each DiT block in the backward pass instead of keeping its activations (training only)."""

    def __init__(self, config: OmniLVConfig | None = None, **fields: Any) -> None:
        super().__init__()
        self.config = config if config is not None else OmniLVConfig(**fields)
        c = self.config
        self.backbone = LuminaNextDiT2DModel(
            sample_size=32, patch_size=c.patch_size, in_channels=c.in_channels, hidden_size=c.hidden_size,
            num_layers=c.num_layers, num_attention_heads=c.num_attention_heads,
            num_kv_heads=c.num_kv_heads or c.num_attention_heads,
            multiple_of=c.multiple_of, ffn_dim_multiplier=c.ffn_dim_multiplier, norm_eps=c.norm_eps,
            learn_sigma=False, qk_norm=c.qk_norm, cross_attention_dim=c.cross_attention_dim)
        # pad_token is torch.empty (garbage) and unused by the forward: zero and freeze it so exports are
        # deterministic and optimisers/ZeRO never see a parameter without gradients.
        with torch.no_grad():
            self.backbone.pad_token.zero_()
        self.backbone.pad_token.requires_grad_(False)
        use_lumina_sdpa(self.backbone)
        self.adapter = ConditionAdapter(c)
        self.prompt = PromptProjector(c) if c.visual_prompt else None
        self._rope: dict[tuple[int, int, str], torch.Tensor] = {}

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> OmniLV:
        """``OmniLV.from_preset("tiny", cross_attention_dim=384)``; overrides are config fields."""
        return cls(OmniLVConfig(**{**_preset(name), **overrides}))

    @property
    def multiple(self) -> int:
        """Latent height/width must be a multiple of this (the patch size)."""
        return self.config.patch_size

    def rope(self, h_tokens: int, w_tokens: int, device: torch.device) -> torch.Tensor:
        """Lumina-Next 2D RoPE for an (h_tokens, w_tokens) grid: complex (h, w, head_dim/2), cached."""
        key = (h_tokens, w_tokens, str(device))
        if key not in self._rope:
            freqs = get_2d_rotary_pos_embed_lumina(self.backbone.head_dim, h_tokens, w_tokens)
            self._rope[key] = freqs.to(device)
        return self._rope[key]

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, text: torch.Tensor,
                text_mask: torch.Tensor, ref_input: torch.Tensor | None = None,
                ref_target: torch.Tensor | None = None, ref_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity (B, C, H, W) at ``x_t`` (B, C, H, W), time ``t`` (B,) — see the module docstring."""
        bb, p = self.backbone, self.config.patch_size
        if type(bb.layers[0].attn1.processor) is LuminaAttnProcessor2_0:  # a backbone swapped in (an export's load)
            use_lumina_sdpa(bb)
        H, W = x_t.shape[-2:]
        if H % p or W % p or cond.shape != x_t.shape:
            raise ValueError(f"x_t {tuple(x_t.shape)} and cond {tuple(cond.shape)} must match, sides a multiple "
                             f"of patch_size {p}")
        # DeepSpeed bf16/fp16 casts the weights, not the batch: bring every input to the weights' dtype.
        dtype = bb.patch_embedder.proj.weight.dtype
        x_t, cond, text = x_t.to(dtype), cond.to(dtype), text.to(dtype)  # t stays fp32: bf16 would quantise it
        ref_input = ref_input.to(dtype) if ref_input is not None else None
        ref_target = ref_target.to(dtype) if ref_target is not None else None
        text_mask = _non_empty(text_mask.bool())  # (B, L)
        # The embedder's mask is all ones (every image token is real): self-attention runs without one.
        tokens, _, _, rope = bb.patch_embedder(x_t, self.rope(H // p, W // p, x_t.device))  # (B, N, D)
        tokens = tokens + self._prompt(tokens, ref_input, ref_target, ref_mask, (H, W))  # (B, N, D)
        temb = bb.time_caption_embed(t, text, text_mask)  # (B, min(D, 1024))
        feats = dict(zip(self.adapter.layers, self.adapter(cond), strict=True))  # {layer: (B, N, D)}
        for i, layer in enumerate(bb.layers):
            if i in feats:
                tokens = tokens + feats[i]
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                tokens = checkpoint(layer, tokens, None, rope, text, text_mask, temb, {}, use_reentrant=False)
            else:
                tokens = layer(tokens, None, rope, text, text_mask, temb=temb, cross_attention_kwargs={})
        tokens = bb.norm_out(tokens, temb)  # (B, N, p*p*C)
        return unpatchify(tokens, p, H, W)  # (B, C, H, W)

    def _prompt(self, tokens: torch.Tensor, ref_input: torch.Tensor | None, ref_target: torch.Tensor | None,
                ref_mask: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor | float:
        if self.prompt is None:
            return 0.0
        if ref_input is None or ref_target is None:
            # Still run the projector (masked off) so its parameters get zero gradients rather than none:
            # ZeRO and DDP both expect every trainable parameter to take part in every step.
            ref_input = ref_target = tokens.new_zeros(tokens.shape[0], self.config.in_channels, *size)
            ref_mask = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
        add = self.prompt(ref_input, ref_target, size)  # (B, N, D)
        if ref_mask is None:
            return add
        # where(), not multiply: a masked-out sample gets exactly +0 even if its exemplar were inf/NaN.
        return torch.where(ref_mask.bool().view(-1, 1, 1), add, torch.zeros_like(add))


def unpatchify(tokens: torch.Tensor, p: int, H: int, W: int) -> torch.Tensor:
    """(B, N, p*p*C) -> (B, C, H, W), the inverse of ``LuminaPatchEmbed`` (same as the backbone's forward)."""
    B = tokens.shape[0]
    C = tokens.shape[-1] // (p * p)
    x = tokens[:, : (H // p) * (W // p)].view(B, H // p, W // p, p, p, C)  # (B, h, w, p, p, C)
    return x.permute(0, 5, 1, 3, 2, 4).flatten(4, 5).flatten(2, 3)  # (B, C, H, W)


def _non_empty(mask: torch.Tensor) -> torch.Tensor:
    """An all-False text mask would make pooling and attention divide by zero: keep token 0 then.

    Without a branch on the data (no host sync): token 0 is or-ed with "this row is empty", False elsewhere.
    """
    first = torch.zeros_like(mask)
    first[:, 0] = True
    return mask | (first & ~mask.any(dim=1, keepdim=True))  # (B, L)
