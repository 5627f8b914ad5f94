"""The model a run trains: the network from its preset, the encoders, the objective, optional initial weights."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from pipelines import ConfigError, exists, join
from training.config import TrainConfig
from training.model import FlowMatching, ImageCodec, OmniLV, TextEncoder, load_network


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


def build_flow(cfg: TrainConfig, device: torch.device) -> tuple[FlowMatching, ImageCodec, TextEncoder]:
    """(FlowMatching, codec, text encoder); the net's text/latent widths follow the encoders."""
    text, codec = TextEncoder.from_spec(cfg.text), ImageCodec.from_spec(cfg.codec)
    fields = cfg.model.network_fields(cross_attention_dim=text.dim, in_channels=codec.channels)
    torch.manual_seed(cfg.run.seed)  # identical init on every rank (DeepSpeed also broadcasts rank 0's)
    net = OmniLV(**fields)
    if cfg.stage.init_from:
        init_weights(net, cfg.stage.init_from)
    return FlowMatching(net, cfg.model.objective).to(device), codec, text


def init_weights(net: Any, path: str) -> None:
    """Weights only (no optimizer state, step 0) from an exported model folder or a run folder."""
    folder = path if exists(join(path, "omnilv.json")) else join(path, "export")
    state = load_network(folder).state_dict()
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.startswith("prompt.")]:
        raise ConfigError(f"stage.init_from {path}: weights do not fit this model "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]}); same preset/overrides?")
