"""Contact sheets: one row per plugin or chain preset, the clean image then several random draws.

Under each draw: the instruction and the sampled params, so a plugin author sees at a glance whether
the plugin does what its name says over its whole range.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from degradations.base import DEGRADING_DOMAINS, PluginError
from degradations.compose import Synthesis, synthesize, task_for

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_SCALE = 0.36
_LINE = 13


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _caption_lines(s: Synthesis, width: int, max_lines: int) -> list[str]:
    chars = max(10, width // 7)
    lines = textwrap.wrap(s.instruction, chars)[:2]
    for step in s.steps:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in step.params.items())
        lines += textwrap.wrap(f"{step.name}: {params}" if params else step.name, chars)
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [f"... {len(s.steps)} steps"]
    return lines


def _tile(img: np.ndarray, cell: int, lines: Sequence[str], caption_h: int) -> np.ndarray:
    """The image fitted into a ``cell`` square on white, the caption lines below it (uint8 RGB)."""
    h, w = img.shape[:2]
    f = cell / max(h, w)
    small = cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    out = np.full((cell + caption_h, cell, 3), 255, np.uint8)
    y0, x0 = (cell - small.shape[0]) // 2, (cell - small.shape[1]) // 2
    out[y0:y0 + small.shape[0], x0:x0 + small.shape[1]] = np.clip(small * 255 + 0.5, 0, 255).astype(np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(out, line, (3, cell + 12 + i * _LINE), _FONT, _SCALE, (20, 20, 20), 1, cv2.LINE_AA)
    return out


def contact_sheet(names: Sequence[str], image: np.ndarray, draws: int = 4, seed: int = 0,
                  cell: int = 256) -> np.ndarray:
    """A uint8 RGB sheet: for each name (plugin or chain preset) the clean image then ``draws`` outputs.

    Degradations show the degraded input; dense/stylization tasks show the target map.
    """
    max_lines = 7
    caption_h = 8 + _LINE * max_lines
    rows = []
    for r, name in enumerate(names):
        task = task_for(name)
        header = [f"{name}", f"({task.domain})", "clean"]
        tiles = [_tile(image, cell, header, caption_h)]
        for d in range(draws):
            s = synthesize(task, image, np.random.default_rng([seed, r, d]))
            shown = s.input if task.domain in DEGRADING_DOMAINS else s.target
            tiles.append(_tile(shown, cell, _caption_lines(s, cell, max_lines), caption_h))
        row = np.concatenate([np.pad(t, ((0, 0), (0, 4), (0, 0)), constant_values=255) for t in tiles], axis=1)
        rows.append(np.pad(row, ((0, 6), (0, 0), (0, 0)), constant_values=200))
    return np.concatenate(rows, axis=0)


def save_sheet(sheet: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise PluginError(f"{path}: could not write the contact sheet (is the extension .png or .jpg?)")
    return path
