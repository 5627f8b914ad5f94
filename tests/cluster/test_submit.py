"""`omnilv cluster submit` against a real Ray head (Jobs API on loopback), and its errors for people."""

from __future__ import annotations

import hashlib
import http.server
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cluster import submit as sub
from omnilv.cli import app

OMNILV = str(Path(sys.executable).with_name("omnilv"))
runner = CliRunner()


@pytest.fixture
def head(ray_head, monkeypatch):
    """The session's Ray head, with its auth token where a user would export it."""
    monkeypatch.setenv("RAY_AUTH_TOKEN", ray_head["token"])
    return ray_head


def _submit(address: str, *command: str, extra: tuple[str, ...] = ()):
    return runner.invoke(app, ["cluster", "submit", "--address", address, *extra, "--", *command])


def test_success_streams_logs_and_exits_zero(head):
    code = "import os; print('OMP', os.environ['OMP_NUM_THREADS'], 'X', os.environ['OLV_X'])"
    r = _submit(head["address"], "python", "-c", code, extra=("--env", "OLV_X=42"))
    assert r.exit_code == 0, r.output
    assert "submitted job raysubmit_" in r.output
    assert f"dashboard: {head['address']}/#/jobs/raysubmit_" in r.output
    assert "OMP 1 X 42" in r.output  # runtime env reached the job, logs were streamed back
    assert "SUCCEEDED" in r.output


def test_failing_job_returns_its_exit_code_and_logs(head):
    r = _submit(head["address"], "python", "-c", "print('about to fail'); raise SystemExit(3)")
    assert r.exit_code == 3, r.output
    assert "about to fail" in r.output
    assert "FAILED" in r.output


def test_process_exit_code_and_aws_env_passed_by_name_only(head):
    # A real `omnilv` process: its exit status is the job's; the secret's value never appears in output.
    env = {**os.environ, "RAY_AUTH_TOKEN": head["token"], "AWS_SECRET_ACCESS_KEY": "s3cr3t-value",
           "AWS_ACCESS_KEY_ID": "AKIDTEST"}
    digest = hashlib.sha256(b"s3cr3t-value").hexdigest()  # the entrypoint (echoed by Ray) holds only the hash
    code = ("import hashlib, os, sys; v = os.environ.get('AWS_SECRET_ACCESS_KEY', '').encode(); "
            f"sys.exit(0 if hashlib.sha256(v).hexdigest() == '{digest}' else 5)")
    cmd = [OMNILV, "cluster", "submit", "--address", head["address"], "--", "python", "-c", code]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert "AWS_SECRET_ACCESS_KEY" in out and "s3cr3t-value" not in out


def test_working_dir_is_uploaded_and_is_the_cwd(head, tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "probe.txt").write_text("from-the-laptop")
    code = "print('read', open('configs/probe.txt').read())"
    r = _submit(head["address"], "python", "-c", code, extra=("--working-dir", str(tmp_path)))
    assert r.exit_code == 0, r.output
    assert "read from-the-laptop" in r.output


def test_ctrl_c_stops_following_but_not_the_job(head):
    code = "import time; print('started', flush=True); time.sleep(300)"
    cmd = [OMNILV, "cluster", "submit", "--address", head["address"], "--", "python", "-c", code]
    env = {**os.environ, "RAY_AUTH_TOKEN": head["token"]}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job_id = None
    for line in proc.stdout:  # blocks line by line; pytest-timeout guards a hang
        job_id = job_id or (line.split()[2] if line.startswith("submitted job") else None)
        if "started" in line and "Running entrypoint" not in line:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"stopped following {job_id}; it is still running" in err and "ray job stop --address" in err
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(head["address"], headers={"Authorization": f"Bearer {head['token']}"})
    assert str(client.get_job_status(job_id)) in ("RUNNING", "JobStatus.RUNNING")
    client.stop_job(job_id)
    info = sub._wait_terminal(client, job_id)
    assert sub.exit_code_for(str(info.status.value), info.driver_exit_code) == sub.STOPPED_EXIT_CODE


def test_no_wait_prints_how_to_follow(head):
    r = _submit(head["address"], "python", "-c", "pass", extra=("--no-wait",))
    assert r.exit_code == 0, r.output
    assert "ray job logs --address" in r.output and "--follow raysubmit_" in r.output


def test_missing_or_wrong_token_is_a_clear_error(ray_head, monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "no-token"))
    r = _submit(ray_head["address"], "python", "-c", "pass")
    assert r.exit_code == 2 and "uses token authentication and no token was found" in r.output, r.output
    monkeypatch.setenv("RAY_AUTH_TOKEN", "0" * 64)
    r = _submit(ray_head["address"], "python", "-c", "pass")
    assert r.exit_code == 2 and "rejected the auth token from RAY_AUTH_TOKEN" in r.output, r.output
    assert "Traceback" not in r.output


def test_unreachable_address_is_a_clear_error():
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again at once: nothing listens there
    r = _submit(f"127.0.0.1:{port}", "python", "-c", "pass")
    assert r.exit_code == 2
    assert "cannot reach a Ray dashboard" in r.output
    assert "Traceback" not in r.output


def test_http_server_that_is_not_ray_is_named():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        r = _submit(f"http://127.0.0.1:{server.server_address[1]}", "python", "-c", "pass")
    finally:
        server.shutdown()
        server.server_close()
    assert r.exit_code == 2
    assert "not a Ray dashboard" in r.output


@pytest.mark.parametrize("address, message", [
    ("ray://10.0.0.1:10001", "Ray Client address"),
    ("10.0.0.1:6379", "GCS port"),
    ("http://:8265", "is not an http"),
    ("", "no cluster address"),
])
def test_bad_addresses_rejected_before_any_connection(address, message):
    with pytest.raises(sub.SubmitError, match=message):
        sub.normalize_address(address)


def test_bad_env_and_empty_command(head):
    r = _submit(head["address"], "python", extra=("--env", "NOEQUALS"))
    assert r.exit_code == 2 and "expected NAME=VALUE" in r.output
    r = runner.invoke(app, ["cluster", "submit", "--address", head["address"]])
    assert r.exit_code == 2 and "nothing to run" in r.output


def test_runtime_env_is_the_shared_one_plus_passthrough(tmp_path):
    req = sub.SubmitRequest(address="x", command=["omnilv"], working_dir=str(tmp_path), env={"A": "1"})
    env, passed = sub.build_runtime_env(req, environ={"AWS_REGION": "eu-west-1", "HOME": "/root"})
    assert passed == ["AWS_REGION"]
    assert env["env_vars"] == {**sub.BASE_ENV, "AWS_REGION": "eu-west-1", "A": "1"}
    assert env["working_dir"] == str(tmp_path)
    assert sub.BASE_ENV["OMP_NUM_THREADS"] == "1" and sub.BASE_ENV["RAY_USAGE_STATS_ENABLED"] == "0"
    req.pass_aws_env = False  # --no-aws-env
    env, passed = sub.build_runtime_env(req, environ={"AWS_SECRET_ACCESS_KEY": "x"})
    assert passed == [] and "AWS_SECRET_ACCESS_KEY" not in env["env_vars"]
