"""EMA of the weights inside the DeepSpeed loop: each rank averages the fp32 master values it holds.

Under bf16 the module's parameters are bf16 copies; the fp32 masters live in DeepSpeed's optimizer, and that is
what is averaged. What a rank holds depends on the ZeRO stage:

- ZeRO-3: its flat partition of every parameter (``safe_get_local_fp32_param``: a slice of the optimizer's fp32
  partition, fetched without communication);
- ZeRO-1/2 (and ``BF16_Optimizer``, which ZeRO-1 becomes with fp32 gradient accumulation): the pieces of the
  parameters that fall inside its fp32 partition (``param._hp_mapping``); a parameter that straddles a partition
  boundary is averaged in two pieces by two ranks;
- ZeRO-0: every rank holds every parameter, so they are dealt out round-robin (parameter ``i`` belongs to rank
  ``i % world``); under bf16 the value averaged is the optimizer's fp32 copy (``optimizer.fp32_groups``).

Either way the EMA costs about ``1/world`` of an fp32 model per rank, lives on the device of the values it averages,
needs no communication per step, and is saved with the rank's checkpoint files (``ema/rank{r}.safetensors``: name ->
a contiguous piece of the flattened parameter; its offset and the parameter's shape are in the file's metadata; no
pickle). Only the export assembles full averaged tensors, on rank 0 (:meth:`RankEMA.gather`); :func:`read_average`
joins a checkpoint's shares offline.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file
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

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Copy a saved state into the shadow tensors, which keep their device (that of the live values)."""
        saved = state["shadow"]
        missing = set(self.shadow) - set(saved)
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} parameters, e.g. {sorted(missing)[:3]}")
        wrong = [n for n, t in self.shadow.items() if saved[n].shape != t.shape]
        if wrong:
            raise ValueError(f"EMA state has other shapes than the live values: {wrong[0]} is "
                             f"{tuple(saved[wrong[0]].shape)}, not {tuple(self.shadow[wrong[0]].shape)}")
        self.decay, self.warmup = float(state["decay"]), bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
        for n, t in self.shadow.items():  # a CPU-loaded file onto a GPU shadow: copy_ moves it
            t.copy_(saved[n])


def _tensors(model: nn.Module | Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """The trainable parameters of a module by name, or a name -> tensor mapping as it is."""
    if isinstance(model, nn.Module):
        return {n: p for n, p in model.named_parameters() if p.requires_grad}
    return model


class RankEMA:
    """This rank's share of the EMA of ``module``'s trainable parameters, averaged from their fp32 masters.

    ``optimizer`` (``engine.optimizer``) is needed only under ZeRO-0 with bf16, whose fp32 copies the parameters do
    not point to; ZeRO-1/2/3 find theirs through the parameters.
    """

    def __init__(self, module: torch.nn.Module, decay: float, *, rank: int, world: int, zero3: bool,
                 optimizer: Any = None) -> None:
        self.rank, self.world, self.zero3 = rank, world, zero3
        self.params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.fp32_copies = _fp32_copies(optimizer)
        held = self._held()
        self.starts = {n: start for n, (_, start) in held.items()}
        self.shapes = {n: list(p.ds_shape if zero3 else p.shape) for n, p in self.params if n in held}
        low = sorted(n for n, (t, _) in held.items() if t.dtype != torch.float32)
        if low:
            warnings.warn(f"the EMA averages {len(low)} {held[low[0]][0].dtype} parameters (e.g. {low[0]}): no fp32 "
                          "master was found for them; pass optimizer=engine.optimizer", stacklevel=2)
        self.ema = EMA({n: t for n, (t, _) in held.items()}, decay=decay)

    def _held(self) -> dict[str, tuple[torch.Tensor, int]]:
        """name -> (the fp32 values this rank averages, their offset in the flattened parameter), fetched anew:
        DeepSpeed relinks them when it loads a checkpoint."""
        held: dict[str, tuple[torch.Tensor, int]] = {}
        if self.zero3:
            from deepspeed.utils import safe_get_local_fp32_param  # a view of the local partition: no collective

            for n, p in self.params:
                held[n] = (safe_get_local_fp32_param(p), self.rank * p.partition_numel())
            return held
        for i, (n, p) in enumerate(self.params):
            if hasattr(p, "_hp_mapping"):  # ZeRO-1/2: None when no piece of p lies in this rank's partition
                if p._hp_mapping is not None:
                    held[n] = (p._hp_mapping.get_hp_fragment(), p._hp_mapping.lp_fragment_address.start)
            elif i % self.world == self.rank:  # ZeRO-0: whole parameters, round-robin
                held[n] = (self.fp32_copies.get(id(p), p), 0)
        return held

    def update(self) -> None:
        """Call after every optimizer step."""
        self.ema.update({n: t for n, (t, _) in self._held().items()})

    def save(self, folder: str | Path) -> None:
        out = Path(folder) / FOLDER
        out.mkdir(parents=True, exist_ok=True)
        meta = {"num_updates": str(self.ema.num_updates), "decay": str(self.ema.decay), "world": str(self.world),
                "starts": json.dumps(self.starts), "shapes": json.dumps(self.shapes)}
        save_file({n: t.contiguous() for n, t in self.ema.shadow.items()}, str(out / f"rank{self.rank}.safetensors"),
                  metadata=meta)

    def load(self, folder: str | Path) -> bool:
        """Load this rank's saved share onto the device of the live values; False (the EMA restarts from the
        weights) if the checkpoint has none, or one laid out for another ZeRO stage or world size."""
        path = Path(folder) / FOLDER / f"rank{self.rank}.safetensors"
        if not path.is_file():
            return False
        with safe_open(str(path), "pt") as f:  # on CPU: copied into the shadow tensors wherever they live
            meta = f.metadata() or {}
            saved = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        starts = json.loads(meta.get("starts", "null")) or self.starts  # shares saved before offsets were kept
        shadow = self.ema.shadow
        if set(saved) != set(shadow) or starts != self.starts or any(saved[n].shape != t.shape
                                                                     for n, t in shadow.items()):
            print(f"{path}: this EMA share does not fit the run's layout (another ZeRO stage, world size or "
                  "omnilv version); it is not loaded", flush=True)
            return False
        self.ema.load_state_dict({"decay": self.ema.decay, "warmup": self.ema.warmup,
                                  "num_updates": int(meta.get("num_updates", 0)), "shadow": saved})
        return True

    def gather(self) -> dict[str, torch.Tensor] | None:
        """Full averaged tensors on rank 0, on CPU (None elsewhere). A collective: every rank must call it.

        Each rank writes its pieces into a zero buffer the size of the parameter and the buffers are summed on rank 0
        (pieces never overlap, so the sum is exact); one parameter at a time, on the device collectives run on."""
        from deepspeed.accelerator import get_accelerator

        device = torch.device(get_accelerator().current_device_name())
        full: dict[str, torch.Tensor] = {}
        for n, p in self.params:
            numel, shape = (p.ds_numel, p.ds_shape) if self.zero3 else (p.numel(), p.shape)
            buf = torch.zeros(numel, dtype=torch.float32, device=device)
            if n in self.ema.shadow:
                start = self.starts[n]
                piece = self.ema.shadow[n].flatten()[: max(numel - start, 0)]  # ZeRO-3: drop the last rank's padding
                buf[start:start + piece.numel()] = piece
            if self.world > 1:
                dist.reduce(buf, dst=0)
            if self.rank == 0:
                full[n] = buf.view(shape).cpu()
        return full if self.rank == 0 else None


def read_average(folder: str | Path) -> dict[str, torch.Tensor]:
    """The full averaged tensors of a checkpoint folder, joined on CPU from every rank's share (no process group)."""
    flat: dict[str, torch.Tensor] = {}
    shapes: dict[str, list[int]] = {}
    for path in sorted((Path(folder) / FOLDER).glob("rank*.safetensors")):
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            if "starts" not in meta:
                raise ValueError(f"{path}: an EMA share saved before offsets were recorded; it cannot be joined")
            shapes.update(json.loads(meta["shapes"]))
            for n, start in json.loads(meta["starts"]).items():
                numel = math.prod(shapes[n])
                piece = f.get_tensor(n).flatten()[: max(numel - start, 0)]  # ZeRO-3: drop the padding
                flat.setdefault(n, torch.zeros(numel))[start:start + piece.numel()] = piece
    return {n: t.view(shapes[n]) for n, t in flat.items()}


def _fp32_copies(optimizer: Any) -> dict[int, torch.Tensor]:
    """id(parameter) -> its fp32 master in DeepSpeed's ZeRO-0 bf16/fp16 optimizer (``FP16_UnfusedOptimizer``
    keeps ``fp32_groups`` parallel to ``fp16_groups``); empty for any other optimizer."""
    low, high = getattr(optimizer, "fp16_groups", None), getattr(optimizer, "fp32_groups", None)
    if not low or not high:
        return {}
    return {id(lp): hp for lg, hg in zip(low, high, strict=False) for lp, hp in zip(lg, hg, strict=False)
            if isinstance(hp, torch.Tensor) and hp.shape == lp.shape}


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
