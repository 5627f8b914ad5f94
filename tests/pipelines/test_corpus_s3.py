"""Building to a real S3 endpoint (moto_server on loopback), through a proxy that fails for a while; clean-up and
the build lease on S3 touch nothing of anybody else."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time

import fsspec
import pytest
from corpus_helpers import corpus_files, small_config

from pipelines.build import build_corpus
from pipelines.inspect import inspect_corpus
from pipelines.lease import LEASE, Lease, LeaseError
from pipelines.storage import StorageError, Store, s3_options

SLOW_DOWN = (b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\nContent-Length: 68\r\n"
             b"\r\n<Error><Code>SlowDown</Code><Message>Please slow down</Message></Error>")


class FaultyProxy:
    """A loopback TCP proxy in front of moto: ``pass`` forwards, ``503`` answers Slow Down, ``down`` resets."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.mode = "pass"
        self.faults = {"503": 0, "down": 0}
        self.live: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        if mode != "pass":  # the server "goes away": established connections break too
            with self.lock:
                for s in list(self.live):
                    _close(s)
                self.live.clear()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        mode = self.mode
        if mode == "down":
            self.faults["down"] += 1
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            return _close(conn)  # RST: connection reset by peer
        if mode == "503":
            self.faults["503"] += 1
            conn.settimeout(2)
            try:
                conn.recv(65536)
                conn.sendall(SLOW_DOWN)
            except OSError:
                pass
            return _close(conn)
        up = socket.create_connection(("127.0.0.1", self.upstream))
        with self.lock:
            self.live.update((conn, up))
        threading.Thread(target=_pump, args=(up, conn), daemon=True).start()
        _pump(conn, up)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    _close(src)
    _close(dst)


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.close()


def pending_uploads(bucket: str) -> list:
    fs = fsspec.filesystem("s3", **s3_options(), skip_instance_cache=True)
    return fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", [])


def test_s3_build_through_faults_equals_local(reference, s3_server, ray_local, tmp_path):
    proxy = FaultyProxy(s3_server["port"])
    root = "s3://corpus-faults/quickstart"
    cfg = small_config(root, f"s3.endpoint_url=http://127.0.0.1:{proxy.port}")

    done = threading.Event()

    def wait_for(condition, seconds: float = 60.0) -> None:
        deadline = time.time() + seconds
        while not condition() and not done.is_set() and time.time() < deadline:
            time.sleep(0.02)

    def first_commit() -> bool:  # asked of moto directly, not through the proxy
        direct = fsspec.filesystem("s3", **s3_options(), skip_instance_cache=True)
        return bool(direct.exists(f"{root}/_commits") and direct.ls(f"{root}/_commits", refresh=True))

    def schedule() -> None:
        # Driven by the build's progress and by counted faults, not by the clock, so the faults land mid-build
        # however fast this machine is: once a shard is committed, answer 503 until three requests got one,
        # then reset connections ("the server went away") until three did, then come back.
        wait_for(first_commit)
        proxy.set_mode("503")
        wait_for(lambda: proxy.faults["503"] >= 3)
        proxy.set_mode("down")
        wait_for(lambda: proxy.faults["down"] >= 3)
        proxy.set_mode("pass")

    chaos = threading.Thread(target=schedule)
    chaos.start()
    try:
        result = build_corpus(cfg, progress=False, workers=2)
    finally:
        done.set()
        chaos.join()
    assert proxy.faults["503"] > 0 and proxy.faults["down"] > 0, proxy.faults
    assert result.manifest.samples == 38

    # nothing lost, nothing partial: the bucket holds exactly the listed shards, byte-identical to a local build
    fs = fsspec.filesystem("s3", **s3_options(), skip_instance_cache=True)
    local = tmp_path / "download"
    local.mkdir()
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.find(root) if "/shard-" in p and "/_commits/" not in p)
    assert names == [s.name for s in result.manifest.shards]
    for name in [*names, "manifest.json"]:
        (local / name).write_bytes(fs.cat_file(f"{root}/{name}"))
    assert corpus_files(local) == corpus_files(reference.root)
    assert inspect_corpus(root, s3_options()).ok
    assert pending_uploads("corpus-faults") == []


def test_s3_resume_aborts_stale_multipart_and_cli_inspects(reference, s3_server, ray_local):
    root = "s3://corpus-resume/qs"
    cfg = small_config(root, "output.samples_per_shard=19", "variants_per_source=1")
    build_corpus(cfg, progress=False)
    # a writer killed mid multipart upload leaves invisible parts behind
    fs = fsspec.filesystem("s3", **s3_options(), skip_instance_cache=True)
    up = fs.call_s3("create_multipart_upload", Bucket="corpus-resume", Key="qs/shard-000000.tar")
    fs.call_s3("upload_part", Bucket="corpus-resume", Key="qs/shard-000000.tar", PartNumber=1,
               UploadId=up["UploadId"], Body=b"x" * 1024)
    assert len(pending_uploads("corpus-resume")) == 1
    again = build_corpus(cfg, progress=False)
    assert again.built == 0 and again.skipped == 1 and pending_uploads("corpus-resume") == []
    out = subprocess.run([sys.executable, "-m", "omnilv", "corpus", "inspect", root], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "19 samples" in out.stdout and "OK" in out.stdout, out.stdout + out.stderr


def test_s3_cleanup_aborts_only_our_own_stale_uploads(s3_server, ray_local):
    bucket, root = "corpus-uploads", "s3://corpus-uploads/qs"
    cfg = small_config(root, "output.samples_per_shard=19", "variants_per_source=1")
    build_corpus(cfg, progress=False)
    fs = fsspec.filesystem("s3", **s3_options(), skip_instance_cache=True)
    for key in ("qs/shard-000000.tar", "qs-v2/shard-000000.tar", "qs/notes.bin"):  # ours, a sibling's, a stranger's
        up = fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key)
        fs.call_s3("upload_part", Bucket=bucket, Key=key, PartNumber=1, UploadId=up["UploadId"], Body=b"x" * 1024)
    again = build_corpus(cfg, progress=False)
    assert again.skipped == 1
    left = sorted(u["Key"] for u in pending_uploads(bucket))
    assert left == ["qs-v2/shard-000000.tar", "qs/notes.bin"]  # ours aborted (0 open), nobody else's touched


def test_s3_bucket_root_is_refused(s3_server):
    with pytest.raises(StorageError, match="bucket root"):
        build_corpus(small_config("s3://corpus-root", "variants_per_source=1"), progress=False)
    fs = fsspec.filesystem("s3", **s3_options(), skip_instance_cache=True)
    assert not fs.exists("corpus-root")  # refused before even the bucket was made


def test_s3_lease_is_a_conditional_write(s3_server):
    store = Store("s3://corpus-lease/qs", s3_options())
    store.ensure_bucket()
    a = Lease(store).acquire()
    with pytest.raises(LeaseError, match="another build"):
        Lease(store).acquire()
    fs = fsspec.filesystem("s3", **s3_options(), skip_instance_cache=True)
    # a plain create of the lease key over a live one is what If-None-Match refuses
    with pytest.raises(FileExistsError):
        fs.call_s3("put_object", Bucket="corpus-lease", Key=f"qs/{LEASE}", Body=b"{}", IfNoneMatch="*")
    stalled = {**json.loads(fs.cat_file(f"corpus-lease/qs/{LEASE}")), "expires": 0}  # as if A stopped renewing
    fs.pipe_file(f"corpus-lease/qs/{LEASE}", json.dumps(stalled).encode())
    b = Lease(store).acquire()  # takes over with If-Match on the stale lease's etag
    a.renew()
    with pytest.raises(LeaseError, match="lost its lease"):
        a.check()
    a.release()
    assert json.loads(fs.cat_file(f"corpus-lease/qs/{LEASE}"))["token"] == b.record["token"]
    b.release()
    assert not fs.exists(f"corpus-lease/qs/{LEASE}")
