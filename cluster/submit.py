"""Submit an ``omnilv`` command to a Ray cluster through the Ray Jobs API and follow it to the end.

The Jobs API lives in the Ray dashboard (``http://HEAD:8265``). The job's entrypoint runs on the head
node as a driver of the cluster, so ``omnilv corpus build`` / ``omnilv train`` there use every node
exactly as they use the local Ray on a laptop. This module imports only Ray's thin submission client.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import shlex
import signal
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from cluster.render import runtime_env
from omnilv.errors import OmniLVError

# Environment every job gets, from the shared runtime env that RayJobs embed too: no usage-stats
# phone-home, one BLAS/OpenMP thread per Ray worker (Ray already runs one worker per core).
BASE_ENV: dict[str, str] = {str(k): str(v) for k, v in runtime_env()["env_vars"].items()}

# S3/AWS variables copied from the submitting shell *by name*, only when set there. Prefer instance
# roles / IRSA on real clusters: values in a runtime env are visible to anyone who can read the dashboard.
PASSTHROUGH_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
                   "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")

STOPPED_EXIT_CODE = 2  # a job stopped by someone (ray job stop) is not a success

# Never uploaded with --working-dir, whatever .gitignore/.rayignore say (gitignore syntax, any depth).
# cluster/README.md tells users to keep S3 keys in s3.env; Ray's working-dir package is readable by
# anyone who can use the cluster.
SECRET_EXCLUDES = (".env", ".env.*", "*.env", ".aws/", ".ray/", "auth_token", ".netrc", ".git-credentials",
                   "*.pem", "*.key", "id_rsa*", "id_ed25519*")


class SubmitError(OmniLVError):
    """A problem the user can fix (bad address, unreachable cluster, bad --env); message is for people."""


@dataclass
class JobResult:
    """How a followed job ended."""

    job_id: str
    status: str
    exit_code: int
    message: str = ""


@dataclass
class SubmitRequest:
    """Everything needed to submit one job."""

    address: str
    command: list[str]
    working_dir: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    pass_aws_env: bool = True
    entrypoint_num_cpus: float | None = None


def normalize_address(address: str | None) -> str:
    """``HOST:PORT`` or ``http(s)://HOST:PORT`` -> the dashboard base URL; anything else is a clear error."""
    if not address:
        raise SubmitError("no cluster address: pass --address http://HEAD:8265 (or set RAY_API_SERVER_ADDRESS)")
    address = address.strip().rstrip("/")
    if address.startswith("ray://"):
        raise SubmitError(f"{address} is a Ray Client address; the Jobs API is served by the dashboard, "
                          "usually http://HEAD:8265")
    if "://" not in address:
        address = "http://" + address
    parsed = urllib.parse.urlparse(address)
    try:
        port = parsed.port
    except ValueError as e:
        raise SubmitError(f"--address {address!r}: {e}") from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise SubmitError(f"--address {address!r} is not an http(s)://HOST:PORT URL of a Ray dashboard")
    if port == 6379:
        raise SubmitError(f"{address} looks like the Ray GCS port (6379); the Jobs API is on the dashboard "
                          "port, usually 8265")
    return address


def find_token(environ: dict[str, str] | None = None) -> tuple[str | None, str]:
    """The Ray auth token the way Ray looks it up (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)."""
    environ = os.environ if environ is None else environ
    if environ.get("RAY_AUTH_TOKEN"):
        return environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN"
    path = environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    try:
        with open(path) as f:
            return f.read().strip() or None, path
    except OSError:
        return None, path


def _origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) with the default port filled in: two URLs share a token only if these match."""
    parsed = urllib.parse.urlsplit(url)
    scheme = parsed.scheme.lower()
    return scheme, (parsed.hostname or "").lower(), parsed.port or (443 if scheme == "https" else 80)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def plain_http_warning(address: str, source: str) -> str | None:
    """The one-line warning for a token about to cross the network unencrypted, or None when it does not."""
    scheme, host, _ = _origin(address)
    if scheme != "http" or _is_loopback(host):
        return None
    return (f"warning: sending the Ray auth token (from {source}) to {host} over plain http://; anyone on the "
            "network path can read it. Use https://, or an SSH tunnel / kubectl port-forward to 127.0.0.1")


class _TokenStaysHome(urllib.request.HTTPRedirectHandler):
    """Follows a redirect that carries the token only to the same scheme, host and port.

    urllib copies ``Authorization`` onto every redirect, so without this a server could hand the token on
    to any host it names.
    """

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if req.has_header("Authorization") and _origin(newurl) != _origin(req.full_url):
            fp.close()
            scheme, host, port = _origin(newurl)
            raise SubmitError(f"{req.full_url} redirected the request that carries the Ray auth token to "
                              f"{scheme}://{host}:{port}, another host; the token goes only to the address you "
                              "gave. If that is your cluster's dashboard, pass it as --address")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_opener = urllib.request.build_opener(_TokenStaysHome)


def _get_version(url: str, headers: dict[str, str], timeout: float) -> bytes:
    req = urllib.request.Request(url, headers=headers)
    with _opener.open(req, timeout=timeout) as r:  # scheme checked by normalize_address
        return r.read(65536)


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def check_dashboard(address: str, timeout: float = 10.0,
                    warn: Callable[[str], None] | None = None) -> tuple[str, dict[str, str], str | None]:
    """GET ``/api/version``: the cluster's Ray version, the auth headers it needs and where the token came from
    (None when the cluster asked for none), or SubmitError.

    The token is sent only after the server asked for one (HTTP 401), so a mistyped address never receives it,
    and only to the scheme, host and port of ``address`` (a redirect elsewhere is refused). ``warn`` gets one
    line when the token would travel over plain http to a host that is not this machine.
    """
    url, headers, source = address + "/api/version", {}, None
    try:
        try:
            body = _get_version(url, headers, timeout)
        except urllib.error.HTTPError as e:
            if e.code != 401:
                raise
            token, source = find_token()
            if not token:
                raise SubmitError(f"the Ray cluster at {address} uses token authentication and no token was found "
                                  f"(looked at RAY_AUTH_TOKEN, {source}). Get it on the head with "
                                  "`ray get-auth-token` and export RAY_AUTH_TOKEN") from None
            if (warning := plain_http_warning(address, source)) is not None:
                (warn or _to_stderr)(warning)
            headers = {"Authorization": f"Bearer {token}"}
            try:
                body = _get_version(url, headers, timeout)
            except urllib.error.HTTPError as e2:
                if e2.code in (401, 403):
                    raise SubmitError(f"the Ray cluster at {address} rejected the auth token from {source}") from None
                raise
    except urllib.error.HTTPError as e:
        raise SubmitError(f"{address} answered HTTP {e.code} for /api/version: it is not a Ray dashboard "
                          "(is the port right? the dashboard is usually on 8265)") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise SubmitError(f"cannot reach a Ray dashboard at {address}: {reason}. Is the cluster up and the "
                          "port forwarded? (`ray dashboard CLUSTER.yaml`, or `kubectl port-forward "
                          "svc/CLUSTER-head-svc 8265:8265`)") from None
    try:
        return str(json.loads(body)["ray_version"]), headers, source
    except (ValueError, KeyError, TypeError):
        raise SubmitError(f"{address} answered /api/version without a Ray version: it is not a Ray "
                          "dashboard") from None


def parse_env(pairs: list[str]) -> dict[str, str]:
    """``K=V`` strings -> dict; a malformed pair names itself."""
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not key.replace("_", "").isalnum():
            raise SubmitError(f"--env {pair!r}: expected NAME=VALUE")
        env[key] = value
    return env


def build_runtime_env(req: SubmitRequest, environ: dict[str, str] | None = None) -> tuple[dict, list[str]]:
    """The job's runtime env and the names of variables passed through from the local shell."""
    environ = os.environ if environ is None else environ
    env = dict(BASE_ENV)
    passed = [k for k in PASSTHROUGH_ENV if req.pass_aws_env and environ.get(k)]
    env.update({k: environ[k] for k in passed})
    env.update(req.env)
    runtime_env: dict = {"env_vars": env}
    if req.working_dir:
        if not os.path.isdir(req.working_dir):
            raise SubmitError(f"--working-dir {req.working_dir!r} is not a directory")
        # Uploaded to the cluster (git-ignored files and secrets excluded) and used as the job's cwd, so
        # relative config paths such as configs/train/stage1_512.yaml resolve there as they do here.
        runtime_env["working_dir"] = os.path.abspath(req.working_dir)
        runtime_env["excludes"] = list(SECRET_EXCLUDES)
    return runtime_env, passed


def dashboard_job_url(address: str, job_id: str) -> str:
    return f"{address}/#/jobs/{job_id}"


def exit_code_for(status: str, driver_exit_code: int | None) -> int:
    """0 for SUCCEEDED; the entrypoint's own code for FAILED when known (else 1); 2 for STOPPED."""
    if status == "SUCCEEDED":
        return 0
    if status == "STOPPED":
        return STOPPED_EXIT_CODE
    return driver_exit_code if driver_exit_code else 1


def submit(req: SubmitRequest, echo: Callable[[str], None] = print,
           warn: Callable[[str], None] = _to_stderr) -> tuple[object, str]:
    """Check the address, submit the job, print its id and dashboard URL; returns (client, job_id).

    The client remembers where the token came from (``omnilv_token_source``) for :func:`ray_cli_hint`.
    """
    from ray.job_submission import JobSubmissionClient

    if not req.command:
        raise SubmitError("nothing to run: put the command after `--`, e.g. `-- omnilv train CONFIG`")
    address = normalize_address(req.address)
    version, headers, source = check_dashboard(address, warn=warn)
    runtime_env, passed = build_runtime_env(req)
    try:
        client = JobSubmissionClient(address, headers=headers or None)
        job_id = client.submit_job(entrypoint=shlex.join(req.command), runtime_env=runtime_env,
                                   entrypoint_num_cpus=req.entrypoint_num_cpus,
                                   metadata={"submitted_by": "omnilv cluster submit"})
    except Exception as e:  # the SDK raises RuntimeError/ConnectionError with the server's message
        raise SubmitError(f"the cluster at {address} (Ray {version}) refused the job: {e}") from None
    client.omnilv_token_source = source
    echo(f"submitted job {job_id} to {address} (Ray {version})")
    echo(f"dashboard: {dashboard_job_url(address, job_id)}")
    if passed:
        echo("passed from your environment (values not shown): " + ", ".join(passed))
    return client, job_id


def ray_cli_hint(client, command: str) -> str:
    """``command`` (a ``ray job …`` line) as it must be typed for this cluster.

    Ray's CLI sends a token only with RAY_AUTH_MODE=token set, and then finds it as we did (RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token). The token itself is never printed: only where it was found.
    """
    source = getattr(client, "omnilv_token_source", None)
    return f"RAY_AUTH_MODE=token {command}  # token from {source}, as here" if source else command


async def _tail(client, job_id: str, write: Callable[[str], None]) -> None:
    async for lines in client.tail_job_logs(job_id):
        write(lines)


def follow(client, job_id: str, write: Callable[[str], None]) -> JobResult:
    """Stream the job's logs until it ends, then return its status and exit code.

    KeyboardInterrupt propagates to the caller: following stops, the job keeps running.
    """
    import logging

    # The SDK logs an INFO line when the log websocket closes normally; it is noise at the end of every job.
    logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)
    with _ctrl_c_interrupts():
        try:
            asyncio.run(_tail(client, job_id, write))
        except Exception as e:  # any streaming failure: the job is unaffected, so poll
            # A proxy that drops websockets: fall back to polling and print the whole log at the end.
            write(f"[log streaming unavailable ({e}); waiting for the job to finish]\n")
            _wait_terminal(client, job_id)
            write(client.get_job_logs(job_id))
        info = _wait_terminal(client, job_id)
    status = str(getattr(info.status, "value", info.status))
    code = exit_code_for(status, getattr(info, "driver_exit_code", None))
    return JobResult(job_id=job_id, status=status, exit_code=code, message=info.message or "")


@contextlib.contextmanager
def _ctrl_c_interrupts() -> Iterator[None]:
    """Ctrl-C (SIGINT) raises KeyboardInterrupt inside, even when this process inherited SIGINT as ignored.

    A shell without job control starts ``cmd &`` with SIGINT ignored, and the ignore survives exec, so a
    follower started that way (a background script, a CI step, a test run) never stopped. Honouring it here
    loses nothing: it stops the following, never the job. A handler someone installed is left alone.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _wait_terminal(client, job_id: str, poll_s: float = 0.5):
    import time

    while True:
        info = client.get_job_info(job_id)
        if info.status.is_terminal():
            return info
        time.sleep(poll_s)
