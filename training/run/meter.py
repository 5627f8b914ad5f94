"""What a worker measures between two reports: loss, throughput, time waiting for data, exemplar share.

Losses stay on the device until a report reads them: no host sync per micro-step."""

from __future__ import annotations

import time
from typing import Any


class Meter:
    """Running figures since the last :meth:`metrics` call."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.wait = self.busy = 0.0
        self.losses: list[Any] = []  # loss tensors (on the device) or floats
        self.samples = self.exemplars = 0
        self.t_mark = time.perf_counter()

    def waited(self, seconds: float) -> None:
        self.wait += seconds

    def micro_step(self, seconds: float, loss: Any, samples: int, exemplars: int) -> None:
        """``loss``: the detached loss tensor (or a float)."""
        self.busy += seconds
        self.losses.append(loss)
        self.samples += samples
        self.exemplars += exemplars

    def metrics(self, step: int) -> dict[str, Any]:
        """The figures since the last call, then start anew."""
        dt = time.perf_counter() - self.t_mark
        loss = float(sum(self.losses) / len(self.losses))  # the one host sync, at report time
        out = {"step": step, "loss": loss, "samples_per_s": self.samples / dt,
               "data_wait_fraction": self.wait / max(self.wait + self.busy, 1e-9),
               "exemplar_fraction": self.exemplars / max(self.samples, 1),
               "compute_s_per_micro_step": self.busy / max(len(self.losses), 1)}
        self.reset()
        return out
