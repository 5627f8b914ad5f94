"""Labelled picture sheets: what a person looks at (contact sheets, eval sheets, quickstart strips).

One layout everywhere: a header naming the columns, then per row a caption line (task, instruction, PSNR …)
above its images, each fitted into a square cell (nearest-neighbour when enlarged, so pixels stay visible).
Images are float RGB in [0, 1] or uint8; an absent image (None) leaves its cell blank.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
CAPTION = 18  # pixels of the caption line above each row
HEADER = 24


def to_u8(img: np.ndarray) -> np.ndarray:
    """uint8 RGB from float [0, 1] (clipped, rounded), 16-bit, grey or uint8 input."""
    if img.dtype == np.uint8:
        out = img
    elif img.dtype == np.uint16:
        out = (img >> 8).astype(np.uint8)
    else:
        out = np.clip(np.rint(np.asarray(img, dtype=np.float32) * 255), 0, 255).astype(np.uint8)
    return np.repeat(out[..., None], 3, -1) if out.ndim == 2 else out[..., :3]


def fit(img: np.ndarray, cell: int) -> np.ndarray:
    """``img`` scaled to fit a ``cell``-pixel square, centred on white."""
    u8 = to_u8(img)
    h, w = u8.shape[:2]
    s = cell / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    u8 = cv2.resize(u8, size, interpolation=cv2.INTER_NEAREST if s >= 1 else cv2.INTER_AREA)
    out = np.full((cell, cell, 3), 255, np.uint8)
    y, x = (cell - u8.shape[0]) // 2, (cell - u8.shape[1]) // 2
    out[y:y + u8.shape[0], x:x + u8.shape[1]] = u8
    return out


def text_strip(text: str, width: int, height: int, scale: float = 0.42, centred: bool = False) -> np.ndarray:
    """One line of ASCII text (Hershey fonts draw ASCII only) on white, cut with '…' to fit ``width``."""
    strip = np.full((height, width, 3), 255, np.uint8)
    line = text.encode("ascii", "replace").decode("ascii")
    while line and cv2.getTextSize(line, FONT, scale, 1)[0][0] > width - 8:
        line = line[:-2] + "~"
    tw, th = cv2.getTextSize(line, FONT, scale, 1)[0]
    x = max(4, (width - tw) // 2) if centred else 4
    cv2.putText(strip, line, (x, (height + th) // 2), FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def labelled_sheet(rows: Sequence[tuple[Sequence[np.ndarray | None], str]], columns: Sequence[str],
                   cell: int = 128) -> np.ndarray:
    """An RGB uint8 sheet: a header with ``columns``, then each row's caption above its images."""
    width = cell * len(columns)
    parts = [np.concatenate([text_strip(c, cell, HEADER, 0.5, centred=True) for c in columns], axis=1)]
    for images, caption in rows:
        if len(images) != len(columns):
            raise ValueError(f"a sheet row has {len(images)} images for {len(columns)} columns")
        parts.append(np.full((1, width, 3), 200, np.uint8))  # a thin rule between rows
        parts.append(text_strip(caption, width, CAPTION))
        blank = np.full((cell, cell, 3), 255, np.uint8)
        parts.append(np.concatenate([fit(im, cell) if im is not None else blank for im in images], axis=1))
    return np.concatenate(parts, axis=0)
