"""Rectified-flow objective and ODE sampler, apart from the network (STYLE habit 10).

Convention (Lumina-Next: "t = 0 is the noise and t = 1 is the image"):

    x0 ~ N(0, I)  noise,   x1  data latent,   t in [0, 1]
    x_t = t * x1 + (1 - t) * x0
    target velocity v = dx_t/dt = x1 - x0;  loss = mean ||net(x_t, t, …) - v||²

Sampling integrates dx/dt = v from t = 0 (noise) to t = 1 (data) with Euler or Heun steps.
Classifier-free guidance acts on the instruction only: the unconditional branch sees the same
condition image and exemplar but the null text (zero features, only token 0 valid), which is
also what instruction dropout feeds during training.

:class:`FlowMatching` is the one module handed to ``deepspeed.initialize``. Gradient clipping is
DeepSpeed's ``gradient_clipping`` (or ``torch.nn.utils.clip_grad_norm_`` in a bare loop) — the
caller's job, as is the EMA of the weights (:mod:`training.run.ema`).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from training.config import ObjectiveConfig
from training.model.omnilv import OmniLV


def null_text(text: torch.Tensor, text_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The "no instruction" input: zero features (B, L, T) and a mask (B, L) with only token 0 valid."""
    mask = torch.zeros_like(text_mask, dtype=torch.bool)
    mask[:, 0] = True
    return torch.zeros_like(text), mask


class FlowMatching(nn.Module):
    """Wraps an :class:`OmniLV`: ``forward(batch) -> loss`` for training, :meth:`sample` for inference.

    Its settings are one :class:`ObjectiveConfig` (the training config's ``model.objective``), given whole or as
    keywords: ``FlowMatching(net, cfg.model.objective)``, ``FlowMatching(net, text_dropout=0.0)``.
    """

    def __init__(self, net: OmniLV, objective: ObjectiveConfig | None = None, **fields: Any) -> None:
        super().__init__()
        if objective is not None and fields:
            raise TypeError(f"give an ObjectiveConfig or its fields, not both (got {', '.join(fields)} too)")
        self.net = net
        # Plain attributes (what forward reads); ``objective`` gathers them back into one validated config.
        for name, value in objective if objective is not None else ObjectiveConfig(**fields):
            setattr(self, name, value)

    @property
    def objective(self) -> ObjectiveConfig:
        """The settings as a config: what an export stores and ``FlowMatching(net, objective)`` takes."""
        return ObjectiveConfig(**{name: getattr(self, name) for name in ObjectiveConfig.model_fields})

    def sample_t(self, n: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n,) times in (0, 1); logit-normal concentrates on mid times where the velocity is hardest."""
        if self.timestep_sampling == "uniform":
            return torch.rand(n, device=device, generator=generator)
        z = torch.randn(n, device=device, generator=generator)
        return torch.sigmoid(self.logit_mean + self.logit_std * z)

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        """Scalar loss for ``batch`` = {x1, cond, text, text_mask[, ref_input, ref_target, ref_mask]}."""
        x1 = batch["x1"]  # (B, C, H, W)
        B, dev = x1.shape[0], x1.device
        x0 = torch.randn(x1.shape, device=dev, dtype=x1.dtype, generator=generator)  # (B, C, H, W)
        t = self.sample_t(B, dev, generator).to(x1.dtype)  # (B,)
        tb = t.view(B, 1, 1, 1)
        x_t = tb * x1 + (1 - tb) * x0
        text, mask = batch["text"], batch["text_mask"].bool()
        if self.training and self.text_dropout > 0:
            drop = torch.rand(B, device=dev, generator=generator) < self.text_dropout  # (B,)
            text, mask = _where_text(drop, null_text(text, mask), (text, mask))
        v = self.net(x_t, t, batch["cond"], text, mask, batch.get("ref_input"), batch.get("ref_target"),
                     batch.get("ref_mask"))
        return torch.mean((v.float() - (x1 - x0).float()) ** 2)

    def velocity(self, x: torch.Tensor, t: float, cond: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                 refs: tuple, guidance: float) -> torch.Tensor:
        """Guided velocity at time ``t``: v_null + g · (v_text − v_null); one batched call when g ≠ 1."""
        B = x.shape[0]
        tt = torch.full((B,), t, device=x.device, dtype=x.dtype)
        if guidance == 1.0:
            return self.net(x, tt, cond, text, text_mask, *refs)
        ntext, nmask = null_text(text, text_mask)
        twice = [None if r is None else torch.cat([r, r]) for r in refs]
        v = self.net(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([cond, cond]), torch.cat([text, ntext]),
                     torch.cat([text_mask, nmask]), *twice)  # (2B, C, H, W)
        v_text, v_null = v.chunk(2)
        return v_null + guidance * (v_text - v_null)

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
               ref_input: torch.Tensor | None = None, ref_target: torch.Tensor | None = None,
               ref_mask: torch.Tensor | None = None, *, steps: int = 20, method: Literal["euler", "heun"] = "euler",
               guidance: float = 1.0, generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        """Integrate from noise (t=0) to data (t=1): the x1 latent (B, C, H, W) for condition ``cond``."""
        if method not in ("euler", "heun"):
            raise ValueError(f"method must be 'euler' or 'heun', got {method!r}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        text_mask = text_mask.bool()
        refs = (ref_input, ref_target, ref_mask)
        x = noise if noise is not None else torch.randn(cond.shape, device=cond.device, dtype=cond.dtype,
                                                        generator=generator)  # (B, C, H, W)
        ts = torch.linspace(0.0, 1.0, steps + 1).tolist()
        for t0, t1 in zip(ts[:-1], ts[1:], strict=True):
            dt = t1 - t0
            v0 = self.velocity(x, t0, cond, text, text_mask, refs, guidance)
            if method == "euler":
                x = x + dt * v0
                continue
            x_pred = x + dt * v0
            v1 = self.velocity(x_pred, t1, cond, text, text_mask, refs, guidance)
            x = x + dt * 0.5 * (v0 + v1)
        return x


def _where_text(drop: torch.Tensor, if_true: tuple, if_false: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    (t1, m1), (t0, m0) = if_true, if_false
    return torch.where(drop.view(-1, 1, 1), t1, t0), torch.where(drop.view(-1, 1), m1, m0)
