"""`omnilv cluster submit` against a real Ray head (Jobs API on loopback), and its errors for people."""

from __future__ import annotations

import contextlib
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


def test_working_dir_upload_leaves_secret_files_behind(head, tmp_path):
    # No .gitignore here (a fresh folder, or RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1): the excludes alone must hold.
    secret_files = ["s3.env", ".env", ".env.local", "configs/prod.env", ".aws/credentials", "auth_token"]
    for name in [*secret_files, "configs/probe.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("AWS_SECRET_ACCESS_KEY=not-for-the-cluster\n")
    code = ("import os; print('FILES', sorted(os.path.relpath(os.path.join(d, f)) "
            "for d, _, fs in os.walk('.') for f in fs))")
    r = _submit(head["address"], "python", "-c", code, extra=("--working-dir", str(tmp_path)))
    assert r.exit_code == 0, r.output
    listing = next(line for line in r.output.splitlines() if line.startswith("FILES"))
    assert "'configs/probe.txt'" in listing
    assert not [name for name in secret_files if f"'{name}'" in listing], listing


# Starts a program with SIGINT set to the disposition named in argv[1]; exec keeps SIG_IGN (as a shell without
# job control leaves it for `cmd &`) and resets a handler to SIG_DFL, which Python turns into KeyboardInterrupt.
_WITH_SIGINT = ("import os, signal, sys; signal.signal(signal.SIGINT, getattr(signal, sys.argv[1])); "
                "os.execv(sys.argv[2], sys.argv[2:])")


def _shell(hint: str) -> subprocess.CompletedProcess:
    """Runs a command line we printed for the user, in a shell with this venv's `ray` first on PATH."""
    env = {**os.environ, "PATH": str(Path(OMNILV).parent) + os.pathsep + os.environ.get("PATH", "")}
    return subprocess.run(["bash", "-c", hint], env=env, capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("inherited_sigint", ["SIG_DFL", "SIG_IGN"])
def test_ctrl_c_stops_following_but_not_the_job(head, inherited_sigint):
    # SIG_IGN: how a background job of a non-interactive shell (a CI step, `make test &`) starts; Ctrl-C was lost.
    from ray.job_submission import JobSubmissionClient

    code = "import time; print('started', flush=True); time.sleep(300)"
    cmd = [sys.executable, "-c", _WITH_SIGINT, inherited_sigint,
           OMNILV, "cluster", "submit", "--address", head["address"], "--", "python", "-c", code]
    client = JobSubmissionClient(head["address"], headers={"Authorization": f"Bearer {head['token']}"})
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job_id, started = None, False
    try:
        for line in proc.stdout:  # until the job's own output has been streamed back to us
            job_id = job_id or (line.split()[2] if line.startswith("submitted job") else None)
            if "started" in line and "Running entrypoint" not in line:
                started = True
                break
        assert job_id and started, proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=120)  # a guard against a hang, not a measurement
        except subprocess.TimeoutExpired:
            pytest.fail("`omnilv cluster submit` ignored SIGINT while following the job's logs")
        assert proc.returncode == 130, err
        assert f"stopped following {job_id}; it is still running" in err
        assert str(client.get_job_status(job_id)) in ("RUNNING", "JobStatus.RUNNING")
        # The printed stop command works on this token cluster, and never shows the token.
        hint = err.split("Stop it with: ", 1)[1].strip()
        assert hint.startswith("RAY_AUTH_MODE=token ray job stop --address") and head["token"] not in err
        stopped = _shell(hint)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        info = sub._wait_terminal(client, job_id)
        assert sub.exit_code_for(str(info.status.value), info.driver_exit_code) == sub.STOPPED_EXIT_CODE
    finally:  # a failed run must not leave the CLI following, or a 300-second job holding the head's CPUs
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        if job_id and not client.get_job_status(job_id).is_terminal():
            client.stop_job(job_id)


def test_no_wait_prints_how_to_follow(head):
    r = _submit(head["address"], "python", "-c", "print('no-wait ran')", extra=("--no-wait",))
    assert r.exit_code == 0, r.output
    hint = r.output.split("follow it: ", 1)[1].strip()
    # Ray's CLI sends the token only with RAY_AUTH_MODE=token; the hint names where the token is, not its value.
    assert hint.startswith("RAY_AUTH_MODE=token ray job logs --address") and "--follow raysubmit_" in hint
    assert "RAY_AUTH_TOKEN" in hint and head["token"] not in r.output
    followed = _shell(hint)  # the printed command, as the user pastes it
    assert followed.returncode == 0, followed.stdout + followed.stderr
    assert "no-wait ran" in followed.stdout + followed.stderr


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


@contextlib.contextmanager
def _serve(handler: type[http.server.BaseHTTPRequestHandler]):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("redirects", ["/api/version", "the job API"])
def test_token_never_follows_a_redirect_to_another_host(monkeypatch, redirects):
    """A "dashboard" asks for the token (401), then redirects to another host:port; that host must never get it."""
    token = "tok-" + "7" * 60
    monkeypatch.setenv("RAY_AUTH_TOKEN", token)
    seen: list[str] = []  # every request the other host received, headers included

    class Elsewhere(http.server.BaseHTTPRequestHandler):
        def _any(self):
            seen.append(f"{self.command} {self.path}\n{self.headers}")
            self.send_error(404)

        do_GET = do_POST = do_PUT = _any

        def log_message(self, *args):
            pass

    with _serve(Elsewhere) as elsewhere:
        class Dashboard(http.server.BaseHTTPRequestHandler):
            def _any(self):
                if self.path == "/api/version" and not self.headers.get("Authorization"):
                    self.send_error(401)
                elif self.path == "/api/version" and redirects == "the job API":
                    body = b'{"ray_version": "2.60.0", "version": "4"}'
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_response(307)
                    self.send_header("Location", elsewhere + self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

            do_GET = do_POST = do_PUT = _any

            def log_message(self, *args):
                pass

        with _serve(Dashboard) as dashboard:
            r = _submit(dashboard, "python", "-c", "pass")
    assert r.exit_code == 2, r.output
    assert not [req for req in seen if token in req or "authorization" in req.lower()], seen
    assert token not in r.output and "Traceback" not in r.output
    if redirects == "/api/version":
        assert "another host" in r.output and elsewhere in r.output
    else:  # Ray's client followed the redirect: the other host was asked, without the token
        assert seen, r.output


@pytest.mark.parametrize("address, warned", [
    ("http://10.0.0.7:8265", True), ("http://head.example.com:8265", True),
    ("https://10.0.0.7:8265", False), ("http://127.0.0.1:8265", False), ("http://localhost:8265", False),
    ("http://[::1]:8265", False),
])
def test_plain_http_token_warning_is_one_line_and_names_only_the_source(address, warned):
    line = sub.plain_http_warning(address, "RAY_AUTH_TOKEN")
    assert (line is not None) == warned
    if warned:
        assert "\n" not in line and "RAY_AUTH_TOKEN" in line and "http://" in line


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
    assert {".env", "*.env"} <= set(env["excludes"])  # s3.env from cluster/README.md never leaves the laptop
    assert sub.BASE_ENV["OMP_NUM_THREADS"] == "1" and sub.BASE_ENV["RAY_USAGE_STATS_ENABLED"] == "0"
    req.pass_aws_env = False  # --no-aws-env
    env, passed = sub.build_runtime_env(req, environ={"AWS_SECRET_ACCESS_KEY": "x"})
    assert passed == [] and "AWS_SECRET_ACCESS_KEY" not in env["env_vars"]
