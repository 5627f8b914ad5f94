"""One build at a time per output: a lease file, taken atomically and renewed while the build runs.

``_lease.json`` names its holder (host, pid, start time) and an expiry. It is created only where none is, and
replaced only where it is still the very lease that was read: on S3 by conditional writes (``If-None-Match: *``
to create, ``If-Match: <etag>`` to renew, take over or delete), locally under ``flock`` on the file itself.
A second build on the same output is refused with the holder's name. A lease whose holder is gone may be taken
over at once: its expiry has passed, or its holder was a process of this host (same pid namespace) that no
longer runs, as after a SIGKILL.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from fsspec.asyn import sync

from omnilv.errors import OmniLVError
from pipelines.storage import Store, with_retries

LEASE = "_lease.json"
#: A holder that stops renewing (its host died) blocks others this long at most.
TTL_SECONDS = 600.0
RENEW_SECONDS = 60.0
log = logging.getLogger(__name__)


class LeaseError(OmniLVError):
    """Another build holds the output, or this build lost its lease; the message names the holder."""


def _pid_namespace() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs on this host (a zombie, killed but not reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def describe(rec: dict[str, Any]) -> str:
    expires = datetime.fromtimestamp(float(rec.get("expires", 0)), timezone.utc).isoformat(timespec="seconds")
    return f"pid {rec.get('pid')} on {rec.get('host')}, started {rec.get('started')} (lease expires {expires})"


def stale(rec: dict[str, Any] | None) -> bool:
    """Whether a lease record no longer protects a running build (unreadable ones never do)."""
    if not isinstance(rec, dict):
        return True
    try:
        if float(rec["expires"]) < time.time():
            return True
        same_host = rec["host"] == socket.gethostname() and rec.get("pidns") == _pid_namespace()
        return same_host and not _alive(int(rec["pid"]))
    except (KeyError, TypeError, ValueError):
        return True


class Lease:
    """The lease on ``store``'s output; ``with Lease(store):`` holds it for the block (renewed in a thread)."""

    def __init__(self, store: Store, what: str = "omnilv corpus build") -> None:
        self.store, self.what = store, what
        self.record: dict[str, Any] = {}
        self.tag: Any = None  # what the stored lease looks like while it is ours (S3: its etag)
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the two storage primitives: read with a version tag, and swap if the tag is unchanged ----------------
    def _read(self) -> tuple[bytes | None, Any]:
        if self.store.is_s3:
            bucket, key = self._key()
            fs = self.store.fs

            async def get() -> tuple[bytes, str]:  # body and etag of one response: the pair is consistent
                resp = await fs._call_s3("get_object", Bucket=bucket, Key=key)
                async with resp["Body"] as body:
                    return await body.read(), resp["ETag"]
            try:
                return with_retries(lambda: sync(fs.loop, get), f"read {self.store.path(LEASE)}")
            except FileNotFoundError:
                return None, None
        with self._locked() as fd:
            data = _pread_all(fd)
            return (data or None), data

    def _swap(self, tag: Any, data: bytes | None) -> Any:
        """Write ``data`` (None: delete) if the lease is still the one ``tag`` names (None: absent); returns the
        new tag, or ``False`` when another build got there first."""
        if self.store.is_s3:
            bucket, key = self._key()
            cond = {"IfMatch": tag} if tag is not None else {"IfNoneMatch": "*"}
            try:
                if data is None:
                    self.store.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=tag)
                    return None
                return self.store.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **cond)["ETag"]
            except (FileExistsError, FileNotFoundError):
                return False
            except OSError as exc:
                if _s3_code(exc) in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                    return False
                raise
        with self._locked() as fd:
            if _pread_all(fd) != (tag or b""):
                return False
            if data is None:
                os.unlink(self.store.path(LEASE))  # under the lock: waiters see the inode go and start again
                return None
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
            return data

    def _key(self) -> tuple[str, str]:
        bucket, _, key = self.store.path(LEASE).removeprefix("s3://").partition("/")
        return bucket, key

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        """The local lease file, opened and exclusively locked (the lock dies with the process)."""
        path = self.store.path(LEASE)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                with contextlib.suppress(FileNotFoundError):
                    if os.fstat(fd).st_ino == os.stat(path).st_ino:  # not unlinked while we waited
                        yield fd
                        return
            finally:
                os.close(fd)

    # -- the lease -----------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        self.record["expires"] = time.time() + TTL_SECONDS
        return json.dumps(self.record, sort_keys=True).encode()

    def acquire(self) -> Lease:
        self.record = {"holder": self.what, "host": socket.gethostname(), "pid": os.getpid(),
                       "pidns": _pid_namespace(), "token": uuid.uuid4().hex,
                       "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        for _ in range(5):
            data, tag = self._read()
            rec = _parse(data)
            if self._mine(rec):  # our own write went through though its answer was lost
                return self._start(tag)
            if data is not None and not stale(rec):
                raise LeaseError(f"{self.store.root} is being built by another build ({describe(rec)}); wait for it "
                                 "to finish, or write to another output.path. If that build is gone for good, its "
                                 f"lease ({self.store.path(LEASE)}) may be taken over once it expires.")
            if data is not None:
                log.warning("%s: taking over the lease of a build that is gone (%s)", self.store.root, describe(rec)
                            if isinstance(rec, dict) else "unreadable lease")
            new = self._swap(tag if data is not None else None, self._body())
            if new is not False:
                return self._start(new)
        raise LeaseError(f"{self.store.root}: other builds keep taking the lease ({self.store.path(LEASE)}); "
                         "run one build per output.path")

    def _mine(self, rec: dict[str, Any] | None) -> bool:
        return isinstance(rec, dict) and rec.get("token") == self.record.get("token")

    def _start(self, tag: Any) -> Lease:
        self.tag = tag
        self._thread = threading.Thread(target=self._keep, name="omnilv-lease", daemon=True)
        self._thread.start()
        return self

    def renew(self) -> None:
        """Push the expiry forward; if the lease is no longer ours, remember who took it (see :meth:`check`)."""
        if self.lost:
            return
        new = self._swap(self.tag, self._body())
        if new is False:
            data, tag = self._read()
            rec = _parse(data)
            if self._mine(rec):
                self.tag = tag
            else:
                self.lost = describe(rec) if isinstance(rec, dict) else "nobody (the lease was deleted)"
        else:
            self.tag = new

    def _keep(self) -> None:
        while not self._stop.wait(RENEW_SECONDS) and not self.lost:
            try:
                self.renew()
            except Exception as exc:  # noqa: BLE001 - transient: the next tick tries again, long before it expires
                log.warning("%s: could not renew the build lease: %s", self.store.root, exc)

    def check(self) -> None:
        """Raise if another build took the output over while this one ran (it stopped renewing in time)."""
        if self.lost:
            raise LeaseError(f"{self.store.root}: this build lost its lease to {self.lost}; its output is not "
                             "published. Run one build per output.path, then rerun to resume.")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if not self.lost and self.tag is not None:
            with contextlib.suppress(OSError):
                self._swap(self.tag, None)
        self.tag = None

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _parse(data: bytes | None) -> dict[str, Any] | None:
    try:
        rec = json.loads(data) if data else None
    except (ValueError, UnicodeDecodeError):
        return None
    return rec if isinstance(rec, dict) else None


def _pread_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0) if size else b""


def _s3_code(exc: BaseException) -> str | None:
    cause = exc.__cause__
    response = getattr(cause, "response", None) or {}
    return str(response.get("Error", {}).get("Code")) if response else None
