"""Joining Ray: the one place that calls ``ray.init``.

Never a bare ``ray.init()``: without an address Ray may join a stranger's instance on the same machine. We join
the address the user named (``--address`` or ``$RAY_ADDRESS``), else start a private local instance.

The console is ours (progress bars, results). Ray's worker output (Ray Train's controller and its detached
placement-group cleaner, Ray Data's per-epoch lines, DeepSpeed) stays in Ray's log files: a worker's error reaches
the driver as the exception it raises, traceback included. ``RAY_LOG_TO_DRIVER=1`` forwards worker output again.
"""

from __future__ import annotations

import logging
import os

from omnilv.errors import OmniLVError

#: Ray notices that are no news to an omnilv user, by logger: a new local Ray is token-protected by default, and
#: the training driver turns Ray Data's progress bars off for its own.
NOTICES = {"ray._private.authentication.authentication_token_setup": "Token authentication is enabled",
           "ray.data._internal.progress": "Progress bars disabled"}


class RayUnavailable(OmniLVError):
    """The Ray cluster the user named cannot be reached."""


class _Notice(logging.Filter):
    """Drops one logger's records whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def ensure_ray(address: str | None = None, *, num_cpus: int | None = None, log_to_driver: bool = False) -> bool:
    """Join ``address`` / ``$RAY_ADDRESS``, else start a private local Ray; True when this call started Ray
    (the caller then owns its shutdown), False when Ray was already up (its console settings are left alone)."""
    import ray

    if ray.is_initialized():
        return False
    target = address or os.environ.get("RAY_ADDRESS") or "local"
    kw = {"num_cpus": num_cpus} if target == "local" and num_cpus else {}
    quiet_console()
    try:
        ray.init(address=target, include_dashboard=bool(os.environ.get("OMNILV_RAY_DASHBOARD")),
                 log_to_driver=None if "RAY_LOG_TO_DRIVER" in os.environ else log_to_driver,
                 configure_logging=False, **kw)
    except ConnectionError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RayUnavailable(f"cannot reach the Ray cluster at {target}: {first}. Is the head running, and is "
                             "the address right (ray://HOST:10001 for a client, or run on the head)?") from None
    return True


def quiet_console() -> None:
    """This process's Ray loggers: :data:`NOTICES` dropped, Ray Data's INFO lines (each execution's start, plan and
    end) kept to its own log file (``logs/ray-data``); warnings and errors still print."""
    import ray.data  # noqa: F401  (configures the "ray.data" logger: a file handler and a "console" one)

    for name, prefix in NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Notice) for f in logger.filters):
            logger.addFilter(_Notice(prefix))
    for handler in logging.getLogger("ray.data").handlers:
        if handler.name == "console":
            handler.setLevel(max(handler.level, logging.WARNING))
