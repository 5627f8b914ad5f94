"""Where a corpus lives: a local folder or an ``s3://`` prefix, behind one small interface.

Every write is a *commit*: the object appears complete or not at all. Locally that
is a write to a temp name in the same folder followed by an atomic rename; on S3 a
single PUT (or a completed multipart upload; s3fs aborts a failed one, and
:meth:`Store.clean_temps` clears those a killed process left of names the caller owns).
Transient errors (S3 5xx, refused connections) are retried with backoff. Nothing here
deletes a name the caller did not give it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import fsspec

from omnilv.errors import OmniLVError
from pipelines.config import S3Config

T = TypeVar("T")
TMP_MARK = ".tmp-"
#: ``<name>.tmp-<8 hex>``: the one temp name :meth:`Store.write` uses (group 1 is the name it stands for).
TEMP_RE = re.compile(r"^(.+)\.tmp-[0-9a-f]{8}$")
COMMITS = "_commits"
BUILD_STATE = "_build.json"
LAST = "omnilv.json"  # an export is complete once this is there (training.model.export.META)


class StorageError(OmniLVError):
    """A path or name that would leave its destination, or storage that is not where it should be."""


class NothingThere(StorageError, FileNotFoundError):
    """A remote folder with nothing under it."""


# -- paths -----------------------------------------------------------------------------------------
def is_remote(path: str | Path) -> bool:
    """True for ``scheme://`` URLs other than ``file://``."""
    return "://" in str(path) and not str(path).startswith("file://")


def inside(name: str, where: str = "") -> str:
    """``name`` as a relative posix path that stays inside its root, or a :class:`StorageError`.

    Names read from a manifest, a listing or a shard are data: an absolute name, a scheme, a ``..``
    component or a backslash would reach outside the corpus.
    """
    parts = name.split("/")
    if (not name or name.startswith("/") or "://" in name or "\\" in name
            or any(p in ("", ".", "..") for p in parts)):
        raise StorageError(f"{where or 'name'} {name!r} does not stay inside its folder (absolute, '..', "
                           "a scheme or an empty part); refusing it")
    return name


def join(base: str | Path, *names: str) -> str:
    """``base/name/…`` for a local folder (made absolute, so workers in other folders agree) or a URL.

    Each name must stay inside ``base`` (see :func:`inside`); the one join of the project.
    """
    base = str(base)
    root = base.rstrip("/") if is_remote(base) else os.path.abspath(base.removeprefix("file://"))
    return "/".join([root, *(inside(n) for n in names)])


def location(path: str | Path) -> str:
    """A comparable form of a folder or object: an ``s3://`` URL without trailing slash, or a real local path."""
    path = str(path)
    if is_remote(path):
        return path.rstrip("/")
    return os.path.realpath(path.removeprefix("file://"))


def contains(outer: str | Path, inner: str | Path) -> bool:
    """Whether ``inner`` is ``outer`` or lies under it (both as :func:`location`: symlinks resolved)."""
    o, i = location(outer), location(inner)
    return i == o or i.startswith(o.rstrip("/") + "/")


def filesystem(url: str) -> Any:
    """The fsspec filesystem for ``url`` (``s3://`` with :func:`s3_options`: endpoint, region, credentials)."""
    protocol = url.split("://", 1)[0] if is_remote(url) else "file"
    return fsspec.filesystem(protocol, **(s3_options() if protocol == "s3" else {}))


def arrow_filesystem(url: str) -> Any:
    """A pyarrow filesystem over the same fsspec client (S3 options honoured); None for a local path."""
    if not is_remote(url):
        return None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return PyFileSystem(FSSpecHandler(filesystem(url)))


def arrow_path(url: str) -> str:
    """The path pyarrow wants beside :func:`arrow_filesystem`: ``bucket/key``, or an absolute local path."""
    if is_remote(url):
        return url.split("://", 1)[1].rstrip("/")
    return str(Path(url.removeprefix("file://")).resolve())


def exists(path: str) -> bool:
    """Whether a local path or remote object exists."""
    if not is_remote(path):
        return Path(path.removeprefix("file://")).exists()
    return bool(filesystem(path).exists(path))


def read_text(path: str) -> str | None:
    """A small local or remote text file, or None when it does not exist."""
    try:
        if not is_remote(path):
            return Path(path.removeprefix("file://")).read_text()
        return filesystem(path).cat_file(path).decode()
    except FileNotFoundError:
        return None


def upload_dir(local: str | Path, url: str) -> None:
    """Copy the files under ``local`` to ``url`` (same relative names), :data:`LAST` after all others."""
    fs, local = filesystem(url), Path(local)
    files = sorted((p for p in local.rglob("*") if p.is_file()), key=lambda p: (p.name == LAST, str(p)))
    for p in files:
        dest = f"{url.rstrip('/')}/{p.relative_to(local).as_posix()}"
        with_retries(lambda p=p, dest=dest: fs.put_file(str(p), dest), f"upload {dest}")


@contextlib.contextmanager
def local_copy(path: str | Path) -> Iterator[Path]:
    """``path`` itself if local; a remote folder is downloaded to a temp folder for the ``with`` block.

    Every downloaded name must stay inside the temp folder: a key such as ``export/../../x`` is refused.
    """
    if not is_remote(path):
        yield Path(str(path).removeprefix("file://"))
        return
    url = str(path).rstrip("/")
    fs = filesystem(url)
    bare = url.split("://", 1)[1]
    found = [f for f in fs.find(bare) if f.startswith(bare + "/")]
    if not found:
        raise NothingThere(f"{url}: nothing there (is it the right prefix, and is the upload complete?)")
    names = [inside(f[len(bare) + 1:], f"{url}: key") for f in found]  # all checked before anything is written
    with tempfile.TemporaryDirectory(prefix="omnilv-dl-") as tmp:
        for f, name in zip(found, names, strict=True):
            dest = Path(tmp, *name.split("/"))
            dest.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(f, str(dest))
        yield Path(tmp)


def s3_options(s3: S3Config | None = None) -> dict[str, Any]:
    """s3fs options from the config, falling back to the standard AWS_* environment variables."""
    s3 = s3 or S3Config()
    opts: dict[str, Any] = {"anon": s3.anon} if s3.anon else {}
    endpoint = s3.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    client: dict[str, Any] = {}
    if endpoint:
        client["endpoint_url"] = endpoint
    region = s3.region or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if region:
        client["region_name"] = region
    if client:
        opts["client_kwargs"] = client
    # Workers may run in processes started before these were exported (a shared local Ray): pass them on.
    for env, key in (("AWS_ACCESS_KEY_ID", "key"), ("AWS_SECRET_ACCESS_KEY", "secret"), ("AWS_SESSION_TOKEN", "token")):
        if os.environ.get(env) and not s3.anon:
            opts[key] = os.environ[env]
    opts["config_kwargs"] = {"retries": {"max_attempts": 8, "mode": "standard"}, "connect_timeout": 5,
                             "read_timeout": 30}
    return opts


#: botocore's names for "no usable credentials" (matched by name: botocore is s3fs's, not ours to import).
CREDENTIAL_ERRORS = ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError")


@contextlib.contextmanager
def credentials_as_errors(where: str) -> Iterator[None]:
    """Missing or broken S3 credentials inside the block become one :class:`StorageError` that says what to set."""
    try:
        yield
    except Exception as exc:
        if type(exc).__name__ not in CREDENTIAL_ERRORS:
            raise
        raise StorageError(f"{where}: no usable AWS credentials ({exc}). Set AWS_ACCESS_KEY_ID and "
                           "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or give the machine a role), and AWS_ENDPOINT_URL "
                           "for an endpoint other than AWS's") from None


def with_retries(fn: Callable[[], T], what: str, attempts: int = 8, first_delay: float = 0.25) -> T:
    """Call ``fn`` until it succeeds, retrying transient I/O errors with exponential backoff."""
    delay = first_delay
    for i in range(attempts):
        try:
            with credentials_as_errors(what):
                return fn()
        except (FileNotFoundError, PermissionError):
            raise
        except (OSError, ConnectionError, TimeoutError, RuntimeError) as exc:
            if isinstance(exc, OSError) and exc.errno in (errno.EINVAL, errno.EACCES, errno.EPERM):
                raise  # a request S3 rejects for what it is will not succeed later

            if i == attempts - 1:
                raise OSError(f"{what}: gave up after {attempts} attempts: {exc}") from exc
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
    raise AssertionError("unreachable")


class Store:
    """A corpus root (local folder or ``s3://bucket/prefix``) with atomic writes.

    Names are relative to the root and must stay inside it (:func:`inside`). Nothing here deletes a file unless
    the caller names it: :meth:`remove` takes names, :meth:`clean_temps` only temps of names the caller owns.
    """

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None) -> None:
        self.root = root.rstrip("/") if "://" in root else os.path.abspath(root.removeprefix("file://"))
        self.is_s3 = self.root.startswith("s3://")
        self.options = dict(storage_options or {}) if self.is_s3 else {}
        # A private instance without listing caches: resume decisions must see the bucket as it is now.
        extra = {"skip_instance_cache": True, "use_listings_cache": False} if self.is_s3 else {}
        self.fs = fsspec.filesystem("s3" if self.is_s3 else "file", **self.options, **extra)
        # A local root is made by the first write, not here: a refused output is left as it was.

    def path(self, name: str) -> str:
        return f"{self.root}/{inside(name, self.root + ': name')}"

    def url(self, name: str) -> str:
        return self.path(name)

    def exists(self, name: str) -> bool:
        return with_retries(lambda: self.fs.exists(self.path(name)), f"stat {self.path(name)}")

    def size(self, name: str) -> int:
        return int(with_retries(lambda: self.fs.info(self.path(name))["size"], f"stat {self.path(name)}"))

    def read(self, name: str) -> bytes:
        return with_retries(lambda: self.fs.cat_file(self.path(name)), f"read {self.path(name)}")

    def sha256(self, name: str) -> str:
        h = hashlib.sha256()
        with self.fs.open(self.path(name), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    def write(self, name: str, data: bytes) -> None:
        """Commit ``data`` at ``name``: complete or absent, never partial."""
        target = self.path(name)
        if self.is_s3:
            with_retries(lambda: self.fs.pipe_file(target, data), f"upload {target}")
            return
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = f"{target}{TMP_MARK}{uuid.uuid4().hex[:8]}"  # matches TEMP_RE: clean_temps knows whose it is
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)  # atomic on POSIX: readers see the old file or the whole new one
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def list(self, prefix: str = "") -> list[str]:
        """Names (relative to the root) of the objects under ``prefix``."""
        base = (self.path(prefix) if prefix else self.root).rstrip("/")
        try:
            found = with_retries(lambda: self.fs.find(base), f"list {base}")
        except FileNotFoundError:
            return []
        root = self.root.removeprefix("s3://") if self.is_s3 else self.root
        return sorted(p[len(root) + 1:] for p in found if p.startswith(root + "/"))

    def remove(self, names: Iterable[str]) -> None:
        """Delete exactly these names (missing ones are fine)."""
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                with_retries(lambda n=name: self.fs.rm_file(self.path(n)), f"delete {self.path(name)}")

    def holds_corpus(self) -> bool:
        """Whether a corpus build has written here (its build state or commit records)."""
        return self.exists(BUILD_STATE) or bool(self.list(COMMITS))

    def refuse_unsafe(self, sources: Iterable[str] = (), objects: Iterable[str] = ()) -> None:
        """Refuse an output no corpus tool may write into: the filesystem root, the home folder (or a folder
        holding it), a bucket root, and a folder that holds a source or lies inside one. ``sources``: the folders,
        prefixes or files the job reads from (symlinks resolved); ``objects``: the listed sources themselves
        (possibly millions: compared as normalised paths)."""
        if self.is_s3:
            bucket, _, prefix = self.root.removeprefix("s3://").partition("/")
            if not prefix.strip("/"):
                raise StorageError(f"{self.root} is a bucket root; write under a prefix of its own, e.g. "
                                   f"s3://{bucket}/corpus")
        else:
            home = os.path.realpath(os.path.expanduser("~"))
            if location(self.root) == "/" or contains(self.root, home):
                raise StorageError(f"{self.root} is the filesystem root or holds the home folder {home}; "
                                   "write into a folder of its own, e.g. ~/corpora/NAME")
        for src in sources:
            if contains(self.root, src) or contains(src, self.root):
                raise StorageError(f"output {self.root} and source {src} overlap (one holds the other); "
                                   "write into a folder outside every source")
        outs = {location(self.root), self.root}  # real and as written: a listing may give either
        for obj in objects:
            where = obj.rstrip("/") if is_remote(obj) else os.path.abspath(obj.removeprefix("file://"))
            if any(where == out or where.startswith(out.rstrip("/") + "/") for out in outs):
                raise StorageError(f"output {self.root} holds the source {obj}; write into a folder outside every "
                                   "source")

    def clean_temps(self, owned: Callable[[str], bool] | Collection[str]) -> int:
        """Delete what a killed writer of ``owned`` names left: ``<name>.tmp-<8 hex>`` files (local), incomplete
        multipart uploads of those names (S3). Temps of any other name, ours or not, are left alone."""
        mine = owned if callable(owned) else set(owned).__contains__
        if self.is_s3:
            return self.abort_stale_uploads(mine)
        stale = [n for n in self.list() if (m := TEMP_RE.match(n)) and mine(m.group(1))]
        self.remove(stale)
        return len(stale)

    def abort_stale_uploads(self, owned: Callable[[str], bool]) -> int:
        """Abort incomplete multipart uploads of the ``owned`` names under this prefix (a killed upload leaves
        hidden parts). Another program's upload, under this prefix or a sibling such as ``corpus-v2/``, is
        never touched, and a bucket root is never scanned."""
        bucket, _, prefix = self.root.removeprefix("s3://").partition("/")
        prefix = prefix.strip("/")
        if not prefix:
            return 0
        mine, marker = [], {}
        while True:
            resp = with_retries(lambda m=dict(marker): self.fs.call_s3(
                "list_multipart_uploads", Bucket=bucket, Prefix=prefix + "/", **m), f"list uploads under {self.root}")
            for up in resp.get("Uploads", []):
                name = up["Key"].removeprefix(prefix + "/")
                if up["Key"].startswith(prefix + "/") and _plain(name) and owned(name):
                    mine.append(up)
            if not resp.get("IsTruncated"):
                break
            marker = {"KeyMarker": resp["NextKeyMarker"], "UploadIdMarker": resp["NextUploadIdMarker"]}
        for up in mine:
            with_retries(lambda u=up: self.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=u["Key"],
                                                      UploadId=u["UploadId"]), f"abort upload {up['Key']}")
        return len(mine)

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (handy on a fresh endpoint; a no-op locally)."""
        if not self.is_s3:
            return
        bucket = self.root.removeprefix("s3://").split("/", 1)[0]
        if with_retries(lambda: self.fs.exists(bucket), f"stat bucket {bucket}"):
            return
        region = self.options.get("client_kwargs", {}).get("region_name")
        kw = {"CreateBucketConfiguration": {"LocationConstraint": region}} if region not in (None, "us-east-1") else {}
        with_retries(lambda: self.fs.call_s3("create_bucket", Bucket=bucket, **kw), f"create bucket {bucket}")


def _plain(name: str) -> bool:
    """Whether a listed name stays inside its root (see :func:`inside`), without raising."""
    try:
        inside(name)
    except StorageError:
        return False
    return True
