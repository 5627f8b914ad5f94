"""The end of a run: rank 0 exports the trained network (its EMA weights when the run keeps an EMA).

Under ZeRO-3 every rank first gathers the partitioned parameters; the EMA shares are gathered too. A remote
export is written to a temp folder and uploaded, the old ``omnilv.json`` removed first and the new one written last;
a local one is swapped in whole (:func:`training.model.export_model`).
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
from typing import Any

from pipelines import Store, is_remote, join, s3_options, upload_dir
from training.config import TrainConfig
from training.model import FlowMatching, OmniLV, export_lumen, export_model
from training.run.ema import RankEMA, describe, load_into


def export_dir(cfg: TrainConfig) -> str:
    """Where the run's export goes: ``<storage_path>/<run>/export``."""
    return join(cfg.run.storage_path, cfg.run_name, "export")


def export_final(cfg: TrainConfig, engine: Any, rank: int, ema: RankEMA | None = None) -> None:
    """Every rank calls this (it may gather); rank 0 writes the export."""
    if not cfg.run.export:
        return
    import deepspeed
    import torch.distributed as dist

    averaged = ema.gather() if ema is not None else None  # collective: every rank takes part
    params = list(engine.module.parameters())
    gather = deepspeed.zero.GatheredParameters(params, modifier_rank=None) if cfg.deepspeed.zero_stage == 3 \
        else contextlib.nullcontext()
    with gather:
        if rank == 0:
            model = engine.module
            if cfg.deepspeed.precision != "fp32":
                model = fp32_copy(model) if cfg.model.recipe == "omnilv" else copy.deepcopy(model).float()
            if averaged is not None:  # the run is over: the live weights are not needed any more
                load_into(model, averaged)
            out = export_dir(cfg)
            with tempfile.TemporaryDirectory(prefix="omnilv-export-") as tmp:
                local = tmp if is_remote(out) else out
                meta = {"stage": cfg.stage.name, "trained_in": cfg.deepspeed.precision, **describe(ema)}
                if cfg.model.recipe == "lumen":
                    export_lumen(model, local, meta)
                else:
                    export_model(model, cfg.text, cfg.codec, local, extra={**meta, "text_layer": cfg.text_layer})
                if local != out:  # readers stop at once (no omnilv.json), and see it again only when complete
                    Store(out, s3_options()).remove(["omnilv.json", "lumen.json"])
                    upload_dir(local, out)
    dist.barrier()


def fp32_copy(flow: FlowMatching) -> FlowMatching:
    """A float32 twin of a bf16-trained ``flow`` for the export: the EMA (kept in fp32) is loaded into it
    without rounding to bf16; raw weights are the bf16 module's, widened exactly."""
    net = OmniLV(flow.net.config)
    net.load_state_dict(flow.net.state_dict())  # copy_ widens bf16 -> fp32
    return FlowMatching(net, flow.objective)
