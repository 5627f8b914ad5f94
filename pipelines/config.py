"""The corpus-build config: a validated model loaded from YAML (bundled presets: ``configs/corpus/``).

Everything that changes the bytes of the corpus is hashed into the config digest a
resume compares; ``runtime`` and ``s3`` (how and where it runs, credentials) are not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from pipelines.configfile import ConfigError, Section, config_digest, find_config, load_config

#: The preset ``load_corpus_config()`` loads when no config is named.
QUICKSTART = "quickstart"
#: What does not change the corpus bytes (left out of the digest): how it runs, and where it is written.
RUNTIME_SECTIONS: dict = {"runtime": True, "s3": True, "output": {"path"}}


class SourceSpec(Section):
    """One place clean images come from; the stable source id of an image is its URI."""

    uri: str = "samples://"
    """Where the clean images are: ``samples://`` (bundled photos), a folder, a glob, an ``s3://`` prefix, a
    ``.jsonl``/``.parquet`` list file of URIs, or the root of an existing corpus of clean images (``shards://PATH``)."""
    extensions: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
    """File extensions a folder/glob/prefix listing keeps."""
    column: str = "uri"
    """Field holding the URI in a jsonl/parquet list file."""
    member: str = "target.png"
    """Member of each sample used as the clean image (``shards://``)."""
    limit: int | None = Field(None, ge=1)
    """Keep only the first N sources of this spec (sorted)."""
    coco: str | None = None
    """A COCO-format json (local or ``s3://``) instead of ``uri``: the sources are the images it lists, each with its
    annotations (boxes, masks, keypoints, referring expressions), for the vision-centric tasks."""
    images: str | None = None
    """The folder or ``s3://`` prefix the ``coco`` json's ``file_name``s are relative to."""
    refs: str | None = None
    """A RefCOCO-style refs json for the ``coco`` json (a list of refs, or ``{"refs": [...]}``), when its refs are
    not in it as a top-level ``refs`` list."""
    refs_split: str | None = None
    """Keep only the refs of this split (e.g. ``train``, so RefCOCO's val/test expressions stay out of training)."""

    @model_validator(mode="after")
    def _coco_fields(self) -> SourceSpec:
        if self.coco is None:
            extra = [n for n in ("images", "refs", "refs_split") if getattr(self, n) is not None]
            if extra:
                raise ValueError(f"{', '.join(extra)}: only for a COCO source; give coco: the annotation json")
        elif self.images is None:
            raise ValueError("images: a COCO source needs the folder or s3:// prefix its images are in")
        elif self.uri != SourceSpec.model_fields["uri"].default:
            raise ValueError("uri: a COCO source lists its images from coco (and images); give one or the other")
        return self


class GeometryConfig(Section):
    """How a clean crop is cut from a source image."""

    crop_size: int = Field(64, ge=16, le=4096)
    """Side of the square crop fed to the task."""
    min_size: int = Field(64, ge=1)
    """Sources whose short side (after resize) is below this are skipped (raised to ``crop_size`` if smaller)."""
    resize_short: int = Field(0, ge=0)
    """Resize so the short side is this many pixels first (0: keep)."""
    crop: Literal["random", "center"] = "random"
    """Where the crop is taken."""
    max_pixels: int = Field(100_000_000, ge=1)
    """Decompression-bomb cap on W*H, checked before decoding."""
    min_texture: float = Field(0.01, ge=0, le=0.5)
    """A crop whose luminance standard deviation (RMS contrast, on [0, 1]) is below this is flat (a grey wall, clear
    sky, a black border) and is redrawn; 0 keeps every crop. 0.01 is 2.5 grey levels of 255."""
    crop_tries: int = Field(4, ge=1, le=64)
    """Random crops drawn per sample before it is skipped as ``flat_crop`` (a centre crop is drawn once)."""

    @model_validator(mode="after")
    def _crop_fits(self) -> GeometryConfig:
        if self.min_size < self.crop_size:
            self.min_size = self.crop_size  # a crop cannot be larger than the image it is cut from
        return self


class MixtureConfig(Section):
    """Which tasks are drawn, how often, and whether a visual-prompt exemplar is added."""

    tasks: dict[str, float] = Field(default_factory=lambda: {"realesrgan": 1.0})
    """Task (plugin or chain preset) name -> weight."""
    default_weight: float = Field(0.0, ge=0)
    """Weight of every other registered image-only plugin."""
    domain_weights: dict[str, float] = Field(default_factory=dict)
    """Each domain's share of the samples, relative to the others present (missing domains: 1.0); a domain's tasks
    split its share by their weights. Empty: the task weights alone decide."""
    exemplar_probability: float = Field(0.0, ge=0, le=1)
    """Chance a sample gets a same-task exemplar on another source."""


class OutputConfig(Section):
    """Where and how shards are written."""

    path: str = "corpus/quickstart"
    """Local folder or ``s3://`` prefix of the corpus."""
    samples_per_shard: int = Field(16, ge=1)
    """Target samples per shard (fewer when sources are skipped)."""
    png_level: int = Field(1, ge=0, le=9)
    """PNG compression level of every image member."""
    seed: int = Field(0, ge=0)
    """Corpus seed; each sample's generator is seeded from it."""


class S3Config(Section):
    """S3 access; empty fields fall back to the usual AWS_* environment variables."""

    endpoint_url: str | None = None
    """S3 endpoint (default: AWS_ENDPOINT_URL, else AWS)."""
    region: str | None = None
    """Region (default: AWS_DEFAULT_REGION)."""
    anon: bool = False
    """Anonymous access (public buckets)."""


class RuntimeConfig(Section):
    """How the build runs; never changes the output bytes."""

    workers: int | None = Field(None, ge=1)
    """Shard tasks in flight (default: the cluster's CPUs)."""
    retries: int = Field(3, ge=0)
    """Ray retries of a failed shard task."""
    resume_verify: Literal["size", "sha256"] = "sha256"
    """Check of committed shards on resume."""
    contact_sheet_rows: int = Field(6, ge=0)
    """Samples per domain in the report's contact sheets."""


class CorpusConfig(Section):
    """``omnilv corpus build`` config."""

    name: str = "corpus"
    """A label shown in reports."""
    sources: list[SourceSpec] = Field(default_factory=lambda: [SourceSpec()])
    """Clean-image sources."""
    variants_per_source: int = Field(2, ge=1, le=999)
    """Samples drawn from each source image."""
    geometry: GeometryConfig = Field(default_factory=GeometryConfig)
    """Crop policy."""
    mixture: MixtureConfig = Field(default_factory=MixtureConfig)
    """Task mixture."""
    output: OutputConfig = Field(default_factory=OutputConfig)
    """Where shards go."""
    s3: S3Config = Field(default_factory=S3Config)
    """S3 endpoint/region (credentials from the environment)."""
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    """Parallelism and checks."""

    @model_validator(mode="after")
    def _nonempty(self) -> CorpusConfig:
        if not self.sources:
            raise ValueError("sources: give at least one source")
        if not any(w > 0 for w in self.mixture.tasks.values()) and self.mixture.default_weight <= 0:
            raise ValueError("mixture: every task weight is 0")
        return self

    def digest(self) -> str:
        """sha256 of everything that determines the corpus bytes."""
        return config_digest(self, exclude=RUNTIME_SECTIONS)

    def resolved(self) -> dict:
        """The config as stored in the manifest (runtime/credential sections left out)."""
        return self.model_dump(mode="json", exclude=RUNTIME_SECTIONS)


def load_corpus_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> CorpusConfig:
    """Load a corpus config with ``a.b=value`` overrides: a YAML path (relative to the current folder), a bundled
    preset name (``omnilv_512``), or nothing for the embedded quickstart."""
    return load_config(CorpusConfig, find_config("corpus", QUICKSTART if path is None else path), overrides)


__all__ = ["ConfigError", "CorpusConfig", "load_corpus_config"]
