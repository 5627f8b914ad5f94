"""The model a run trains, by ``model.recipe``: OmniLV (the network from its preset or a pretrained Lumina-Next
transformer, the encoders, the flow-matching objective) or Lumen (a LLaVA-family model, the aligner, the decoders);
optional initial weights. :func:`build_model` is what the worker calls: every recipe gives a module whose
``forward(inputs) -> loss`` the DeepSpeed engine runs, and the ``prepare`` that turns a batch into those inputs."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import torch

from pipelines import ConfigError, exists, is_remote, join, local_copy
from training.config import TrainConfig
from training.model import (
    FlowMatching,
    ImageCodec,
    OmniLV,
    TextEncoder,
    backbone_config,
    format_notes,
    load_backbone,
    load_network,
    transformer_dir,
)

log = logging.getLogger(__name__)


def setup_worker(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this Ray Train worker, with its threads, logging and
    DeepSpeed's process group (Ray Train already created it; DeepSpeed reuses it) set up."""
    if not cfg.run.use_gpu:  # DeepSpeed's own choice here, named so that it does not warn on every worker
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import ray.train

    # Ray Train's per-report messages come from loggers outside "ray.train": set the worker's root level too.
    logging.getLogger().setLevel(cfg.run.log_level)
    ctx = ray.train.get_context()
    torch.set_num_threads(max(1, int(cfg.run.cpus_per_worker)))
    device = torch.device("cuda", torch.cuda.current_device()) if cfg.run.use_gpu else torch.device("cpu")
    deepspeed.init_distributed(dist_backend="nccl" if cfg.run.use_gpu else "gloo")
    return ctx.get_world_rank(), ctx.get_world_size(), device


@dataclass
class Assembled:
    """What a worker trains: ``module(inputs) -> loss``, ``prepare(batch) -> inputs``, and the network whose
    weights the run's init checksum covers."""

    module: torch.nn.Module
    prepare: Any
    net: torch.nn.Module


def build_model(cfg: TrainConfig, device: torch.device) -> Assembled:
    """The run's model by ``model.recipe``, on ``device``, with its batch preparation."""
    if cfg.model.recipe == "lumen":
        from training.data import LumenPrepare

        model = build_lumen(cfg).to(device)
        return Assembled(model, LumenPrepare(model, device), model)
    from training.data import Prepare

    flow, codec, text = build_flow(cfg, device)
    # The frozen encoders run in the training precision: a bf16 VAE and text encoder (outputs widened to fp32)
    # halve their memory and run on the tensor cores.
    frozen = torch.bfloat16 if cfg.deepspeed.precision == "bf16" else torch.float32
    codec, text = codec.to(device=device, dtype=frozen), text.to(device=device, dtype=frozen)
    return Assembled(flow, Prepare(codec, text, device, cfg.data.use_exemplars), flow.net)


def build_lumen(cfg: TrainConfig) -> Any:
    """The Lumen model of ``model.lumen`` (the tiny LLaVA is built on the spot, the same on every rank);
    ``stage.init_from`` (a Lumen export, or a run holding one) gives every weight it has."""
    from training.model import Lumen, build_tiny_llava

    spec = cfg.model.lumen
    kwargs = dict(aligner_dim=spec.aligner_dim, aligner_layers=spec.aligner_layers, part=spec.part,
                  train_lmm=spec.train_lmm)
    torch.manual_seed(cfg.run.seed)
    if spec.llava == "tiny":
        with tempfile.TemporaryDirectory(prefix="omnilv-llava-") as tmp:
            model = Lumen.from_folder(build_tiny_llava(tmp, seed=cfg.run.seed), **kwargs)
    else:
        with local_copy(spec.llava) as root:
            model = Lumen.from_folder(root, **kwargs)
    if cfg.stage.init_from:
        init_lumen(model, cfg.stage.init_from)
    return model


def init_lumen(model: Any, path: str) -> None:
    """Weights only from a Lumen export (or a run folder holding ``export/``); the part trained now may be new."""
    from training.model import load_lumen

    folder = path if exists(join(path, "lumen.json")) else join(path, "export")
    if not exists(join(folder, "lumen.json")):
        raise ConfigError(f"stage.init_from {path}: no Lumen export there (lumen.json); train the earlier stage first")
    with local_copy(folder) as root:
        state = load_lumen(root).state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or missing:
        raise ConfigError(f"stage.init_from {path}: weights do not fit this model "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]}); same llava and aligner sizes?")


def build_flow(cfg: TrainConfig, device: torch.device) -> tuple[FlowMatching, ImageCodec, TextEncoder]:
    """(FlowMatching, codec, text encoder); the net's text/latent widths follow the encoders."""
    text = TextEncoder.from_spec(cfg.text, layer=cfg.text_layer)
    codec = ImageCodec.from_spec(cfg.codec)
    torch.manual_seed(cfg.run.seed)  # identical init on every rank (DeepSpeed also broadcasts rank 0's)
    if cfg.model.pretrained:
        net = from_pretrained(cfg, text, codec)
    else:
        net = OmniLV(**cfg.model.network_fields(cross_attention_dim=text.dim, in_channels=codec.channels))
    net.activation_checkpointing = cfg.model.activation_checkpointing
    if cfg.stage.init_from:
        init_weights(net, cfg.stage.init_from)
    return FlowMatching(net, cfg.model.objective).to(device), codec, text


def from_pretrained(cfg: TrainConfig, text: TextEncoder, codec: ImageCodec) -> OmniLV:
    """The network shaped and initialised by ``model.pretrained`` (adapter and prompt projection at zero); what was
    not loaded as it is goes to the log, from rank 0."""
    src = cfg.model.pretrained
    if is_remote(src) and exists(join(src, "transformer", "config.json")):
        src = join(src, "transformer")  # fetch the transformer only, not the release's text encoder and VAE
    with local_copy(src) as root:
        folder = transformer_dir(root)
        backbone = backbone_config(folder)
        notes = cfg.model.check_pretrained(backbone, (cfg.text, text.dim), (cfg.codec, codec.channels))
        net = OmniLV(**cfg.model.network_fields(backbone, cross_attention_dim=text.dim, in_channels=codec.channels))
        tensors = load_backbone(net, folder)
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        log.warning("backbone from %s; not loaded as it is:\n%s", cfg.model.pretrained, format_notes(tensors, notes))
    return net


def init_weights(net: Any, path: str) -> None:
    """Weights only (no optimizer state, step 0) from an exported model folder or a run folder."""
    folder = path if exists(join(path, "omnilv.json")) else join(path, "export")
    state = load_network(folder).state_dict()
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.startswith("prompt.")]:
        raise ConfigError(f"stage.init_from {path}: weights do not fit this model "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]}); same preset/overrides?")
