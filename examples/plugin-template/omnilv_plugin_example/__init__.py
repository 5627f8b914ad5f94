"""Example third-party omnilv plugin package (see README.md)."""

from omnilv_plugin_example.plugin import ChromaticAberration

__all__ = ["ChromaticAberration"]
