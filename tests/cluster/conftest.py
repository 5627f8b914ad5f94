"""A real Ray head (``ray start --head`` with the dashboard/Jobs API) on loopback, for submission tests.

It gets its own ports and ``--temp-dir`` so it never joins or collides with the in-process test Ray
(``ray_local``) or anyone else's Ray on the machine, and teardown kills only its own processes: the
process group of its ``ray start`` plus anything whose command line names its temp dir.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

VENV_BIN = str(Path(sys.executable).parent)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_dashboard(url: str, token: str, timeout: float = 90.0) -> None:
    deadline = time.time() + timeout
    req = urllib.request.Request(url + "/api/version", headers={"Authorization": f"Bearer {token}"})
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(req, timeout=2) as r:
                if json.loads(r.read()).get("ray_version"):
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the Ray dashboard at {url} did not come up")


def _own_processes(pgid: int, temp_dir: str) -> list[psutil.Process]:
    """Processes of this head only: its process group, or a command line naming its temp dir."""
    found = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            mine = os.getpgid(proc.pid) == pgid or temp_dir in " ".join(proc.info["cmdline"] or ())
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
        if mine and proc.pid != os.getpid():
            found[proc.pid] = proc
            for child in proc.children(recursive=True):
                found[child.pid] = child
    return list(found.values())


def _stop(pgid: int, temp_dir: str) -> None:
    procs = _own_processes(pgid, temp_dir)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=5)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


@pytest.fixture(scope="session")
def ray_head():
    """Yields {'address', 'token', 'temp_dir'}; jobs run in this venv with omnilv on PATH.

    Token authentication is on (as Ray 2.5x enables it by default once a token exists): submissions
    must find the token, as they must on a real cluster.
    """
    token = secrets.token_hex(32)
    # Short path: Ray's unix socket paths under temp_dir must stay under ~107 characters.
    temp_dir = tempfile.mkdtemp(prefix="olvhead-", dir="/tmp")
    dash = _free_port()
    env = {**os.environ, "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", ""),
           "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    cmd = [os.path.join(VENV_BIN, "ray"), "start", "--head", "--port", str(_free_port()),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--num-cpus", "2",
           "--include-dashboard=true", "--disable-usage-stats", "--temp-dir", temp_dir,
           "--ray-client-server-port", str(_free_port()), "--dashboard-agent-listen-port", str(_free_port()),
           "--node-ip-address", "127.0.0.1"]
    log = open(os.path.join(temp_dir, "ray-start.log"), "wb")
    # A new session: every daemon `ray start` forks inherits this process group, which teardown kills.
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    pgid = proc.pid
    url = f"http://127.0.0.1:{dash}"
    try:
        if proc.wait(timeout=120) != 0:
            raise RuntimeError(f"ray start failed:\n{Path(temp_dir, 'ray-start.log').read_text()[-3000:]}")
        _wait_dashboard(url, token)
        yield {"address": url, "token": token, "temp_dir": temp_dir}
    finally:
        _stop(pgid, temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
