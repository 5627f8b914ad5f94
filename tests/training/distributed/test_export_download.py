"""Downloading an s3:// export keeps every file inside its temp folder (fault matrix #20)."""

from __future__ import annotations

import os
from pathlib import Path

import fsspec
import pytest

from pipelines import StorageError, local_copy


@pytest.fixture()
def bucket(s3_server):
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    name = f"exports-{os.getpid()}"
    if not fs.exists(name):
        fs.mkdir(name)
    return fs, name


def test_a_key_with_dotdot_is_refused_before_anything_is_written(bucket, tmp_path):
    fs, name = bucket
    victim = tmp_path / "home" / ".bashrc"
    victim.parent.mkdir(parents=True)
    victim.write_text("mine")
    fs.pipe_file(f"{name}/run/export/omnilv.json", b"{}")
    depth = len(Path("/tmp").resolve().parts) + 3  # enough ../ to climb out of any temp folder to the root
    evil = "/".join([".."] * depth) + str(victim)
    fs.pipe_file(f"{name}/run/export/{evil}", b"owned")
    assert any(".." in k for k in fs.find(f"{name}/run/export")), "the endpoint kept the key as written"
    with pytest.raises(StorageError, match="does not stay inside"), local_copy(f"s3://{name}/run/export"):
        pass
    assert victim.read_text() == "mine"


def test_a_normal_export_downloads_with_its_folders(bucket):
    fs, name = bucket
    fs.pipe_file(f"{name}/ok/export/omnilv.json", b"{}")
    fs.pipe_file(f"{name}/ok/export/backbone/config.json", b"{}")
    with local_copy(f"s3://{name}/ok/export") as folder:
        assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == \
            ["backbone/config.json", "omnilv.json"]
