"""The OmniLV model: the network (diffusers' Lumina-Next DiT + our adapter), size presets, the flow-matching
objective, the frozen encoders, starting from a pretrained Lumina-Next transformer, and the exported-model format.

Where to start reading: ``omnilv.py`` (the network), then ``flow.py`` (loss and sampler).
"""

from omnilv.lazy import door

__all__, __getattr__ = door(__name__, {
    "OmniLV": ".omnilv", "OmniLVConfig": ".presets", "PRESETS": ".presets", "preset": ".presets",
    "FlowMatching": ".flow", "null_text": ".flow",
    "ImageCodec": ".encoders", "TextEncoder": ".encoders", "text_width": ".encoders", "codec_channels": ".encoders",
    "PretrainedError": ".pretrained", "TensorNote": ".pretrained", "transformer_dir": ".pretrained",
    "backbone_config": ".pretrained", "backbone_fields": ".pretrained", "peek_backbone_config": ".pretrained",
    "check_fit": ".pretrained", "load_backbone": ".pretrained", "format_notes": ".pretrained",
    "save_release": ".pretrained",
    "export_model": ".export", "load_exported": ".export", "load_network": ".export", "read_meta": ".export",
    "ExportError": ".export",
    "Lumen": ".lumen", "build_tiny_llava": ".lumen_parts", "export_lumen": ".lumen", "load_lumen": ".lumen",
    "predict_image": ".lumen", "LumenPrompt": ".lumen_parts", "LumenError": ".lumen_parts",
    "LUMEN_TASKS": ".lumen_parts",
})
