"""omnilv: build low-level-vision training corpora and train OmniLV models on Ray."""

__version__ = "0.1.0"
