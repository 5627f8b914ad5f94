"""The training config: one validated model per YAML file (bundled presets: ``configs/train/``).

Every field has a one-line doc (the docstring under it); ``omnilv train CONFIG --set optim.lr=3e-4`` overrides
any of them. CONFIG is a path (relative to the current folder) or a preset name (``tiny_stage1``). The DeepSpeed
dict is derived from this in :mod:`training.run.ds_config` (the one place).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, create_model, field_validator, model_validator

from pipelines import Section, find_config, load_config
from training.model import OmniLVConfig, backbone_fields, check_fit, peek_backbone_config
from training.model import preset as size_preset

#: OmniLVConfig fields a run sets itself: the preset's name, and the widths that follow ``codec`` and ``text``.
NOT_OVERRIDABLE = ("preset", "in_channels", "cross_attention_dim")


def optional_fields(model: type[Section], name: str, exclude: tuple[str, ...] = ()) -> type[Section]:
    """A section with ``model``'s fields (same types, bounds and docs), each optional: None means "not given"."""
    fields: dict[str, Any] = {}
    for field, info in model.model_fields.items():
        if field not in exclude:
            bounded = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
            fields[field] = (bounded | None, Field(None, description=info.description))
    return create_model(name, __base__=Section, __doc__=f"Optional fields of {model.__name__}.", **fields)


#: ``model.overrides``: OmniLVConfig fields that replace the preset's; a field left out (None) keeps the preset's.
ModelOverrides = optional_fields(OmniLVConfig, "ModelOverrides", exclude=NOT_OVERRIDABLE)


class ObjectiveConfig(Section):
    """The flow-matching objective's settings (``model.objective``), taken by ``FlowMatching(net, objective)``."""

    timestep_sampling: Literal["uniform", "logit_normal"] = "logit_normal"
    """How training draws t: ``logit_normal`` concentrates on mid times, where the velocity is hardest."""
    logit_mean: float = 0.0
    """Mean of the normal whose sigmoid is t (logit_normal only); above 0 leans towards the data end, t = 1."""
    logit_std: float = Field(1.0, gt=0)
    """Standard deviation of that normal (logit_normal only)."""
    text_dropout: float = Field(0.1, ge=0, le=1)
    """Chance a training sample's instruction is replaced by the null text (what classifier-free guidance needs)."""


class LumenSection(Section):
    """The Lumen model (``model.recipe: lumen``): a LLaVA-family model, the V-L dense aligner, the decoders."""

    llava: str = "tiny"
    """A local folder (or ``s3://`` prefix) holding a transformers LLaVA model and its tokenizer, e.g. LLaVA-1.5-7B
    saved with ``save_pretrained``; ``tiny`` builds the tiny offline one (``training.model.build_tiny_llava``)."""
    part: Literal["aligner", "decoders"] = "aligner"
    """What this stage trains: ``aligner`` (stage 1: the V-L dense aligner, the [H]/[W] size heads and the task
    head, on the heatmap, size and task losses) or ``decoders`` (stage 2: the mask decoder, the aligner frozen)."""
    train_lmm: bool = False
    """Stage 1 also trains the multimodal model itself (the paper fine-tunes it; off keeps it frozen)."""
    aligner_dim: int = Field(64, ge=8)
    """Width of the aligner's tokens (256 in a real run)."""
    aligner_layers: int = Field(2, ge=1)
    """Cross-attention + self-attention layers of the aligner."""


class ModelSection(Section):
    """The network and its objective."""

    recipe: Literal["omnilv", "lumen"] = "omnilv"
    """Which model the run trains: ``omnilv`` (the flow-matching DiT + adapter; the fields below) or ``lumen``
    (heatmaps + light decoders for detection, segmentation, pose and grounding; ``model.lumen``)."""
    lumen: LumenSection = Field(default_factory=LumenSection)
    """The Lumen model's settings (``recipe: lumen`` only)."""
    preset: str = "tiny"
    """Size preset of ``OmniLV.from_preset`` (``tiny`` … ``2b``)."""
    overrides: ModelOverrides = Field(default_factory=ModelOverrides)
    """Fields of ``OmniLVConfig`` that replace the preset's values (e.g. ``num_layers: 4``); the latent and text
    widths follow ``codec`` and ``text``."""
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    """The flow-matching objective: timestep sampling, instruction dropout."""
    pretrained: str = ""
    """A diffusers Lumina-Next release (folder or ``s3://`` prefix holding ``transformer/config.json`` + safetensors,
    or that transformer folder) to start the backbone from; its config sets the backbone's shape. Empty: random init."""
    activation_checkpointing: bool = False
    """Recompute each DiT block in the backward pass instead of storing its activations (less memory, ~1/3 more
    compute); for 1024² training."""

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, name: str) -> str:
        size_preset(name)  # raises with the known names
        return name

    @model_validator(mode="after")
    def _network_fits(self) -> ModelSection:
        try:  # checked here, before Ray starts, rather than when a worker builds the network
            OmniLVConfig(**self.network_fields())
        except ValidationError as exc:
            raise ValueError(f"preset {self.preset!r} with these overrides is not a valid network: "
                             + "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())) from None
        return self

    def network_fields(self, backbone: dict[str, Any] | None = None, **fixed: Any) -> dict[str, Any]:
        """OmniLVConfig fields: the preset's, then the pretrained ``backbone`` config's (its config.json), then
        ``fixed`` (the encoders' widths), then the overrides given."""
        shape = backbone_fields(backbone) if backbone else {}
        return {**size_preset(self.preset), **shape, **fixed, **self.overrides.model_dump(exclude_none=True)}

    def check_pretrained(self, backbone: dict[str, Any], text: tuple[str, int | None],
                         codec: tuple[str, int | None]) -> list[str]:
        """Errors if this section contradicts the pretrained ``backbone`` config or the encoders' widths
        (``(spec, width or None)``); the notes on preset fields the checkpoint replaces."""
        return check_fit(backbone, preset=size_preset(self.preset), where=self.pretrained,
                         overrides=self.overrides.model_dump(exclude_none=True),
                         encoders={"cross_attention_dim": (f"text encoder {text[0]!r}", text[1]),
                                   "in_channels": (f"codec {codec[0]!r}", codec[1])})


class DataSection(Section):
    """The corpus (or latent cache) and how it is cut into batches."""

    corpus: str = ""
    """Corpus root: a local folder or ``s3://`` prefix holding ``manifest.json`` and its shards."""
    latents: str = ""
    """Latent cache root written by ``omnilv cache-latents``; when set, training reads it instead of decoding pixels."""
    resolution: int = Field(128, ge=8)
    """Side of the square training crop in pixels (used when ``buckets`` is empty)."""
    buckets: list[tuple[int, int]] = Field(default_factory=list)
    """Resolution buckets ``[height, width]``; each sample goes to the bucket nearest its aspect ratio."""
    batch_size: int = Field(4, ge=1)
    """Micro-batch size per worker (samples per forward pass)."""
    random_crop: bool = True
    """Random crop position per sample (seeded by key); False takes the centre crop."""
    use_exemplars: bool = False
    """Feed the sample's visual-prompt exemplar (``ref_input``/``ref_target``) to the model (stage 2)."""
    read_cpus: float = Field(0.25, gt=0)
    """CPUs reserved per Ray Data read/decode task (fractional, so the train workers are never starved)."""
    max_read_tasks: int = Field(2, ge=1)
    """Upper bound on concurrent read/decode tasks."""
    materialize: bool = False
    """Decode the whole corpus once into the object store (small corpora: every epoch then starts at once)."""

    @property
    def sizes(self) -> list[tuple[int, int]]:
        return [tuple(b) for b in self.buckets] or [(self.resolution, self.resolution)]


class OptimSection(Section):
    """AdamW, its schedule, clipping, accumulation and the weights' EMA."""

    lr: float = Field(1e-4, gt=0)
    """Peak learning rate of AdamW."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW decoupled weight decay."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warm-up from 0 to ``lr`` over this many optimizer steps, then constant."""
    grad_clip: float = Field(1.0, ge=0)
    """Gradient-norm clipping (0 disables)."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches accumulated per optimizer step."""
    ema_decay: float = Field(0.0, ge=0, lt=1)
    """EMA of the trainable weights (e.g. 0.999), sharded over ranks and checkpointed; the export holds the
    averaged weights. 0 disables."""


class DeepSpeedSection(Section):
    """DeepSpeed ZeRO stage, precision and offload."""

    zero_stage: Literal[0, 1, 2, 3] = 2
    """ZeRO stage: 0 (DDP-like), 1 (optimizer states), 2 (+gradients), 3 (+parameters)."""
    precision: Literal["bf16", "fp32"] = "fp32"
    """Training precision: bf16 on A100/H100 (fp32 master weights in the ZeRO optimizer); fp32 is the usual
    choice on CPU, where bf16 runs too (DeepSpeed's CPU accelerator) but fast only with AVX-512 BF16 or AMX."""
    offload_optimizer: bool = False
    """Keep optimizer states in CPU memory (ZeRO ≥1)."""
    offload_params: bool = False
    """Keep parameters in CPU memory (ZeRO-3 only)."""


class ScheduleSection(Section):
    """How long the stage runs, and how often it checkpoints, evaluates and logs."""

    steps: int = Field(100, ge=1)
    """Optimizer steps of this stage (the run ends exactly here, also after resumes)."""
    checkpoint_every: int = Field(50, ge=1)
    """Save a DeepSpeed checkpoint (through ``ray.train.report``) every this many steps, and at the end."""
    eval_every: int = Field(0, ge=0)
    """Report the loss on a fixed held batch every this many steps (0: never)."""
    log_every: int = Field(10, ge=1)
    """Console/TensorBoard logging period in steps."""


class StageSection(Section):
    """Which stage this is and what it starts from."""

    name: str = "stage1"
    """Stage name (``stage1``, ``stage2``, ``stage3``); used for the run folder."""
    init_from: str = ""
    """Exported model folder (or a run folder holding ``export/``) to start from: weights only, step 0."""


class RunSection(Section):
    """Workers, storage, failures, seed, export."""

    name: str = ""
    """Run folder name under ``storage_path`` (default: the stage name)."""
    workers: int = Field(1, ge=1)
    """Ray Train workers (one DeepSpeed rank each)."""
    use_gpu: bool = False
    """One GPU per worker."""
    cpus_per_worker: float = Field(0.5, gt=0)
    """CPUs reserved per worker; fractional on a small machine so Ray Data can still run."""
    storage_path: str = "runs"
    """Where checkpoints, TensorBoard logs and the export go (local folder or ``s3://`` prefix)."""
    max_failures: int = Field(1, ge=0)
    """Worker-group restarts from the last checkpoint before the run is declared failed."""
    seed: int = 0
    """Seed of model init, crops and timestep sampling."""
    keep_checkpoints: int = Field(2, ge=1)
    """Checkpoints kept on storage (the newest)."""
    export: bool = True
    """Export the final model (diffusers-style folder) at the end of the run."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    """Log level of Ray Train and the train workers (INFO prints every report and checkpoint)."""


class TrainConfig(Section):
    """One training stage."""

    model: ModelSection = Field(default_factory=ModelSection)
    """The network."""
    text: str = "tiny"
    """Text encoder spec for ``TextEncoder.from_spec`` (``tiny``, ``minilm`` or a local HF folder)."""
    text_layer: int = -1
    """Hidden state of the text encoder that gives the features: -1 the last, -2 the second-to-last (what
    Lumina-Next was trained with on Gemma-2B)."""
    codec: str = "pixel"
    """Image codec spec for ``ImageCodec.from_spec`` (``pixel`` or a local AutoencoderKL folder)."""
    data: DataSection = Field(default_factory=DataSection)
    """The corpus and how it is cut into batches."""
    optim: OptimSection = Field(default_factory=OptimSection)
    """Optimizer."""
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection)
    """DeepSpeed ZeRO and precision."""
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    """Steps, checkpoints, logging."""
    stage: StageSection = Field(default_factory=StageSection)
    """Which stage this is and what it starts from."""
    run: RunSection = Field(default_factory=RunSection)
    """Workers, storage, failures."""

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.deepspeed.offload_params and self.deepspeed.zero_stage != 3:
            raise ValueError("deepspeed.offload_params needs deepspeed.zero_stage: 3")
        if self.deepspeed.offload_optimizer and self.deepspeed.zero_stage == 0:
            raise ValueError("deepspeed.offload_optimizer needs deepspeed.zero_stage ≥ 1")
        if self.model.pretrained and self.stage.init_from:
            raise ValueError(f"model.pretrained ({self.model.pretrained}) and stage.init_from ({self.stage.init_from}) "
                             "are both set: a stage starts from one of them (init_from for stages after the first)")
        if self.model.recipe == "lumen":
            self._check_lumen()
        self._check_pretrained()
        return self

    def _check_lumen(self) -> None:
        """What a Lumen run cannot use, refused before Ray starts: its samples are read whole (the annotations in
        their json fit the stored image only), from pixels, with no exemplars."""
        d = self.data
        if len(d.sizes) > 1:
            raise ValueError("model.recipe lumen reads samples at their stored size: give one data.resolution (the "
                             "corpus' crop size), not data.buckets")
        if d.latents:
            raise ValueError("model.recipe lumen reads pixels and annotations: data.latents (an OmniLV latent cache) "
                             "does not apply; set data.corpus")
        if d.use_exemplars:
            raise ValueError("model.recipe lumen takes no exemplar pairs (vision-centric samples have none): set "
                             "data.use_exemplars false")
        if self.model.pretrained:
            raise ValueError("model.pretrained is the OmniLV backbone; a Lumen model starts from model.lumen.llava")

    def _check_pretrained(self) -> None:
        """A pretrained backbone on this machine is checked against the encoders now, before Ray starts (a remote
        one when the workers fetch it)."""
        backbone = peek_backbone_config(self.model.pretrained)
        if backbone is None:
            return
        from training.model import codec_channels, text_width

        self.model.check_pretrained(backbone, (self.text, text_width(self.text)),
                                    (self.codec, codec_channels(self.codec)))
        try:
            OmniLVConfig(**self.model.network_fields(backbone))
        except ValidationError as exc:
            raise ValueError(f"model.pretrained {self.model.pretrained}: not a network OmniLV can build: "
                             + "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())) from None

    @property
    def run_name(self) -> str:
        return self.run.name or self.stage.name

    @property
    def global_batch(self) -> int:
        return self.data.batch_size * self.optim.grad_accum * self.run.workers


def load_train_config(source: str | Path | dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Load and validate a training config: a YAML path (relative to the current folder), a bundled preset name
    (``tiny_stage1``), or a dict. Errors name the file and the dotted field."""
    src = source if isinstance(source, dict) else find_config("train", source)
    return load_config(TrainConfig, src, overrides)
