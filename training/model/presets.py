"""The network's config, :class:`OmniLVConfig`, and its size presets: data, not flags.

The config lives here, apart from the torch code in ``omnilv.py``, so that a training config can be checked
against it (``model.overrides``) without importing torch or diffusers.

``tiny`` runs a forward/backward on CPU in milliseconds (tests); ``small`` is the CPU quickstart;
``2b`` is the paper's Lumina-Next 2B backbone, the shape of the Lumina-Next-SFT diffusers release (dim 2304,
24 layers, 32 heads, 8 key/value heads, patch 2) over a 4-channel SDXL VAE latent with Gemma-2B text features
(2048-d, its second-to-last layer). A run that starts from a pretrained transformer (``model.pretrained``) takes the
backbone's shape from that checkpoint's config instead (:mod:`training.model.pretrained`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from pipelines import Section


class OmniLVConfig(Section):
    """Everything needed to rebuild an OmniLV network; the constructor arguments are the config."""

    preset: str | None = None
    """Name of the preset this config came from (informational, kept in exports)."""
    in_channels: int = Field(3, ge=1)
    """Latent channels: 3 for the ``pixel`` codec, 4 (SD/SDXL) or 16 (SD3/Flux) for a VAE."""
    patch_size: int = Field(2, ge=1)
    """Side of a square latent patch; one patch is one token."""
    hidden_size: int = Field(32, ge=4)
    """Transformer width D."""
    num_layers: int = Field(2, ge=1)
    """Number of Lumina-Next DiT blocks."""
    num_attention_heads: int = Field(2, ge=1)
    """Attention heads; hidden_size / heads must be divisible by 4 (2D RoPE)."""
    num_kv_heads: int | None = None
    """Key/value heads for grouped-query attention; None = num_attention_heads."""
    multiple_of: int = Field(256, ge=1)
    """Feed-forward width is rounded up to a multiple of this."""
    ffn_dim_multiplier: float | None = None
    """Optional multiplier of the feed-forward width."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    qk_norm: bool = True
    """Normalise queries and keys (Lumina-Next)."""
    cross_attention_dim: int = Field(32, ge=1)
    """Text feature width T: must equal the text encoder's ``.dim``."""
    adapter_layers: Literal["first_half", "second_half", "all"] = "first_half"
    """Which DiT layers receive condition features (the paper: first_half)."""
    adapter_dim: int = Field(64, ge=1)
    """Width A of the condition adapter's tokens."""
    adapter_depth: int = Field(2, ge=0)
    """Residual MLP blocks in the adapter after the patchify stem."""
    visual_prompt: bool = True
    """Build the exemplar projector (stage 2 in-context prompts)."""

    @model_validator(mode="after")
    def _check(self) -> OmniLVConfig:
        heads = self.num_attention_heads
        if self.hidden_size % heads or (self.hidden_size // heads) % 4:
            raise ValueError(f"hidden_size {self.hidden_size} / num_attention_heads {heads} must be an integer "
                             "divisible by 4 (Lumina-Next's 2D RoPE)")
        if self.num_kv_heads is not None and heads % self.num_kv_heads:
            raise ValueError(f"num_attention_heads {heads} must be a multiple of num_kv_heads {self.num_kv_heads}")
        return self

    def injected_layers(self) -> list[int]:
        """Indices of the DiT layers whose input gets an adapter projection."""
        n, half = self.num_layers, self.num_layers // 2
        return {"first_half": list(range(max(half, 1))), "second_half": list(range(half, n)),
                "all": list(range(n))}[self.adapter_layers]


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(in_channels=3, patch_size=2, hidden_size=32, num_layers=2, num_attention_heads=2,
                 multiple_of=16, cross_attention_dim=32, adapter_dim=16, adapter_depth=1),
    "small": dict(in_channels=3, patch_size=2, hidden_size=96, num_layers=4, num_attention_heads=4,
                  multiple_of=32, cross_attention_dim=384, adapter_dim=64, adapter_depth=2),
    "base": dict(in_channels=4, patch_size=2, hidden_size=1024, num_layers=16, num_attention_heads=16,
                 num_kv_heads=8, multiple_of=256, cross_attention_dim=2048, adapter_dim=512, adapter_depth=2),
    "2b": dict(in_channels=4, patch_size=2, hidden_size=2304, num_layers=24, num_attention_heads=32,
               num_kv_heads=8, multiple_of=256, cross_attention_dim=2048, adapter_dim=1024, adapter_depth=2),
}


def preset(name: str) -> dict[str, Any]:
    """The config fields of preset ``name`` (a copy); a clear error lists the known names."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
    return {**PRESETS[name], "preset": name}
