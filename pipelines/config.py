"""The corpus-build config: a validated model loaded from YAML (presets live in ``configs/corpus/``).

Everything that changes the bytes of the corpus is hashed into the config digest a
resume compares; ``runtime`` and ``s3`` (how and where it runs, credentials) are not.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipelines.configfile import ConfigError, config_digest, load_config

#: Where the ready presets live (shipped as package data next to this module's package).
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "corpus"
QUICKSTART = "quickstart.yaml"
#: What does not change the corpus bytes (left out of the digest): how it runs, and where it is written.
RUNTIME_SECTIONS: dict = {"runtime": True, "s3": True, "output": {"path"}}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceSpec(_Model):
    """One place clean images come from; the stable source id of an image is its URI."""

    #: ``samples://`` (bundled photos), a folder, a glob, an ``s3://`` prefix, a ``.jsonl``/``.parquet`` list
    #: file of URIs, or the root of an existing corpus of clean images (``shards://PATH``).
    uri: str = Field("samples://", description="where the clean images are")
    extensions: tuple[str, ...] = Field((".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"),
                                        description="file extensions a folder/glob/prefix listing keeps")
    column: str = Field("uri", description="field holding the URI in a jsonl/parquet list file")
    member: str = Field("target.png", description="member of each sample used as the clean image (shards://)")
    limit: int | None = Field(None, ge=1, description="keep only the first N sources of this spec (sorted)")


class GeometryConfig(_Model):
    """How a clean crop is cut from a source image."""

    crop_size: int = Field(64, ge=16, le=4096, description="side of the square crop fed to the task")
    min_size: int = Field(64, ge=1, description="sources whose short side (after resize) is below this are skipped")
    resize_short: int = Field(0, ge=0, description="resize so the short side is this many pixels first (0: keep)")
    crop: Literal["random", "center"] = Field("random", description="where the crop is taken")
    max_pixels: int = Field(100_000_000, ge=1, description="decompression-bomb cap on W*H before decoding")

    @model_validator(mode="after")
    def _crop_fits(self) -> GeometryConfig:
        if self.min_size < self.crop_size:
            self.min_size = self.crop_size  # a crop cannot be larger than the image it is cut from
        return self


class MixtureConfig(_Model):
    """Which tasks are drawn, how often, and whether a visual-prompt exemplar is added."""

    tasks: dict[str, float] = Field(default_factory=lambda: {"realesrgan": 1.0},
                                    description="task (plugin or chain preset) name -> weight")
    default_weight: float = Field(0.0, ge=0, description="weight of every other registered image-only plugin")
    domain_weights: dict[str, float] = Field(default_factory=dict,
                                             description="multiplier per domain (missing domains: 1.0)")
    exemplar_probability: float = Field(0.0, ge=0, le=1,
                                        description="chance a sample gets a same-task exemplar on another source")


class OutputConfig(_Model):
    """Where and how shards are written."""

    path: str = Field("corpus/quickstart", description="local folder or s3:// prefix of the corpus")
    samples_per_shard: int = Field(16, ge=1, description="target samples per shard (fewer when sources are skipped)")
    png_level: int = Field(1, ge=0, le=9, description="PNG compression level of every image member")
    seed: int = Field(0, ge=0, description="corpus seed; each sample's generator is seeded from it")


class S3Config(_Model):
    """S3 access; empty fields fall back to the usual AWS_* environment variables."""

    endpoint_url: str | None = Field(None, description="S3 endpoint (default: AWS_ENDPOINT_URL or AWS)")
    region: str | None = Field(None, description="region (default: AWS_DEFAULT_REGION)")
    anon: bool = Field(False, description="anonymous access (public buckets)")


class RuntimeConfig(_Model):
    """How the build runs; never changes the output bytes."""

    workers: int | None = Field(None, ge=1, description="shard tasks in flight (default: the cluster's CPUs)")
    retries: int = Field(3, ge=0, description="Ray retries of a failed shard task")
    resume_verify: Literal["size", "sha256"] = Field("sha256", description="check of committed shards on resume")
    contact_sheet_rows: int = Field(6, ge=0, description="samples per domain in the report's contact sheets")


class CorpusConfig(_Model):
    """``omnilv corpus build`` config."""

    name: str = Field("corpus", description="a label shown in reports")
    sources: list[SourceSpec] = Field(default_factory=lambda: [SourceSpec()], description="clean-image sources")
    variants_per_source: int = Field(2, ge=1, le=999, description="samples drawn from each source image")
    geometry: GeometryConfig = Field(default_factory=GeometryConfig, description="crop policy")
    mixture: MixtureConfig = Field(default_factory=MixtureConfig, description="task mixture")
    output: OutputConfig = Field(default_factory=OutputConfig, description="where shards go")
    s3: S3Config = Field(default_factory=S3Config, description="S3 endpoint/region (credentials from env)")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="parallelism and checks")

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


def preset_path(name: str) -> Path:
    """Path of a bundled preset by file name or stem (``quickstart``)."""
    stem = name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"
    path = CONFIG_DIR / stem
    if not path.is_file():  # an installed (non-editable) package keeps presets as package data
        path = Path(str(resources.files("pipelines").joinpath("..", "configs", "corpus", stem)))
    return path


def load_corpus_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> CorpusConfig:
    """Load a corpus config (default: the embedded quickstart) with ``a.b=value`` overrides."""
    if path is None:
        path = preset_path(QUICKSTART)
    elif not Path(path).exists() and preset_path(str(path)).is_file():
        path = preset_path(str(path))  # `omnilv corpus build omnilv_512` finds the bundled preset
    return load_config(CorpusConfig, path, overrides)


__all__ = ["ConfigError", "CorpusConfig", "load_corpus_config", "preset_path"]
