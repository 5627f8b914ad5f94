"""A real S3 endpoint on loopback for ``omnilv rehearse --s3 local``: ``moto_server`` (from the ``moto[server]``
package), started and stopped by the rehearsal, with throwaway credentials that exist only for it.

It serves whatever buckets the production configs name; the clean-source list file the corpus configs read is
written there too, listing a few bundled photographs uploaded beside it, so the source listing is rehearsed as
well.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from omnilv.errors import OmniLVError

#: Credentials of the throwaway endpoint (moto accepts any); never a real secret.
FAKE_ENV = {"AWS_ACCESS_KEY_ID": "rehearsal", "AWS_SECRET_ACCESS_KEY": "rehearsal", "AWS_DEFAULT_REGION": "us-east-1"}


class LocalS3Error(OmniLVError):
    """The local S3 endpoint could not be started."""


@contextlib.contextmanager
def local_s3(log: Path) -> Iterator[str]:
    """Start ``moto_server`` on a free loopback port; the ``AWS_*`` variables point at it inside the block."""
    exe = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    if not Path(exe).is_file():
        raise LocalS3Error("--s3 local needs moto_server: pip install 'moto[server]' (it is in omnilv's test extra)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    env = {**FAKE_ENV, "AWS_ENDPOINT_URL": url, "AWS_ENDPOINT_URL_S3": url}
    old = {k: os.environ.get(k) for k in [*env, "AWS_SESSION_TOKEN", "AWS_PROFILE"]}
    try:
        for _ in range(150):  # up to 30 s: it is ready when it accepts a connection
            if proc.poll() is not None:
                raise LocalS3Error(f"moto_server exited at start; see {log}")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            time.sleep(0.2)
        else:
            raise LocalS3Error(f"moto_server did not accept connections on port {port}; see {log}")
        os.environ.pop("AWS_SESSION_TOKEN", None)
        os.environ.pop("AWS_PROFILE", None)
        os.environ.update(env)
        yield url
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def make_buckets(urls: list[str]) -> list[str]:
    """Create the bucket of every ``s3://`` URL (once each); returns the bucket names."""
    from pipelines import Store, s3_options

    buckets = sorted({u.removeprefix("s3://").split("/", 1)[0] for u in urls if u.startswith("s3://")})
    for b in buckets:
        Store(f"s3://{b}", s3_options()).ensure_bucket()
    return buckets


def seed_source_list(list_url: str, column: str, photos: int = 6) -> list[str]:
    """Upload a few bundled photos beside ``list_url`` and write it (parquet or jsonl) listing them."""
    import io

    import fsspec

    from degradations import sample_paths
    from pipelines import s3_options

    fs = fsspec.filesystem("s3", **s3_options())
    folder = list_url.rsplit("/", 1)[0]
    uris = []
    for p in sorted(sample_paths(min_side=256))[:photos]:
        fs.pipe_file(f"{folder}/{p.name}", p.read_bytes())
        uris.append(f"{folder}/{p.name}")
    if list_url.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(pa.table({column: uris}), buf)
        fs.pipe_file(list_url, buf.getvalue())
    else:
        import json

        fs.pipe_file(list_url, "".join(json.dumps({column: u}) + "\n" for u in uris).encode())
    return uris
