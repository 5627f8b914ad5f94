"""Per-op throughput of our degradation kernels vs albumentations 2.0.8 (and BasicSR where it imports).

Same real images (512x512 crops of the bundled scikit-image photos), identical parameters, same run,
one CPU core and one thread on both sides, calls interleaved. Each side reads its own copy of the images,
so neither finds its input already in cache because the other just read it (memory-bound ops such as
the x4 downscale run twice as fast on a warm input), and calls are timed on the process CPU clock, so a
shared machine's other tenants are charged to neither side. Our side is timed through the plugin's
``apply`` (float32 RGB in [0, 1] in and out, our boundary convention). Albumentations runs twice per op:
``ratio`` compares with it on the same float32 input, ``ratio_vs_uint8`` on uint8 input, where some of its
ops (posterize, equalize, JPEG) are table look-ups on bytes. The uint8 path is the one a user of
albumentations runs: images load as uint8 (OpenCV, PIL) and albumentations keeps them so unless told to
convert (``ToFloat``); the float32 column is the same-input comparison that our float32 boundary calls for.

Rows marked ``same_algorithm: false`` (iso noise, fog, rain, snow) time two different models of the same
effect; they are listed, never counted in the summary of shared ops. Our Gaussian draws are not exact
normals: they come from a 65,536-entry quantile table (tails capped at 4.3 sigma; the distribution is
tested against exact normals at the size of a 1024² image in tests/degradations/test_kernels.py).

    python bench/degradations.py            # ~1-2 minutes; writes bench/results/degradations.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy / cv2 load their thread pools
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import sys  # noqa: E402

# Run as a script, this file's folder comes first on sys.path and its name would shadow the package.
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from degradations import registry  # noqa: E402
from degradations.samples import load_rgb, sample_paths  # noqa: E402

OUT = Path(__file__).parent / "results" / "degradations.json"
SIZE = 512
BUDGET_S = 0.8  # CPU-seconds per side per op
MAX_ROUNDS = 300


def images() -> list[np.ndarray]:
    """Centre 512x512 crops of every bundled photo that is large enough."""
    out = []
    for p in sample_paths(min_side=SIZE):
        img = load_rgb(p)
        y, x = (img.shape[0] - SIZE) // 2, (img.shape[1] - SIZE) // 2
        out.append(np.ascontiguousarray(img[y:y + SIZE, x:x + SIZE]))
    return out


def ours(name: str, **params) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    plugin = registry.create(name)
    return lambda img, rng: plugin.apply(img, rng, **params)


def albu(transform) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    transform.set_random_seed(0)
    return lambda img, rng: transform(image=img)["image"]


def cases() -> list[tuple[str, Callable, Callable, str]]:
    """(op, ours, albumentations, note) with the same parameters on both sides."""
    import albumentations as A

    return [
        ("gaussian_noise", ours("gaussian_noise", sigma=0.1, gray=False),
         albu(A.GaussNoise(std_range=(0.1, 0.1), mean_range=(0, 0), per_channel=True, p=1)),
         "sigma 0.1, per channel; ours: table normals capped at 4.3 sigma, theirs: exact normals"),
        ("iso_noise", ours("iso_noise", intensity=0.1, color_shift=0.03),
         albu(A.ISONoise(color_shift=(0.03, 0.03), intensity=(0.1, 0.1), p=1)), "intensity 0.1, colour 0.03"),
        ("salt_pepper", ours("salt_pepper_noise", amount=0.05, salt_ratio=0.5),
         albu(A.SaltAndPepper(amount=(0.05, 0.05), salt_vs_pepper=(0.5, 0.5), p=1)), "5% of pixels"),
        ("gaussian_blur", ours("gaussian_blur", sigma=2.0, kernel_size=13),
         albu(A.GaussianBlur(blur_limit=(13, 13), sigma_limit=(2.0, 2.0), p=1)), "sigma 2, 13x13"),
        ("motion_blur", ours("motion_blur", kernel_size=15, angle=30.0),
         albu(A.MotionBlur(blur_limit=(15, 15), angle_range=(30, 30), direction_range=(0, 0), allow_shifted=False,
                           p=1)), "15 px at 30 deg"),
        ("defocus", ours("defocus_blur", radius=5.0),
         albu(A.Defocus(radius=(5, 5), alias_blur=(0.1, 0.1), p=1)), "radius 5"),
        ("jpeg", ours("jpeg", quality=50), albu(A.ImageCompression(quality_range=(50, 50), p=1)), "quality 50"),
        ("webp", ours("webp", quality=50),
         albu(A.ImageCompression(compression_type="webp", quality_range=(50, 50), p=1)), "quality 50"),
        ("downscale_x4", ours("resize", scale=0.25, interpolation="area"),
         albu(A.Resize(SIZE // 4, SIZE // 4, interpolation=cv2.INTER_AREA, p=1)), "area, 512 -> 128"),
        ("fog", ours("haze", beta=1.5, airlight=0.85, horizon=0.5),
         albu(A.RandomFog(fog_coef_range=(0.5, 0.5), p=1)), "fog"),
        ("rain", ours("rain", density=0.01, length=20, angle=80.0, opacity=0.6),
         albu(A.RandomRain(slant_range=(10, 10), drop_length=20, rain_type="default", p=1)), "rain streaks"),
        ("snow", ours("snow", density=0.005, size=2.0, veil=0.2),
         albu(A.RandomSnow(snow_point_range=(0.2, 0.2), method="bleach", p=1)), "snow"),
        ("posterize", ours("posterize", bits=3), albu(A.Posterize(num_bits=3, p=1)), "3 bits"),
        ("equalize", ours("histogram_equalization", method="global", clip_limit=2.0),
         albu(A.Equalize(mode="cv", by_channels=False, p=1)), "global, luminance"),
        ("spatter", ours("spatter", mode="rain", intensity=0.6, cutout=0.68),
         albu(A.Spatter(mode="rain", intensity=(0.6, 0.6), cutout_threshold=(0.68, 0.68), p=1)),
         "its kernels, our liquid layer"),
        ("shadow", ours("shadow", count=2, intensity=0.5),
         albu(A.RandomShadow(shadow_roi=(0, 0, 1, 1), num_shadows_limit=(2, 2),
                             shadow_intensity_range=(0.5, 0.5), p=1)),
         "same polygon model, float32"),
    ]


#: Rows that time two different algorithms for one effect: reported, never counted as a shared op.
DIFFERENT = {
    "iso_noise": "ours: brightness-scaled Gaussian (table) luminance noise + half-resolution chroma; theirs: "
                 "HLS conversion + Poisson luminance + Gaussian hue noise at full resolution",
    "fog": "ours: atmospheric scattering over a depth proxy; theirs: alpha-blended random circles, blurred",
    "rain": "ours: motion-blurred streak layer; theirs: drawn line segments + blur + brightness change",
    "snow": "ours: two flake layers over a veil; theirs: HLS 'bleach', lightness scaled up below a threshold",
}
#: What a user of albumentations runs: uint8 images (see the module docstring).
USER_PATH = "uint8"


def rates(fns: list[Callable], inputs: list[list[np.ndarray]]) -> list[float]:
    """Images per second of each ``fns[i]`` on ``inputs[i]``, calls interleaved round by round.

    Each call is timed on the process's CPU clock, so time the core spends on other tenants' work is
    charged to neither side, and interleaving makes the cache pressure of a busy machine hit every side
    alike; each rate is 1 / median call time over at least 5 rounds and ``BUDGET_S`` CPU-seconds per side.
    """
    rng = np.random.default_rng(0)
    for fn, imgs in zip(fns, inputs, strict=True):
        fn(imgs[0], rng)  # warm-up (lazy imports, tables)
    times: list[list[float]] = [[] for _ in fns]
    start = time.process_time()
    rounds = 0
    while rounds < 5 or (time.process_time() - start < BUDGET_S * len(fns) and rounds < MAX_ROUNDS):
        for fn, imgs, ts in zip(fns, inputs, times, strict=True):
            img = imgs[rounds % len(imgs)]
            t0 = time.process_time()
            fn(img, rng)
            ts.append(time.process_time() - t0)
        rounds += 1
    return [1.0 / statistics.median(ts) for ts in times]


def summarize(rows: list[dict]) -> dict:
    """Counts over the shared ops only (rows with ``same_algorithm``), against each albumentations path."""
    shared = [r for r in rows if r["same_algorithm"]]
    out: dict = {"shared_ops": len(shared), "excluded_different_algorithms": [r["op"] for r in rows
                                                                             if not r["same_algorithm"]]}
    for path, key in (("float32", "ratio"), ("uint8", "ratio_vs_uint8")):
        ratios = [r[key] for r in shared]
        out[path] = {"at_least_1x": sum(x >= 1.0 for x in ratios),
                     "below_1x": [r["op"] for r in shared if r[key] < 1.0],
                     "geomean": round(float(np.exp(np.mean(np.log(ratios)))), 2)}
    return out


def basicsr_status() -> str:
    try:
        from basicsr.data import degradations  # noqa: F401
    except Exception as exc:  # any import failure is the answer we report
        return f"not importable: {type(exc).__name__}: {exc}"
    return "importable (not yet benchmarked)"


def main() -> int:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})  # one core, like `taskset -c 1`
    cv2.setNumThreads(1)
    imgs = images()
    theirs_f32 = [i.copy() for i in imgs]  # same pixels, own memory: see the module docstring
    u8 = [np.clip(i * 255 + 0.5, 0, 255).astype(np.uint8) for i in imgs]
    rows = []
    print(f"{'op':16s} {'ours/s':>8s} {'albu f32':>9s} {'ratio':>6s} {'albu u8':>8s} {'ratio':>6s}  note "
          f"(ratio = ours / albumentations; * = different algorithms, not a shared op)")
    for op, mine, theirs, note in cases():
        r_ours, r_f32, r_u8 = rates([mine, theirs, theirs], [imgs, theirs_f32, u8])
        same = op not in DIFFERENT
        rows.append({"op": op, "same_algorithm": same, "ours_per_s": round(r_ours, 2),
                     "albumentations_float32_per_s": round(r_f32, 2), "ratio": round(r_ours / r_f32, 2),
                     "albumentations_uint8_per_s": round(r_u8, 2), "ratio_vs_uint8": round(r_ours / r_u8, 2),
                     "note": note if same else f"{note}: different algorithms ({DIFFERENT[op]})"})
        mark = " " if same else "*"
        print(f"{op:15s}{mark} {r_ours:8.1f} {r_f32:9.1f} {r_ours / r_f32:5.2f}x {r_u8:8.1f} {r_ours / r_u8:5.2f}x  "
              f"{note}", flush=True)
    summary = summarize(rows)
    print(f"shared ops (same algorithm): {summary['shared_ops']}; ours >= 1.0x on {summary['float32']['at_least_1x']} "
          f"vs albumentations float32, on {summary['uint8']['at_least_1x']} vs its uint8 path, the one its users run "
          f"(below 1.0x on uint8: {', '.join(summary['uint8']['below_1x']) or 'none'})")
    import albumentations

    result = {"image_size": [SIZE, SIZE], "images": len(imgs), "threads": 1, "clock": "process CPU time",
              "python": sys.version.split()[0],
              "machine": platform.machine(), "opencv": cv2.__version__, "numpy": np.__version__,
              "albumentations": albumentations.__version__, "albumentations_user_path": USER_PATH,
              "basicsr": basicsr_status(), "summary": summary, "ops": rows}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"basicsr: {result['basicsr']}\nwrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
