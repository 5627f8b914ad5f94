"""Size presets for :class:`training.model.omnilv.OmniLVConfig`: data, not flags.

``tiny`` runs a forward/backward on CPU in milliseconds (tests); ``small`` is the CPU quickstart;
``2b`` is the paper's Lumina-Next 2B backbone (dim 2304, 24 layers, 32 heads, patch 2) over a
4-channel SD/SDXL VAE latent with Gemma-2-2B text features (2304-d).
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(in_channels=3, patch_size=2, hidden_size=32, num_layers=2, num_attention_heads=2,
                 multiple_of=16, cross_attention_dim=32, adapter_dim=16, adapter_depth=1),
    "small": dict(in_channels=3, patch_size=2, hidden_size=96, num_layers=4, num_attention_heads=4,
                  multiple_of=32, cross_attention_dim=384, adapter_dim=64, adapter_depth=2),
    "base": dict(in_channels=4, patch_size=2, hidden_size=1024, num_layers=16, num_attention_heads=16,
                 num_kv_heads=8, multiple_of=256, cross_attention_dim=2304, adapter_dim=512, adapter_depth=2),
    "2b": dict(in_channels=4, patch_size=2, hidden_size=2304, num_layers=24, num_attention_heads=32,
               num_kv_heads=8, multiple_of=256, cross_attention_dim=2304, adapter_dim=1024, adapter_depth=2),
}


def preset(name: str) -> dict[str, Any]:
    """The config fields of preset ``name`` (a copy); a clear error lists the known names."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
    return {**PRESETS[name], "preset": name}
