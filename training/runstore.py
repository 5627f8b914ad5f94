"""Where a run lives: a local folder or an ``s3://`` prefix (checkpoints, TensorBoard logs, the export).

Ray Train writes checkpoints through ``RunConfig(storage_filesystem=…)``; for ``s3://`` we give it
pyarrow over the same s3fs client the corpus reader uses (endpoint and credentials from the
``AWS_*`` variables, see :func:`pipelines.storage.s3_options`), so one setting serves the corpus and
the run. Folders we write ourselves (the export, TensorBoard logs) are written locally and uploaded
file by file, the export's ``omnilv.json`` last: a reader that finds it finds the whole export.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LAST = "omnilv.json"  # an export is complete once this is there (training.export.META)


def is_remote(path: str | Path) -> bool:
    """True for ``scheme://`` URLs other than ``file://``."""
    return "://" in str(path) and not str(path).startswith("file://")


def _fs(url: str) -> Any:
    import fsspec

    from pipelines.storage import s3_options

    protocol = url.split("://", 1)[0]
    return fsspec.filesystem(protocol, **(s3_options() if protocol == "s3" else {}))


def ray_storage(storage_path: str) -> tuple[str, Any]:
    """(path, filesystem) for ``RunConfig``: an absolute local path and None, or a bucket path and pyarrow fs."""
    if not is_remote(storage_path):
        return str(Path(storage_path.removeprefix("file://")).resolve()), None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return storage_path.split("://", 1)[1].rstrip("/"), PyFileSystem(FSSpecHandler(_fs(storage_path)))


def join(base: str, *names: str) -> str:
    """``base/name/…`` for a local path (made absolute) or a URL."""
    root = base.rstrip("/") if is_remote(base) else str(Path(base.removeprefix("file://")).resolve())
    return "/".join([root, *names])


def exists(path: str) -> bool:
    """Whether a local path or remote object exists."""
    if not is_remote(path):
        return Path(path.removeprefix("file://")).exists()
    return bool(_fs(path).exists(path))


def read_text(path: str) -> str | None:
    """A small local or remote text file, or None when it does not exist."""
    try:
        if not is_remote(path):
            return Path(path.removeprefix("file://")).read_text()
        return _fs(path).cat_file(path).decode()
    except FileNotFoundError:
        return None


def upload_dir(local: str | Path, url: str) -> None:
    """Copy the files under ``local`` to ``url`` (same relative names), :data:`LAST` after all others."""
    from pipelines.storage import with_retries

    fs, local = _fs(url), Path(local)
    files = sorted((p for p in local.rglob("*") if p.is_file()), key=lambda p: (p.name == LAST, str(p)))
    for p in files:
        dest = f"{url.rstrip('/')}/{p.relative_to(local).as_posix()}"
        with_retries(lambda p=p, dest=dest: fs.put_file(str(p), dest), f"upload {dest}")


@contextlib.contextmanager
def local_copy(path: str | Path) -> Iterator[Path]:
    """``path`` itself if local; a remote folder is downloaded to a temp folder for the ``with`` block."""
    if not is_remote(path):
        yield Path(str(path).removeprefix("file://"))
        return
    url = str(path).rstrip("/")
    fs = _fs(url)
    bare = url.split("://", 1)[1]
    found = [f for f in fs.find(bare) if f.startswith(bare + "/")]
    if not found:
        raise FileNotFoundError(f"{url}: nothing there (is it the right prefix, and is the upload complete?)")
    with tempfile.TemporaryDirectory(prefix="omnilv-dl-") as tmp:
        for f in found:
            dest = Path(tmp) / f[len(bare) + 1:]
            dest.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(f, str(dest))
        yield Path(tmp)
