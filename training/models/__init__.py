"""OmniLV networks: the Lumina-Next backbone with our condition adapter and visual-prompt projector."""

from training.models.omnilv import OmniLV, OmniLVConfig
from training.models.presets import PRESETS

__all__ = ["PRESETS", "OmniLV", "OmniLVConfig"]
