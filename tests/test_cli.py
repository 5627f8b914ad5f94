"""The ``omnilv`` command as a whole: one error boundary, shared options, help that reads as paragraphs.

STYLE.md habit 18: library code raises a project error (:class:`omnilv.errors.OmniLVError`) with a message for
people, ``omnilv/cli.py`` turns it into one line and exit status 2, and anything else keeps its traceback.
"""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from omnilv.cli import app, user_message
from omnilv.errors import OmniLVError
from omnilv.options import JobsAddress, Overrides, RayAddress

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("omnilv", "degradations", "pipelines", "training", "cluster")
COMMAND_MODULES = [REPO / p / "cli.py" for p in PACKAGES if p != "omnilv"]
runner = CliRunner()


def omnilv(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "omnilv", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120)


def commands(group=None, path=()):
    """(path, click command) of every command under the root app."""
    group = group or typer.main.get_command(app)
    for name, cmd in sorted(group.commands.items()):
        if hasattr(cmd, "commands"):
            yield from commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


ALL = list(commands())


# -- the error boundary --------------------------------------------------------------------------------------
def test_a_user_error_is_one_line_on_stderr_and_exit_2():
    out = omnilv("corpus", "inspect", "/nonexistent/corpus")
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: /nonexistent/corpus") and "no manifest" in lines[0]
    assert out.stdout == ""


@pytest.mark.parametrize("args, words", [
    (["train", "no_such_preset"], "tiny_stage1"),  # the message lists the presets
    (["corpus", "build", "--set", "geometry.crop_size=[1,"], "not valid YAML"),
    (["degradations", "preview", "gausian_noise"], "did you mean 'gaussian_noise'"),
    (["cluster", "render", "aws", "--gpus-per-node", "3"], "--instance-type"),
])
def test_project_errors_from_every_package_meet_the_boundary(args, words):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: ") and words in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1 and isinstance(res.exception, SystemExit)


def test_a_bug_keeps_its_traceback(tmp_path):
    # A library function that fails with an exception that is not a project error: a bug, shown as one.
    script = ("import pipelines.inspect as m\n"
              "def broken(*a, **k):\n    return 1 / 0\n"
              "m.inspect_corpus = broken\n"
              "from omnilv.cli import app\n"
              "app(['corpus', 'inspect', 'somewhere'], prog_name='omnilv')\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 1
    assert "Traceback" in out.stderr and "ZeroDivisionError" in out.stderr and "inspect_corpus" not in out.stdout
    assert "error:" not in out.stderr


def test_a_value_error_is_not_disguised_as_a_user_error(monkeypatch):
    import training.run

    def broken(cfg):
        raise ValueError("a bug, not a message for the user")

    monkeypatch.setattr(training.run, "deepspeed_config", broken, raising=False)
    res = runner.invoke(app, ["train", "tiny_stage1", "--dry-run"])
    assert res.exit_code == 1 and isinstance(res.exception, ValueError) and "error:" not in res.output


def test_a_project_error_from_a_ray_task_prints_its_own_message():
    from ray.exceptions import RayTaskError

    from pipelines import SchemaError

    wrapped = RayTaskError("f", "Traceback (most recent call last):\n  ...", SchemaError("x.tar: bad member")
                           ).as_instanceof_cause()
    assert isinstance(wrapped, OmniLVError) and "(pid=" in str(wrapped)  # the remote frame, not the message
    assert user_message(wrapped) == "x.tar: bad member"


def _class_bases() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef):
                    found[node.name] = [ast.unparse(b).rpartition(".")[2] for b in node.bases]
    return found


def test_every_project_error_class_is_an_omnilv_error():
    bases = _class_bases()

    def project(name: str, seen: frozenset = frozenset()) -> bool:
        return name == "OmniLVError" or any(project(b, seen | {name}) for b in bases.get(name, ()) if b not in seen)

    errors = [n for n in bases if n.endswith("Error") and n != "OmniLVError"]
    assert len(errors) >= 10  # the check found the classes
    assert [n for n in errors if not project(n)] == []


@pytest.mark.parametrize("path", COMMAND_MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_commands_catch_nothing_but_ctrl_c(path):
    """The one boundary is omnilv/cli.py: a command neither re-formats a project error nor hides a bug."""
    tree = ast.parse(path.read_text())
    caught = [(h.lineno, ast.unparse(h.type) if h.type else "everything")
              for h in ast.walk(tree) if isinstance(h, ast.ExceptHandler)]
    assert [c for c in caught if c[1] != "KeyboardInterrupt"] == []
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_fail"]


# -- shared options ------------------------------------------------------------------------------------------
def _option_help(alias) -> str:
    return alias.__metadata__[0].help


def test_set_and_address_are_defined_once():
    where = []
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Call) and ast.unparse(node.func).endswith("Option")
                        and {"--set", "--address"} & {a.value for a in node.args if isinstance(a, ast.Constant)}):
                    where.append(str(path.relative_to(REPO)))
    assert where and set(where) == {"omnilv/options.py"}


def test_commands_share_the_same_set_and_address():
    seen: dict[str, set[str]] = {"--set": set(), "--address": set()}
    users: dict[str, list[str]] = {"--set": [], "--address": []}
    for path, cmd in ALL:
        for p in cmd.params:
            for opt in set(seen) & set(getattr(p, "opts", ())):
                seen[opt].add(p.help)
                users[opt].append(" ".join(path))
    assert seen["--set"] == {_option_help(Overrides)}
    assert seen["--address"] == {_option_help(RayAddress), _option_help(JobsAddress)}
    for name in ("train", "quickstart", "cache-latents", "corpus build"):
        assert name in users["--set"] and name in users["--address"]


# -- help ----------------------------------------------------------------------------------------------------
def _prose_paragraphs(doc: str) -> list[str]:
    """The paragraphs of a help text that are prose (not an example block), each joined into one line."""
    prose = re.sub(r"```.*?```", "", inspect.cleandoc(doc), flags=re.S)
    return [" ".join(p.replace("`", "").split()) for p in prose.split("\n\n") if p.strip()]


@pytest.mark.parametrize("path, cmd", ALL, ids=[" ".join(p) for p, _ in ALL])
def test_help_reads_as_paragraphs(path, cmd):
    """On a wide terminal each paragraph of a command's help is one line: no sentence breaks where the docstring
    happened to wrap (and on a narrow one the terminal wraps it, not the source)."""
    res = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "1000"})
    assert res.exit_code == 0, res.output
    shown = {" ".join(line.split()) for line in res.output.splitlines()}
    paragraphs = _prose_paragraphs(cmd.help or "")
    assert paragraphs, f"{' '.join(path)} has no help"
    for para in paragraphs:
        assert para in shown, f"`omnilv {' '.join(path)} --help` breaks this paragraph:\n{para}"
    for p in cmd.params:
        assert "\n" not in (getattr(p, "help", None) or ""), f"{p.name}: a hard line break in the option's help"


def test_example_blocks_keep_their_lines():
    res = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "1000"})
    lines = [line.strip() for line in res.output.splitlines()]
    assert "omnilv train tiny_stage1 --set data.corpus=corpus/quickstart" in lines
    assert "omnilv train stage1_512 --address ray://head:10001" in lines
