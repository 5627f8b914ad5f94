"""Real sample photographs that scikit-image ships: the embedded default source, no download.

Only natural photographs are listed (no synthetic test patterns). Grey images are
expanded to RGB by the loaders; sizes range from 172x448 to 1411x1411.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from degradations.base import PluginError

#: File names inside ``skimage/data`` that are real photographs.
PHOTOS: tuple[str, ...] = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "coffee.png", "coins.png",
    "color.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png",
    "motorcycle_left.png", "motorcycle_right.png", "page.png", "retina.jpg", "rocket.jpg", "text.png",
)


def data_dir() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


def sample_paths(min_side: int = 0) -> list[Path]:
    """Sorted paths of the bundled photographs (optionally only those with min(H, W) >= min_side)."""
    paths = [data_dir() / n for n in PHOTOS if (data_dir() / n).is_file()]
    if min_side:
        paths = [p for p in paths if min(_size(p)) >= min_side]
    return sorted(paths)


def load_rgb(path: str | Path) -> np.ndarray:
    """A local image file -> float32 RGB in [0, 1] (the plugin boundary convention).

    8-bit PNGs are decoded by PIL (the same pixels as OpenCV's libpng, without its console warnings about an
    ICC profile, e.g. scikit-image's ``page.png``); everything else by OpenCV (16-bit kept)."""
    if str(path).lower().endswith(".png"):
        from PIL import Image

        with Image.open(path) as im:
            if im.mode in ("RGB", "RGBA", "L", "LA", "P"):
                rgb = np.asarray(im.convert("RGB"))
                return np.ascontiguousarray(rgb, dtype=np.float32) / np.float32(255.0)
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise PluginError(f"{path}: not a readable image")
    return bgr_to_rgb01(arr)


def bgr_to_rgb01(arr: np.ndarray) -> np.ndarray:
    """An OpenCV-decoded array (grey, BGR or BGRA; 8- or 16-bit) -> float32 RGB in [0, 1]."""
    if arr.ndim == 2:
        arr = cv2.cvtColor(arr, cv2.COLOR_GRAY2BGR)
    elif arr.shape[2] == 4:
        arr = arr[..., :3]
    peak = 65535.0 if arr.dtype == np.uint16 else 255.0
    return np.ascontiguousarray(arr[..., ::-1], dtype=np.float32) / np.float32(peak)


def default_image() -> np.ndarray:
    """The image previews use when none is given (the astronaut, 512x512)."""
    return load_rgb(data_dir() / "astronaut.png")


def _size(path: Path) -> tuple[int, int]:
    arr = cv2.imread(str(path), cv2.IMREAD_REDUCED_GRAYSCALE_8)
    return (arr.shape[0] * 8, arr.shape[1] * 8) if arr is not None else (0, 0)
