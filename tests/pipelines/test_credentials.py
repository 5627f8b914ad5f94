"""S3 without usable credentials is one line that says what to set, never botocore's traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import StorageError, load_manifest


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    for k in list(os.environ):
        if k.startswith("AWS_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-role lookup on this machine
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens: no request may go out anyway
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # a filesystem cached by an earlier test would still hold its keys
    yield
    s3fs.S3FileSystem.clear_instance_cache()


def test_reading_a_manifest_without_credentials(no_credentials):
    with pytest.raises(StorageError, match="no usable AWS credentials.*AWS_ACCESS_KEY_ID"):
        load_manifest("s3://bucket/corpus")


def test_the_cli_says_it_in_one_line(no_credentials):
    res = subprocess.run([str(Path(sys.executable).with_name("omnilv")), "corpus", "inspect", "s3://bucket/corpus"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().startswith("error:") and "no usable AWS credentials" in res.stderr
