"""EMA of the weights inside the DeepSpeed loop: each rank averages only what it holds.

Under ZeRO-3 a rank holds one flat partition of every parameter (``p.ds_tensor``) and averages that;
under ZeRO 0–2 every rank holds full parameters, so they are dealt out round-robin (parameter ``i``
belongs to rank ``i % world``). Either way the EMA costs ``1/world`` of an fp32 model per rank, needs
no communication per step, and is saved with the rank's checkpoint files (``ema/rank{r}.safetensors``,
no pickle). Only the export assembles full averaged tensors on rank 0 (:meth:`RankEMA.gather`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

FOLDER = "ema"


class EMA:
    """Exponential moving average of the trainable parameters, kept in float32.

    Call :meth:`update` after each optimizer step. Under ZeRO-3 the parameters are partitioned:
    gather them first (``deepspeed.zero.GatheredParameters``) or keep the EMA on rank 0 only.
    """

    def __init__(self, model: nn.Module | Mapping[str, torch.Tensor], decay: float = 0.999,
                 warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup, self.num_updates = decay, warmup, 0
        self.shadow = {n: p.detach().float().clone() for n, p in _tensors(model).items()}

    def current_decay(self) -> float:
        """With warmup, early averages forget the random init faster: min(decay, (1+n)/(10+n))."""
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module | Mapping[str, torch.Tensor]) -> None:
        """Average in the current values (a module, or name -> tensor as given to the constructor)."""
        d = self.current_decay()
        for n, p in _tensors(model).items():
            if n in self.shadow:
                self.shadow[n].lerp_(p.detach().float(), 1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into ``model`` (same parameter names)."""
        for n, p in model.named_parameters():
            if n in self.shadow:
                p.copy_(self.shadow[n].to(p.dtype))

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) - set(state["shadow"])
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} parameters, e.g. {sorted(missing)[:3]}")
        self.decay, self.warmup = float(state["decay"]), bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
        self.shadow = {n: state["shadow"][n].float().clone() for n in self.shadow}


def _tensors(model: nn.Module | Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """The trainable parameters of a module by name, or a name -> tensor mapping as it is."""
    if isinstance(model, nn.Module):
        return {n: p for n, p in model.named_parameters() if p.requires_grad}
    return model


class RankEMA:
    """This rank's share of the EMA of ``module``'s trainable parameters."""

    def __init__(self, module: torch.nn.Module, decay: float, *, rank: int, world: int, zero3: bool) -> None:
        self.rank, self.world, self.zero3 = rank, world, zero3
        self.params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.ema = EMA(self._live(), decay=decay)

    def _owned(self) -> list[tuple[str, torch.nn.Parameter]]:
        if self.zero3:
            return self.params
        return [(n, p) for i, (n, p) in enumerate(self.params) if i % self.world == self.rank]

    def _live(self) -> dict[str, torch.Tensor]:
        """name -> the tensor this rank averages, fetched anew (DeepSpeed may swap ``.data`` between steps)."""
        return {n: (p.ds_tensor if self.zero3 else p) for n, p in self._owned()}

    def update(self) -> None:
        """Call after every optimizer step."""
        self.ema.update(self._live())

    def save(self, folder: str | Path) -> None:
        out = Path(folder) / FOLDER
        out.mkdir(parents=True, exist_ok=True)
        meta = {"num_updates": str(self.ema.num_updates), "decay": str(self.ema.decay), "world": str(self.world)}
        save_file({n: t.contiguous() for n, t in self.ema.shadow.items()}, str(out / f"rank{self.rank}.safetensors"),
                  metadata=meta)

    def load(self, folder: str | Path) -> bool:
        """Load this rank's saved share; False (EMA restarts from the weights) if the checkpoint has none."""
        path = Path(folder) / FOLDER / f"rank{self.rank}.safetensors"
        if not path.is_file():
            return False
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        state = {"decay": self.ema.decay, "warmup": self.ema.warmup, "num_updates": int(meta.get("num_updates", 0)),
                 "shadow": load_file(str(path))}
        self.ema.load_state_dict(state)
        return True

    def gather(self) -> dict[str, torch.Tensor] | None:
        """Full averaged tensors on rank 0 (None elsewhere). A collective: every rank must call it."""
        full: dict[str, torch.Tensor] = {}
        shadow = self.ema.shadow
        for i, (n, p) in enumerate(self.params):
            if self.zero3:  # equal-sized flat partitions, rank-ordered: cat, trim the padding, reshape
                parts = [torch.empty_like(shadow[n]) for _ in range(self.world)]
                dist.all_gather(parts, shadow[n])
                value = torch.cat(parts)[: p.ds_numel].view(p.ds_shape)
            else:
                owner = i % self.world
                value = shadow[n] if owner == self.rank else torch.empty(p.shape, dtype=torch.float32,
                                                                         device=p.device)
                if self.world > 1:
                    dist.broadcast(value, src=owner)
            if self.rank == 0:
                full[n] = value
        return full if self.rank == 0 else None


@torch.no_grad()
def load_into(module: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy ``weights`` (name -> full tensor) into ``module``'s parameters of the same names."""
    params = dict(module.named_parameters())
    for n, w in weights.items():
        params[n].data.copy_(w.to(params[n].dtype).view_as(params[n].data))


def describe(ema: RankEMA | None) -> dict[str, Any]:
    """What the export records about its weights."""
    if ema is None:
        return {"weights": "raw"}
    return {"weights": "ema", "ema": {"decay": ema.ema.decay, "updates": ema.ema.num_updates}}
