"""Joining Ray: the one place that calls ``ray.init``.

Never a bare ``ray.init()``: without an address Ray may join a stranger's instance on the same machine. We join
the address the user named (``--address`` or ``$RAY_ADDRESS``), else start a private local instance.
"""

from __future__ import annotations

import os

from omnilv.errors import OmniLVError


class RayUnavailable(OmniLVError):
    """The Ray cluster the user named cannot be reached."""


def ensure_ray(address: str | None = None, *, num_cpus: int | None = None, log_to_driver: bool = True) -> bool:
    """Join ``address`` / ``$RAY_ADDRESS``, else start a private local Ray; True when this call started Ray
    (the caller then owns its shutdown), False when Ray was already up."""
    import ray

    if ray.is_initialized():
        return False
    target = address or os.environ.get("RAY_ADDRESS") or "local"
    kw = {"num_cpus": num_cpus} if target == "local" and num_cpus else {}
    try:
        ray.init(address=target, include_dashboard=bool(os.environ.get("OMNILV_RAY_DASHBOARD")),
                 log_to_driver=log_to_driver, configure_logging=False, **kw)
    except ConnectionError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RayUnavailable(f"cannot reach the Ray cluster at {target}: {first}. Is the head running, and is "
                             "the address right (ray://HOST:10001 for a client, or run on the head)?") from None
    return True
