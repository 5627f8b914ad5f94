"""The degradation / task plugin library: contract, registry, composition, kernels, built-ins.

This is the package's one door: other packages import only the names below. ``registry`` is the plugin registry
(``registry.names()``, ``registry.get(name)``); the sample functions give the photographs scikit-image ships.
Where to start reading: ``base.py`` (the plugin contract and kit), then one family of built-ins
(``restoration.py``), then ``compose.py`` (chains and replay).
"""

from degradations import registry
from degradations.base import (
           Annotations,
           Degradation,
           PluginError,
           allowed,
           draw_bool,
           draw_float,
           draw_int,
           limits,
)
from degradations.compose import (
           Apply,
           Chain,
           Maybe,
           OneOf,
           Shuffle,
           Step,
           Synthesis,
           Task,
           replay,
           synthesize,
           task_for,
)
from degradations.heatmaps import (
           box_maps,
           decode_boxes,
           decode_mask,
           decode_points,
           draw_gaussian,
           find_peaks,
           gaussian_radius,
           mask_maps,
           point_maps,
)
from degradations.samples import bgr_to_rgb01, data_dir, default_image, load_rgb, sample_paths
from degradations.vision import INSTRUCTIONS as VISION_INSTRUCTIONS

__all__ = ["VISION_INSTRUCTIONS", "Annotations", "Apply", "Chain", "Degradation", "Maybe", "OneOf", "PluginError",
           "Shuffle", "Step", "Synthesis", "Task", "allowed", "bgr_to_rgb01", "box_maps", "data_dir", "decode_boxes",
           "decode_mask", "decode_points", "default_image", "draw_bool", "draw_float", "draw_gaussian", "draw_int",
           "find_peaks", "gaussian_radius", "limits", "load_rgb", "mask_maps", "point_maps", "registry", "replay",
           "sample_paths", "synthesize", "task_for"]
