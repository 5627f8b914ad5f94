"""The per-sample stage: decode/validate/convert a source → crop → synthesize → exemplar → Sample.

Bad inputs never raise out of here: :func:`decode_image` raises :class:`Reject`
with a reason code that the shard task counts. Every random draw of a sample
comes from its own generator, seeded from (corpus seed, source id, variant).

A task that ``requires`` annotations (the vision-centric ones) gets the source's
annotations seen through the crop (:func:`pipelines.coco.crop_annotations`) as
``ann=``, and the sample's json keeps them under ``"annotations"``, so it replays
from its json alone. Such a sample gets no exemplar: its target answers a question
about this image (a category, an expression) that another image need not contain.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import warnings
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from degradations import Annotations, PluginError, Task, replay, synthesize
from pipelines.config import CorpusConfig, GeometryConfig
from pipelines.schema import SCHEMA_VERSION, Sample, sample_key

SEED_BOUND = 2**63 - 1  # an exemplar step's own seed, drawn like the query's (degradations.compose)

#: Reason codes a skipped source can get (the report lists counts per code).
REASONS = ("empty", "not_image", "truncated", "too_large", "too_small", "unreadable", "synth_error", "flat_crop",
           "no_annotations", "bad_annotations")
#: The reasons that skip one sample (source#variant) rather than a whole source: its crop is flat, its task needs
#: annotations the source lacks (or the crop leaves nothing to ask about), or they do not fit the image.
SAMPLE_REASONS = ("synth_error", "flat_crop", "no_annotations", "bad_annotations")
_EXIF_ORIENTATION = 0x0112
#: Decoded sources a shard task keeps for reuse as exemplars, at most (besides the ones in use).
CACHE_BYTES = 512 * 2**20
#: A shard task's peak per source pixel (decode, orientation, float conversion and resize of an 8-bit RGB(A)
#: photo, plus an exemplar held beside it), measured in tests/pipelines/test_corpus_memory.py with margin.
PEAK_BYTES_PER_PIXEL = 20
#: A shard task's own footprint before any source (Python, NumPy, OpenCV, PIL, the plugins).
TASK_BASE_BYTES = 512 * 2**20


class Reject(Exception):
    """A source that cannot become a sample; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Clean:
    """A decoded source (after orientation and resize; crops convert to float32 RGB [0, 1]) plus provenance."""

    uri: str
    sha256: str
    image: Pixels
    orig_size: tuple[int, int]  # (H, W) as decoded, after EXIF orientation
    record: dict[str, Any] | None = None  # its COCO annotations (pipelines.coco.CocoSet.record), if any
    ann: Annotations | None = None  # the record decoded at the resized size (by :meth:`annotations`)

    @property
    def nbytes(self) -> int:
        return self.image.nbytes + (0 if self.ann is None or self.ann.masks is None else self.ann.masks.nbytes)

    def annotations(self) -> Annotations:
        """The source's annotations at its decoded (resized) size, decoded once; :class:`Reject` ``no_annotations``
        for a source without any, ``bad_annotations`` for ones that do not fit the image."""
        if self.record is None:
            raise Reject("no_annotations", "the task needs annotations; this source has none (not a COCO source)")
        if self.ann is None:
            from pipelines.coco import CocoError, annotations_from_record, resize_annotations

            try:
                full = annotations_from_record(self.record, *self.orig_size, where=self.uri)
            except CocoError as exc:
                raise Reject("bad_annotations", str(exc)) from None
            self.ann = resize_annotations(full, self.orig_size, self.image.shape[:2])
        return self.ann


def sample_rng(seed: int, source_id: str, variant: int, stream: str = "sample") -> np.random.Generator:
    """The generator of one sample: a pure function of (corpus seed, source id, variant, stream)."""
    words = np.frombuffer(hashlib.sha256(f"{stream}\0{source_id}".encode()).digest()[:16], dtype="<u4")
    return np.random.default_rng([seed, variant, *(int(w) for w in words)])


# -- decode / validate / convert -----------------------------------------------------------------
#: The formats a corpus source may be; every other one PIL knows (EPS runs Ghostscript, PDF, PSD, …) is refused
#: before its codec runs.
FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP")


@dataclass
class Pixels:
    """A decoded source kept in its own dtype (H, W, C after orientation) plus how a crop of it becomes float32
    RGB in [0, 1]. Every conversion works pixel by pixel, so converting a crop gives the very values cropping the
    converted image would, and a held source costs 3–8 bytes per pixel instead of 12."""

    raw: np.ndarray
    kind: str  # "rgb8" (RGB or RGBA uint8), "bgr16" (OpenCV's 16-bit BGR(A)), "grey" (÷ scale), "float" (as is)
    scale: float = 1.0

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.raw.shape[0], self.raw.shape[1], 3)

    @property
    def nbytes(self) -> int:
        return int(self.raw.nbytes)

    def crop(self, box: list[int]) -> np.ndarray:
        top, left, h, w = box
        return self.convert(self.raw[top:top + h, left:left + w])

    def full(self, band: int = 1 << 20) -> np.ndarray:
        """The whole image as float32 RGB, converted in bands of rows (about ``band`` pixels each), so the
        conversion's temporaries stay small beside the one output buffer."""
        if self.kind == "float":
            return self.raw
        h, w = self.raw.shape[:2]
        out = np.empty((h, w, 3), np.float32)
        rows = max(1, band // max(1, w))
        for top in range(0, h, rows):
            out[top:top + rows] = self.convert(self.raw[top:top + rows])
        return out

    def convert(self, raw: np.ndarray) -> np.ndarray:
        if self.kind == "float":
            return np.ascontiguousarray(raw, dtype=np.float32)
        if self.kind == "grey":
            arr = np.clip(_divided(raw[..., 0], self.scale), 0, 1)
            return np.ascontiguousarray(np.repeat(arr[..., None], 3, axis=2))
        arr = _divided(raw, self.scale)
        if self.kind == "bgr16":
            rgb = np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr[..., [2, 1, 0]]
        else:
            rgb = arr[..., :3]
        return _composite(rgb, arr[..., 3:4] if arr.shape[2] == 4 else None)


def _divided(raw: np.ndarray, scale: float) -> np.ndarray:
    """``raw / float32(scale)`` as float32, in one buffer (the same values as the two-buffer expression)."""
    arr = raw.astype(np.float32)
    return np.divide(arr, np.float32(scale), out=arr)


def decode_image(data: bytes, geo: GeometryConfig) -> tuple[np.ndarray, tuple[int, int]]:
    """Source bytes → float32 RGB in [0, 1] (oriented, resized per ``geo``), or :class:`Reject`."""
    pixels, orig = decode_pixels(data, geo)
    return pixels.full(), orig


def decode_pixels(data: bytes, geo: GeometryConfig) -> tuple[Pixels, tuple[int, int]]:
    """Source bytes → :class:`Pixels` (oriented, resized per ``geo``) and the oriented size, or :class:`Reject`.

    Only :data:`FORMATS` are opened, and the header's size is checked against ``geo.max_pixels`` before a pixel
    is decoded."""
    if not data:
        raise Reject("empty")
    try:
        with warnings.catch_warnings():
            # our own max_pixels check below decides; PIL still refuses (raises) above twice its own limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=FORMATS)
            w, h = im.size
            if w * h > geo.max_pixels:
                raise Reject("too_large", f"{w}x{h} exceeds max_pixels={geo.max_pixels}")
            im.load()  # a truncated file raises here, before any pixel is used
    except Reject:
        raise
    except (UnidentifiedImageError, SyntaxError):
        raise Reject("not_image", f"not one of the source formats {', '.join(FORMATS)}") from None
    except Image.DecompressionBombError as exc:
        raise Reject("too_large", str(exc)) from None
    except OSError as exc:
        reason = "truncated" if "truncated" in str(exc) or "broken data" in str(exc) else "unreadable"
        raise Reject(reason, str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - a codec bug on a hostile file must not kill the shard
        raise Reject("unreadable", f"{type(exc).__name__}: {exc}") from None
    try:
        orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
        pixels = _pixels(im, data)
        pixels.raw = _orient(pixels.raw, orientation)
    except Exception as exc:  # noqa: BLE001 - e.g. a corrupt EXIF block or an exotic mode
        raise Reject("unreadable", f"{type(exc).__name__}: {exc}") from None
    finally:
        im.close()
    orig = pixels.raw.shape[:2]
    if geo.resize_short and min(orig) != geo.resize_short:
        full = pixels.full()
        del pixels  # the resize reads the float image only
        pixels = Pixels(_resize_short(full, geo.resize_short), "float")
    if min(pixels.shape[:2]) < geo.min_size:
        raise Reject("too_small", f"{pixels.shape[1]}x{pixels.shape[0]} below min_size={geo.min_size}")
    return pixels, orig


def _pixels(im: Image.Image, data: bytes) -> Pixels:
    """Any PIL mode → :class:`Pixels`; 16-bit kept at full precision, alpha composited on white when converted."""
    if im.format == "PNG" and data[12:16] == b"IHDR" and data[24] == 16:
        # PIL reduces 16-bit RGB(A) PNGs to 8 bits; OpenCV keeps all 16 (IHDR byte 24 is the bit depth).
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
        if arr is not None and arr.dtype == np.uint16:
            return Pixels(arr[..., None] if arr.ndim == 2 else arr, "bgr16", 65535.0)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = _array(im)
        return Pixels(arr[..., None], "grey", 65535.0 if arr.max(initial=0) > 255 or "16" in im.mode else 255.0)
    if im.mode == "F":
        return Pixels(np.clip(np.asarray(im, dtype=np.float32), 0, 1)[..., None].repeat(3, axis=2), "float")
    has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
    mode = "RGBA" if has_alpha else "RGB"  # CMYK, YCbCr, L, 1, P -> RGB
    return Pixels(_array(im if im.mode == mode else im.convert(mode)), "rgb8", 255.0)


def _array(im: Image.Image, block: int = 1 << 22) -> np.ndarray:
    """``np.asarray(im)`` in bands of about ``block`` bytes: PIL's whole-image ``tobytes`` would hold two more
    copies of the image at once."""
    w, h = im.size
    first = np.asarray(im.crop((0, 0, w, 1)))
    out = np.empty((h, *first.shape[1:]), first.dtype)
    rows = max(1, block // max(1, first.nbytes))
    for top in range(0, h, rows):
        out[top:top + rows] = np.asarray(im.crop((0, top, w, min(h, top + rows))))
    return out


def _composite(rgb: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    if alpha is not None:
        out = rgb * alpha
        out += 1.0 - alpha  # transparent pixels become white, not black garbage
        return out
    return np.ascontiguousarray(rgb, dtype=np.float32)


def _orient(img: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1–8) so the pixels are upright."""
    ops = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
           7: lambda a: a[::-1, ::-1].transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1)}
    fn = ops.get(int(orientation) if isinstance(orientation, int) else 1)
    return np.ascontiguousarray(fn(img)) if fn else img


def _resize_short(img: np.ndarray, short: int) -> np.ndarray:
    if not short or min(img.shape[:2]) == short:
        return img
    h, w = img.shape[:2]
    s = short / min(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
    return np.clip(cv2.resize(img, size, interpolation=interp), 0, 1).astype(np.float32, copy=False)


def load_clean(uri: str, data: bytes, geo: GeometryConfig) -> Clean:
    """Decode a fetched source into a :class:`Clean` (raises :class:`Reject`)."""
    img, orig = decode_pixels(data, geo)
    return Clean(uri, hashlib.sha256(data).hexdigest(), img, orig)


# -- crop + synthesize ---------------------------------------------------------------------------
def crop_box(shape: tuple[int, ...], geo: GeometryConfig, rng: np.random.Generator) -> list[int]:
    """[top, left, height, width] of the crop (drawn from ``rng`` for random crops)."""
    h, w, size = shape[0], shape[1], geo.crop_size
    if geo.crop == "center":
        return [(h - size) // 2, (w - size) // 2, size, size]
    return [int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1)), size, size]


#: Rec. 601 luma weights: the luminance :func:`texture` measures.
LUMA = np.array([0.299, 0.587, 0.114])


def texture(crop: np.ndarray) -> float:
    """The crop's RMS contrast: the standard deviation of its luminance, on [0, 1] (float64, so the same on every
    machine). Unlike a Laplacian it does not reward sensor noise or punish a smooth gradient: a grey patch, a clear
    sky or a black border scores below 0.01, ordinary photo content above 0.02."""
    return float(np.std(crop.astype(np.float64) @ LUMA))


def draw_crop(img: np.ndarray | Pixels, geo: GeometryConfig, rng: np.random.Generator) -> tuple[list[int], np.ndarray,
                                                                                              int]:
    """(box, float32 crop, tries): crops drawn from ``rng`` until one has ``texture >= geo.min_texture``, at most
    ``geo.crop_tries`` (a centre crop once); all flat is :class:`Reject` ``flat_crop``. A crop that passes first
    takes the same draws as a build without the check."""
    tries = 1 if geo.crop == "center" else geo.crop_tries
    for n in range(1, tries + 1):
        box = crop_box(img.shape, geo, rng)
        crop = cut(img, box)
        if geo.min_texture <= 0 or texture(crop) >= geo.min_texture:
            return box, crop, n
    raise Reject("flat_crop", f"{tries} crop(s) below min_texture={geo.min_texture}")


def cut(img: np.ndarray | Pixels, box: list[int]) -> np.ndarray:
    """The float32 crop ``box`` of a decoded image or of :class:`Pixels` (converting only the crop)."""
    if isinstance(img, Pixels):
        return img.crop(box)
    top, left, h, w = box
    return np.ascontiguousarray(img[top:top + h, left:left + w])


def pick_task(tasks: list[tuple[str, float]], rng: np.random.Generator) -> str:
    weights = np.asarray([w for _, w in tasks], dtype=np.float64)
    return tasks[int(rng.choice(len(tasks), p=weights / weights.sum()))][0]


def make_part(task: Task, clean: Clean, cfg: CorpusConfig, variant: int, stream: str) -> tuple[Any, dict]:
    """Crop and synthesize one (input, target) pair; returns the Synthesis and its provenance."""
    full = clean.annotations() if requirements(task) else None
    rng = sample_rng(cfg.output.seed, clean.uri, variant, stream)
    box, crop, tries = draw_crop(clean.image, cfg.geometry, rng)
    ann, extra = None, _tries(tries)
    if full is not None:
        from pipelines.coco import annotations_from_json, annotations_to_json, crop_annotations

        extra["annotations"] = annotations_to_json(crop_annotations(full, box), crop.shape[:2])
        ann = annotations_from_json(extra["annotations"])  # exactly what a replay from the json gets
    try:
        syn = synthesize(task, crop, rng, ann=ann)
    except PluginError as exc:
        if ann is None:
            raise
        raise Reject("no_annotations", str(exc)) from None  # e.g. nothing to ask about in this crop
    prov = {"source": clean.uri, "source_sha256": clean.sha256, "variant": variant, "stream": stream,
            "crop": box, "source_size": list(clean.orig_size), "resized_size": list(clean.image.shape[:2]),
            "steps": [s.to_json() for s in syn.steps], **extra}
    return syn, prov


def requirements(node: Any) -> tuple[str, ...]:
    """The annotation fields a task (or any node of its chain) needs, sorted; empty for image-only tasks."""
    if isinstance(node, Task):
        node = node.node
    plugin = getattr(node, "plugin", None)
    found = set(plugin.requires) if plugin is not None else set()
    for child in (*getattr(node, "nodes", ()), *([node.node] if hasattr(node, "node") else [])):
        found.update(requirements(child))
    return tuple(sorted(found))


def _tries(n: int) -> dict[str, int]:
    """The provenance of redrawn crops: how many were drawn (only when more than one, so records of crops that
    passed at once read as before)."""
    return {"crop_tries": n} if n > 1 else {}


def make_sample(task: Task, clean: Clean, variant: int, cfg: CorpusConfig,
                exemplar: Clean | None = None) -> Sample:
    """One schema sample: the json record holds everything :func:`regenerate` needs."""
    syn, prov = make_part(task, clean, cfg, variant, "sample")
    meta: dict[str, Any] = {**syn.record(), **prov, "seed": cfg.output.seed, "key": sample_key(clean.uri, variant),
                            "instruction": syn.instruction, "size": list(syn.input.shape[:2]),
                            "corpus_version": SCHEMA_VERSION, "geometry": cfg.geometry.model_dump(mode="json")}
    ref_in = ref_tgt = None
    if exemplar is not None:
        with contextlib.suppress(Reject):  # every exemplar crop is flat: the sample goes without one (counted)
            ref_in, ref_tgt, meta["exemplar"] = make_exemplar(syn, exemplar, cfg, variant, f"exemplar:{clean.uri}")
    return Sample(meta["key"], syn.input, syn.target, syn.instruction, meta, ref_in, ref_tgt)


def make_exemplar(query: Any, clean: Clean, cfg: CorpusConfig, variant: int,
                  stream: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """The query's transformation shown on other content: the same plugins with the same sampled parameters,
    applied to a crop of another source; only the stochastic parts (a noise field, …) come from the exemplar's
    own seed. A sepia query gets a sepia exemplar, never a noir one. Returns (input, target, provenance); a
    :class:`Reject` ``flat_crop`` when every crop of ``clean`` is flat."""
    rng = sample_rng(cfg.output.seed, clean.uri, variant, stream)
    box, crop, tries = draw_crop(clean.image, cfg.geometry, rng)
    steps = [{**s.to_json(), "seed": int(rng.integers(SEED_BOUND))} for s in query.steps]
    ref_in, ref_tgt = replay({"steps": steps, "domain": query.domain}, crop)
    prov = {"source": clean.uri, "source_sha256": clean.sha256, "variant": variant, "stream": stream, "crop": box,
            "source_size": list(clean.orig_size), "resized_size": list(clean.image.shape[:2]), "steps": steps,
            **_tries(tries)}
    return ref_in, ref_tgt, prov


def rebuild(meta: dict[str, Any], clean_img: np.ndarray | Pixels) -> tuple[np.ndarray, np.ndarray]:
    """Replay a recorded pair from its decoded (resized) source image (and its recorded annotations, if any)."""
    ann = None
    if "annotations" in meta:
        from pipelines.coco import annotations_from_json

        ann = annotations_from_json(meta["annotations"], f"{meta.get('key', 'sample')}.json annotations")
    record = {"steps": meta["steps"], "domain": meta["domain"]}
    return replay(record, cut(clean_img, meta["crop"]), ann=ann)


# -- the task mixture ----------------------------------------------------------------------------
_TASKS: dict[str, Task] = {}


def get_task(name: str) -> Task:
    """The Task registered as ``name`` (built once per process)."""
    if name not in _TASKS:
        from degradations import task_for

        _TASKS[name] = task_for(name)
    return _TASKS[name]


def resolve_mixture(cfg: CorpusConfig) -> list[tuple[str, float]]:
    """(task name, weight) pairs, sorted by name, zero weights dropped; domain multipliers applied.

    ``default_weight`` adds every registered plugin that needs no annotations and is not named.
    """
    from degradations import registry

    mix = cfg.mixture
    weights = dict(mix.tasks)
    if mix.default_weight > 0:
        for name in registry.names():
            if name in weights:
                continue
            try:
                if not registry.get(name).requires:
                    weights[name] = mix.default_weight
            except Exception as exc:  # noqa: BLE001 - a broken third-party plugin must not stop the build
                logging.getLogger(__name__).warning("plugin %s cannot be loaded, left out of the mixture: %s",
                                                    name, exc)
    weights = {n: w for n, w in weights.items() if w > 0}
    if mix.domain_weights:  # each domain's share of the samples; its tasks share it by their weights
        domain = {n: get_task(n).domain for n in weights}
        within = {d: sum(w for n, w in weights.items() if domain[n] == d) for d in set(domain.values())}
        share = {d: mix.domain_weights.get(d, 1.0) for d in within}
        total = sum(share.values())
        weights = {n: share[domain[n]] / total * w / within[domain[n]] if total > 0 else 0.0
                   for n, w in weights.items()}
    out = [(name, float(weights[name])) for name in sorted(weights) if weights[name] > 0]
    if not out:
        raise ValueError("mixture: no task has a positive weight after domain_weights")
    return out


# -- one shard's samples -------------------------------------------------------------------------
def generate_shard(cfg: CorpusConfig, job: Any, opts: dict[str, Any],
                   mixture: list[tuple[str, float]]) -> tuple[list[dict[str, bytes]], dict]:
    """The member dicts of one shard (in source, variant order) and its commit-record counts.

    ``mixture`` is the one the driver resolved, so every worker draws from the same task list.
    """
    from collections import Counter, OrderedDict

    from pipelines.sources import SourceError, SourceTooLarge, fetch

    log = logging.getLogger(__name__)
    cache: OrderedDict[str, Clean | Reject] = OrderedDict()

    def load(uri: str) -> Clean | Reject:
        if uri in cache:
            cache.move_to_end(uri)
            return cache[uri]
        try:
            item: Clean | Reject = load_clean(uri, fetch(uri, opts), cfg.geometry)
            item.record = job.annotations.get(uri)
        except Reject as exc:
            item = exc
        except SourceTooLarge as exc:
            item = Reject("too_large", str(exc))
        except (OSError, SourceError) as exc:  # unreadable or refused source (permissions, vanished, scheme)
            item = Reject("unreadable", str(exc))
        cache[uri] = item
        # Decoded photos are large: keep only the few an exemplar may reuse, within CACHE_BYTES (a reload
        # costs time, never bytes: decoding is deterministic).
        while len(cache) > 4 or (len(cache) > 1 and _held(cache) > CACHE_BYTES):
            cache.popitem(last=False)
        return item

    members: list[dict[str, bytes]] = []
    tasks: Counter = Counter()
    rejects: Counter = Counter()
    rejected: list[list[str]] = []
    no_exemplar: Counter = Counter()  # samples that drew an exemplar but go without one, by reason
    for uri in job.sources:
        clean = load(uri)
        if isinstance(clean, Reject):
            rejects[clean.reason] += 1
            rejected.append([uri, clean.reason])
            continue
        for variant in range(cfg.variants_per_source):
            pick = sample_rng(cfg.output.seed, uri, variant, "task")
            name = pick_task(mixture, pick)
            exemplar = None
            if (cfg.mixture.exemplar_probability > 0 and pick.random() < cfg.mixture.exemplar_probability
                    and not requirements(get_task(name))):
                exemplar = _pick_exemplar(job.pool, uri, pick, load)
            try:
                sample = make_sample(get_task(name), clean, variant, cfg, exemplar)
                members.append(sample.to_members(cfg.output.png_level))
            except Reject as exc:  # a counted skip of this sample (flat crop, …), never an error
                rejects[exc.reason] += 1
                rejected.append([f"{uri}#{variant}", exc.reason])
                continue
            except Exception as exc:  # noqa: BLE001 - one plugin failing on one crop must not lose the shard
                log.warning("%s variant %d: task %s failed: %s", uri, variant, name, exc)
                rejects["synth_error"] += 1
                rejected.append([f"{uri}#{variant}", "synth_error"])
                continue
            if exemplar is not None and sample.ref_input is None:
                no_exemplar["flat_crop"] += 1
            tasks[name] += 1
    record = {"tasks": dict(sorted(tasks.items())), "rejects": dict(sorted(rejects.items())), "rejected": rejected,
              "sources": len(job.sources), "no_exemplar": dict(sorted(no_exemplar.items()))}
    return members, record


def _held(cache: dict[str, Clean | Reject]) -> int:
    return sum(c.nbytes for c in cache.values() if isinstance(c, Clean))


def task_memory(geo: GeometryConfig) -> int:
    """Bytes one shard task may hold at its peak, declared to Ray so a node is never oversubscribed: the
    process itself, one source's bytes and its decode at ``geo.max_pixels``, and the decoded-source cache."""
    from pipelines.sources import MAX_SOURCE_BYTES

    return int(TASK_BASE_BYTES + MAX_SOURCE_BYTES + geo.max_pixels * PEAK_BYTES_PER_PIXEL + CACHE_BYTES)


def _pick_exemplar(pool: tuple[str, ...], uri: str, rng: np.random.Generator, load: Any) -> Clean | None:
    """Another source of the pool (up to 3 tries past bad ones), drawn from the sample's task generator."""
    others = [u for u in pool if u != uri]
    if not others:
        return None
    start = int(rng.integers(len(others)))
    for i in range(min(3, len(others))):
        cand = load(others[(start + i) % len(others)])
        if isinstance(cand, Clean):
            return cand
    return None
