"""The degradation / task plugin library: contract, registry, composition, kernels, built-ins."""

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

__all__ = ["Annotations", "Apply", "Chain", "Degradation", "Maybe", "OneOf", "PluginError", "Shuffle", "Step",
           "Synthesis", "Task", "allowed", "draw_bool", "draw_float", "draw_int", "limits", "replay", "synthesize",
           "task_for"]
